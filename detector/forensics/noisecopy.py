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

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from detector.calibration import AnalyticNull
from detector.forensics.base import PixelCache, crop, slice_id
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


def _gather_lut(source_bits: np.ndarray) -> np.ndarray:
    """Byte lookup tables that move bit ``source_bits[n]`` of a word to bit ``n``.

    ``out = OR_j lut[j][(word >> 8 j) & 255]``: eight lookups instead of one shift per bit,
    which is what makes turning a word (a bit permutation) or hashing it cheap.
    """
    lut = np.zeros((8, 256), dtype=np.uint64)
    values = np.arange(256, dtype=np.uint64)
    for n, src in enumerate(np.asarray(source_bits, dtype=np.int64)):
        j, bit = divmod(int(src), 8)
        lut[j] |= ((values >> np.uint64(bit)) & np.uint64(1)) << np.uint64(n)
    return lut


def _apply(lut: np.ndarray, words: np.ndarray) -> np.ndarray:
    out = np.zeros(words.shape, dtype=np.uint64)
    for j in range(8):
        out |= lut[j][((words >> np.uint64(8 * j)) & np.uint64(255)).astype(np.intp)]
    return out


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
        self.key_mask = np.uint64((1 << bits) - 1)
        # Per flip/turn: bit b of the turned block's word is bit ``turn[b]`` of the block's.
        base = np.arange(64).reshape(8, 8)
        self._turns = [(k, flip, _transform(base, k, flip).ravel()) for k, flip in _TRANSFORMS]
        self._turn_luts = [_gather_lut(turn) for _, _, turn in self._turns]
        self._key_luts = [
            [_gather_lut(turn[sub]) for sub in self.subsets] for *_, turn in self._turns
        ]
        self._plain_key_luts = [_gather_lut(sub) for sub in self.subsets]
        self._found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        self.info: dict[str, object] = {"kind": self.kind.value}
        self._series: tuple[object, ...] = ()
        self._residuals: list[np.ndarray] = []
        self._slice_of: dict[object, int] = {}
        self._words = np.empty(0, dtype=np.uint64)
        self._owner = np.empty((0, 3), dtype=np.int32)  # slice, row, col of the block origin
        self._tables: list[tuple[np.ndarray, np.ndarray]] = []  # (bucket starts, order)
        self._cache: PixelCache[tuple[np.ndarray, np.ndarray]] = PixelCache(8)

    @classmethod
    def create(cls, model_path: object = None, modality: str | None = None) -> NoiseCopyCheck:
        """Registry factory: nothing to load."""
        return cls()

    # -- words ----------------------------------------------------------------------------

    def _residual(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray]:
        """(residual, mask of noise-dominated block *centres*) of a slice, cached."""
        return self._cache.get(image.pixels, lambda: self._compute_residual(image))

    def _compute_residual(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray]:
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
        return _apply(self._plain_key_luts[t], words)

    def prepare(self, series: Sequence[SliceImage]) -> None:
        """Index the noise-dominated blocks of the series (once).

        Every block origin while the series fits ``index_budget`` words; beyond it a coarser
        grid (a copy must then be a little larger to hold an aligned block).
        """
        ident = tuple(slice_id(s) for s in series)
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
        self._found = {}
        self._slice_of = {slice_id: k for k, slice_id in enumerate(ident)}
        self._words = np.concatenate(words) if words else np.empty(0, dtype=np.uint64)
        self._owner = (
            np.concatenate(owners).astype(np.int32) if owners else np.empty((0, 3), np.int32)
        )
        self._tables = []
        every_key = np.arange(int(self.key_mask) + 2, dtype=np.uint64)
        for t in range(len(self.subsets)):
            keys = self._key(self._words, t)
            order = np.argsort(keys, kind="stable").astype(np.int64)
            # Bucket starts for every possible key: a lookup is two gathers, not a search.
            starts = np.searchsorted(keys[order], every_key).astype(np.int32)
            self._tables.append((starts, order))

    # -- scoring --------------------------------------------------------------------------

    def _pairs(self, words: np.ndarray, o: int, negate: bool) -> tuple[np.ndarray, np.ndarray]:
        """(query index, donor index) of indexed words within ``max_distance`` bits of each
        query word turned by orientation ``o`` (and sign-inverted when ``negate``).

        A bucket holding more than :data:`BUCKET_CAP` words is a pattern that recurs by nature
        (structure, not noise) and is skipped, which also bounds the work per query.
        """
        turned = _apply(self._turn_luts[o], words)
        if negate:
            turned = ~turned
        queries, donors = [], []
        for t, (starts, order) in enumerate(self._tables):
            q = _apply(self._key_luts[o][t], words)
            if negate:
                q = ~q & self.key_mask
            q = q.astype(np.intp)
            lo = starts[q].astype(np.int64)
            n = starts[q + 1] - lo
            take = np.flatnonzero((n > 0) & (n <= BUCKET_CAP))
            if take.size == 0:
                continue
            counts = n[take]
            which = np.repeat(take, counts)
            offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            cand = order[np.repeat(lo[take], counts) + offset]
            near = _popcount(self._words[cand] ^ turned[which]) <= self.max_distance
            queries.append(which[near])
            donors.append(cand[near])
        if not queries:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pairs = np.unique(np.stack([np.concatenate(queries), np.concatenate(donors)]), axis=1)
        return pairs[0], pairs[1]

    def _slice_hits(
        self, image: SliceImage, dense: np.ndarray, ys: np.ndarray, xs: np.ndarray
    ) -> np.ndarray:
        """Which of the block origins (ys, xs) of a slice hold noise copied from elsewhere."""
        resid, ok = self._residual(image)
        h, s = self.side // 2, self.side
        words = dense[ys, xs]
        hit = np.zeros(ys.size, dtype=bool)
        usable = ok[ys + h, xs + h] & (_transitions(words) >= MIN_TRANSITIONS)
        if self._words.size == 0 or not usable.any():
            return hit
        for o, (k, flip, _) in enumerate(self._turns):
            for negate in (False, True):
                query, donor = self._pairs(words, o, negate)
                keep = usable[query] & ~hit[query]
                query, donor = query[keep], donor[keep]
                per_query = np.bincount(query, minlength=ys.size)
                for i in np.flatnonzero((per_query > 0) & (per_query <= MAX_DONORS)):
                    block = _transform(resid[ys[i] : ys[i] + s, xs[i] : xs[i] + s], k, flip)
                    hit[i] = self._confirmed(
                        -block if negate else block, donor[query == i], int(ys[i]), int(xs[i])
                    )
        return hit

    def hits(self, loc: Location) -> np.ndarray:
        """Map (block origins around the location) of blocks whose noise is a copy.

        Results are kept per slice, so overlapping regions never query a block twice.
        """
        rows, cols = loc.image.pixels.shape
        r, h = self.reach_px, self.side // 2
        y0, y1 = max(0, loc.y - h - r), min(rows - self.side + 1, loc.y - h + r + 1)
        x0, x1 = max(0, loc.x - h - r), min(cols - self.side + 1, loc.x - h + r + 1)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((0, 0), dtype=bool)
        key = id(loc.image.pixels)
        entry = self._found.get(key)
        if entry is None or entry[0] is not loc.image.pixels:
            done = np.zeros((rows, cols), dtype=bool)
            dense = self._dense_words(self._residual(loc.image)[0])
            entry = (loc.image.pixels, done, np.zeros((rows, cols), dtype=bool), dense)
            self._found = {key: entry}  # one slice at a time is scored
        _, done, found, dense = entry
        todo = ~done[y0:y1, x0:x1]
        if todo.any():
            ys, xs = np.nonzero(todo)
            ys, xs = ys + y0, xs + x0
            found[ys, xs] = self._slice_hits(loc.image, dense, ys, xs)
            done[ys, xs] = True
        return found[y0:y1, x0:x1]

    def _confirmed(self, block: np.ndarray, donors: np.ndarray, y: int, x: int) -> bool:
        """A donor far from (y, x) whose residual values correlate with ``block``."""
        for slice_k, row, col in self._owner[donors]:
            if np.hypot(row - y, col - x) < self.reach_px + self.min_offset_px:
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
        h = self.side // 2
        for loc in locations:
            if loc.context and slice_id(loc.image) not in self._slice_of:
                self.prepare(loc.context)
            found = self.hits(loc)
            heat = np.zeros(loc.image.pixels.shape, dtype=np.float32)
            if found.size:
                y0 = max(0, loc.y - h - self.reach_px)
                x0 = max(0, loc.x - h - self.reach_px)
                centres = np.zeros(heat.shape, dtype=np.float32)
                centres[y0 + h : y0 + h + found.shape[0], x0 + h : x0 + h + found.shape[1]] = found
                heat = ndimage.uniform_filter(centres, self.side) * self.side**2
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
