"""Scoring again the studies that were left ``not_scored`` for want of a model.

A new site receives studies before it has any model: they get the honest verdict
``not_scored`` ("no model for CT"). When a model for their modality arrives (a promotion picked
up by serve, or serve started with new models), each such study gets a new study version and one
queued scoring job, exactly as an admin's "score again" does, so the verdict history stays
complete and the SR of the new verdict is delivered as usual.

Only settled studies (state ``done``) whose current verdict, for their current version, is that
"no model" verdict are queued; a queued or running one is left alone, so calling this again
before the jobs ran queues nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.audit import audit
from storage.jobs import SCORE
from storage.models import DONE, JOB_QUEUED, NOT_SCORED, QUEUED, Job, Series, Study, Verdict
from storage.pool import NO_MODEL_REASON


def requeue_unscored(
    session: Session, modalities: Iterable[str], now: datetime, actor: str = "models"
) -> list[int]:
    """Queue a scoring job for each "no model" study with a series of ``modalities``.

    Returns the ids of the studies queued.
    """
    wanted = {m.upper() for m in modalities}
    if not wanted:
        return []
    rows = session.execute(
        select(Study, Verdict.reason)
        .join(Verdict, (Verdict.study_id == Study.id) & Verdict.is_current.is_(True))
        .where(
            Study.state == DONE,
            Verdict.study_version == Study.version,
            Verdict.outcome == NOT_SCORED,
            Verdict.reason.startswith(NO_MODEL_REASON),
        )
        .order_by(Study.id)
    ).all()
    queued = []
    for study, reason in rows:
        present = set(
            session.scalars(select(Series.modality).where(Series.study_id == study.id)).all()
        )
        if not {(m or "").upper() for m in present} & wanted:
            continue
        study.version += 1
        study.state = QUEUED
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
        audit(
            session,
            actor=actor,
            action="study.rescore",
            target=str(study.id),
            detail={"study_version": study.version, "why": f"a model arrived ({reason})"},
        )
        queued.append(study.id)
    return queued
