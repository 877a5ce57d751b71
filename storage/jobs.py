"""The scoring job lifecycle, in one place: queued -> running -> done | failed, or superseded.

Exactly one scoring job exists per (study, study version): the unique constraint and the
study state change are committed together. Claims are safe with many workers on many hosts:
on PostgreSQL the candidate row is taken with ``FOR UPDATE SKIP LOCKED`` (workers never wait
on each other), on SQLite every write transaction is ``BEGIN IMMEDIATE`` (one writer at a
time); on both the claim itself is a conditional UPDATE. A claim holds a lease that the worker
renews; a job whose lease expired is claimed again, and from then on only the new holder may
close it: ``finish_job`` and ``fail_job`` raise ``LeaseLost`` for anyone else, so a result
is recorded once. Transactions are the caller's (``Database.session``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.db import skip_locked
from storage.leases import LeaseLost, owner_dead_here, worker_identity
from storage.models import Job, JobState, Region, Study, StudyState, Verdict, VerdictOutcome
from storage.verdicts import RegionRecord, record_verdict

__all__ = [
    "SCORE",
    "ClaimedJob",
    "LeaseLost",
    "RegionRecord",
    "StudyNotSettled",
    "claim_job",
    "enqueue_stable_studies",
    "fail_job",
    "finish_job",
    "mark_released",
    "release_dead_leases",
    "renew_lease",
    "requeue_study",
    "supersede_queued",
    "worker_identity",
]

SCORE = "score"


class StudyNotSettled(ValueError):
    """The study is still receiving; assembly queues it once it has settled."""


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    study_id: int
    study_version: int
    attempts: int
    owner: str  # the lease holder that claimed it; only it may close the job


def enqueue_stable_studies(
    session: Session, now: datetime, stable_age_s: float, released_age_s: float
) -> list[tuple[int, int]]:
    """Queue one scoring job for every study that has gone quiet; return (study, version).

    Several assemblers may run (one per receiver): on PostgreSQL a study row another one is
    queuing (or ingest is updating) is skipped, not waited for.
    """
    quiet = now - timedelta(seconds=stable_age_s)
    released = now - timedelta(seconds=released_age_s)
    query = select(Study).where(
        Study.state == StudyState.RECEIVING,
        or_(
            Study.last_received_at <= quiet,
            and_(Study.released_at.is_not(None), Study.released_at <= released),
        ),
    )
    queued = []
    for study in session.scalars(skip_locked(session, query)).all():
        _add_job(session, study, now)
        queued.append((study.id, study.version))
    return queued


def _add_job(session: Session, study: Study, now: datetime) -> None:
    session.add(
        Job(
            kind=SCORE,
            study_id=study.id,
            study_version=study.version,
            state=JobState.QUEUED,
            attempts=0,
            created_at=now,
        )
    )
    study.state = StudyState.QUEUED


def mark_released(session: Session, study_ids: list[int], now: datetime) -> None:
    """The sender released its association normally: these studies may settle sooner."""
    if study_ids:
        session.execute(
            update(Study)
            .where(Study.id.in_(study_ids), Study.state == StudyState.RECEIVING)
            .values(released_at=now)
        )


def supersede_queued(session: Session, study_id: int, now: datetime) -> int:
    """A newer version of the study is coming: its queued jobs will never run."""
    result = session.execute(
        update(Job)
        .where(Job.study_id == study_id, Job.state == JobState.QUEUED)
        .values(state=JobState.SUPERSEDED, finished_at=now)
    )
    return int(result.rowcount or 0)


def requeue_study(session: Session, study_id: int, actor: str, now: datetime) -> int:
    """A new study version with one scoring job, as if the study had just settled again.

    A queued job of the old version is superseded; a running one finishes, but its verdict
    no longer becomes current. Returns the new version. Raises ``LookupError`` for an unknown
    study and ``StudyNotSettled`` while it is still receiving.
    """
    study = session.get(Study, study_id, with_for_update=True)
    if study is None:
        raise LookupError(f"no study {study_id}")
    if study.state == StudyState.RECEIVING:
        raise StudyNotSettled("the study is still receiving; it is scored once it has settled")
    supersede_queued(session, study.id, now)
    study.version += 1
    _add_job(session, study, now)
    audit(
        session,
        actor=actor,
        action="study.rescore",
        target=str(study.id),
        detail={"study_version": study.version},
    )
    return study.version


def _claimable(now: datetime) -> Any:
    return and_(
        Job.kind == SCORE,
        or_(
            Job.state == JobState.QUEUED,
            and_(Job.state == JobState.RUNNING, Job.lease_expires_at < now),
        ),
    )


def claim_job(session: Session, owner: str, lease_s: float, now: datetime) -> ClaimedJob | None:
    """Take the oldest runnable job, or None; safe when several workers race for it.

    The study row is locked before the job changes hands (the order ingest and ``finish_job``
    use too, so they cannot deadlock); a study being written to right now is passed over, as
    its queued job is about to be superseded anyway.
    """
    passed_over: list[int] = []
    for _ in range(5):
        # One row at a time: locking several would keep them from other workers.
        query = select(Job.id, Job.study_id).where(_claimable(now)).order_by(Job.id).limit(1)
        if passed_over:
            query = query.where(Job.id.not_in(passed_over))
        row = session.execute(skip_locked(session, query)).first()
        if row is None:
            return None
        job_id, study_id = row
        passed_over.append(job_id)
        study = session.scalars(
            skip_locked(session, select(Study).where(Study.id == study_id))
        ).one_or_none()
        if study is None:
            continue
        taken = session.execute(
            update(Job)
            .where(Job.id == job_id, _claimable(now))
            .values(
                state=JobState.RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_s),
                attempts=Job.attempts + 1,
                started_at=now,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken != 1:
            continue
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        if study.version == job.study_version:
            study.state = StudyState.SCORING
        return ClaimedJob(job.id, job.study_id, job.study_version, job.attempts, owner)
    return None


def renew_lease(session: Session, job_id: int, owner: str, lease_s: float, now: datetime) -> bool:
    """Extend a lease we still hold; False means another worker took the job over."""
    return (
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING)
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
        ).rowcount
        == 1
    )


def release_dead_leases(session: Session, now: datetime) -> int:
    """Requeue running jobs whose owner was a process on this host that no longer exists."""
    count = 0
    for job in session.scalars(select(Job).where(Job.state == JobState.RUNNING)).all():
        if owner_dead_here(job.lease_owner):
            job.state = JobState.QUEUED
            job.lease_owner = None
            job.lease_expires_at = None
            count += 1
    return count


def _close(session: Session, job: ClaimedJob, state: JobState, values: dict[str, Any]) -> Study:
    """Move our running job to ``state``; raise ``LeaseLost`` when it is no longer ours.

    The study row is locked first, so two versions finishing at once on PostgreSQL cannot
    both become the current verdict.
    """
    study = session.get(Study, job.study_id, with_for_update=True)
    closed = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.lease_owner == job.owner, Job.state == JobState.RUNNING)
        .values(state=state, lease_owner=None, lease_expires_at=None, **values)
    ).rowcount
    if closed != 1 or study is None:
        raise LeaseLost(f"job {job.id} is no longer held by {job.owner}")
    return study


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
    """Close the job and record its verdict with every region it checked, in one commit.

    Raises ``LeaseLost`` (and records nothing) when the lease was taken over: the caller's
    transaction must then roll back, which ``Database.session`` does.
    """
    study = _close(session, job, JobState.DONE, {"finished_at": now})
    verdict = record_verdict(
        session, job.study_id, job.study_version, job.id, outcome, reason, now, score, details
    )
    session.add_all(
        Region(verdict_id=verdict.id, study_id=job.study_id, **asdict(region)) for region in regions
    )
    if study.version == job.study_version:
        study.state = StudyState.DONE
    return verdict


def fail_job(
    session: Session, job: ClaimedJob, error: str, now: datetime, max_attempts: int
) -> bool:
    """Put a failed job back for another try, or give up honestly. True when given up.

    Raises ``LeaseLost`` when another worker holds the job now (it will decide).
    """
    if job.attempts < max_attempts:
        study = _close(session, job, JobState.QUEUED, {"error": error})
        if study.version == job.study_version:
            study.state = StudyState.QUEUED
        return False
    study = _close(session, job, JobState.FAILED, {"error": error, "finished_at": now})
    reason = f"scoring failed after {job.attempts} attempts: {error}"
    record_verdict(
        session, job.study_id, job.study_version, job.id, VerdictOutcome.NOT_SCORED, reason, now
    )
    if study.version == job.study_version:
        study.state = StudyState.FAILED
    return True
