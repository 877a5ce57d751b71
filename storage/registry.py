"""The model registry and the retraining run lock.

Every trained checkpoint becomes a ``ModelVersion`` row. At most one version per
(detector, modality) is ``production``; promotion and rollback swap it in ONE transaction with
an audit event, so a reader sees either the old or the new production model, never none or two.

Runs hold the single ``retrain_lock`` row through a conditional UPDATE (portable, like job
claims): two processes, or two threads, can never train at once. The holder's ``host:pid`` and
a renewed lease let the next start mark a run whose process died as failed and free the lock.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.leases import owner_dead_here
from storage.models import (
    MODEL_CANDIDATE,
    MODEL_PRODUCTION,
    MODEL_REJECTED,
    MODEL_RETIRED,
    RUN_FAILED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RUN_TRIGGERS,
    ModelVersion,
    RetrainLock,
    TrainingRun,
)

LOCK_NAME = "retrain"


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class RunHolder:
    """Another run holds the lock."""

    run_id: int | None
    owner: str | None


def run_owner() -> str:
    """host:pid of this process: enough to tell later whether the run's process still lives."""
    return f"{socket.gethostname()}:{os.getpid()}"[:64]


# --------------------------------------------------------------------------- runs and the lock


def _lock_row(session: Session) -> RetrainLock:
    row = session.get(RetrainLock, LOCK_NAME)
    if row is None:  # created by migration 0004; re-created if someone deleted it
        row = RetrainLock(name=LOCK_NAME)
        session.add(row)
        session.flush()
    return row


def start_run(
    session: Session,
    *,
    trigger: str,
    now: datetime,
    lease_s: float,
    budget: dict[str, Any],
    actor: str | None = None,
    owner: str | None = None,
) -> TrainingRun | RunHolder:
    """Create a running ``TrainingRun`` holding the lock, or say who holds it."""
    if trigger not in RUN_TRIGGERS:
        raise RegistryError(f"unknown trigger {trigger!r}; expected one of {RUN_TRIGGERS}")
    owner = owner or run_owner()
    lock = _lock_row(session)
    if lock.run_id is not None:
        return RunHolder(lock.run_id, lock.owner)
    run = TrainingRun(
        state=RUN_RUNNING,
        trigger=trigger,
        actor=actor,
        owner=owner,
        lease_expires_at=now + timedelta(seconds=lease_s),
        started_at=now,
        budget=budget,
    )
    session.add(run)
    session.flush()
    taken = session.execute(
        update(RetrainLock)
        .where(RetrainLock.name == LOCK_NAME, RetrainLock.run_id.is_(None))
        .values(run_id=run.id, owner=owner, acquired_at=now)
        .execution_options(synchronize_session=False)
    ).rowcount
    if taken != 1:  # lost a race with another process between the read and the update
        session.delete(run)
        session.expire(lock)
        return RunHolder(lock.run_id, lock.owner)
    audit(
        session,
        actor=actor or owner,
        action="retrain.start",
        target=f"run:{run.id}",
        detail={"trigger": trigger, "budget": budget},
    )
    return run


def renew_run(session: Session, run_id: int, owner: str, now: datetime, lease_s: float) -> bool:
    """Extend the lease; False when the run is no longer ours (marked failed meanwhile)."""
    return (
        session.execute(
            update(TrainingRun)
            .where(
                TrainingRun.id == run_id,
                TrainingRun.owner == owner,
                TrainingRun.state == RUN_RUNNING,
            )
            .values(lease_expires_at=now + timedelta(seconds=lease_s))
        ).rowcount
        == 1
    )


def _release(session: Session, run_id: int) -> None:
    session.execute(
        update(RetrainLock)
        .where(RetrainLock.name == LOCK_NAME, RetrainLock.run_id == run_id)
        .values(run_id=None, owner=None, acquired_at=None)
        .execution_options(synchronize_session=False)
    )


def _reject_leftover_candidates(session: Session, run_id: int, reason: str) -> None:
    for version in session.scalars(
        select(ModelVersion).where(
            ModelVersion.run_id == run_id, ModelVersion.state == MODEL_CANDIDATE
        )
    ):
        version.state = MODEL_REJECTED
        version.reason = reason


def finish_run(
    session: Session,
    run_id: int,
    now: datetime,
    summary: dict[str, Any],
    error: str | None = None,
) -> None:
    """Close the run (succeeded, or failed with ``error``) and free the lock, in one commit."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise RegistryError(f"no training run {run_id}")
    run.state = RUN_FAILED if error else RUN_SUCCEEDED
    run.finished_at = now
    run.summary = summary
    run.error = error
    run.lease_expires_at = None
    if error:
        _reject_leftover_candidates(session, run_id, f"run {run_id} failed: {error}"[:2000])
    _release(session, run_id)
    audit(
        session,
        actor=run.actor or run.owner or "retrain",
        action="retrain.finish",
        target=f"run:{run_id}",
        detail={"state": run.state, "error": error},
    )


def fail_dead_runs(session: Session, now: datetime) -> list[int]:
    """Mark runs whose process is gone (this host) or whose lease lapsed as failed.

    Called before every run and at every serve start, so a run killed midway (SIGKILL, power
    cut) never leaves the lock held nor a half-judged candidate looking like a live one.
    """
    failed = []
    for run in session.scalars(select(TrainingRun).where(TrainingRun.state == RUN_RUNNING)):
        dead_here = owner_dead_here(run.owner)
        lapsed = run.lease_expires_at is not None and run.lease_expires_at < now
        if not (dead_here or lapsed):
            continue
        why = "its process is gone" if dead_here else "its lease expired"
        finish_run(session, run.id, now, run.summary or {}, f"interrupted: {why} ({run.owner})")
        failed.append(run.id)
    lock = _lock_row(session)
    if lock.run_id is not None:
        held = session.get(TrainingRun, lock.run_id)
        if held is None or held.state != RUN_RUNNING:  # a stale pointer: free it
            _release(session, lock.run_id)
    return failed


# --------------------------------------------------------------------------- versions


def add_version(
    session: Session,
    *,
    detector: str,
    modality: str,
    checkpoint_path: str,
    sha256: str,
    now: datetime,
    run_id: int | None = None,
    parent_id: int | None = None,
    metrics: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
) -> ModelVersion:
    """Register a freshly trained checkpoint as a candidate."""
    version = ModelVersion(
        detector=detector,
        modality=modality,
        state=MODEL_CANDIDATE,
        checkpoint_path=checkpoint_path,
        sha256=sha256,
        run_id=run_id,
        parent_id=parent_id,
        metrics=metrics,
        manifest=manifest,
        created_at=now,
    )
    session.add(version)
    session.flush()
    return version


def production(session: Session, detector: str, modality: str) -> ModelVersion | None:
    return session.scalars(
        select(ModelVersion).where(
            ModelVersion.detector == detector,
            ModelVersion.modality == modality,
            ModelVersion.state == MODEL_PRODUCTION,
        )
    ).first()


def production_versions(session: Session) -> list[ModelVersion]:
    """Every production version, ordered, for loading into serve."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.state == MODEL_PRODUCTION)
            .order_by(ModelVersion.modality, ModelVersion.detector)
        )
    )


def list_versions(session: Session, limit: int = 100) -> list[ModelVersion]:
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit)))


def reject(session: Session, version_id: int, reason: str, actor: str) -> ModelVersion:
    """Keep a candidate that failed the gate, with the reason (never deleted: audit)."""
    version = _get(session, version_id)
    if version.state != MODEL_CANDIDATE:
        raise RegistryError(f"version {version_id} is {version.state}, not a candidate")
    version.state = MODEL_REJECTED
    version.reason = reason
    audit(
        session,
        actor=actor,
        action="model.reject",
        target=f"model:{version_id}",
        detail={"detector": version.detector, "modality": version.modality, "reason": reason},
    )
    return version


def promote(
    session: Session, version_id: int, actor: str, now: datetime, reason: str
) -> ModelVersion:
    """Make ``version_id`` production for its detector and modality; retire the previous one.

    A candidate, or a retired version (promoting an older one by hand), may be promoted; a
    rejected one may not: it failed the gate, and overriding that is a rollback's job.
    """
    version = _get(session, version_id)
    if version.state not in (MODEL_CANDIDATE, MODEL_RETIRED):
        raise RegistryError(
            f"version {version_id} is {version.state}; only a candidate or a retired version "
            "can be promoted"
        )
    previous = production(session, version.detector, version.modality)
    if previous is not None:
        # Conditional: if a concurrent promotion already retired it, this one fails whole.
        moved = session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == previous.id, ModelVersion.state == MODEL_PRODUCTION)
            .values(state=MODEL_RETIRED, retired_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1:
            raise RegistryError("the production model changed meanwhile; try again")
        session.expire(previous)
    version.state = MODEL_PRODUCTION
    version.promoted_at = now
    version.retired_at = None
    version.reason = reason
    audit(
        session,
        actor=actor,
        action="model.promote",
        target=f"model:{version_id}",
        detail={
            "detector": version.detector,
            "modality": version.modality,
            "replaces": previous.id if previous is not None else None,
            "reason": reason,
            "sha256": version.sha256,
        },
    )
    return version


def rollback_target(
    session: Session, detector: str, modality: str, current_id: int
) -> ModelVersion | None:
    """The version a rollback would restore: the most recently retired former production one.

    Shared by ``rollback`` and the admin page, so the page offers a rollback exactly when one
    can succeed.
    """
    return session.scalars(
        select(ModelVersion)
        .where(
            ModelVersion.detector == detector,
            ModelVersion.modality == modality,
            ModelVersion.state == MODEL_RETIRED,
            ModelVersion.promoted_at.is_not(None),
            ModelVersion.id != current_id,
        )
        .order_by(ModelVersion.retired_at.desc(), ModelVersion.id.desc())
    ).first()


def rollback(
    session: Session, modality: str, detector: str, actor: str, now: datetime
) -> ModelVersion:
    """Put the previous production version back; the current one is retired."""
    current = production(session, detector, modality)
    if current is None:
        raise RegistryError(f"no production {detector} model for {modality} to roll back")
    before = rollback_target(session, detector, modality, current.id)
    if before is None:
        raise RegistryError(
            f"no earlier production {detector} model for {modality} to roll back to"
        )
    current.state = MODEL_RETIRED
    current.retired_at = now
    current.reason = f"rolled back by {actor}"
    session.flush()
    before.state = MODEL_PRODUCTION
    before.promoted_at = now
    before.retired_at = None
    before.reason = f"restored by rollback of version {current.id}"
    audit(
        session,
        actor=actor,
        action="model.rollback",
        target=f"model:{before.id}",
        detail={"detector": detector, "modality": modality, "retired": current.id},
    )
    return before


def _get(session: Session, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise RegistryError(f"no model version {version_id}")
    return version
