"""The durable job queue and the verdicts jobs produce.

Exactly one scoring job exists per (study, study version): the unique constraint and the
study state change are committed together. Workers claim a job with a conditional UPDATE
(portable optimistic locking) and hold a lease; a job whose lease expired is claimed again.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.models import (
    DONE,
    FAILED,
    JOB_DONE,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    NOT_SCORED,
    QUEUED,
    RECEIVING,
    SCORING,
    VERDICT_OUTCOMES,
    Job,
    Region,
    Study,
    Verdict,
)

SCORE = "score"


@dataclass(frozen=True)
class RegionRecord:
    """One checked location, as the scorer hands it over (see ``models.Region``)."""

    series_uid: str
    sop_instance_uid: str
    x: int
    y: int
    source: str
    radius_px: float | None = None
    scores: dict[str, Any] | None = None
    p_value: float | None = None
    flagged: bool = False
    heatmap_path: str | None = None
    slice_index: int | None = None
    z_mm: float | None = None
    instance_number: int | None = None
    finding: int | None = None


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_id: int
    study_version: int
    attempts: int


def worker_identity(name: str = "worker") -> str:
    """host:pid:name, so a restarted process can tell its dead predecessor's leases apart."""
    return f"{socket.gethostname()}:{os.getpid()}:{name}"[:64]


def enqueue_stable_studies(
    session: Session, now: datetime, stable_age_s: float, released_age_s: float
) -> list[tuple[int, int]]:
    """Queue one scoring job for every study that has gone quiet; return (study, version)."""
    quiet = now - timedelta(seconds=stable_age_s)
    released = now - timedelta(seconds=released_age_s)
    studies = session.scalars(
        select(Study).where(
            Study.state == RECEIVING,
            or_(
                Study.last_received_at <= quiet,
                and_(Study.released_at.is_not(None), Study.released_at <= released),
            ),
        )
    ).all()
    queued = []
    for study in studies:
        session.add(
            Job(
                kind=SCORE,
                study_id=study.id,
                study_version=study.version,
                state=JOB_QUEUED,
                attempts=0,
                created_at=now,
            )
        )
        study.state = QUEUED
        queued.append((study.id, study.version))
    return queued


def mark_released(session: Session, study_ids: list[int], now: datetime) -> None:
    """The sender released its association normally: these studies may settle sooner."""
    if study_ids:
        session.execute(
            update(Study)
            .where(Study.id.in_(study_ids), Study.state == RECEIVING)
            .values(released_at=now)
        )


def _claimable(now: datetime) -> Any:
    return and_(
        Job.kind == SCORE,
        or_(
            Job.state == JOB_QUEUED,
            and_(Job.state == JOB_RUNNING, Job.lease_expires_at < now),
        ),
    )


def claim_job(session: Session, owner: str, lease_s: float, now: datetime) -> ClaimedJob | None:
    """Take the oldest runnable job, or None; safe when several workers race for it."""
    candidates = session.scalars(
        select(Job.id).where(_claimable(now)).order_by(Job.id).limit(5)
    ).all()
    for job_id in candidates:
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, _claimable(now))
            .values(
                state=JOB_RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=Job.attempts + 1,
                started_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken == 1:
            job = session.get(Job, job_id)
            assert job is not None
            session.refresh(job)
            study = session.get(Study, job.study_id)
            if study is not None and study.version == job.study_version:
                study.state = SCORING
            return ClaimedJob(job.id, job.study_id, job.study_version, job.attempts)
    return None


def renew_lease(session: Session, job_id: int, owner: str, lease_s: float, now: datetime) -> bool:
    """Extend a lease we still hold; False means another worker took the job over."""
    return (
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JOB_RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
        ).rowcount
        == 1
    )


def release_dead_leases(session: Session, now: datetime) -> int:
    """Requeue running jobs whose owner was a process on this host that no longer exists."""
    host = socket.gethostname()
    count = 0
    for job in session.scalars(select(Job).where(Job.state == JOB_RUNNING)).all():
        owner_host, _, rest = (job.lease_owner or "").partition(":")
        pid_text = rest.partition(":")[0]
        if owner_host != host or not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        job.state = JOB_QUEUED
        job.lease_owner = None
        job.lease_expires_at = None
        count += 1
    return count


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record_verdict(
    session: Session,
    job: ClaimedJob,
    outcome: str,
    reason: str | None,
    now: datetime,
    score: float | None = None,
    details: dict[str, Any] | None = None,
) -> Verdict:
    """Keep the verdict; make it current unless a newer study version already has one."""
    if outcome not in VERDICT_OUTCOMES:
        raise ValueError(f"unknown verdict outcome {outcome!r}")
    current = session.scalars(
        select(Verdict).where(Verdict.study_id == job.study_id, Verdict.is_current.is_(True))
    ).one_or_none()
    verdict = Verdict(
        study_id=job.study_id,
        study_version=job.study_version,
        job_id=job.id,
        outcome=outcome,
        reason=reason,
        score=score,
        created_at=now,
        details=details,
        is_current=False,
    )
    session.add(verdict)
    if current is None or current.study_version <= job.study_version:
        if current is not None:
            current.is_current = False
        verdict.is_current = True
    session.flush()
    audit(
        session,
        actor="worker",
        action="verdict.recorded",
        target=str(job.study_id),
        detail={
            "verdict_id": verdict.id,
            "study_version": job.study_version,
            "outcome": outcome,
            "current": verdict.is_current,
            "supersedes": current.id if current is not None and verdict.is_current else None,
        },
    )
    return verdict


def finish_job(
    session: Session,
    job: ClaimedJob,
    outcome: str,
    reason: str | None,
    now: datetime,
    score: float | None = None,
    details: dict[str, Any] | None = None,
    regions: Sequence[RegionRecord] = (),
) -> Verdict:
    """Record the verdict with every region it checked, and close the job, in one commit."""
    verdict = record_verdict(session, job, outcome, reason, now, score, details)
    session.add_all(
        Region(verdict_id=verdict.id, study_id=job.study_id, **asdict(region)) for region in regions
    )
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(state=JOB_DONE, finished_at=now, lease_owner=None, lease_expires_at=None)
    )
    _settle_study(session, job, DONE)
    return verdict


def fail_job(
    session: Session, job: ClaimedJob, error: str, now: datetime, max_attempts: int
) -> bool:
    """Put a failed job back for another try, or give up honestly. True when given up."""
    if job.attempts < max_attempts:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(state=JOB_QUEUED, error=error, lease_owner=None, lease_expires_at=None)
        )
        study = session.get(Study, job.study_id)
        if study is not None and study.version == job.study_version:
            study.state = QUEUED
        return False
    record_verdict(
        session, job, NOT_SCORED, f"scoring failed after {job.attempts} attempts: {error}", now
    )
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(
            state=JOB_FAILED, error=error, finished_at=now, lease_owner=None, lease_expires_at=None
        )
    )
    _settle_study(session, job, FAILED)
    return True


def _settle_study(session: Session, job: ClaimedJob, state: str) -> None:
    study = session.get(Study, job.study_id)
    if study is not None and study.version == job.study_version:
        study.state = state
