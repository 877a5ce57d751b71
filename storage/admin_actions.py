"""The few acts the admin report may ask for, each audited in the caller's transaction.

Acts only queue work (a scoring job, a delivery), record a person's judgement (a mark, a region
to check) or go through the model registry; they never score or send anything themselves.
A refusal is an ``ActionError`` whose message says why, for the person who asked.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.deliveries import resend
from storage.jobs import StudyNotSettled, requeue_study
from storage.models import (
    MARK_LABELS,
    MODEL_CANDIDATE,
    MODEL_RETIRED,
    RUN_RUNNING,
    Instance,
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
from storage.registry import LOCK_NAME, RegistryError, promote, rollback


class ActionError(ValueError):
    """An act that cannot be done as asked (the message says why, for the person who asked)."""


# -- studies ------------------------------------------------------------------------------


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


# -- the model registry --------------------------------------------------------------------


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
