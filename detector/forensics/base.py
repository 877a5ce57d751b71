"""What the map-based forensic checks share: a per-slice evidence map, read at each location.

A check computes one dense anomaly map per slice (robust z-scores against the slice's own
statistics at matched intensity or structure), caches the last few maps, and reads its raw
score at a location as the largest value within ``reach_px`` of it. The same maps give the
heatmaps and the hotspot proposals (:func:`hotspots`), so cheap evidence covers every pixel of
every slice before any deep model runs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np
from scipy import ndimage

from detector.calibration import Calibration
from detector.forensics.references import REFERENCES_PER_SERIES, reference_locations
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage

T = TypeVar("T")

HEATMAP_HALF = 32  # heatmaps are 64x64 crops centred on the location
ROBUST = 1.4826  # MAD -> standard deviation for a normal distribution


def binned_z(
    values: np.ndarray, covariate: np.ndarray, mask: np.ndarray, bins: int = 8, sample: int = 40000
) -> np.ndarray:
    """Robust z-score of ``values`` against pixels of similar ``covariate`` inside ``mask``.

    The covariate (local intensity, local structure) is cut at its quantiles over the mask;
    within each bin the median and MAD of ``values`` define the z-score. Pixels outside the
    mask get 0. A tampered disc is a small part of a slice, so the statistics stay genuine.
    """
    out = np.zeros(values.shape, dtype=np.float32)
    idx = np.flatnonzero(mask)
    if idx.size < 50:
        return out
    rng = np.random.default_rng(idx.size)
    fit = idx if idx.size <= sample else rng.choice(idx, sample, replace=False)
    cov, val = covariate.ravel(), values.ravel()
    edges = np.unique(np.quantile(cov[fit], np.linspace(0, 1, bins + 1)[1:-1]))
    bin_fit = np.searchsorted(edges, cov[fit])
    bin_all = np.searchsorted(edges, cov[idx])
    fitted = val[fit]
    med, mad = np.empty(len(edges) + 1), np.empty(len(edges) + 1)
    for b in range(len(edges) + 1):
        here = fitted[bin_fit == b]
        if here.size < 10:
            here = fitted
        med[b] = float(np.median(here))
        mad[b] = ROBUST * float(np.median(np.abs(here - med[b]))) + 1e-3
    out.ravel()[idx] = (val[idx] - med[bin_all]) / mad[bin_all]
    return out


class PixelCache(Generic[T]):
    """The last few per-slice results, keyed by the slice's pixel array.

    The array itself is held with its result, so its ``id`` cannot be reused by another slice
    while the entry lives; least recently used entries go first.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[np.ndarray, T]] = OrderedDict()

    def get(self, pixels: np.ndarray, make: Callable[[], T]) -> T:
        key = id(pixels)
        hit = self._entries.get(key)
        if hit is not None and hit[0] is pixels:
            self._entries.move_to_end(key)
            return hit[1]
        value = make()
        self._entries[key] = (pixels, value)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value


def slice_id(image: SliceImage) -> object:
    """What identifies a slice across reads: its file, else its pixel array."""
    return image.source or id(image.pixels)


def crop(values: np.ndarray, x: int, y: int, half: int = HEATMAP_HALF) -> np.ndarray:
    """Square crop centred on (x, y), zero-padded where it leaves the image."""
    padded = np.pad(values, half)
    return np.ascontiguousarray(padded[y : y + 2 * half, x : x + 2 * half], dtype=np.float32)


def paste(out: np.ndarray, part: np.ndarray, top: int, left: int) -> None:
    """Copy ``part`` into ``out`` with its corner at (top, left) of ``out``, clipped to it."""
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(out.shape[0], top + part.shape[0]), min(out.shape[1], left + part.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = part[r0 - top : r1 - top, c0 - left : c1 - left]


class MapCheck:
    """Base of the dense-map checks; subclasses implement :meth:`compute_map`."""

    name = "map-check"
    kind = EvidenceKind.FORENSIC
    needs_context = False

    def __init__(self, reach_px: int = 5, references: int = REFERENCES_PER_SERIES, cache: int = 6):
        self.reach_px = reach_px
        self.references = references
        self._maps: PixelCache[np.ndarray] = PixelCache(cache)
        self.info: dict[str, object] = {"kind": self.kind.value}

    @property
    def modality(self) -> str | None:
        return None  # every modality

    def compute_map(self, loc: Location) -> np.ndarray:
        """The slice's anomaly map (float32, the slice's shape); higher = more anomalous."""
        raise NotImplementedError

    def anomaly_map(self, loc: Location) -> np.ndarray:
        """The cached map of ``loc``'s slice (reach-max applied), keyed by the pixel array."""

        def make() -> np.ndarray:
            raw = self.compute_map(loc)
            return ndimage.maximum_filter(raw, size=2 * self.reach_px + 1)

        return self._maps.get(loc.image.pixels, make)

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        out = []
        for loc in locations:
            values = self.anomaly_map(loc)
            y = int(np.clip(loc.y, 0, values.shape[0] - 1))
            x = int(np.clip(loc.x, 0, values.shape[1] - 1))
            out.append(RegionScore(float(values[y, x]), crop(values, x, y)))
        return out

    def calibrate(self, series: Sequence[SliceImage]) -> Calibration | None:
        """Fitted once per series on :func:`reference_locations` of that series."""
        refs = reference_locations(series, self.references)
        if len(refs) < 40:
            return None
        return Calibration.from_scores([s.score for s in self.score(refs)])


def hotspots(
    values: np.ndarray, mask: np.ndarray, count: int, min_gap_px: int = 12
) -> list[tuple[int, int, float]]:
    """The ``count`` strongest peaks of ``values`` inside ``mask``, ``min_gap_px`` apart."""
    if count <= 0 or not mask.any():
        return []
    masked = np.where(mask, values, -np.inf)
    peaks = (masked == ndimage.maximum_filter(masked, size=2 * min_gap_px + 1)) & np.isfinite(
        masked
    )
    ys, xs = np.nonzero(peaks)
    out: list[tuple[int, int, float]] = []
    for i in np.argsort(masked[ys, xs])[::-1]:
        x, y = int(xs[i]), int(ys[i])
        if all((x - a) ** 2 + (y - b) ** 2 >= min_gap_px**2 for a, b, _ in out):
            out.append((x, y, float(masked[y, x])))
            if len(out) == count:
                break
    return out
