"""Verdicts and the regions they checked: every verdict is kept, one per study is current.

Called by the job lifecycle (``storage.jobs``) inside the transaction that closes the job, so
a verdict exists exactly when its job is done or given up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.models import Verdict, VerdictOutcome


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


def record_verdict(
    session: Session,
    study_id: int,
    study_version: int,
    job_id: int | None,
    outcome: str,
    reason: str | None,
    now: datetime,
    score: float | None = None,
    details: dict[str, Any] | None = None,
) -> Verdict:
    """Keep the verdict; make it current unless a newer study version already has one."""
    try:
        outcome = VerdictOutcome(outcome)
    except ValueError:
        raise ValueError(f"unknown verdict outcome {outcome!r}") from None
    current = session.scalars(
        select(Verdict).where(Verdict.study_id == study_id, Verdict.is_current.is_(True))
    ).one_or_none()
    verdict = Verdict(
        study_id=study_id,
        study_version=study_version,
        job_id=job_id,
        outcome=outcome,
        reason=reason,
        score=score,
        created_at=now,
        details=details,
        is_current=False,
    )
    session.add(verdict)
    if current is None or current.study_version <= study_version:
        if current is not None:
            current.is_current = False
        verdict.is_current = True
    session.flush()
    audit(
        session,
        actor="worker",
        action="verdict.recorded",
        target=str(study_id),
        detail={
            "verdict_id": verdict.id,
            "study_version": study_version,
            "outcome": outcome.value,
            "current": verdict.is_current,
            "supersedes": current.id if current is not None and verdict.is_current else None,
        },
    )
    return verdict
