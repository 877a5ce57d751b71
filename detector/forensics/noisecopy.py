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
:data:`COPY_P` at :data:`MIN_HITS` confirmed positions is a stated bound, not a derivation.
It is therefore tested on every series (:meth:`NoiseCopyCheck.null_from`): random reference
regions of the series are scored like any region, and where more than
:data:`GATE_SHARE` of them reach :data:`GATE_HITS` the bound does not hold there (a soft
reconstruction kernel leaves the residual so smooth that 64 signs carry a few bits only, and
genuine blocks match all over the series). That series gets the references' own empirical
null instead, which cannot reach a verdict alone. A copied area covers far less than that
share of a series' tissue, so tampering does not switch the bound off.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from detector.calibration import AnalyticNull, Calibration
from detector.forensics.base import HEATMAP_HALF, PixelCache, paste, slice_id
from detector.forensics.lsh import VARIANTS, SignWordTables
from detector.forensics.references import reference_locations
from detector.forensics.signwords import dense_words, transitions, words_at
from detector.interface import EvidenceKind, Location, RegionScore, SliceImage
from detector.proposals import body_mask

COPY_P = 1e-6  # p of a region with >= MIN_HITS copied positions (measured, not analytic: see above)
# Genuine regions of series that pass the gate reached 4 and 6 confirmed positions in a
# 50-study false-alarm set (benchmarks/detection.py, seed 7178678: 2 of 50 genuine studies
# called tampered at the earlier threshold of 3); removals with borrowed noise give 10-250.
MIN_HITS = 10
GATE_HITS = 3  # a reference region this high tells against the bound
GATE_REFERENCES = 120  # reference regions per series that test the stated bound
GATE_SHARE = 0.05  # share of them allowed at GATE_HITS before the bound is dropped
HIGH_PASS_SIGMA = 1.0
MIN_RESIDUAL = 1.5  # RMS residual (stored units) below which a block is flat, not noisy
MIN_TRANSITIONS = 20  # of 112 neighbour pairs: fewer is an edge or a ramp, not noise
MIN_NCC = 0.95  # residual values of a copy correlate at ~0.98; a chance match of 64 near 0
ANATOMY_NCC = 0.5  # the same place on a neighbouring slice: independent noise gives ~0 +- 0.13
MAX_DONORS = 2
BUCKET_CAP = 32  # a copy has one source; a word found in many places is structure
QUERY_CHUNK = 1024  # query words looked up at once (keeps the candidate arrays to ~25 MB)
# candidates() queries a (step x step) cluster of block origins every spacing * step pixels:
# a quarter of the origins while the series is indexed at every origin (step 1), a sixteenth
# on the coarser grid of a large series (what keeps a 300-slice CT within its time budget)
CANDIDATE_SPACING = {1: 2}
CANDIDATE_SPACING_LARGE = 4
CANDIDATE_HITS = 2  # copied positions a proposed area needs (a genuine one rarely has one)
CANDIDATES_PER_SLICE = 4
_transitions = transitions  # the name tests and older callers use


class NoiseCopyCheck:
    """Sign-word LSH search of a region's residual blocks against the series' noise."""

    name = "noise-copy"
    kind = EvidenceKind.FORENSIC
    needs_context = True
    modality = None  # every modality
    null_references = GATE_REFERENCES  # the scan scores this many references, not all

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
        self._tables = SignWordTables(self.subsets, BUCKET_CAP)
        self._found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.info: dict[str, object] = {"kind": self.kind.value}
        self._series: tuple[object, ...] = ()
        self._residuals: list[np.ndarray] = []
        self._slice_of: dict[object, int] = {}
        self._owner = np.empty((0, 3), dtype=np.int32)  # slice, row, col of the block origin
        self._building: tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]] | None = None
        self._step = 1
        self._cache: PixelCache[np.ndarray] = PixelCache(8)

    @classmethod
    def create(cls, model_path: object = None, modality: str | None = None) -> NoiseCopyCheck:
        """Registry factory: nothing to load."""
        return cls()

    # -- words ----------------------------------------------------------------------------

    def _residual(self, image: SliceImage) -> np.ndarray:
        """The slice's fine-scale residual (float64), cached."""
        return self._cache.get(image.pixels, lambda: _high_pass(image.pixels))

    def _noisy(self, image: SliceImage) -> np.ndarray:
        """Mask of noise-dominated block *centres*: kept with the slice, so the scan's second
        read of it gets this from the index pass."""
        return image.derived("noise-copy:noisy", lambda: self._compute_noisy(image))

    def _compute_noisy(self, image: SliceImage) -> np.ndarray:
        resid = self._residual(image)
        s, h = self.side, self.side // 2
        energy = np.sqrt(ndimage.uniform_filter(resid**2, s))
        # Blocks with noise in them (not clamped air or padding) inside the body; whether a
        # block is noise or structure is settled later, by its values and by its neighbours.
        core = image.derived("body_core:2", lambda: _frozen(body_mask(image), 2))
        ok = (energy > MIN_RESIDUAL) & core
        ok[:h, :] = ok[resid.shape[0] - h + 1 :, :] = False
        ok[:, :h] = ok[:, resid.shape[1] - h + 1 :] = False
        ok.flags.writeable = False
        return ok

    def _residual_near(
        self, image: SliceImage, windows: Sequence[tuple[int, int, int, int]]
    ) -> np.ndarray:
        """The residual under the blocks of ``windows`` (zero elsewhere), filtered window by
        window: with the filter's radius as margin (or the image's own edge) every value is
        the one the whole slice gives, at a fraction of the cost."""
        px = image.pixels
        rows, cols = px.shape
        out = np.zeros(px.shape)
        m = int(4.0 * HIGH_PASS_SIGMA + 0.5)  # gaussian_filter's radius (truncate = 4)
        for y0, y1, x0, x1 in windows:
            r1, c1 = y1 - 1 + self.side, x1 - 1 + self.side  # past the last covered pixel
            top, left = max(0, y0 - m), max(0, x0 - m)
            local = _high_pass(px[top : min(rows, r1 + m), left : min(cols, c1 + m)])
            out[y0:r1, x0:c1] = local[y0 - top : r1 - top, x0 - left : c1 - left]
        return out

    # -- the series index -----------------------------------------------------------------

    def prepare(self, series: Sequence[SliceImage]) -> None:
        """Index the noise-dominated blocks of the series (once per series)."""
        ident = tuple(slice_id(s) for s in series)
        if self.start_index(ident, sum(int(image.pixels.size) for image in series)):
            for k, image in enumerate(series):
                self.index_slice(k, image)
            self.finish_index()

    def start_index(self, ident: tuple[object, ...], pixels: int) -> bool:
        """Begin indexing the series ``ident`` (``pixels`` in all); False: it already is.

        Every block origin while the series fits ``index_budget`` words; beyond it a coarser
        grid (a copy must then be a little larger to hold an aligned block).
        """
        if ident == self._series:
            return False
        self._series = ident
        self._slice_of = {sid: k for k, sid in enumerate(ident)}
        self._step = max(1, int(np.ceil(np.sqrt(0.5 * pixels / self.index_budget))))
        self._building = ([], [], [])
        return True

    def index_slice(self, k: int, image: SliceImage) -> None:
        """Add slice ``k`` (in series order) to the index being built."""
        assert self._building is not None, "start_index first"
        words, owners, kept = self._building
        st, h = self._step, self.side // 2
        resid, ok = self._residual(image), self._noisy(image)
        kept.append(resid.astype(np.float16))  # donors are verified on these values
        w = dense_words(resid, st)
        sel = ok[h::st, h::st][: w.shape[0], : w.shape[1]]
        ys, xs = np.nonzero(sel)
        keep = transitions(w[ys, xs]) >= MIN_TRANSITIONS
        ys, xs = ys[keep], xs[keep]
        words.append(w[ys, xs])
        owners.append(np.stack([np.full(ys.size, k), ys * st, xs * st], axis=1))

    def finish_index(self) -> None:
        """Sort the words into the LSH tables."""
        assert self._building is not None, "start_index first"
        words, owners, kept = self._building
        self._building = None
        self._residuals = kept
        self._found = {}
        self._owner = (
            np.concatenate(owners).astype(np.int32) if owners else np.empty((0, 3), np.int32)
        )
        self._tables.build(np.concatenate(words) if words else np.empty(0, dtype=np.uint64))

    # -- scoring --------------------------------------------------------------------------

    def _slice_hits(
        self, image: SliceImage, resid: np.ndarray, ys: np.ndarray, xs: np.ndarray
    ) -> np.ndarray:
        """Which of the block origins (ys, xs) of a slice hold noise copied from elsewhere.

        A block is a copy when, under some variant, it has at most :data:`MAX_DONORS` donors
        and one of them lies far from it in the plane, correlates with it on the residual
        values, and is not repeated by its own neighbouring slices (:meth:`_confirmed`).
        """
        ok = self._noisy(image)
        h, s = self.side // 2, self.side
        hit = np.zeros(ys.size, dtype=bool)
        words = words_at(resid, ys, xs)
        usable = np.flatnonzero(ok[ys + h, xs + h] & (transitions(words) >= MIN_TRANSITIONS))
        if self._tables.words.size == 0 or usable.size == 0:
            return hit
        blocks = sliding_window_view(resid, (s, s))
        for chunk in np.array_split(usable, -(-usable.size // QUERY_CHUNK)):
            qy, qx = ys[chunk], xs[chunk]
            variant, query, donor = self._tables.pairs(words[chunk], self.max_distance)
            slot = variant * chunk.size + query
            per_slot = np.bincount(slot, minlength=VARIANTS * chunk.size)
            owner = self._owner[donor]
            far = np.hypot(owner[:, 1] - qy[query], owner[:, 2] - qx[query]) >= (
                self.reach_px + self.min_offset_px
            )
            pick = np.flatnonzero((per_slot[slot] <= MAX_DONORS) & far)
            if pick.size == 0:
                continue
            q, v = query[pick], variant[pick]
            flat = blocks[qy[q], qx[q]].reshape(-1, s * s)
            turned = np.take_along_axis(flat, self._tables.turns[v // 2], axis=1)
            turned = np.where((v % 2 == 1)[:, None], -turned, turned)
            good = self._confirmed(turned, owner[pick])
            hit[chunk[np.unique(q[good])]] = True
        return hit

    def _confirmed(self, blocks: np.ndarray, owners: np.ndarray) -> np.ndarray:
        """Per (block, donor): correlated residual values, and a donor its neighbouring slices
        do not repeat (anatomy persists from slice to slice, scanner noise does not)."""
        k, row, col = owners[:, 0], owners[:, 1], owners[:, 2]
        good = self._ncc(blocks, k, row, col) >= MIN_NCC
        if not good.any():
            return good
        sel = np.flatnonzero(good)
        beside = np.full(sel.size, -np.inf)
        for j in (k[sel] - 1, k[sel] + 1):
            inside = (j >= 0) & (j < len(self._residuals))
            ncc = self._ncc(blocks[sel], j, row[sel], col[sel])
            beside = np.where(inside, np.maximum(beside, ncc), beside)
        beside[np.isneginf(beside)] = 0.0  # a one-slice series: no neighbour to repeat it
        good[sel] = beside < ANATOMY_NCC
        return good

    def _ncc(
        self, blocks: np.ndarray, slices: np.ndarray, rows: np.ndarray, cols: np.ndarray
    ) -> np.ndarray:
        """Correlation of each flattened block with the residual at (slice, row, col); 0 where
        there is no such block or either is constant."""
        out = np.zeros(len(blocks))
        s = self.side
        for k in np.unique(slices):
            if not 0 <= k < len(self._residuals):
                continue
            resid = self._residuals[int(k)]
            at = np.flatnonzero(slices == k)
            r, c = rows[at], cols[at]
            fits = (r >= 0) & (c >= 0) & (r + s <= resid.shape[0]) & (c + s <= resid.shape[1])
            at, r, c = at[fits], r[fits], c[fits]
            if at.size == 0:
                continue
            source = sliding_window_view(resid, (s, s))[r, c].reshape(-1, s * s)
            out[at] = _correlation(blocks[at], source.astype(np.float64))
        return out

    def _entry(self, image: SliceImage) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels, block origins queried, found to be copies) of the slice being scored."""
        key = id(image.pixels)
        entry = self._found.get(key)
        if entry is None or entry[0] is not image.pixels:
            shape = image.pixels.shape
            entry = (image.pixels, np.zeros(shape, bool), np.zeros(shape, bool))
            self._found = {key: entry}
        return entry

    def _window(self, loc: Location) -> tuple[int, int, int, int] | None:
        """Block origins (y0, y1, x0, x1) within ``reach_px`` of the location."""
        rows, cols = loc.image.pixels.shape
        r, h = self.reach_px, self.side // 2
        y0, y1 = max(0, loc.y - h - r), min(rows - self.side + 1, loc.y - h + r + 1)
        x0, x1 = max(0, loc.x - h - r), min(cols - self.side + 1, loc.x - h + r + 1)
        return (y0, y1, x0, x1) if y1 > y0 and x1 > x0 else None

    def _fill(self, image: SliceImage, windows: Sequence[tuple[int, int, int, int]]) -> None:
        """Query every block origin of ``windows`` not yet queried, in one batch per slice
        (overlapping regions never query a block twice)."""
        _, done, found = self._entry(image)
        todo = np.zeros(done.shape, dtype=bool)
        for y0, y1, x0, x1 in windows:
            todo[y0:y1, x0:x1] = True
        todo &= ~done
        if todo.any():
            ys, xs = np.nonzero(todo)
            found[ys, xs] = self._slice_hits(image, self._residual_near(image, windows), ys, xs)
            done[ys, xs] = True

    def candidates(self, image: SliceImage, mask: np.ndarray) -> list[tuple[int, int, float]]:
        """Centres (x, y, hits) of areas of the slice whose noise is copied from elsewhere.

        A removal leaves no blob and, with borrowed noise, no noise hole either, so nothing
        else proposes it. The slice is queried on a sparse grid: clusters of ``step`` x
        ``step`` block origins (``step``: the index grid, so every copy offset meets an
        indexed donor) every ``spacing * step`` pixels (:data:`CANDIDATE_SPACING`). Clusters
        of :data:`CANDIDATE_HITS` or more hits are returned, strongest first; the region is
        then scored densely (blocks already queried are not queried again).
        """
        if self._tables.words.size == 0:
            return []
        st, h = self._step, self.side // 2
        rows, cols = image.pixels.shape
        spacing = CANDIDATE_SPACING.get(st, CANDIDATE_SPACING_LARGE) * st
        grid_y = np.flatnonzero(np.arange(rows - self.side + 1) % spacing < st)
        grid_x = np.flatnonzero(np.arange(cols - self.side + 1) % spacing < st)
        if grid_y.size == 0 or grid_x.size == 0:
            return []
        ys, xs = (a.ravel() for a in np.meshgrid(grid_y, grid_x, indexing="ij"))
        inside = mask[ys + h, xs + h] & self._noisy(image)[ys + h, xs + h]
        ys, xs = ys[inside], xs[inside]
        _, done, found = self._entry(image)
        todo = ~done[ys, xs]
        if todo.any():
            qy, qx = ys[todo], xs[todo]
            found[qy, qx] = self._slice_hits(image, self._residual(image), qy, qx)
            done[qy, qx] = True
        hit = np.zeros(found.shape, dtype=bool)
        hit[ys, xs] = found[ys, xs]
        if not hit.any():
            return []
        labels, count = ndimage.label(ndimage.binary_dilation(hit, iterations=spacing))
        index = np.arange(1, count + 1)
        sizes = ndimage.sum_labels(hit, labels, index)
        centres = ndimage.center_of_mass(hit, labels, index)
        out = [
            (int(round(c[1])) + h, int(round(c[0])) + h, float(n))
            for c, n in zip(centres, sizes, strict=True)
            if n >= CANDIDATE_HITS
        ]
        return sorted(out, key=lambda t: -t[2])[:CANDIDATES_PER_SLICE]

    def score(self, locations: Sequence[Location]) -> list[RegionScore]:
        out: list[RegionScore] = []
        start = 0
        while start < len(locations):  # each run of locations on one slice: one batch
            image = locations[start].image
            end = start + 1
            while end < len(locations) and locations[end].image.pixels is image.pixels:
                end += 1
            run = locations[start:end]
            if run[0].context and slice_id(image) not in self._slice_of:
                self.prepare(run[0].context)
            windows = [self._window(loc) for loc in run]
            self._fill(image, [w for w in windows if w is not None])
            found = self._entry(image)[2]
            for loc, w in zip(run, windows, strict=True):
                here = found[w[0] : w[1], w[2] : w[3]] if w else np.zeros((0, 0), dtype=bool)
                out.append(RegionScore(float(here.sum()), self._heatmap(loc, here)))
            start = end
        return out

    def _heatmap(self, loc: Location, found: np.ndarray) -> np.ndarray:
        """The pixels covered by the location's copied blocks (64x64 crop around it)."""
        heat = np.zeros((2 * HEATMAP_HALF, 2 * HEATMAP_HALF), dtype=np.float32)
        if not found.size:
            return heat
        s, h, r = self.side, self.side // 2, self.reach_px
        y0, x0 = max(0, loc.y - h - r) + h, max(0, loc.x - h - r) + h  # first block centre
        rows, cols = loc.image.pixels.shape
        # Only pixels within a block of a found centre are non-zero, so the filter runs on that
        # neighbourhood (clipped to the image, whose edges reflect as they did on the whole).
        top, left = max(0, y0 - s), max(0, x0 - s)
        bottom, right = min(rows, y0 + found.shape[0] + s), min(cols, x0 + found.shape[1] + s)
        centres = np.zeros((bottom - top, right - left), dtype=np.float32)
        fy, fx = y0 - top, x0 - left
        centres[fy : fy + found.shape[0], fx : fx + found.shape[1]] = found
        local = ndimage.uniform_filter(centres, s) * s**2
        paste(heat, local, top - (loc.y - HEATMAP_HALF), left - (loc.x - HEATMAP_HALF))
        return heat

    def calibrate(self, series: Sequence[SliceImage]) -> AnalyticNull | Calibration:
        """The stated bound, tested on :data:`GATE_REFERENCES` references of ``series``."""
        refs = reference_locations(series, GATE_REFERENCES, seed=1, with_context=True)
        return self.null_from([r.score for r in self.score(refs)])

    def null_from(self, reference_scores: Sequence[float]) -> AnalyticNull | Calibration:
        """:data:`COPY_P` at :data:`MIN_HITS` where the series' genuine references keep to
        it, else their empirical null (see the module docstring)."""
        scores = np.asarray(reference_scores, dtype=np.float64)
        bound = AnalyticNull(threshold=MIN_HITS, p_at_or_above=COPY_P)
        if scores.size == 0 or np.mean(scores >= GATE_HITS) <= GATE_SHARE:
            return bound
        return Calibration.from_scores(scores)


def _high_pass(pixels: np.ndarray) -> np.ndarray:
    """``pixels - gaussian(pixels, HIGH_PASS_SIGMA)``: the scales where noise dominates."""
    px = pixels.astype(np.float64)
    return px - ndimage.gaussian_filter(px, HIGH_PASS_SIGMA)


def _frozen(mask: np.ndarray, erode: int) -> np.ndarray:
    out = ndimage.binary_erosion(mask, iterations=erode)
    out.flags.writeable = False  # cached on the slice, shared
    return out


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows (0 where either row is constant)."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    aa, bb = (a * a).sum(axis=1), (b * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / np.sqrt(aa) / np.sqrt(bb)
    return np.where((aa > 0) & (bb > 0), np.clip(r, -1.0, 1.0), 0.0)
