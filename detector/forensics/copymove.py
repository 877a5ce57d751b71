"""Copy-move: the location's block found again elsewhere in the slice or its neighbours.

Block matching as in the copy-move forensics literature: the block centred on the location is
searched for, exhaustively, in the same slice (away from itself) and in the context slices given
with the location. Genuine tissue never repeats to within the noise; a copy does (exactly, in
its copied core). FFT correlation makes the exhaustive search cheap; slice spectra are cached.
The null is fitted per series from reference locations, like every forensic check.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import fft as sfft

from detector.calibration import Calibration
from detector.forensics.base import PixelCache
from detector.forensics.references import reference_locations
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage

COPY_REFERENCES = 64  # each reference costs one FFT search per context slice


def _crop(pixels: np.ndarray, x: int, y: int, half: int) -> np.ndarray:
    """Square crop centred on (x, y), edge-padded where it leaves the image."""
    padded = np.pad(pixels, half, mode="edge")
    return padded[y : y + 2 * half, x : x + 2 * half]


class CopyMoveDetector:
    """Exhaustive block matching of the location's block over its slice and its series."""

    name = "copy-move"
    kind = EvidenceKind.FORENSIC
    needs_context = True

    def __init__(
        self, block: int = 7, patch: int = 64, cache_slices: int = 96, window: int = 3
    ) -> None:
        if block % 2 == 0:
            raise ValueError("block must be odd")
        self.block = block
        self.patch = patch
        self._cache: PixelCache[tuple[np.ndarray, np.ndarray]] = PixelCache(cache_slices)
        self.window = window  # slices searched on each side, when the context is the series
        self.info: dict[str, object] = {"kind": self.kind.value}

    @property
    def modality(self) -> str | None:
        return None  # every modality

    @classmethod
    def create(cls, model_path: Path | None = None, modality: str | None = None):  # noqa: ANN206
        """Registry factory: there is nothing to load; model_path is ignored."""
        return cls()

    def _spectrum(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray]:
        return self._cache.get(image.pixels, lambda: self._compute_spectrum(image))

    def _compute_spectrum(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray]:
        pix = image.pixels.astype(np.float64)
        b = self.block
        shape = (pix.shape[0] + b - 1, pix.shape[1] + b - 1)
        spec = sfft.rfft2(pix, s=shape)
        sq = np.pad(np.cumsum(np.cumsum(pix**2, 0), 1), ((1, 0), (1, 0)))
        sums = sq[b:, b:] - sq[:-b, b:] - sq[b:, :-b] + sq[:-b, :-b]
        return spec, sums

    def _min_nssd(self, image: SliceImage, tmpl: np.ndarray, same: bool, x: int, y: int):  # noqa: ANN202
        b = self.block
        spec, sums = self._spectrum(image)
        pix_shape = image.pixels.shape
        shape = (pix_shape[0] + b - 1, pix_shape[1] + b - 1)
        corr_full = sfft.irfft2(spec * sfft.rfft2(tmpl[::-1, ::-1], s=shape), s=shape)
        corr = corr_full[b - 1 : pix_shape[0], b - 1 : pix_shape[1]]
        ssd = sums - 2 * corr + float((tmpl**2).sum())
        if same:
            h = b // 2
            r0, c0 = y - h, x - h
            ssd[max(r0 - b, 0) : r0 + b + 1, max(c0 - b, 0) : c0 + b + 1] = np.inf
        idx = int(np.argmin(ssd))
        return float(ssd.flat[idx]), divmod(idx, ssd.shape[1])

    def _near(self, loc: Location) -> Sequence[SliceImage]:
        """The context slices within ``window`` of the location's slice (all, if not found).

        The same rule holds for regions and for the references the null is fitted on, so a
        region is never searched more widely than the genuine locations it is compared with.
        """
        for k, s in enumerate(loc.context):
            if s.pixels is loc.image.pixels:
                return loc.context[max(0, k - self.window) : k + self.window + 1]
        return loc.context

    def _one(self, loc: Location) -> RegionScore:
        b, h = self.block, self.block // 2
        img = loc.image
        rows, cols = img.pixels.shape
        x = int(np.clip(loc.x, h, cols - h - 1))
        y = int(np.clip(loc.y, h, rows - h - 1))
        tmpl = img.pixels[y - h : y + h + 1, x - h : x + h + 1].astype(np.float64)
        var_floor = 1e-6 * (float(np.abs(tmpl).max()) + 1.0) ** 2
        denom = b * b * max(float(tmpl.var()), var_floor)
        best, best_img, best_pos = np.inf, img, (y - h, x - h)
        candidates = [img] + [
            c for c in self._near(loc) if c is not img and not (c.source and c.source == img.source)
        ]
        for cand in candidates:
            if cand.pixels.shape != img.pixels.shape:
                continue
            ssd, pos = self._min_nssd(cand, tmpl, cand is img, x, y)
            if ssd < best:
                best, best_img, best_pos = ssd, cand, pos
        nssd = max(best, 0.0) / denom
        score = float(-np.log10(nssd + 1e-6))
        # Evidence: how well the matched region agrees with the location's surroundings.
        half = self.patch // 2
        dy, dx = best_pos[0] + h - y, best_pos[1] + h - x
        here = _crop(img.pixels.astype(np.float64), x, y, half)
        there = _crop(best_img.pixels.astype(np.float64), x + dx, y + dy, half)
        scale = np.sqrt(denom / (b * b)) + 1e-6
        heat = np.exp(-np.abs(here - there) / scale).astype(np.float32)
        return RegionScore(score, heat)

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        return [self._one(loc) for loc in locations]

    def calibrate(self, series: Sequence[SliceImage]) -> Calibration | None:
        """Fitted once per series on reference locations, searched exactly as regions are."""
        refs = reference_locations(series, COPY_REFERENCES, with_context=True)
        return Calibration.from_scores([s.score for s in self.score(refs)]) if refs else None
