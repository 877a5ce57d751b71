"""Counts for the admin dashboard and the Prometheus endpoint, computed from the index.

Read-only. The dashboard must never read all-clear when it is not: next to the day counts it
reports what is waiting (pending and overdue deliveries, failed ones, stuck jobs) and which
modalities are arriving, so the caller can say which have no model.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.admin_views import delivery_clause, stuck_jobs_clause
from storage.models import (
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    JOB_QUEUED,
    JOB_RUNNING,
    NOT_SCORED,
    SUSPICIOUS,
    TAMPERED,
    Association,
    Delivery,
    Instance,
    Job,
    Series,
    Study,
    Verdict,
)


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def dashboard(
    session: Session,
    now: datetime,
    days: int = 14,
    overdue_after_s: float = 300.0,
    stuck_after_s: float = 900.0,
) -> dict[str, Any]:
    """Counts today and per day over the last ``days`` days (UTC), and what is waiting."""
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
        "deliveries": delivery_state(session, now, overdue_after_s),
        "stuck_jobs": int(
            session.scalar(select(func.count(Job.id)).where(stuck_jobs_clause(now, stuck_after_s)))
            or 0
        ),
        "arriving": arriving_modalities(session, now - timedelta(days=7)),
        "today": series[-1],
        "days": series,
        "queue": {"queued": int(jobs.get(JOB_QUEUED, 0)), "running": int(jobs.get(JOB_RUNNING, 0))},
        "studies_total": int(session.scalar(select(func.count(Study.id))) or 0),
        "stored_bytes": int(session.scalar(select(func.sum(Instance.size_bytes))) or 0),
    }


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


def delivery_state(session: Session, now: datetime, overdue_after_s: float) -> dict[str, Any]:
    """Pending (and how long the oldest has waited), overdue and failed report deliveries."""

    def count(kind: str) -> int:
        clause = delivery_clause(kind, now, overdue_after_s)
        return int(session.scalar(select(func.count(Delivery.id)).where(clause)) or 0)

    oldest = session.scalar(
        select(func.min(Delivery.created_at)).where(Delivery.state == DELIVERY_PENDING)
    )
    last_error = session.scalar(
        select(Delivery.last_error)
        .where(Delivery.state.in_([DELIVERY_PENDING, DELIVERY_FAILED]))
        .where(Delivery.last_error.is_not(None))
        .order_by(Delivery.id.desc())
        .limit(1)
    )
    return {
        "pending": count("pending"),
        "overdue": count("overdue"),
        "failed": count("failed"),
        "oldest_pending_s": (now - oldest).total_seconds() if oldest is not None else None,
        "last_error": last_error,
        "overdue_after_s": overdue_after_s,
    }


def arriving_modalities(session: Session, since: datetime) -> dict[str, dict[str, int]]:
    """Per modality received since ``since``: studies, and those whose current verdict is
    ``not_scored`` (the dashboard compares the list with the loaded models)."""
    out: dict[str, dict[str, int]] = {}
    for modality, n in session.execute(
        select(Series.modality, func.count(func.distinct(Study.id)))
        .join(Study, Study.id == Series.study_id)
        .where(Study.last_received_at >= since)
        .group_by(Series.modality)
    ):
        out[(modality or "?").upper()] = {"studies": int(n), "not_scored": 0}
    for modality, n in session.execute(
        select(Series.modality, func.count(func.distinct(Study.id)))
        .join(Study, Study.id == Series.study_id)
        .join(Verdict, (Verdict.study_id == Study.id) & Verdict.is_current.is_(True))
        .where(Study.last_received_at >= since, Verdict.outcome == NOT_SCORED)
        .group_by(Series.modality)
    ):
        out.setdefault((modality or "?").upper(), {"studies": 0, "not_scored": 0})
        out[(modality or "?").upper()]["not_scored"] = int(n)
    return out
