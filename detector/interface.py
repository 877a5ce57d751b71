"""The contract every detector honours, learned or not.

The evaluation harness, the scoring worker and the CHAIMELEON-style command line all call
detectors through this one shape: a batch of locations in, one raw score and one per-pixel
evidence map per location out; and a :class:`~detector.calibration.Calibration` that turns raw
scores into p-values. Learned detectors carry theirs in the checkpoint (fitted once, on
held-out genuine patches); forensic checks fit theirs once per series, on reference locations
of that series, so they adapt to each scanner with no training data. Keeping pixels in modality
units (HU for CT) here means each detector owns its own preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from detector.calibration import Calibration

T = TypeVar("T")


@dataclass(frozen=True)
class SliceImage:
    """One 2-D slice in modality units: Hounsfield units for CT, scanner units for MR."""

    pixels: np.ndarray  # float32, shape (rows, cols)
    modality: str  # "CT" or "MR"
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)  # (row spacing, column spacing)
    # MR only: robust (low, high) intensities of the whole volume, so every slice of a series
    # is normalised to [0, 1] the same way. None: the detector derives them from this slice.
    intensity_range: tuple[float, float] | None = None
    source: str = ""  # file path or SOP Instance UID, for reports and error messages
    # What checks derive from the pixels (body and lung masks, ...): every check and the
    # proposals need the same masks, so each is computed once per slice object. Not an init
    # field, so ``dataclasses.replace`` (new pixels) starts with an empty one.
    _derived: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def derived(self, key: str, make: Callable[[], T]) -> T:
        """``make()``, computed once per slice object (pixels are never modified in place)."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]  # type: ignore[no-any-return]

    def forget_derived(self) -> None:
        """Drop what was derived (it is recomputed if asked for again)."""
        self._derived.clear()

    def derived_masks(self) -> dict[str, np.ndarray]:
        """The boolean masks derived so far, to hand to another read of the same file."""
        return {
            k: v for k, v in self._derived.items() if isinstance(v, np.ndarray) and v.dtype == bool
        }


@dataclass(frozen=True)
class Location:
    """A point to check: x is the column, y the row (the BTD and CHAIMELEON convention)."""

    image: SliceImage
    x: int
    y: int
    # Other slices of the same series a detector may search (the copy-move matcher does).
    context: Sequence[SliceImage] = field(default=(), repr=False)
    # The slices just before and after this one along the slice normal (None at the ends or
    # when unknown): what the slice-consistency check compares against.
    neighbours: tuple[SliceImage | None, SliceImage | None] = field(
        default=(None, None), repr=False
    )


@dataclass(frozen=True)
class RegionScore:
    """A raw, uncalibrated score (higher = more likely tampered) and its evidence map."""

    score: float
    heatmap: np.ndarray  # float32, the patch centred on the location, same orientation as pixels


class EvidenceKind(StrEnum):
    """Where a detector's null distribution comes from (shown in the SR and admin page)."""

    LEARNED = "learned"  # a model trained on genuine scans; calibration stored with it
    FORENSIC = "forensic"  # no training; calibrated on the series' own reference locations


@runtime_checkable
class Detector(Protocol):
    """Scores locations; one instance is loaded once and reused across many batches."""

    name: str
    kind: EvidenceKind
    needs_context: bool  # wants ``Location.context`` (other slices of the series)

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        """Return one RegionScore per location, in order."""
        ...

    def calibrate(self, series: Sequence[SliceImage]) -> Calibration | None:
        """The null distribution for scores on ``series`` (None: no calibrated p-values)."""
        ...
