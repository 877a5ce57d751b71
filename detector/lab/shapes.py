"""Shape primitives the phantom scenes are painted with (no scanner model, no DICOM here).

Everything is defined in patient millimetres and evaluated on the pixel grid of one plane:
anti-aliased ellipses, a painter's-algorithm ``paint``, lobulated 3-D lesion blobs and a smooth
3-D random texture that is sampled at any (fractional) slice position, so partial-volume
averaging along z can sample between slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def ramp(t: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """Smooth 0 -> 1 step between a and b (smoothstep), for anatomy that appears along z."""
    s = np.clip((np.asarray(t, dtype=float) - a) / (b - a), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def soft(q: np.ndarray, size_mm: float | np.ndarray, edge_mm: float) -> np.ndarray:
    """Anti-aliased inside-fraction of a shape whose normalised radius is ``q`` (1 on the edge)."""
    return np.clip((1.0 - q) * size_mm / max(edge_mm, 1e-3) + 0.5, 0.0, 1.0)


def ellipse_q(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> np.ndarray:
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    return np.sqrt((u / np.maximum(a, 1e-3)) ** 2 + (v / np.maximum(b, 1e-3)) ** 2)


def ellipse(x, y, cx, cy, a, b, edge, angle=0.0) -> np.ndarray:  # noqa: ANN001 - numeric
    """Anti-aliased inside-fraction of a rotated ellipse (semi-axes ``a``, ``b`` in mm)."""
    return soft(ellipse_q(x, y, cx, cy, a, b, angle), np.minimum(a, b), edge)


def paint(img: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """Painter's algorithm: later tissue covers earlier tissue by its inside-fraction."""
    img *= 1.0 - mask
    img += mask * value


@dataclass
class Blob:
    """A lobulated 3-D lesion: radius modulated by smooth functions on the sphere."""

    centre: np.ndarray
    radius: float
    kind: str
    value: float
    freqs: np.ndarray  # (k, 3)
    phases: np.ndarray  # (k,)
    amps: np.ndarray  # (k,)

    def fraction(self, xs: np.ndarray, ys: np.ndarray, z: float, spacing: float, scale=1.0):  # noqa: ANN001
        vx = xs[None, :] - self.centre[0]
        vy = ys[:, None] - self.centre[1]
        vz = np.full_like(vx + vy, z - self.centre[2])
        d = np.sqrt(vx**2 + vy**2 + vz**2) + 1e-6
        n = np.stack(np.broadcast_arrays(vx / d, vy / d, vz / d), axis=-1)
        mod = np.zeros_like(d)
        for f, ph, a in zip(self.freqs, self.phases, self.amps, strict=True):
            mod += a * np.cos(n @ f + ph)
        rho = self.radius * scale * (1.0 + mod)
        return np.clip((rho - d) / spacing + 0.5, 0, 1)


def make_blob(rng: np.random.Generator, centre, radius: float, kind: str, value: float) -> Blob:  # noqa: ANN001
    k = 4
    lobulation = 0.06 if kind.startswith("solid") or kind == "mass" else 0.04
    if kind == "mass" and rng.random() < 0.4:
        lobulation = 0.12  # irregular mass
    return Blob(
        centre=np.asarray(centre, float),
        radius=radius,
        kind=kind,
        value=value,
        freqs=rng.normal(size=(k, 3)) * 2.5,
        phases=rng.uniform(0, 2 * np.pi, size=k),
        amps=rng.uniform(0.3, 1.0, size=k) * lobulation,
    )


def blob_bbox(blob: Blob, x0: float, y0: float, spacing: float, shape, z: float, scale=1.0):  # noqa: ANN001
    r = blob.radius * scale * 1.5
    if abs(z - blob.centre[2]) > r:
        return None
    rows, cols = shape
    c0 = max(int((blob.centre[0] - r - x0) / spacing), 0)
    c1 = min(int((blob.centre[0] + r - x0) / spacing) + 2, cols)
    r0 = max(int((blob.centre[1] - r - y0) / spacing), 0)
    r1 = min(int((blob.centre[1] + r - y0) / spacing) + 2, rows)
    if c0 >= c1 or r0 >= r1:
        return None
    return r0, r1, c0, c1


class Texture3D:
    """Smooth 3-D random texture over the study volume, sampled per slice (z-continuous)."""

    def __init__(
        self,
        rng: np.random.Generator,
        n_slices: int,
        dz: float,
        grid: int,
        sigma_mm: float,
        fov: float,
    ) -> None:
        cell = fov / grid
        vol = rng.normal(size=(n_slices + 4, grid, grid)).astype(np.float32)
        vol = ndimage.gaussian_filter(vol, (sigma_mm / dz, sigma_mm / cell, sigma_mm / cell))
        vol /= vol.std() + 1e-6
        self.vol = vol

    def slice(self, k: float, size: int) -> np.ndarray:
        """The texture at slice position ``k`` (fractional: linear between planes)."""
        pos = float(np.clip(k + 2, 0, self.vol.shape[0] - 1))
        lo = int(np.floor(pos))
        hi = min(lo + 1, self.vol.shape[0] - 1)
        w = pos - lo
        plane = self.vol[lo] if w == 0 else (1 - w) * self.vol[lo] + w * self.vol[hi]
        return ndimage.zoom(plane, size / plane.shape[0], order=1, mode="nearest")[:size, :size]
