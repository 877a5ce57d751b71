"""Noise-copy: a region whose fine-scale noise repeats, flipped, turned or rescaled, elsewhere.

An edit has to carry noise, or its smoothness gives it away (``noise-consistency`` looks for
that). The forger can synthesise it, with a noise model that never quite matches the scanner's
reconstruction kernel, or take it from the scan itself: cut the residual of a flat area and add
it over the fill, so its power spectrum is the scanner's own. The second leaves a trace of its
own: genuine noise is independent from pixel to pixel across the series, so a block of
residual that occurs twice is a copy — the camera-forensics idea of matching noise residuals,
applied within one series instead of against a sensor fingerprint.

How:

- residual ``r = pixels - gaussian(pixels, 1)``: the finest scales, where noise dominates and
  anatomy (smooth at that scale) mostly cancels; the fill under the copied noise cancels too;
- every ``side`` x ``side`` block becomes a 64-bit word of residual signs. Signs ignore any
  positive rescaling of the borrowed noise; the eight flips and turns of the block, and the
  sign-inverted word, are looked up as well;
- :meth:`NoiseCopyCheck.prepare` indexes the blocks of the whole series that carry noise
  (inside the body, not flat, words with enough sign changes to be noise) at every block origin
  (a coarser grid once the series outgrows the index budget),
  with locality-sensitive hashing: ``tables`` random ``bits``-bit subsets of the word;
- a region's score is the number of its block positions with a donor whose word differs in at
  most ``max_distance`` of 64 bits, at least ``min_offset_px`` away in the image plane (the
  same anatomy on the next slice has a correlated residual; a copy moves the noise).

- a candidate is confirmed on the residual values (NCC >= :data:`MIN_NCC`) and rejected when
  the source place correlates with the same place on its neighbouring slices: anatomy (mirrored
  phantom texture, vessels) persists across slices, scanner noise does not.

Null: for independent noise a word matches a given donor within ``max_distance`` bits with
probability ``sum_{d<=D} C(64, d) / 2^64`` (4e-12 for D = 6), but residual samples are
correlated by the reconstruction kernel and anatomy leaks into them, so the p of
:data:`COPY_P` at :data:`MIN_HITS` confirmed positions is a stated bound checked on genuine
series (tests/test_noise_copy.py; ``benchmarks/detection.py`` measures the study false-alarm
rate), not a derivation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from detector.calibration import AnalyticNull
from detector.forensics.base import crop
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage
from detector.proposals import body_mask

COPY_P = 1e-6  # p of a region with >= MIN_HITS copied positions (measured, not analytic: see above)
MIN_HITS = 3
HIGH_PASS_SIGMA = 1.0
MIN_RESIDUAL = 1.5  # RMS residual (stored units) below which a block is flat, not noisy
MIN_TRANSITIONS = 20  # of 112 neighbour pairs: fewer is an edge or a ramp, not noise
MIN_NCC = 0.95  # residual values of a copy correlate at ~0.98; a chance match of 64 near 0
ANATOMY_NCC = 0.5  # the same place on a neighbouring slice: independent noise gives ~0 +- 0.13
MAX_DONORS = 2
BUCKET_CAP = 32  # a copy has one source; a word found in many places is structure
_TRANSFORMS = [(k, flip) for flip in (False, True) for k in range(4)]  # the dihedral group


def _transform(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    return np.rot90(a.T if flip else a, k)


def _untransform(a: np.ndarray, k: int, flip: bool) -> np.ndarray:
    back = np.rot90(a, -k)
    return back.T if flip else back


class NoiseCopyCheck:
    """Sign-word LSH search of a region's residual blocks against the series' noise."""

    name = "noise-copy"
    kind = EvidenceKind.FORENSIC
    needs_context = True
    modality = None  # every modality
    fits_null = False  # analytic null, like exact-repeat

    def __init__(
        self,
        side: int = 8,
        index_budget: int = 4_000_000,
        tables: int = 8,
        bits: int = 20,
        max_distance: int = 6,
        min_offset_px: int = 12,
        reach_px: int = 10,
        seed: int = 11,
    ) -> None:
        if side * side != 64:
            raise ValueError("noise-copy words are 64 bits: side must be 8")
        rng = np.random.default_rng(seed)
        self.side, self.index_budget = side, index_budget
        self.max_distance, self.min_offset_px, self.reach_px = max_distance, min_offset_px, reach_px
        self.subsets = [np.sort(rng.choice(64, bits, replace=False)) for _ in range(tables)]
        self.info: dict[str, object] = {"kind": self.kind.value}
        self._series: tuple[object, ...] = ()
        self._residuals: list[np.ndarray] = []
        self._slice_of: dict[object, int] = {}
        self._words = np.empty(0, dtype=np.uint64)
        self._owner = np.empty((0, 3), dtype=np.int32)  # slice, row, col of the block origin
        self._tables: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, order)
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()

    @classmethod
    def create(cls, model_path: object = None, modality: str | None = None) -> NoiseCopyCheck:
        """Registry factory: nothing to load."""
        return cls()

    # -- words ----------------------------------------------------------------------------

    def _residual(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray]:
        """(residual, mask of noise-dominated block *centres*) of a slice, cached."""
        key = id(image.pixels)
        hit = self._cache.get(key)
        if hit is not None and hit[0] is image.pixels:
            return hit[1], hit[2]
        px = image.pixels.astype(np.float64)
        smooth = ndimage.gaussian_filter(px, HIGH_PASS_SIGMA)
        resid = px - smooth
        s, h = self.side, self.side // 2
        energy = np.sqrt(ndimage.uniform_filter(resid**2, s))
        # Blocks with noise in them (not clamped air or padding) inside the body; whether a
        # block is noise or structure is settled later, by its values and by its neighbours.
        ok = (energy > MIN_RESIDUAL) & ndimage.binary_erosion(body_mask(image), iterations=2)
        ok[:h, :] = ok[px.shape[0] - h + 1 :, :] = False
        ok[:, :h] = ok[:, px.shape[1] - h + 1 :] = False
        self._cache[key] = (image.pixels, resid, ok)
        if len(self._cache) > 8:
            self._cache.popitem(last=False)
        return resid, ok

    def _dense_words(self, resid: np.ndarray, step: int = 1) -> np.ndarray:
        """Sign words of every block origin (on a ``step`` grid) of ``resid``."""
        s = self.side
        rows, cols = resid.shape[0] - s + 1, resid.shape[1] - s + 1
        if rows <= 0 or cols <= 0:
            return np.zeros((0, 0), dtype=np.uint64)
        positive = resid > 0
        words = np.zeros(((rows + step - 1) // step, (cols + step - 1) // step), dtype=np.uint64)
        for b in range(64):
            i, j = divmod(b, s)
            plane = positive[i : i + rows : step, j : j + cols : step]
            words |= plane.astype(np.uint64) << np.uint64(b)
        return words

    def _key(self, words: np.ndarray, t: int) -> np.ndarray:
        out = np.zeros(words.shape, dtype=np.uint64)
        for n, b in enumerate(self.subsets[t]):
            out |= ((words >> np.uint64(b)) & np.uint64(1)) << np.uint64(n)
        return out

    def prepare(self, series: Sequence[SliceImage]) -> None:
        """Index the noise-dominated blocks of the series (once).

        Every block origin while the series fits ``index_budget`` words; beyond it a coarser
        grid (a copy must then be a little larger to hold an aligned block).
        """
        ident = tuple(_slice_id(s) for s in series)
        if ident == self._series:
            return
        words, owners, kept = [], [], []
        pixels = sum(int(image.pixels.size) for image in series)
        st = max(1, int(np.ceil(np.sqrt(0.5 * pixels / self.index_budget))))
        for k, image in enumerate(series):
            resid, ok = self._residual(image)
            kept.append(resid.astype(np.float16))  # donors are verified on these values
            w = self._dense_words(resid, st)
            h = self.side // 2
            sel = ok[h::st, h::st][: w.shape[0], : w.shape[1]]
            ys, xs = np.nonzero(sel)
            keep = _transitions(w[ys, xs]) >= MIN_TRANSITIONS
            ys, xs = ys[keep], xs[keep]
            words.append(w[ys, xs])
            owners.append(np.stack([np.full(ys.size, k), ys * st, xs * st], axis=1))
        self._series = ident
        self._residuals = kept
        self._slice_of = {slice_id: k for k, slice_id in enumerate(ident)}
        self._words = np.concatenate(words) if words else np.empty(0, dtype=np.uint64)
        self._owner = (
            np.concatenate(owners).astype(np.int32) if owners else np.empty((0, 3), np.int32)
        )
        self._tables = []
        for t in range(len(self.subsets)):
            keys = self._key(self._words, t)
            order = np.argsort(keys, kind="stable")
            self._tables.append((keys[order], order))

    # -- scoring --------------------------------------------------------------------------

    def _donors(self, words: np.ndarray) -> list[np.ndarray]:
        """For each query word, the indexed words within ``max_distance`` bits (vectorised).

        A bucket holding more than :data:`BUCKET_CAP` words is a pattern that recurs by nature
        (structure, not noise) and is skipped, which also bounds the work per query.
        """
        query_of, donor_of = [], []
        for t, (keys, order) in enumerate(self._tables):
            q = self._key(words, t)
            lo = np.searchsorted(keys, q, side="left")
            hi = np.searchsorted(keys, q, side="right")
            n = hi - lo
            take = np.flatnonzero((n > 0) & (n <= BUCKET_CAP))
            if take.size == 0:
                continue
            counts = n[take]
            which = np.repeat(take, counts)
            offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            cand = order[np.repeat(lo[take], counts) + offset]
            near = _popcount(self._words[cand] ^ words[which]) <= self.max_distance
            query_of.append(which[near])
            donor_of.append(cand[near])
        out: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * words.size
        if not query_of:
            return out
        pairs = np.unique(np.stack([np.concatenate(query_of), np.concatenate(donor_of)]), axis=1)
        split = np.searchsorted(pairs[0], np.arange(words.size + 1))
        for i in np.flatnonzero(np.diff(split)):
            out[i] = pairs[1, split[i] : split[i + 1]]
        return out

    def _window(self, loc: Location, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        r = self.reach_px + self.side // 2
        return (
            max(0, loc.y - r),
            min(shape[0], loc.y + r + 1),
            max(0, loc.x - r),
            min(shape[1], loc.x + r + 1),
        )

    def hits(self, loc: Location) -> np.ndarray:
        """Map (window around the location) of noise-like block centres whose noise is a copy.

        Donors near the location on any slice do not count: the next slice's anatomy there
        gives a correlated residual, and a copy moves noise from somewhere else.
        """
        resid, ok = self._residual(loc.image)
        y0, y1, x0, x1 = self._window(loc, resid.shape)
        window, ok_window = resid[y0:y1, x0:x1], ok[y0:y1, x0:x1]
        out = np.zeros(window.shape, dtype=bool)
        s, h = self.side, self.side // 2
        if self._words.size == 0 or min(window.shape) < s or not ok_window.any():
            return out
        for k, flip in _TRANSFORMS:
            words = self._dense_words(_transform(window, k, flip))
            usable = _transform(ok_window, k, flip)[h : h + words.shape[0], h : h + words.shape[1]]
            usable &= _transitions(words) >= MIN_TRANSITIONS
            flat = words[usable]
            if flat.size == 0:
                continue
            transformed = _transform(window, k, flip)
            origins = np.argwhere(usable)
            hit = np.zeros(flat.size, dtype=bool)
            for negate, query in ((False, flat), (True, ~flat)):
                for i, donors in enumerate(self._donors(query)):
                    if hit[i] or not 0 < donors.size <= MAX_DONORS:
                        continue
                    ty, tx = origins[i]
                    block = transformed[ty : ty + s, tx : tx + s]
                    hit[i] = self._confirmed(-block if negate else block, donors, loc)
            found = np.zeros(usable.shape, dtype=bool)
            found[usable] = hit
            padded = np.zeros(_transform(window, k, flip).shape, dtype=bool)
            padded[h : h + found.shape[0], h : h + found.shape[1]] = found
            out |= _untransform(padded, k, flip)
        return out

    def _confirmed(self, block: np.ndarray, donors: np.ndarray, loc: Location) -> bool:
        """A donor far from the location whose residual values correlate with ``block``."""
        h = self.side // 2
        for slice_k, row, col in self._owner[donors]:
            if np.hypot(row + h - loc.y, col + h - loc.x) < self.reach_px + self.min_offset_px:
                continue
            if self._ncc(block, int(slice_k), row, col) < MIN_NCC:
                continue
            # Anatomy persists from slice to slice, noise does not: a source block that the
            # neighbouring slices repeat is structure (e.g. mirrored texture), not noise.
            beside = [
                self._ncc(block, j, row, col)
                for j in (int(slice_k) - 1, int(slice_k) + 1)
                if 0 <= j < len(self._residuals)
            ]
            if max(beside, default=0.0) < ANATOMY_NCC:
                return True
        return False

    def _ncc(self, block: np.ndarray, slice_k: int, row: int, col: int) -> float:
        resid = self._residuals[slice_k]
        source = resid[row : row + self.side, col : col + self.side].astype(np.float64)
        if source.shape != block.shape or source.std() == 0 or block.std() == 0:
            return 0.0
        return float(np.corrcoef(block.ravel(), source.ravel())[0, 1])

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        out = []
        for loc in locations:
            if loc.context and _slice_id(loc.image) not in self._slice_of:
                self.prepare(loc.context)
            found = self.hits(loc)
            heat = np.zeros(loc.image.pixels.shape, dtype=np.float32)
            y0, _, x0, _ = self._window(loc, heat.shape)
            spread = ndimage.uniform_filter(found.astype(np.float32), self.side) * self.side**2
            heat[y0 : y0 + found.shape[0], x0 : x0 + found.shape[1]] = spread
            out.append(RegionScore(float(found.sum()), crop(heat, loc.x, loc.y)))
        return out

    def calibrate(self, series: Sequence[SliceImage]) -> AnalyticNull:
        """The analytic null of the module docstring (nothing to fit)."""
        return AnalyticNull(threshold=MIN_HITS, p_at_or_above=COPY_P)


def _transitions(words: np.ndarray) -> np.ndarray:
    """Sign changes between 4-neighbours inside each 8x8 word (0-112); noise has about 56."""
    w = np.asarray(words, dtype=np.uint64)
    not_last_col = np.uint64(0x7F7F7F7F7F7F7F7F)
    horizontal = (w ^ (w >> np.uint64(1))) & not_last_col
    vertical = (w ^ (w >> np.uint64(8))) & np.uint64(0x00FFFFFFFFFFFFFF)
    return _popcount(horizontal.ravel()).reshape(w.shape) + _popcount(vertical.ravel()).reshape(
        w.shape
    )


_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(words: np.ndarray) -> np.ndarray:
    as_bytes = np.ascontiguousarray(words, dtype=np.uint64).view(np.uint8).reshape(-1, 8)
    return _POP8[as_bytes].sum(axis=1)


def _slice_id(image: SliceImage) -> object:
    return image.source or id(image.pixels)
