"""Turns one stored study version into a verdict.

No detector model is wired into the worker yet, so every study gets the honest verdict
``not_scored`` naming the modalities without a model, never a guessed ``clean``. The trained
detectors plug in here, looked up by modality and loaded once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from storage.db import Database
from storage.models import NOT_SCORED, Series


@dataclass(frozen=True)
class StudyResult:
    outcome: str
    reason: str | None = None
    score: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


class StudyScorer:
    def __init__(self, db: Database) -> None:
        self.db = db

    def modalities(self, study_id: int) -> list[str]:
        with self.db.session() as session:
            values = session.scalars(
                select(Series.modality).where(Series.study_id == study_id).distinct()
            ).all()
        return sorted({(v or "unknown").upper() for v in values})

    def score(self, study_id: int, study_version: int) -> StudyResult:
        modalities = self.modalities(study_id)
        if not modalities:
            return StudyResult(NOT_SCORED, "study has no series")
        return StudyResult(
            NOT_SCORED,
            f"no model for {', '.join(modalities)}",
            details={"modalities": modalities, "study_version": study_version},
        )
