"""What every learned detector shares: scoring located patches and its stored calibration.

BTD and the inpainting detector differ only in how a batch of preprocessed patches becomes
raw scores and maps (``score_patches``); cropping, p-values and the registry factory's
"no checkpoint" complaint are the same and live here once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detector.calibration import Calibration
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage
from detector.preprocess import Preprocessing, patches_for


class LearnedDetector:
    """Base of checkpoint-backed detectors; subclasses set ``name`` and ``score_patches``."""

    name = "learned"
    kind = EvidenceKind.LEARNED
    needs_context = False
    prep: Preprocessing
    calibration: Calibration | None

    @property
    def modality(self) -> str:
        return self.prep.modality

    def score_patches(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw scores and per-pixel maps for preprocessed (N, S, S) patches."""
        raise NotImplementedError

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        if not locations:
            return []
        scores, maps = self.score_patches(patches_for(locations, self.prep))
        return [RegionScore(score=float(s), heatmap=m) for s, m in zip(scores, maps, strict=True)]

    def calibrate(self, series: Sequence[SliceImage]) -> Calibration | None:
        """The checkpoint's calibration, fitted once on held-out genuine patches."""
        return self.calibration

    def p_values(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Calibrated tail probabilities (the same ones serving uses)."""
        if self.calibration is None:
            raise ValueError(f"this {self.name} checkpoint carries no calibration")
        return self.calibration.tail_p_values(scores)


def require_model(model_path: object, what: str, modality: str | None) -> str:
    """The registry factories' shared complaint when no checkpoint was given."""
    if model_path is None:
        raise ValueError(
            f"the {what} needs a checkpoint for {modality or 'this modality'}: "
            "give one with --model (tamperscan train writes them)"
        )
    return str(model_path)
