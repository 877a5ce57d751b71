"""The first non-learned baseline, kept as the floor every other detector has to beat.

- :class:`NoiseResidualDetector` compares the scanner-noise statistics (median-filter residual
  energy and its neighbour correlation) inside discs around the location with a ring outside.
  Inpainting and injection re-synthesise noise; unless the attacker matches the scanner's noise
  power spectrum exactly, the statistics jump at the edit. It is blind to copy-move (copied
  pixels carry genuine noise).

The copy-move matcher and the newer forensic checks live in :mod:`detector.forensics`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from detector.calibration import Calibration
from detector.forensics.references import reference_locations
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage


def _crop(pixels: np.ndarray, x: int, y: int, half: int) -> np.ndarray:
    """Square crop centred on (x, y), edge-padded where it leaves the image."""
    padded = np.pad(pixels, half, mode="edge")
    return padded[y : y + 2 * half, x : x + 2 * half]


class NoiseResidualDetector:
    """Local noise-residual statistics: inside-vs-ring energy ratio and lag-1 correlation."""

    name = "noise-residual"
    kind = EvidenceKind.FORENSIC
    needs_context = False
    modality = None  # every modality

    def __init__(self, patch: int = 64, radii: Sequence[int] = (4, 7, 11)) -> None:
        self.patch = patch
        self.radii = tuple(radii)

    @classmethod
    def create(cls, model_path: Path | None = None, modality: str | None = None):  # noqa: ANN206
        """Registry factory: there is nothing to load; model_path is ignored."""
        return cls()

    def _one(self, loc: Location) -> RegionScore:
        half = self.patch // 2
        crop = _crop(loc.image.pixels.astype(np.float64), loc.x, loc.y, half + 2)
        resid = crop - ndimage.median_filter(crop, size=3)
        resid = resid[2:-2, 2:-2]
        energy = np.sqrt(ndimage.gaussian_filter(resid**2, 2.0)) + 1e-6
        lag = ndimage.gaussian_filter(resid * np.roll(resid, 1, axis=1), 2.0) / (energy**2)
        yy, xx = np.mgrid[: 2 * half, : 2 * half]
        dist = np.hypot(xx - half, yy - half)
        best = 0.0
        for r in self.radii:
            inside = dist <= r
            ring = (dist > 1.6 * r + 1) & (dist <= 2.8 * r + 3)
            if ring.sum() < 8:
                continue
            e_in, e_ring = np.median(energy[inside]), np.median(energy[ring])
            rho_in, rho_ring = np.median(lag[inside]), np.median(lag[ring])
            best = max(best, abs(np.log(e_in / e_ring)) + abs(rho_in - rho_ring))
        heat = np.abs(np.log(energy / np.median(energy))).astype(np.float32)
        return RegionScore(float(best), heat)

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        return [self._one(loc) for loc in locations]

    def calibrate(self, series: Sequence[SliceImage]) -> Calibration | None:
        """Fitted once per series on reference locations of that series."""
        refs = reference_locations(series, 200)
        return Calibration.from_scores([s.score for s in self.score(refs)]) if refs else None
