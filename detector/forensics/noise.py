"""Noise-consistency: is this region's scanner noise the series' noise at the same intensity?

Borrowed from camera forensics (noise-residual and noiseprint-style consistency of a region
against the rest of the same image) and from CTForensics' wavelet cue: edits re-synthesise or
smooth the noise, adversarial perturbations add white noise on top of the scanner's correlated
noise, and diffusion fills are too smooth. Two features per pixel, each in a (2w+1)^2 window:

- level: log mean |d1|, d1 the finest diagonal Haar detail (cancels planar intensity);
- colour: log mean |d1| - log mean |d2|, d2 the next scale's detail: the slope of the noise
  power spectrum, i.e. the reconstruction kernel. White noise added on top raises it; a
  smoother synthetic noise lowers it.

Both are robust z-scores against slice pixels of matched local intensity (``binned_z``); the
anomaly map is the larger |z|. Details are clipped at 4x their slice median first, so an edge
or a vessel in the window does not read as noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from detector.forensics.base import MapCheck, binned_z
from detector.forensics.references import tissue_core
from detector.interface import Location


def _diag(img: np.ndarray, step: int) -> np.ndarray:
    """Diagonal Haar detail at lag ``step``, same shape as ``img`` (edge rows repeated)."""
    d = (img[:-step, :-step] - img[:-step, step:] - img[step:, :-step] + img[step:, step:]) / 2
    return np.pad(d, ((0, step), (0, step)), mode="edge")


def noise_features(pixels: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(level, colour, local mean) maps of one slice, as described in the module docstring."""
    img = pixels.astype(np.float64)
    d1 = np.abs(_diag(img, 1))
    d2 = np.abs(_diag(ndimage.uniform_filter(img, 2), 2))
    c1 = 4 * float(np.median(d1)) + 1e-6
    c2 = 4 * float(np.median(d2)) + 1e-6
    a1 = ndimage.uniform_filter(np.minimum(d1, c1), window) + 1e-3
    a2 = ndimage.uniform_filter(np.minimum(d2, c2), window) + 1e-3
    level = np.log(a1)
    return level, level - np.log(a2), ndimage.uniform_filter(img, window)


class NoiseConsistencyCheck(MapCheck):
    """Noise level and spectral colour against the slice's own noise at matched intensity."""

    name = "noise-consistency"

    def __init__(self, window: int = 11, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.window = window

    @classmethod
    def create(
        cls, model_path: object = None, modality: str | None = None
    ) -> NoiseConsistencyCheck:
        """Registry factory: nothing to load."""
        return cls()

    def compute_map(self, loc: Location) -> np.ndarray:
        level, colour, mean = noise_features(loc.image.pixels, self.window)
        mask = tissue_core(loc.image)
        z_level = binned_z(level, mean, mask)
        z_colour = binned_z(colour, mean, mask)
        return np.maximum(np.abs(z_level), np.abs(z_colour))
