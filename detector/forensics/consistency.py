"""Slice-consistency: does this region continue into the slices above and below it?

Anatomy is 3-D and a CT or MR series samples it densely: what is on slice k is predicted, up to
noise and partial volume, by the mean of slices k-1 and k+1. CT-GAN works on 3-D cubes and is
hard to catch this way, but single-slice edits (a 2-D injection, a removal on the key slice, a
pasted patch) leave a structure with no continuation. The map is the low-pass energy of
``slice - prediction`` in a window, as a robust z-score against slice pixels with the same
amount of predicted structure (vessels move between slices too). Only excess counts.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from detector.forensics.base import MapCheck, binned_z
from detector.forensics.references import tissue_core
from detector.interface import Location


class SliceConsistencyCheck(MapCheck):
    """Energy of what neither neighbouring slice explains, against the slice's own level."""

    name = "slice-consistency"

    def __init__(self, window: int = 11, sigma: float = 1.5, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.window = window
        self.sigma = sigma

    @classmethod
    def create(
        cls, model_path: object = None, modality: str | None = None
    ) -> SliceConsistencyCheck:
        """Registry factory: nothing to load."""
        return cls()

    def compute_map(self, loc: Location) -> np.ndarray:
        here = loc.image.pixels
        near = [n.pixels for n in loc.neighbours if n is not None and n.pixels.shape == here.shape]
        if not near:
            return np.zeros(here.shape, dtype=np.float32)
        predicted = np.mean([n.astype(np.float64) for n in near], axis=0)
        diff = ndimage.gaussian_filter(here.astype(np.float64) - predicted, self.sigma)
        energy = np.log(ndimage.uniform_filter(diff**2, self.window) + 1e-3)
        smooth = ndimage.gaussian_filter(predicted, self.sigma)
        structure = np.log(
            ndimage.uniform_filter(
                (smooth - ndimage.uniform_filter(smooth, self.window)) ** 2, self.window
            )
            + 1e-3
        )
        mask = tissue_core(loc.image)
        return np.maximum(binned_z(energy, structure, mask), 0.0)
