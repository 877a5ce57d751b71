"""Exact-repeat: blocks of this region that occur again, value for value, anywhere in the series.

Copy-move forensics matches blocks of an image against each other; a copy repeats its source
exactly in its core (CT-GAN style edits and pasted patches keep the stored values), whereas
genuine tissue never repeats to within the noise. Every ``block`` x ``block`` block is reduced
to a 64-bit key from two fixed random separable projections (identical pixels give
bit-identical sums). :meth:`ExactRepeatCheck.prepare` indexes the blocks of the whole series on
a 2-pixel grid (a copy of any offset still aligns with the dense keys of the slice it lands on);
a region's score is the number of its dense block positions found in the index elsewhere.
Flat blocks (air, saturated bone) repeat by nature and are never indexed.

The null is analytic, not fitted: a textured block of 36 noisy pixels recurs by chance with a
probability far below 1e-20 per pair of positions, so three or more repeated blocks get
:data:`REPEAT_P` and anything less gets p = 1. ``benchmarks/detection.py`` measures the
delivered false-alarm rate on genuine studies.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from detector.calibration import AnalyticNull
from detector.forensics.base import PixelCache, crop, slice_id
from detector.forensics.references import tissue_mask, tissue_reach
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage

REPEAT_P = 1e-12  # p of a region with >= MIN_REPEATS exactly repeated textured blocks
MIN_REPEATS = 3
_MIX = np.uint64(0x9E3779B97F4A7C15)


class ExactRepeatCheck:
    """Dense exact-repeat search of a region's blocks against the whole series."""

    name = "exact-repeat"
    kind = EvidenceKind.FORENSIC
    needs_context = True
    modality = None  # every modality
    fits_null = False  # its null is analytic: references would only ever score 0

    def __init__(self, block: int = 6, reach_px: int = 8, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.block = block
        self.reach_px = reach_px
        self.vectors = rng.standard_normal((4, block))
        self.info: dict[str, object] = {"kind": self.kind.value}
        self._series: tuple[object, ...] = ()
        self._index = np.empty(0, dtype=np.uint64)
        self._owner = np.empty(0, dtype=np.int64)  # slice * (rows * cols) + flat position
        self._keys: PixelCache[np.ndarray] = PixelCache(8)
        self._slice_of: dict[object, int] = {}
        self._building: tuple[list[np.ndarray], list[np.ndarray]] | None = None
        self._shift = np.uint64(48)
        self._seen = np.zeros(1 << 13, dtype=np.uint8)  # bitmap of the index's top key bits

    @classmethod
    def create(cls, model_path: object = None, modality: str | None = None) -> ExactRepeatCheck:
        """Registry factory: nothing to load."""
        return cls()

    # -- keys -----------------------------------------------------------------------------

    def _dense(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray]:
        """(key map uint64, textured-and-in-tissue map) of one slice, cached."""
        keys = self._keys.get(image.pixels, lambda: self._compute_keys(image))
        return keys, image.derived(f"exact-repeat:ok:{self.block}", lambda: self._textured(image))

    def _compute_keys(self, image: SliceImage) -> np.ndarray:
        px = image.pixels.astype(np.float64)
        origin = -(self.block // 2)
        parts = []
        for u, v in ((0, 1), (2, 3)):
            rows = ndimage.correlate1d(px, self.vectors[u], axis=0, mode="constant", origin=origin)
            parts.append(
                ndimage.correlate1d(rows, self.vectors[v], axis=1, mode="constant", origin=origin)
            )
        return parts[0].view(np.uint64) ^ (parts[1].view(np.uint64) * _MIX)

    def _textured(self, image: SliceImage) -> np.ndarray:
        """Block origins whose block is textured and near tissue (kept with the slice, so the
        scan's second read of it gets this from the index pass)."""
        px = image.pixels.astype(np.float64)
        b, origin = self.block, -(self.block // 2)
        mean = ndimage.uniform_filter(px, b, origin=origin)
        var = ndimage.uniform_filter(px**2, b, origin=origin) - mean**2
        ok = var > 4.0
        ok[px.shape[0] - b + 1 :, :] = False
        ok[:, px.shape[1] - b + 1 :] = False
        ok &= tissue_reach(image, b)
        ok.flags.writeable = False
        return ok

    def prepare(self, series: Sequence[SliceImage]) -> None:
        """Index every textured block of the series on a 2-pixel grid (once per series)."""
        ident = tuple(slice_id(s) for s in series)
        if self.start_index(ident, 0):
            for k, image in enumerate(series):
                self.index_slice(k, image)
            self.finish_index()

    def start_index(self, ident: tuple[object, ...], pixels: int) -> bool:
        """Begin indexing the series ``ident``; False when it is the one already indexed."""
        if ident == self._series:
            return False
        self._series = ident
        self._slice_of = {sid: k for k, sid in enumerate(ident)}
        self._building = ([], [])
        return True

    def index_slice(self, k: int, image: SliceImage) -> None:
        """Add slice ``k`` (in series order) to the index being built."""
        assert self._building is not None, "start_index first"
        keys, ok = self._dense(image)
        grid = np.zeros_like(ok)
        grid[::2, ::2] = True
        pos = np.flatnonzero(ok & grid)
        self._building[0].append(keys.ravel()[pos])
        self._building[1].append(k * keys.size + pos)

    def finish_index(self) -> None:
        """Sort the keys for lookup."""
        assert self._building is not None, "start_index first"
        index, owner = self._building
        self._building = None
        order_keys = np.concatenate(index) if index else np.empty(0, dtype=np.uint64)
        order = np.argsort(order_keys, kind="stable")
        self._index = order_keys[order]
        self._owner = (np.concatenate(owner) if owner else np.empty(0, dtype=np.int64))[order]
        # A bitmap of the keys' top bits, at most 1/16 full: a cheap "certainly not there".
        bits = int(np.clip(np.ceil(np.log2(16 * max(1, self._index.size))), 16, 27))
        self._shift = np.uint64(64 - bits)
        self._seen = np.zeros(1 << (bits - 3), dtype=np.uint8)
        for start in range(0, self._index.size, 1 << 20):  # in chunks: the index is big
            top = (self._index[start : start + (1 << 20)] >> self._shift).astype(np.uint32)
            np.bitwise_or.at(self._seen, top >> 3, (1 << (top & 7)).astype(np.uint8))

    def _bounds(self, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each key's run starts and ends in the index (lo == hi: not there).

        Most keys are not in the index at all, and the bitmap of the index's top key bits
        says so in one lookup; the rest are looked up in sorted order, which walks the tens
        of megabytes of index in order instead of missing the cache on every key.
        """
        lo, hi = np.zeros(wanted.size, np.intp), np.zeros(wanted.size, np.intp)
        top = (wanted >> self._shift).astype(np.intp)
        maybe = np.flatnonzero((self._seen[top >> 3] >> (top & 7).astype(np.uint8)) & 1)
        if maybe.size == 0:
            return lo, hi
        order = maybe[np.argsort(wanted[maybe], kind="stable")]
        keys, size = wanted[order], self._index.size
        start = np.searchsorted(self._index, keys, side="left")
        present = self._index[np.minimum(start, size - 1)] == keys
        end = start + present
        longer = present & (self._index[np.minimum(end, size - 1)] == keys) & (end < size)
        if longer.any():  # a key stored more than once (rare): find where its run ends
            end[longer] = np.searchsorted(self._index, keys[longer], side="right")
        lo[order], hi[order] = start, end
        return lo, hi

    def candidates(self, image: SliceImage, mask: np.ndarray) -> list[tuple[int, int, float]]:
        """Centres (x, y, size) of areas of the slice whose blocks repeat elsewhere."""
        keys, ok = self._dense(image)
        if self._index.size == 0:
            return []
        if mask is tissue_mask(image):  # the usual caller: the slice's own (cached) mask
            near = tissue_reach(image, self.block)
        else:
            near = ndimage.binary_dilation(mask, iterations=self.block)
        ys, xs = np.nonzero(ok & near)
        lo, hi = self._bounds(keys[ys, xs])
        hit = np.flatnonzero(hi - lo > 1)  # itself (on the grid) and another copy
        hit = np.union1d(hit, np.flatnonzero((hi - lo == 1) & ((ys % 2) | (xs % 2)).astype(bool)))
        found = np.zeros(keys.shape, dtype=bool)
        found[ys[hit], xs[hit]] = True
        labels, count = ndimage.label(ndimage.binary_dilation(found, iterations=2))
        if count == 0:
            return []
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(found, labels, index)
        centres = ndimage.center_of_mass(found, labels, index)
        h = self.block // 2
        out = [
            (int(round(c[1])) + h, int(round(c[0])) + h, float(n))
            for c, n in zip(centres, sizes, strict=True)
            if n >= MIN_REPEATS
        ]
        return sorted(out, key=lambda t: -t[2])[:8]

    # -- scoring --------------------------------------------------------------------------

    def _repeats(self, loc: Location) -> np.ndarray:
        """Bool map (disc around the location) of block origins found elsewhere in the index."""
        keys, ok = self._dense(loc.image)
        rows, cols = keys.shape
        r = self.reach_px
        y0, y1 = max(0, loc.y - r), min(rows, loc.y + r + 1)
        x0, x1 = max(0, loc.x - r), min(cols, loc.x + r + 1)
        sub_keys, sub_ok = keys[y0:y1, x0:x1], ok[y0:y1, x0:x1]
        out = np.zeros(sub_keys.shape, dtype=bool)
        if self._index.size == 0 or not sub_ok.any():
            return out
        here = self._slice_of.get(slice_id(loc.image), -1)
        ys, xs = np.nonzero(sub_ok)
        lo, hi = self._bounds(sub_keys[ys, xs])
        for i in np.flatnonzero(hi > lo):
            owners = self._owner[lo[i] : hi[i]]
            k, pos = np.divmod(owners, rows * cols)
            py, px = np.divmod(pos, cols)
            y, x = ys[i] + y0, xs[i] + x0
            far = (k != here) | (np.abs(py - y) >= self.block) | (np.abs(px - x) >= self.block)
            out[ys[i], xs[i]] = bool(far.any())
        return out

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        out = []
        for loc in locations:
            if loc.context and slice_id(loc.image) not in self._slice_of:
                self.prepare(loc.context)
            found = self._repeats(loc)
            heat = np.zeros(loc.image.pixels.shape, dtype=np.float32)
            r = self.reach_px
            y0, x0 = max(0, loc.y - r), max(0, loc.x - r)
            heat[y0 : y0 + found.shape[0], x0 : x0 + found.shape[1]] = found
            out.append(RegionScore(float(found.sum()), crop(heat, loc.x, loc.y)))
        return out

    def calibrate(self, series: Sequence[SliceImage]) -> AnalyticNull:
        """The analytic null of the module docstring (nothing to fit)."""
        return AnalyticNull(threshold=MIN_REPEATS, p_at_or_above=REPEAT_P)
