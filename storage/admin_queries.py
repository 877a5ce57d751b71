"""What the admin web report reads, and the few acts it may ask for.

Data flows one way: ``admin/`` calls these functions; the acts only queue work (a scoring job,
a delivery) or record a person's judgement, and each is audited in its own transaction.
Queries are shaped for large indexes: the studies list pages over study ids on an index and
only then loads what the page shows.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Select, and_, exists, func, or_, select
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.deliveries import resend
from storage.jobs import StudyNotSettled, requeue_study
from storage.models import (
    DELIVERY_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    MARK_LABELS,
    MODEL_CANDIDATE,
    MODEL_PRODUCTION,
    MODEL_RETIRED,
    NOT_SCORED,
    RUN_RUNNING,
    SUSPICIOUS,
    TAMPERED,
    VERDICT_OUTCOMES,
    Association,
    AuditEvent,
    Delivery,
    Instance,
    Job,
    Mark,
    ModelVersion,
    Region,
    RequestedRegion,
    RetrainLock,
    Series,
    Study,
    TrainingRun,
    Verdict,
)
from storage.registry import LOCK_NAME, RegistryError, promote, rollback, rollback_target

SORTS = {
    "received": Study.last_received_at,
    "study_date": Study.study_date,
    "patient": Study.patient_id,
    "state": Study.state,
}
PAGE_SIZES = (25, 50, 100)


class ActionError(ValueError):
    """An act that cannot be done as asked (the message says why, for the person who asked)."""


# -- the studies list ---------------------------------------------------------------------


@dataclass
class StudyFilter:
    verdict: str | None = None  # an outcome, or "none" for studies without a verdict yet
    date_from: date | None = None  # last received, UTC day
    date_to: date | None = None
    modality: str | None = None
    calling_ae: str | None = None
    patient: str | None = None  # patient ID prefix or part of the name
    sort: str = "received"
    descending: bool = True
    page: int = 1
    per_page: int = 50

    def normalised(self) -> StudyFilter:
        if self.verdict and self.verdict not in (*VERDICT_OUTCOMES, "none"):
            raise ActionError(f"unknown verdict filter {self.verdict!r}")
        if self.sort not in SORTS:
            raise ActionError(f"unknown sort {self.sort!r}: one of {', '.join(SORTS)}")
        self.page = max(1, self.page)
        self.per_page = self.per_page if self.per_page in PAGE_SIZES else 50
        return self


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


def _filtered(f: StudyFilter) -> Select[Any]:
    query = select(Study.id)
    if f.verdict == "none":
        query = query.where(
            ~exists().where(Verdict.study_id == Study.id, Verdict.is_current.is_(True))
        )
    elif f.verdict:
        query = query.where(
            Study.id.in_(
                select(Verdict.study_id).where(
                    Verdict.outcome == f.verdict, Verdict.is_current.is_(True)
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
    if f.patient:
        text = _like_escape(f.patient.strip())
        query = query.where(
            or_(
                Study.patient_id.like(f"{text}%", escape="\\"),
                Study.patient_name.ilike(f"%{text}%", escape="\\"),
            )
        )
    return query


def list_studies_page(session: Session, f: StudyFilter) -> tuple[list[StudyRow], int]:
    """One page of studies and the number matching the filter."""
    f = f.normalised()
    base = _filtered(f)
    total = int(session.scalar(select(func.count()).select_from(base.subquery())) or 0)
    column = SORTS[f.sort]
    order = [column.desc(), Study.id.desc()] if f.descending else [column.asc(), Study.id.asc()]
    ids = list(
        session.scalars(
            base.order_by(*order).limit(f.per_page).offset((f.page - 1) * f.per_page)
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


def filter_choices(session: Session) -> dict[str, list[str]]:
    """Values offered in the list's drop-downs (few distinct values; indexed columns)."""
    modalities = session.scalars(select(Series.modality).distinct().limit(50)).all()
    aes = session.scalars(select(Instance.calling_ae).distinct().limit(200)).all()
    return {
        "modalities": sorted(m for m in modalities if m),
        "calling_aes": sorted(a for a in aes if a),
        "verdicts": [*VERDICT_OUTCOMES, "none"],
    }


# -- one study ----------------------------------------------------------------------------


@dataclass
class StudyDetail:
    study: Study
    series: list[dict[str, Any]]
    verdicts: list[Verdict]
    current: Verdict | None
    regions: list[Region]  # of the current verdict: flagged, admin-requested, then lowest p
    regions_checked: int
    deliveries: list[Delivery]
    jobs: list[Job]
    marks: list[Mark]
    requested: list[RequestedRegion]
    region_marks: dict[int, str] = field(default_factory=dict)
    instance_ids: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> id


def study_detail(session: Session, study_id: int, max_regions: int = 40) -> StudyDetail | None:
    study = session.get(Study, study_id)
    if study is None:
        return None
    series_rows = session.scalars(
        select(Series).where(Series.study_id == study_id).order_by(Series.series_number, Series.id)
    ).all()
    instances = session.execute(
        select(
            Instance.id,
            Instance.series_id,
            Instance.sop_instance_uid,
            Instance.instance_number,
            Instance.calling_ae,
            Instance.received_at,
        )
        .where(Instance.study_id == study_id)
        .order_by(Instance.series_id, Instance.instance_number, Instance.id)
    ).all()
    by_series: dict[int, list[Any]] = {}
    for row in instances:
        by_series.setdefault(row.series_id, []).append(row)
    series = [
        {
            "id": s.id,
            "series_uid": s.series_uid,
            "modality": s.modality,
            "series_number": s.series_number,
            "description": s.description,
            "instances": [
                {"id": r.id, "sop_uid": r.sop_instance_uid, "number": r.instance_number}
                for r in by_series.get(s.id, [])
            ],
            "calling_aes": sorted({r.calling_ae for r in by_series.get(s.id, []) if r.calling_ae}),
        }
        for s in series_rows
    ]
    verdicts = list(
        session.scalars(
            select(Verdict).where(Verdict.study_id == study_id).order_by(Verdict.id.desc())
        ).all()
    )
    current = next((v for v in verdicts if v.is_current), None)
    regions: list[Region] = []
    checked = 0
    if current is not None:
        checked = int(
            session.scalar(select(func.count()).where(Region.verdict_id == current.id)) or 0
        )
        regions = list(
            session.scalars(
                select(Region)
                .where(Region.verdict_id == current.id)
                .order_by(
                    Region.flagged.desc(),
                    (Region.source == "admin").desc(),
                    Region.p_value.is_(None),
                    Region.p_value,
                    Region.id,
                )
                .limit(max_regions)
            ).all()
        )
    verdict_ids = [v.id for v in verdicts]
    deliveries = (
        list(
            session.scalars(
                select(Delivery).where(Delivery.verdict_id.in_(verdict_ids)).order_by(Delivery.id)
            ).all()
        )
        if verdict_ids
        else []
    )
    jobs = list(
        session.scalars(select(Job).where(Job.study_id == study_id).order_by(Job.id.desc())).all()
    )
    marks = list(
        session.scalars(select(Mark).where(Mark.study_id == study_id).order_by(Mark.id)).all()
    )
    region_marks = {m.region_id: m.label for m in marks if m.region_id is not None}
    requested = list(
        session.scalars(
            select(RequestedRegion)
            .where(RequestedRegion.study_id == study_id)
            .order_by(RequestedRegion.id)
        ).all()
    )
    return StudyDetail(
        study=study,
        series=series,
        verdicts=verdicts,
        current=current,
        regions=regions,
        regions_checked=checked,
        deliveries=deliveries,
        jobs=jobs,
        marks=marks,
        requested=requested,
        region_marks=region_marks,
        instance_ids={r.sop_instance_uid: r.id for r in instances},
    )


def instance_file(session: Session, study_id: int, instance_id: int) -> tuple[str, str] | None:
    """(file path relative to the instance root, modality) of one instance of one study."""
    row = session.execute(
        select(Instance.file_path, Series.modality)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.id == instance_id, Instance.study_id == study_id)
    ).one_or_none()
    return None if row is None else (row[0], (row[1] or "").upper())


def region_with_file(session: Session, region_id: int) -> tuple[Region, str, str] | None:
    """A region, the file of the slice it lies on, and the slice's modality."""
    region = session.get(Region, region_id)
    if region is None:
        return None
    row = session.execute(
        select(Instance.file_path, Series.modality)
        .join(Series, Series.id == Instance.series_id)
        .where(
            Instance.sop_instance_uid == region.sop_instance_uid,
            Instance.study_id == region.study_id,
        )
    ).one_or_none()
    return None if row is None else (region, row[0], (row[1] or "").upper())


# -- the acts -----------------------------------------------------------------------------


def rescore_study(session: Session, study_id: int, actor: str, now: datetime) -> int:
    """A new study version with one scoring job (``storage.jobs.requeue_study``)."""
    try:
        return requeue_study(session, study_id, actor, now)
    except (LookupError, StudyNotSettled) as exc:
        raise ActionError(str(exc)) from None


def resend_report(session: Session, study_id: int, actor: str, now: datetime) -> int:
    """Queue the current verdict's SR again to every destination it was queued for."""
    verdict = session.scalars(
        select(Verdict).where(Verdict.study_id == study_id, Verdict.is_current.is_(True))
    ).one_or_none()
    if verdict is None:
        raise ActionError("the study has no verdict yet, so there is no report to send")
    count = resend(session, now, verdict_id=verdict.id)
    if count == 0:
        raise ActionError(
            "no delivery exists for the current verdict (no destination configured, "
            "or the dispatcher has not queued it yet)"
        )
    audit(
        session,
        actor=actor,
        action="report.resend",
        target=str(study_id),
        detail={"verdict_id": verdict.id, "deliveries": count},
    )
    return count


def add_mark(
    session: Session,
    study_id: int,
    label: str,
    actor: str,
    now: datetime,
    region_id: int | None = None,
    note: str | None = None,
) -> Mark:
    """Record a confirmed-genuine / confirmed-tampered judgement; the newest one counts."""
    if label not in MARK_LABELS:
        raise ActionError(f"unknown mark {label!r}: one of {', '.join(MARK_LABELS)}")
    study = session.get(Study, study_id)
    if study is None:
        raise ActionError(f"no study {study_id}")
    if region_id is not None:
        region = session.get(Region, region_id)
        if region is None or region.study_id != study_id:
            raise ActionError(f"region {region_id} is not a region of study {study_id}")
    mark = Mark(
        study_id=study_id,
        region_id=region_id,
        study_version=study.version,
        label=label,
        actor=actor,
        note=(note or "").strip()[:2000] or None,
        created_at=now,
    )
    session.add(mark)
    session.flush()
    audit(
        session,
        actor=actor,
        action="region.mark" if region_id is not None else "study.mark",
        target=str(study_id),
        detail={"label": label, "region_id": region_id, "mark_id": mark.id},
    )
    return mark


def add_requested_region(
    session: Session,
    study_id: int,
    instance_id: int,
    x: int,
    y: int,
    radius_px: float,
    actor: str,
    now: datetime,
) -> RequestedRegion:
    """Remember a location to check on one slice; the next scoring of the study checks it."""
    row = session.execute(
        select(Instance.sop_instance_uid, Series.series_uid)
        .join(Series, Series.id == Instance.series_id)
        .where(Instance.id == instance_id, Instance.study_id == study_id)
    ).one_or_none()
    if row is None:
        raise ActionError(f"instance {instance_id} is not a slice of study {study_id}")
    if x < 0 or y < 0 or not 1 <= radius_px <= 256:
        raise ActionError("the region must lie on the slice with a radius of 1-256 pixels")
    requested = RequestedRegion(
        study_id=study_id,
        series_uid=row.series_uid,
        sop_instance_uid=row.sop_instance_uid,
        x=x,
        y=y,
        radius_px=float(radius_px),
        requested_by=actor,
        created_at=now,
    )
    session.add(requested)
    session.flush()
    audit(
        session,
        actor=actor,
        action="region.request",
        target=str(study_id),
        detail={"requested_region_id": requested.id, "instance_id": instance_id, "x": x, "y": y},
    )
    return requested


def requested_regions_by_sop(
    session: Session, study_id: int
) -> dict[str, list[tuple[int, int, float]]]:
    """Admin-requested locations of a study, per SOP Instance UID, for the scorer."""
    out: dict[str, list[tuple[int, int, float]]] = {}
    for r in session.scalars(
        select(RequestedRegion).where(RequestedRegion.study_id == study_id)
    ).all():
        out.setdefault(r.sop_instance_uid, []).append((r.x, r.y, r.radius_px))
    return out


# -- dashboard, models, audit, metrics ------------------------------------------------------


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def dashboard(session: Session, now: datetime, days: int = 14) -> dict[str, Any]:
    """Counts today and per day over the last ``days`` days (UTC)."""
    today = _day_start(now)
    since = today - timedelta(days=days - 1)

    def per_day(column: Any, *where: Any) -> Counter[str]:
        day = func.date(column)
        rows = session.execute(
            select(day, func.count()).where(column >= since, *where).group_by(day)
        ).all()
        return Counter({str(d): int(n) for d, n in rows})

    received = per_day(Study.first_received_at)
    scored = per_day(Verdict.created_at, Verdict.outcome != NOT_SCORED)
    flagged = per_day(Verdict.created_at, Verdict.outcome.in_([TAMPERED, SUSPICIOUS]))
    failures = per_day(Delivery.created_at, Delivery.state == DELIVERY_FAILED)
    series = []
    for i in range(days):
        key = (since + timedelta(days=i)).date().isoformat()
        series.append(
            {
                "day": key,
                "received": received[key],
                "scored": scored[key],
                "flagged": flagged[key],
                "delivery_failures": failures[key],
            }
        )
    jobs = dict(
        session.execute(
            select(Job.state, func.count())
            .where(Job.state.in_([JOB_QUEUED, JOB_RUNNING]))
            .group_by(Job.state)
        ).all()
    )
    return {
        "today": series[-1],
        "days": series,
        "queue": {"queued": int(jobs.get(JOB_QUEUED, 0)), "running": int(jobs.get(JOB_RUNNING, 0))},
        "studies_total": int(session.scalar(select(func.count(Study.id))) or 0),
        "deliveries_failed_open": int(
            session.scalar(select(func.count(Delivery.id)).where(Delivery.state == DELIVERY_FAILED))
            or 0
        ),
        "stored_bytes": int(session.scalar(select(func.sum(Instance.size_bytes))) or 0),
    }


def model_versions_seen(session: Session, limit: int = 2000) -> list[dict[str, Any]]:
    """Which model versions decided the newest verdicts, as recorded in the verdicts."""
    seen: dict[tuple[str, str, str], dict[str, Any]] = {}
    for created_at, details in session.execute(
        select(Verdict.created_at, Verdict.details)
        .where(Verdict.details.is_not(None))
        .order_by(Verdict.id.desc())
        .limit(limit)
    ):
        for m in (details or {}).get("models", []) or []:
            key = (str(m.get("name")), str(m.get("modality")), str(m.get("version")))
            entry = seen.setdefault(
                key,
                {
                    "name": key[0],
                    "modality": key[1],
                    "version": key[2],
                    "verdicts": 0,
                    "last_used": created_at,
                },
            )
            entry["verdicts"] += 1
    return list(seen.values())


def audit_page(
    session: Session,
    page: int = 1,
    per_page: int = 100,
    action: str | None = None,
    actor: str | None = None,
) -> tuple[list[AuditEvent], int]:
    query = select(AuditEvent)
    count = select(func.count(AuditEvent.id))
    conditions = []
    if action:
        conditions.append(AuditEvent.action == action)
    if actor:
        conditions.append(AuditEvent.actor == actor)
    if conditions:
        query = query.where(and_(*conditions))
        count = count.where(and_(*conditions))
    total = int(session.scalar(count) or 0)
    rows = session.scalars(
        query.order_by(AuditEvent.id.desc()).limit(per_page).offset((max(1, page) - 1) * per_page)
    ).all()
    return list(rows), total


def metric_counts(session: Session) -> dict[str, Any]:
    """Totals for the Prometheus endpoint, computed at scrape time from the index."""

    def grouped(column: Any) -> dict[str, int]:
        return {
            str(k): int(n)
            for k, n in session.execute(select(column, func.count()).group_by(column)).all()
        }

    finished = session.execute(
        select(Job.started_at, Job.finished_at).where(
            Job.state.in_(["done", "failed"]),
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
    ).all()
    durations = [(f - s).total_seconds() for s, f in finished]
    return {
        "instances": int(session.scalar(select(func.count(Instance.id))) or 0),
        "instance_bytes": int(session.scalar(select(func.sum(Instance.size_bytes))) or 0),
        "studies": grouped(Study.state),
        "associations": grouped(Association.outcome),
        "jobs": grouped(Job.state),
        "verdicts": {
            str(k): int(n)
            for k, n in session.execute(
                select(Verdict.outcome, func.count())
                .where(Verdict.is_current.is_(True))
                .group_by(Verdict.outcome)
            ).all()
        },
        "verdicts_all": grouped(Verdict.outcome),
        "deliveries": grouped(Delivery.state),
        "scoring_seconds": durations,
    }


# -- the model registry --------------------------------------------------------------------

GATE_KEYS = ("auc", "false_alarm_rate", "tampered", "genuine", "genuine_patches")


def _gate(measured: Any) -> dict[str, Any] | None:
    """The gate measurement kept in a version's metrics (see ``detector.retrain.GateMetrics``)."""
    if not isinstance(measured, dict):
        return None
    return {k: measured.get(k) for k in GATE_KEYS}


def _count(manifest: dict[str, Any] | None, key: str) -> int | None:
    items = (manifest or {}).get(key)
    return len(items) if isinstance(items, list) else None


def version_row(v: ModelVersion) -> dict[str, Any]:
    """One registry version as the page and the API show it: metrics summarised, the manifest's
    instance lists counted (they hold thousands of sha256s)."""
    metrics = v.metrics or {}
    train = metrics.get("train") if isinstance(metrics.get("train"), dict) else {}
    return {
        "id": v.id,
        "detector": v.detector,
        "modality": v.modality,
        "state": v.state,
        "created_at": v.created_at,
        "promoted_at": v.promoted_at,
        "retired_at": v.retired_at,
        "sha256": v.sha256,
        "checkpoint_path": v.checkpoint_path,
        "run_id": v.run_id,
        "parent_id": v.parent_id,
        "reason": v.reason,
        "gate": _gate(metrics.get("gate")),
        "production_gate": _gate(metrics.get("production")),
        "production_version": metrics.get("production_version"),
        "train": {k: train.get(k) for k in ("steps", "seconds", "init", "loss_first", "loss_last")},
        "train_instances": _count(v.manifest, "train"),
        "gate_instances": _count(v.manifest, "gate"),
        "patients": (v.manifest or {}).get("patients"),
    }


def registry_overview(
    session: Session, versions_limit: int = 200, runs_limit: int = 50
) -> dict[str, Any]:
    """Versions (newest first), the production slot of each detector and modality with the
    version a rollback would restore, and the training runs with the versions they produced."""
    versions = list(
        session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(versions_limit))
    )
    slots = []
    for current in session.scalars(
        select(ModelVersion)
        .where(ModelVersion.state == MODEL_PRODUCTION)
        .order_by(ModelVersion.modality, ModelVersion.detector)
    ):
        target = rollback_target(session, current.detector, current.modality, current.id)
        slots.append(
            {
                "detector": current.detector,
                "modality": current.modality,
                "production": current.id,
                "rollback_to": target.id if target is not None else None,
            }
        )
    runs = list(
        session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(runs_limit))
    )
    produced: dict[int, list[int]] = {}
    if runs:
        for run_id, version_id in session.execute(
            select(ModelVersion.run_id, ModelVersion.id)
            .where(ModelVersion.run_id.in_([r.id for r in runs]))
            .order_by(ModelVersion.id)
        ):
            produced.setdefault(run_id, []).append(version_id)
    return {
        "versions": [version_row(v) for v in versions],
        "slots": slots,
        "runs": [
            {
                "id": r.id,
                "trigger": r.trigger,
                "actor": r.actor,
                "state": r.state,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
                "error": r.error,
                "versions": produced.get(r.id, []),
                "summary": r.summary,
            }
            for r in runs
        ],
        "running_run": running_run_id(session),
    }


def last_training_run(session: Session) -> dict[str, Any] | None:
    """The newest run, for the dashboard's "last retrain" line."""
    run = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(1)).first()
    if run is None:
        return None
    return {
        "id": run.id,
        "state": run.state,
        "trigger": run.trigger,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
    }


def promote_version(
    session: Session,
    version_id: int,
    actor: str,
    now: datetime,
    reason: str,
    models_dir: Path | None = None,
) -> ModelVersion:
    """A person's promotion (audited by ``registry.promote``), with two refusals the scheduled
    path does not need: a candidate its run is still judging (the run would then fail on it),
    and a checkpoint file that is not there (serving would keep the old model while the
    registry says otherwise)."""
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise ActionError(f"no model version {version_id}")
    if version.state == MODEL_CANDIDATE and version.run_id is not None:
        run = session.get(TrainingRun, version.run_id)
        if run is not None and run.state == RUN_RUNNING:
            raise ActionError(
                f"version {version_id} is still being judged by training run {run.id}; "
                "wait for the run to finish"
            )
    servable = models_dir is None or (models_dir / version.checkpoint_path).is_file()
    if version.state in (MODEL_CANDIDATE, MODEL_RETIRED) and not servable:
        raise ActionError(
            f"version {version_id}: checkpoint {version.checkpoint_path} is missing from "
            f"{models_dir}; it could not be served"
        )
    try:
        return promote(session, version_id, actor, now, reason)
    except RegistryError as exc:
        raise ActionError(str(exc)) from None


def rollback_slot(
    session: Session, detector: str, modality: str, actor: str, now: datetime
) -> ModelVersion:
    """A person's rollback (audited by ``registry.rollback``); registry refusals become
    ``ActionError`` so the report answers 409 with the reason."""
    try:
        return rollback(session, modality, detector, actor, now)
    except RegistryError as exc:
        raise ActionError(str(exc)) from None


def running_run_id(session: Session) -> int | None:
    """The run holding the retraining lock, if any."""
    lock = session.get(RetrainLock, LOCK_NAME)
    return lock.run_id if lock is not None else None


def request_retrain(session: Session, actor: str) -> None:
    """Record an admin's "retrain now" (the run itself is audited when it starts, and may be
    refused by the lock); refused here already when a run holds the lock."""
    running = running_run_id(session)
    if running is not None:
        raise ActionError(f"training run {running} is already running; wait for it to finish")
    audit(session, actor=actor, action="retrain.request", detail={"trigger": "admin"})
