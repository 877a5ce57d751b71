"""What the admin report lists: studies (filtered, sorted, paged), filter choices, the audit trail.

Read-only: nothing here writes. Queries are shaped for large indexes: the studies list pages over
study ids on an index and only then loads what the page shows. Callers validate parameters
(``admin.forms``); ids and offsets that reach this module fit a 64-bit integer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, exists, func, or_, select, text
from sqlalchemy.orm import Session

from storage.models import (
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    JOB_QUEUED,
    JOB_RUNNING,
    SUSPICIOUS,
    TAMPERED,
    VERDICT_OUTCOMES,
    AuditEvent,
    Delivery,
    Instance,
    Job,
    Mark,
    Series,
    Study,
    Verdict,
)

SORTS = {
    "received": Study.last_received_at,
    "study_date": Study.study_date,
    "patient": Study.patient_id,
    "state": Study.state,
}
PAGE_SIZES = (25, 50, 100)
FLAGGED = "flagged"  # verdict filter: tampered or suspicious
# Delivery filters of the studies list: the dashboard's tiles link to them.
DELIVERY_FILTERS = ("pending", "overdue", "failed")
# Job filters: queued, running, or stuck (see ``stuck_jobs_clause``).
JOB_FILTERS = ("queued", "running", "stuck")


@dataclass
class StudyFilter:
    verdict: str | None = None  # an outcome, "flagged" (tampered or suspicious), or "none"
    date_from: date | None = None  # last received, UTC day
    date_to: date | None = None
    modality: str | None = None
    calling_ae: str | None = None
    patient: str | None = None  # patient ID prefix or part of the name
    delivery: str | None = None  # one of DELIVERY_FILTERS
    job: str | None = None  # one of JOB_FILTERS
    sort: str = "received"
    descending: bool = True
    page: int = 1
    per_page: int = 50
    # Thresholds behind "overdue" and "stuck" (seconds), set from [admin] by the caller.
    overdue_after_s: float = 300.0
    stuck_after_s: float = 900.0
    now: datetime | None = None


@dataclass(frozen=True)
class StudyRow:
    id: int
    study_uid: str
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    description: str | None
    state: str
    version: int
    last_received_at: datetime
    modalities: list[str]
    calling_aes: list[str]
    instances: int
    verdict: str | None
    verdict_reason: str | None
    verdict_score: float | None
    mark: str | None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def stuck_jobs_clause(now: datetime, stuck_after_s: float) -> Any:
    """Jobs that should have moved on: queued or running for longer than ``stuck_after_s``, or
    running on a lease that has run out (the worker died and nobody claimed it again yet)."""
    since = now - timedelta(seconds=stuck_after_s)
    return or_(
        (Job.state == JOB_QUEUED) & (Job.created_at < since),
        (Job.state == JOB_RUNNING) & (Job.started_at < since),
        (Job.state == JOB_RUNNING) & (Job.lease_expires_at < now),
    )


def delivery_clause(kind: str, now: datetime, overdue_after_s: float) -> Any:
    """Deliveries of one dashboard kind: pending, pending past the threshold, or failed."""
    if kind == "failed":
        return Delivery.state == DELIVERY_FAILED
    if kind == "overdue":
        since = now - timedelta(seconds=overdue_after_s)
        return (Delivery.state == DELIVERY_PENDING) & (Delivery.created_at < since)
    return Delivery.state == DELIVERY_PENDING


def _filtered(f: StudyFilter) -> Select[Any]:
    query = select(Study.id)
    now = f.now or datetime.now(UTC)
    if f.verdict == "none":
        query = query.where(
            ~exists().where(Verdict.study_id == Study.id, Verdict.is_current.is_(True))
        )
    elif f.verdict:
        outcomes = [TAMPERED, SUSPICIOUS] if f.verdict == FLAGGED else [f.verdict]
        query = query.where(
            Study.id.in_(
                select(Verdict.study_id).where(
                    Verdict.outcome.in_(outcomes), Verdict.is_current.is_(True)
                )
            )
        )
    if f.date_from:
        query = query.where(Study.last_received_at >= datetime.combine(f.date_from, time(), UTC))
    if f.date_to:
        end = datetime.combine(f.date_to + timedelta(days=1), time(), UTC)
        query = query.where(Study.last_received_at < end)
    if f.modality:
        query = query.where(
            Study.id.in_(select(Series.study_id).where(Series.modality == f.modality.upper()))
        )
    if f.calling_ae:
        query = query.where(
            Study.id.in_(select(Instance.study_id).where(Instance.calling_ae == f.calling_ae))
        )
    if f.delivery:
        query = query.where(
            Study.id.in_(
                select(Verdict.study_id)
                .join(Delivery, Delivery.verdict_id == Verdict.id)
                .where(delivery_clause(f.delivery, now, f.overdue_after_s))
            )
        )
    if f.job:
        clause = (
            stuck_jobs_clause(now, f.stuck_after_s)
            if f.job == "stuck"
            else Job.state == (JOB_QUEUED if f.job == "queued" else JOB_RUNNING)
        )
        query = query.where(Study.id.in_(select(Job.study_id).where(clause)))
    if f.patient:
        text = _like_escape(f.patient.strip())
        query = query.where(
            or_(
                Study.patient_id.like(f"{text}%", escape="\\"),
                Study.patient_name.ilike(f"%{text}%", escape="\\"),
            )
        )
    return query


def count_studies(session: Session, f: StudyFilter) -> int:
    """How many studies match the filter (the caller checks the page against it)."""
    base = _filtered(f)
    return int(session.scalar(select(func.count()).select_from(base.subquery())) or 0)


def list_studies_page(session: Session, f: StudyFilter) -> tuple[list[StudyRow], int]:
    """One page of studies and the number matching the filter."""
    total = count_studies(session, f)
    column = SORTS[f.sort]
    order = [column.desc(), Study.id.desc()] if f.descending else [column.asc(), Study.id.asc()]
    ids = list(
        session.scalars(
            _filtered(f).order_by(*order).limit(f.per_page).offset((f.page - 1) * f.per_page)
        ).all()
    )
    return study_rows(session, ids), total


def study_rows(session: Session, ids: list[int]) -> list[StudyRow]:
    """Rows for the given study ids, in that order, with what the list shows about each."""
    if not ids:
        return []
    studies = {s.id: s for s in session.scalars(select(Study).where(Study.id.in_(ids))).all()}
    verdicts = {
        v.study_id: v
        for v in session.scalars(
            select(Verdict).where(Verdict.study_id.in_(ids), Verdict.is_current.is_(True))
        ).all()
    }
    modalities: dict[int, set[str]] = {}
    for study_id, modality in session.execute(
        select(Series.study_id, Series.modality).where(Series.study_id.in_(ids))
    ):
        modalities.setdefault(study_id, set()).add(modality or "?")
    counts: dict[int, int] = {}
    aes: dict[int, set[str]] = {}
    for study_id, ae, n in session.execute(
        select(Instance.study_id, Instance.calling_ae, func.count())
        .where(Instance.study_id.in_(ids))
        .group_by(Instance.study_id, Instance.calling_ae)
    ):
        counts[study_id] = counts.get(study_id, 0) + n
        if ae:
            aes.setdefault(study_id, set()).add(ae)
    marks = latest_study_marks(session, ids)
    rows = []
    for study_id in ids:
        s = studies[study_id]
        v = verdicts.get(study_id)
        rows.append(
            StudyRow(
                id=s.id,
                study_uid=s.study_uid,
                patient_id=s.patient_id,
                patient_name=s.patient_name,
                study_date=s.study_date,
                description=s.description,
                state=s.state,
                version=s.version,
                last_received_at=s.last_received_at,
                modalities=sorted(modalities.get(study_id, set())),
                calling_aes=sorted(aes.get(study_id, set())),
                instances=counts.get(study_id, 0),
                verdict=v.outcome if v else None,
                verdict_reason=v.reason if v else None,
                verdict_score=v.score if v else None,
                mark=marks.get(study_id),
            )
        )
    return rows


def latest_study_marks(session: Session, ids: list[int]) -> dict[int, str]:
    """The newest study-level mark per study (region marks do not count here)."""
    out: dict[int, str] = {}
    for study_id, label in session.execute(
        select(Mark.study_id, Mark.label)
        .where(Mark.study_id.in_(ids), Mark.region_id.is_(None))
        .order_by(Mark.id)
    ):
        out[study_id] = label
    return out


# A loose index scan: jump from one indexed value to the next instead of reading the whole
# index, which is what SELECT DISTINCT does on PostgreSQL (55-75 ms at 100,000 studies, against
# 0.2 ms this way; docs/deployment.md). Table and column names are constants, never input.
_SKIP_SCAN = """
WITH RECURSIVE t(v) AS (
    SELECT min({column}) FROM {table}
    UNION ALL
    SELECT (SELECT min({column}) FROM {table} WHERE {column} > t.v) FROM t WHERE t.v IS NOT NULL
)
SELECT v FROM t WHERE v IS NOT NULL LIMIT :limit
"""


def _distinct_values(session: Session, table: str, column: str, limit: int) -> list[str]:
    query = text(_SKIP_SCAN.format(table=table, column=column))
    return [v for v in session.scalars(query, {"limit": limit}).all() if v]


def filter_choices(session: Session) -> dict[str, list[str]]:
    """Values offered in the list's drop-downs (few distinct values; indexed columns)."""
    modalities = _distinct_values(session, "series", "modality", 50)
    aes = _distinct_values(session, "instance", "calling_ae", 200)
    return {
        "modalities": sorted(m for m in modalities if m),
        "calling_aes": sorted(a for a in aes if a),
        "verdicts": [*VERDICT_OUTCOMES, FLAGGED, "none"],
    }


# -- the audit trail ---------------------------------------------------------------------


@dataclass
class AuditFilter:
    action: str | None = None  # exact action, or a prefix ending in "." ("model.")
    actor: str | None = None
    target: str | None = None
    date_from: date | None = None
    date_to: date | None = None
    page: int = 1
    per_page: int = 100


def _audit_conditions(f: AuditFilter) -> list[Any]:
    conditions: list[Any] = []
    if f.action:
        if f.action.endswith("."):
            prefix = _like_escape(f.action)
            conditions.append(AuditEvent.action.like(f"{prefix}%", escape="\\"))
        else:
            conditions.append(AuditEvent.action == f.action)
    if f.actor:
        conditions.append(AuditEvent.actor == f.actor)
    if f.target:
        conditions.append(AuditEvent.target == f.target)
    if f.date_from:
        conditions.append(AuditEvent.at >= datetime.combine(f.date_from, time(), UTC))
    if f.date_to:
        conditions.append(
            AuditEvent.at < datetime.combine(f.date_to + timedelta(days=1), time(), UTC)
        )
    return conditions


def count_audit(session: Session, f: AuditFilter) -> int:
    return int(session.scalar(select(func.count(AuditEvent.id)).where(*_audit_conditions(f))) or 0)


def audit_page(session: Session, f: AuditFilter) -> tuple[list[AuditEvent], int]:
    """One page of audit events, newest first, and how many match."""
    total = count_audit(session, f)
    rows = session.scalars(
        select(AuditEvent)
        .where(*_audit_conditions(f))
        .order_by(AuditEvent.id.desc())
        .limit(f.per_page)
        .offset((f.page - 1) * f.per_page)
    ).all()
    return list(rows), total


def audit_rows(session: Session, f: AuditFilter, limit: int = 100_000) -> list[AuditEvent]:
    """Every matching event (newest first, at most ``limit``) for the CSV export."""
    return list(
        session.scalars(
            select(AuditEvent)
            .where(*_audit_conditions(f))
            .order_by(AuditEvent.id.desc())
            .limit(limit)
        ).all()
    )


def audit_actions(session: Session) -> list[str]:
    """The actions that occur in the trail, for the filter's drop-down."""
    return sorted(session.scalars(select(AuditEvent.action).distinct().limit(200)).all())


def studies_of_instances(session: Session, sop_uids: list[str]) -> dict[str, int]:
    """Study id of each SOP Instance UID the index knows (audit targets become links)."""
    if not sop_uids:
        return {}
    return dict(
        session.execute(
            select(Instance.sop_instance_uid, Instance.study_id).where(
                Instance.sop_instance_uid.in_(sop_uids)
            )
        ).all()
    )
