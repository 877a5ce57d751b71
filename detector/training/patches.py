"""Genuine training and calibration patches, drawn where scoring will look.

Each draw takes one slice (or one regions-CSV row) and picks a centre:

- with a regions CSV (``filename, X, Y``): near the row's point, jittered by up to a quarter
  patch, so the model learns the areas of interest (as the BTD CT trainer did with nodules);
- otherwise, with probability ``proposal_fraction``, on one of the slice's own region
  proposals (:func:`detector.proposals.propose`: nodule- or mass-sized blobs, the places the
  service scores and attacks land), jittered a little; else anywhere inside the body
  (:func:`detector.preprocess.body_mask`). A slice without proposals falls back to the body.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detector.preprocess import Preprocessing, body_mask, extract_patch, to_unit
from detector.training.data import SliceRef

_EMPTY = np.empty((0, 2), np.int64)


class _UnitCache:
    """A small per-process LRU of normalised slices and their body pixels.

    Proposal centres are tiny and costly to find, so they are kept for every slice seen.
    """

    def __init__(self, prep: Preprocessing, size: int = 32) -> None:
        self.prep = prep
        self.size = size
        self.items: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.proposals: dict[str, np.ndarray] = {}

    def get(self, ref: SliceRef, proposals: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(unit slice, body points (N, 2) as x, y); also finds proposals when asked."""
        if ref.path in self.items and (not proposals or ref.path in self.proposals):
            self.items.move_to_end(ref.path)
            return self.items[ref.path]
        from detector.slices import read_slice

        image = read_slice(ref.path, intensity_range=ref.intensity_range)
        unit = to_unit(image, self.prep)
        rows, cols = np.nonzero(body_mask(unit, self.prep.modality))
        points = np.stack([cols, rows], axis=1) if rows.size else _EMPTY
        if proposals and ref.path not in self.proposals:
            from detector.proposals import propose

            found = propose(image)
            self.proposals[ref.path] = (
                np.array([(p.x, p.y) for p in found], dtype=np.int64) if found else _EMPTY
            )
        self.items[ref.path] = (unit, points)
        self.items.move_to_end(ref.path)
        if len(self.items) > self.size:
            self.items.popitem(last=False)
        return unit, points


class PatchDataset(Dataset):
    """Random genuine patches: near region points if given, else proposals or the body."""

    def __init__(
        self,
        slices: Sequence[SliceRef],
        prep: Preprocessing,
        regions: Sequence[tuple[str, int, int]] = (),
        patches_per_item: int = 4,
        seed: int = 0,
        jitter: bool = True,
        proposal_fraction: float = 0.0,
    ) -> None:
        self.slices = {s.path: s for s in slices}
        self.prep = prep
        self.regions = [r for r in regions if r[0] in self.slices]
        self.items: list[tuple[SliceRef, int, int] | SliceRef] = (
            [(self.slices[p], x, y) for p, x, y in self.regions] if regions else list(slices)
        )
        self.repeat = max(1, patches_per_item)
        self.seed = seed
        self.jitter = jitter
        self.proposal_fraction = proposal_fraction
        self.epoch = 0
        self._cache: _UnitCache | None = None

    def __len__(self) -> int:
        return len(self.items) * self.repeat

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def centre(self, index: int) -> tuple[SliceRef, np.ndarray, int, int, str]:
        """(slice, unit image, x, y, where) of draw ``index``; ``where`` names the rule used."""
        if self._cache is None:  # created lazily so each DataLoader worker has its own
            self._cache = _UnitCache(self.prep)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        item = self.items[index % len(self.items)]
        size = self.prep.patch_size
        if isinstance(item, tuple):
            ref, x, y = item
            unit, _ = self._cache.get(ref)
            if self.jitter:
                x += int(rng.integers(-(size // 4), size // 4 + 1))
                y += int(rng.integers(-(size // 4), size // 4 + 1))
            return ref, unit, x, y, "region"
        use_proposal = self.proposal_fraction > 0 and rng.random() < self.proposal_fraction
        unit, points = self._cache.get(item, proposals=use_proposal)
        blobs = self._cache.proposals.get(item.path, _EMPTY) if use_proposal else _EMPTY
        if len(blobs):
            x, y = (int(v) for v in blobs[rng.integers(len(blobs))])
            if self.jitter:
                x += int(rng.integers(-(size // 8), size // 8 + 1))
                y += int(rng.integers(-(size // 8), size // 8 + 1))
            return item, unit, x, y, "proposal"
        if len(points):
            x, y = (int(v) for v in points[rng.integers(len(points))])
        else:
            y, x = int(rng.integers(unit.shape[0])), int(rng.integers(unit.shape[1]))
        return item, unit, x, y, "body"

    def __getitem__(self, index: int) -> torch.Tensor:
        _, unit, x, y, _ = self.centre(index)
        return torch.from_numpy(extract_patch(unit, x, y, self.prep.patch_size))[None]


def calibration_patches(
    held_out: Sequence[SliceRef],
    prep: Preprocessing,
    regions: Sequence[tuple[str, int, int]],
    count: int,
    seed: int,
    proposal_fraction: float = 0.0,
) -> np.ndarray:
    """``count`` deterministic genuine patches from held-out slices.

    Near the held-out region points when the regions CSV has any (the locations users will
    point at), otherwise proposals and body as training drew them: the same distribution.
    """
    ds = PatchDataset(held_out, prep, regions, 1, seed + 1, proposal_fraction=proposal_fraction)
    if not ds.items:  # regions given, none on held-out slices: fall back to the body
        ds = PatchDataset(held_out, prep, (), 1, seed + 1, proposal_fraction=proposal_fraction)
    ds.repeat = max(1, math.ceil(count / len(ds.items)))
    idx = np.random.default_rng(seed).permutation(len(ds))[:count]
    return np.stack([ds[int(i)][0].numpy() for i in idx])
