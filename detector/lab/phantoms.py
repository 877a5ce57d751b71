"""Synthetic chest CT and breast MRI studies, written as valid DICOM series.

The detectors under test learn what genuine anatomy and genuine scanner noise look like, so the
phantoms must have both: anatomy defined in 3-D patient millimetres (lungs, vessel and airway
trees, ribs, vertebrae, breasts, lesions) and sampled slice by slice, so structures continue
from one slice to the next exactly as in a real series; then a scanner model (blur, CT-like
correlated noise or MR-like Rician noise and coil bias field) on top.

Everything is drawn from ``numpy.random.default_rng(seed)`` and UIDs come from
name-based UUIDs (``2.25.<uuid5>``) seeded the same way, so one seed gives one byte-identical
study.
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
)
from scipy import ndimage

MODALITIES = ("CT", "MR")
LESIONS_CSV = "lesions.csv"

# Stored CT values: unsigned 12-bit, intercept -1024 -> HU in [-1024, 3071].
CT_INTERCEPT = -1024.0
CT_SLOPE = 1.0
CT_BITS_STORED = 12
MR_BITS_STORED = 12


@dataclass(frozen=True)
class Lesion:
    """A lesion's ground truth: the slice nearest its centre and its centre pixel there."""

    slice_index: int
    x: int  # column
    y: int  # row
    radius_mm: float
    kind: str  # solid-nodule, part-solid-nodule, mass, rim-enhancing-mass
    z_mm: float = 0.0  # centre along the slice normal (patient z)
    study: str = ""  # folder name of the study
    file: str = ""  # file name of the centre slice inside the study folder

    def radius_on_slice_mm(self, z_mm: float) -> float:
        """Radius of the lesion's cross-section on the plane at ``z_mm`` (0 when it misses)."""
        dz = abs(z_mm - self.z_mm)
        return float(np.sqrt(self.radius_mm**2 - dz**2)) if dz < self.radius_mm else 0.0


@dataclass
class PhantomStudy:
    """One synthetic patient: one study, one series, ``datasets`` ordered by ascending z."""

    modality: str
    patient_id: str
    datasets: list[pydicom.Dataset]
    lesions: list[Lesion] = field(default_factory=list)
    slice_z_mm: list[float] = field(default_factory=list)

    @property
    def folder_name(self) -> str:
        return self.patient_id

    @staticmethod
    def file_name(index: int) -> str:
        return f"IM{index + 1:04d}.dcm"


# ----------------------------------------------------------------------------- shape helpers


def _ramp(t: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """Smooth 0 -> 1 step between a and b (smoothstep), for anatomy that appears along z."""
    s = np.clip((np.asarray(t, dtype=float) - a) / (b - a), 0.0, 1.0)
    return s * s * (3 - 2 * s)


def _soft(q: np.ndarray, size_mm: float | np.ndarray, edge_mm: float) -> np.ndarray:
    """Anti-aliased inside-fraction of a shape whose normalised radius is ``q`` (1 on the edge)."""
    return np.clip((1.0 - q) * size_mm / max(edge_mm, 1e-3) + 0.5, 0.0, 1.0)


def _ellipse_q(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0
) -> np.ndarray:
    ca, sa = np.cos(angle), np.sin(angle)
    u = (x - cx) * ca + (y - cy) * sa
    v = -(x - cx) * sa + (y - cy) * ca
    return np.sqrt((u / np.maximum(a, 1e-3)) ** 2 + (v / np.maximum(b, 1e-3)) ** 2)


def _ellipse(x, y, cx, cy, a, b, edge, angle=0.0) -> np.ndarray:  # noqa: ANN001 - numeric
    return _soft(_ellipse_q(x, y, cx, cy, a, b, angle), np.minimum(a, b), edge)


def _paint(img: np.ndarray, mask: np.ndarray, value: float | np.ndarray) -> None:
    """Painter's algorithm: later tissue covers earlier tissue by its inside-fraction."""
    img *= 1.0 - mask
    img += mask * value


@dataclass
class _Segment:
    p0: np.ndarray
    p1: np.ndarray
    radius: float


def _rotate_towards(d: np.ndarray, rng: np.random.Generator, angle: float) -> np.ndarray:
    """Turn unit vector d by ``angle`` about a random perpendicular axis."""
    r = rng.normal(size=3)
    r -= r.dot(d) * d
    r /= np.linalg.norm(r) + 1e-9
    out = np.cos(angle) * d + np.sin(angle) * r
    return out / np.linalg.norm(out)


def _grow_forest(
    rng: np.random.Generator,
    roots: list[tuple[np.ndarray, np.ndarray, float, float]],
    generations: int,
    inside: Callable[[np.ndarray], np.ndarray],
    pull: bool = True,
    free_generations: int = 3,
    min_radius: float = 0.35,
) -> list[_Segment]:
    """Dichotomous branching trees (vessels, airways) that stay inside ``inside``.

    Grown one generation at a time so the inside test runs on all branch tips at once.
    Children are thinner (Murray-like 0.7-0.88 ratio) and shorter, and bend by 20-45 degrees;
    a pull towards the root direction keeps each tree heading for the periphery as real ones
    do. The first ``free_generations`` may cross the mediastinum (hilum to lung).
    """
    segments: list[_Segment] = []
    frontier = [
        (
            np.asarray(p, float),
            np.asarray(d, float) / np.linalg.norm(d),
            r,
            ln,
            np.asarray(d, float) / np.linalg.norm(d),
        )
        for p, d, r, ln in roots
    ]
    for gen in range(generations):
        if not frontier:
            break
        ends = np.array([p + d * ln for p, d, _, ln, _ in frontier])
        halves = np.array([p + d * ln * 0.5 for p, d, _, ln, _ in frontier])
        if gen >= free_generations:
            ok_full = inside(ends)
            ok_half = inside(halves)
        else:
            ok_full = np.ones(len(frontier), bool)
            ok_half = ok_full
        nxt = []
        for i, (p, d, r, ln, root_dir) in enumerate(frontier):
            if ok_full[i]:
                q = ends[i]
            elif ok_half[i]:
                q = halves[i]
            else:
                continue
            segments.append(_Segment(p, q, r))
            if r < min_radius:
                continue
            for _ in range(2):
                nd = _rotate_towards(d, rng, np.deg2rad(rng.uniform(20, 45)))
                if pull:
                    nd = nd + 0.35 * root_dir
                    nd /= np.linalg.norm(nd)
                nxt.append(
                    (q, nd, r * rng.uniform(0.7, 0.88), ln * rng.uniform(0.72, 0.92), root_dir)
                )
        frontier = nxt
    return segments


def _tube_fraction(
    segments: list[_Segment],
    x0: float,
    y0: float,
    spacing: float,
    shape: tuple[int, int],
    z: float,
    radius_scale: float = 1.0,
) -> np.ndarray:
    """Inside-fraction of a set of 3-D tubes cut by the plane at ``z`` (max over tubes)."""
    out = np.zeros(shape, dtype=np.float32)
    rows, cols = shape
    for seg in segments:
        r = seg.radius * radius_scale
        z0, z1 = seg.p0[2], seg.p1[2]
        if z < min(z0, z1) - r or z > max(z0, z1) + r:
            continue
        dz = z1 - z0
        if abs(dz) > 1e-6:
            s_a = np.clip((z - r - z0) / dz, 0, 1)
            s_b = np.clip((z + r - z0) / dz, 0, 1)
        else:
            s_a, s_b = 0.0, 1.0
        pa = seg.p0 + (seg.p1 - seg.p0) * s_a
        pb = seg.p0 + (seg.p1 - seg.p0) * s_b
        xmin, xmax = min(pa[0], pb[0]) - r - spacing, max(pa[0], pb[0]) + r + spacing
        ymin, ymax = min(pa[1], pb[1]) - r - spacing, max(pa[1], pb[1]) + r + spacing
        c0 = max(int((xmin - x0) / spacing), 0)
        c1 = min(int((xmax - x0) / spacing) + 2, cols)
        r0 = max(int((ymin - y0) / spacing), 0)
        r1 = min(int((ymax - y0) / spacing) + 2, rows)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = x0 + spacing * np.arange(c0, c1)
        ys = y0 + spacing * np.arange(r0, r1)
        px = xs[None, :] - seg.p0[0]
        py = ys[:, None] - seg.p0[1]
        pz = z - seg.p0[2]
        u = seg.p1 - seg.p0
        uu = float(u.dot(u)) or 1e-9
        s = np.clip((px * u[0] + py * u[1] + pz * u[2]) / uu, 0, 1)
        d = np.sqrt((px - s * u[0]) ** 2 + (py - s * u[1]) ** 2 + (pz - s * u[2]) ** 2)
        frac = np.clip((r - d) / spacing + 0.5, 0, 1).astype(np.float32)
        np.maximum(out[r0:r1, c0:c1], frac, out=out[r0:r1, c0:c1])
    return out


@dataclass
class _Blob:
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


def _make_blob(rng: np.random.Generator, centre, radius: float, kind: str, value: float) -> _Blob:  # noqa: ANN001
    k = 4
    lobulation = 0.06 if kind.startswith("solid") or kind == "mass" else 0.04
    if kind == "mass" and rng.random() < 0.4:
        lobulation = 0.12  # irregular mass
    return _Blob(
        centre=np.asarray(centre, float),
        radius=radius,
        kind=kind,
        value=value,
        freqs=rng.normal(size=(k, 3)) * 2.5,
        phases=rng.uniform(0, 2 * np.pi, size=k),
        amps=rng.uniform(0.3, 1.0, size=k) * lobulation,
    )


def _blob_bbox(blob: _Blob, x0: float, y0: float, spacing: float, shape, z: float, scale=1.0):  # noqa: ANN001
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


class _Texture3D:
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

    def slice(self, k: int, size: int) -> np.ndarray:
        plane = self.vol[k + 2]
        return ndimage.zoom(plane, size / plane.shape[0], order=1, mode="nearest")[:size, :size]


def _correlated_noise(rng: np.random.Generator, shape, sigma: float, size: int) -> np.ndarray:  # noqa: ANN001
    """CT-like noise: white noise through a band-pass (filtered back-projection-like NPS)."""
    scale = size / 512.0
    w = rng.normal(size=shape).astype(np.float32)
    n = ndimage.gaussian_filter(w, 0.7 * scale + 0.3) - 0.55 * ndimage.gaussian_filter(
        w, 2.0 * scale + 0.6
    )
    return n * (sigma / (n.std() + 1e-6))


# ----------------------------------------------------------------------------- chest CT


class _ChestCT:
    """A patient's thorax in millimetres; ``render(z)`` samples one axial plane in HU."""

    LENGTH = 290.0  # apex (t=0, z=0) to below the diaphragm domes (t=1, z=-LENGTH)

    def __init__(self, rng: np.random.Generator, size: int, n_slices: int) -> None:
        self.rng = rng
        self.size = size
        self.fov = float(rng.uniform(340, 390))
        self.spacing = self.fov / size
        self.dz = float(rng.choice([1.0, 1.25, 2.0, 2.5]))
        self.thickness = self.dz if self.dz >= 1.25 else 1.25
        self.x0 = -self.fov / 2 + self.spacing / 2
        self.y0 = -self.fov / 2 + self.spacing / 2 - float(rng.uniform(0, 15))
        # Body habitus.
        self.a = float(rng.uniform(148, 172))
        self.b_ant = float(rng.uniform(95, 115))
        self.b_post = self.b_ant + float(rng.uniform(0, 10))
        self.cy = float(rng.uniform(-5, 10))
        self.fat = float(rng.uniform(6, 18))
        self.muscle = float(rng.uniform(7, 11))
        self.wall = self.fat + self.muscle + 9.0
        self.phi = rng.uniform(0, 2 * np.pi, size=3)
        self.noise_hu = float(rng.uniform(12, 22))
        self.rib_phase = float(rng.uniform(0, 1))
        self.heart_x = float(rng.uniform(15, 30))
        # Coverage: the study starts somewhere with lung on every slice.
        cover = n_slices * self.dz
        t_lo, t_hi = 0.12, 0.92
        span = (t_hi - t_lo) * self.LENGTH
        start_t = t_lo + (rng.uniform(0, max(span - cover, 0)) / self.LENGTH)
        self.z_top = -start_t * self.LENGTH
        self.z = [self.z_top - cover + self.dz * (k + 1) for k in range(n_slices)]
        self.z = [round(v, 3) for v in self.z]
        self.spine_y = self.cy + self.b_post - self.wall - 18.0
        self.texture = _Texture3D(rng, n_slices, self.dz, min(128, size), 2.5, self.fov)
        self.bone_tex = _Texture3D(rng, n_slices, self.dz, min(128, size), 1.2, self.fov)
        self.vessels = self._grow_vessels()
        self.airways, self.airway_lumen = self._grow_airways()
        self.blobs: list[_Blob] = []

    # --- anatomy as point-evaluable fields (x, y in mm, t in [0, 1] along the chest)

    def t_of(self, z: float | np.ndarray) -> np.ndarray:
        return np.asarray(-np.asarray(z) / self.LENGTH)

    def body_q(self, x: np.ndarray, y: np.ndarray, t: np.ndarray, inset: float = 0.0):
        theta = np.arctan2(y - self.cy, x)
        wobble = (
            1 + 0.025 * np.sin(2 * theta + self.phi[0]) + 0.015 * np.sin(3 * theta + self.phi[1])
        )
        width = (self.a * (0.9 + 0.1 * _ramp(t, 0.0, 0.5)) - inset) * wobble
        b = (
            np.where(y < self.cy, self.b_ant, self.b_post) * (0.93 + 0.07 * _ramp(t, 0, 0.4))
            - inset
        )
        p = np.where(y < self.cy, 2.3, 3.2)
        q = (np.abs(x) / np.maximum(width, 1)) ** p + (np.abs(y - self.cy) / np.maximum(b, 1)) ** p
        return q ** (1 / p), np.minimum(width, b)

    def lung_fraction(self, x, y, t, edge: float = 1.0) -> np.ndarray:  # noqa: ANN001
        """Inside-fraction of either lung (vectorised over points or a grid)."""
        t = np.asarray(t, dtype=float)
        apex = 0.55 + 0.45 * _ramp(t, -0.02, 0.22)
        q, size = self.body_q(x, y, t, inset=self.wall)
        cav = _soft(q / apex, size * apex, edge)
        heart = _ramp(t, 0.42, 0.62) * (1 - _ramp(t, 0.95, 1.15))
        med_w = 18 + 10 * _ramp(t, 0.2, 0.4)
        med = _ellipse(x, y, 4.0, self.cy - 5, med_w, self.b_ant, edge)
        hrt = _ellipse(x, y, self.heart_x, self.cy - 22, 66 * heart + 1, 46 * heart + 1, edge, 0.55)
        hrt = hrt * (heart > 0.02)
        spine = _ellipse(x, y, 0.0, self.spine_y - 8, 30, 34, edge)
        aorta = _ellipse(x, y, 24.0, self.spine_y - 32, 14, 14, edge) * _ramp(t, 0.18, 0.25)
        dome_r = _ellipse(
            x,
            y,
            -45,
            self.cy + 5,
            150 * _ramp(t, 0.72, 1.1) + 1,
            120 * _ramp(t, 0.72, 1.1) + 1,
            edge,
        )
        dome_l = _ellipse(
            x,
            y,
            55,
            self.cy + 5,
            130 * _ramp(t, 0.8, 1.15) + 1,
            100 * _ramp(t, 0.8, 1.15) + 1,
            edge,
        )
        out = cav * (1 - med) * (1 - hrt) * (1 - spine) * (1 - aorta)
        out = out * (1 - dome_r * (t > 0.72)) * (1 - dome_l * (t > 0.8))
        return out

    def inside_lung(self, p: np.ndarray) -> bool:
        return bool(self._inside_lungs(np.asarray(p, float)[None, :])[0])

    def _inside_lungs(self, pts: np.ndarray) -> np.ndarray:
        return self.lung_fraction(pts[:, 0], pts[:, 1], self.t_of(pts[:, 2])) > 0.5

    def _grow_vessels(self) -> list[_Segment]:
        rng = self.rng
        z_h = -0.45 * self.LENGTH
        roots = []
        for side in (-1, 1):
            for kind_dy, dz_h in ((-10.0, 25.0), (12.0, -15.0), (0.0, -45.0)):
                # arteries (upper, anterior), veins (lower, posterior), lower-lobe trunk
                hilum = np.array([side * 52.0, self.cy + kind_dy, z_h + dz_h])
                for d in (
                    [0, 0, 1],
                    [0, 0, -1],
                    [side, -0.6, 0.3],
                    [side, 0.6, -0.3],
                    [side, 0, 0],
                    [side * 0.5, 0.8, -0.8],
                    [side, -0.3, 0.8],
                    [side * 0.6, 0.3, -1],
                ):
                    roots.append(
                        (hilum, np.asarray(d, float), rng.uniform(3.2, 4.5), rng.uniform(20, 26))
                    )
        return _grow_forest(rng, roots, 10, self._inside_lungs)

    def _grow_airways(self) -> tuple[list[_Segment], float]:
        rng = self.rng
        carina = np.array([2.0, self.cy - 2.0, -0.36 * self.LENGTH])
        segs = [_Segment(carina + [0, 0, 0.0], carina + [0, 0, 0.36 * self.LENGTH + 20], 9.0)]
        roots = []
        for side in (-1, 1):
            main_end = carina + np.array([side * 38.0, 6.0, -22.0])
            segs.append(_Segment(carina, main_end, 6.5))
            for d in ([0, 0, 1], [0, 0, -1], [side, -0.5, 0.2], [side, 0.5, -0.5]):
                roots.append((main_end, np.asarray(d, float), 4.2, 24.0))
        segs += _grow_forest(rng, roots, 6, self._inside_lungs, free_generations=2, min_radius=1.0)
        return segs, 0.72

    def add_nodules(self, n: int) -> list[_Blob]:
        rng = self.rng
        z_lo, z_hi = self.z[0], self.z[-1]
        tries = 0
        while len(self.blobs) < n and tries < 400:
            tries += 1
            radius = float(np.exp(rng.uniform(np.log(2.0), np.log(15.0))))
            kind = "part-solid-nodule" if rng.random() < 0.35 and radius > 4 else "solid-nodule"
            c = np.array(
                [
                    rng.uniform(-140, 140),
                    rng.uniform(-90, 90),
                    rng.uniform(z_lo - 0.4 * self.dz, z_hi + 0.4 * self.dz),
                ]
            )
            c[1] += self.cy
            probes = [c] + [
                c + radius * 1.25 * np.asarray(v)
                for v in ([1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1])
            ]
            if not all(self.inside_lung(p) for p in probes):
                continue
            if any(np.linalg.norm(c - b.centre) < radius + b.radius + 6 for b in self.blobs):
                continue
            value = (
                float(rng.uniform(15, 55))
                if kind == "solid-nodule"
                else float(rng.uniform(-560, -380))
            )
            self.blobs.append(_make_blob(rng, c, radius, kind, value))
        return self.blobs

    # --- rendering

    def render(self, k: int) -> np.ndarray:
        z = self.z[k]
        t = float(self.t_of(z))
        n = self.size
        sp = self.spacing
        xs = self.x0 + sp * np.arange(n)
        ys = self.y0 + sp * np.arange(n)
        x, y = np.meshgrid(xs, ys)
        edge = max(sp, 0.6)
        img = np.full((n, n), -1000.0, dtype=np.float64)
        tex = self.texture.slice(k, n).astype(np.float64)
        btex = self.bone_tex.slice(k, n).astype(np.float64)

        # Table: carbon-fibre shell under the back, foam in between.
        table_y = self.cy + self.b_post + 8
        shell = _ellipse(x, y, 0, table_y + 420, 700, 420, edge) - _ellipse(
            x, y, 0, table_y + 424, 700, 417, edge
        )
        _paint(img, np.clip(shell, 0, 1) * (np.abs(x) < 210), 180.0)

        q, size = self.body_q(x, y, t)
        body = _soft(q, size, edge)
        _paint(img, body, 25.0)  # skin
        q2, size2 = self.body_q(x, y, t, inset=2.0)
        _paint(img, _soft(q2, size2, edge), -105.0 + 8 * tex)  # subcutaneous fat
        q3, size3 = self.body_q(x, y, t, inset=2.0 + self.fat)
        _paint(img, _soft(q3, size3, edge), 48.0 + 6 * tex)  # chest-wall muscle
        # Paraspinal muscles are thick: fill the back between spine and skin.
        _paint(
            img,
            _ellipse(x, y, 0, self.spine_y + 38, 62, 34, edge) * _soft(q3, size3, edge),
            52.0 + 6 * tex,
        )
        # Intercostal / extrapleural fat line.
        q4, size4 = self.body_q(x, y, t, inset=self.wall - 3)
        _paint(img, _soft(q4, size4, edge), -80.0)

        # Mediastinum: fat, then organs.
        apex = 0.55 + 0.45 * _ramp(t, -0.02, 0.22)
        qc, sc = self.body_q(x, y, t, inset=self.wall)
        cavity = _soft(qc / apex, sc * apex, edge)
        _paint(img, cavity, -95.0 + 10 * tex)  # mediastinal fat fills the cavity first
        heart = float(_ramp(t, 0.42, 0.62) * (1 - _ramp(t, 0.95, 1.15)))
        if heart > 0.02:
            _paint(
                img,
                _ellipse(
                    x, y, self.heart_x, self.cy - 22, 66 * heart - 4, 46 * heart - 4, edge, 0.55
                ),
                42.0,
            )
        if t < 0.5:  # great vessels above the heart
            up = 1 - _ramp(t, 0.42, 0.5)
            if t > 0.22:
                _paint(
                    img, up * _ellipse(x, y, 8, self.cy - 35, 15, 15, edge), 42.0
                )  # ascending aorta
                _paint(
                    img, up * _ellipse(x, y, 30, self.cy - 30, 13, 14, edge), 40.0
                )  # pulmonary trunk
            else:
                arch = _ramp(t, 0.15, 0.2)
                _paint(img, arch * _ellipse(x, y, 10, self.cy - 15, 30, 11, edge, 0.5), 42.0)
            _paint(img, _ellipse(x, y, -24, self.cy - 28, 10, 11, edge), 38.0)  # SVC
            if t < 0.3:
                for dx in (-14, 10, 22):  # supra-aortic branches
                    _paint(img, _ellipse(x, y, dx, self.cy - 30, 5.5, 5.5, edge), 40.0)
        _paint(
            img, _ellipse(x, y, 24, self.spine_y - 32, 12, 12, edge) * _ramp(t, 0.18, 0.25), 40.0
        )
        _paint(img, _ellipse(x, y, 8, self.spine_y - 24, 7, 6, edge), 35.0)  # oesophagus
        _paint(img, _ellipse(x, y, 8, self.spine_y - 24, 2.0, 1.5, edge), -900.0)

        # Upper abdomen under the domes.
        if t > 0.72:
            dr = _ramp(t, 0.72, 1.1)
            _paint(
                img,
                cavity * _ellipse(x, y, -45, self.cy + 5, 150 * dr + 1, 120 * dr + 1, edge),
                58.0 + 4 * tex,
            )
        if t > 0.8:
            dl = _ramp(t, 0.8, 1.15)
            _paint(
                img,
                cavity * _ellipse(x, y, 55, self.cy + 5, 130 * dl + 1, 100 * dl + 1, edge),
                45.0 + 4 * tex,
            )

        # Lungs: parenchyma with a dependent (posterior) density gradient and texture.
        lung = self.lung_fraction(x, y, t, edge)
        grad = np.clip((y - self.cy) / (2 * self.b_post) + 0.5, 0, 1)
        paren = -885.0 + 55.0 * grad + 18.0 * tex
        vessel = _tube_fraction(self.vessels, self.x0, self.y0, sp, (n, n), z)
        paren = paren * (1 - vessel) + 40.0 * vessel
        _paint(img, lung, paren)
        # Airways: soft-tissue walls, air lumen (trachea and bronchi also in the mediastinum).
        wall = _tube_fraction(self.airways, self.x0, self.y0, sp, (n, n), z)
        lumen = _tube_fraction(self.airways, self.x0, self.y0, sp, (n, n), z, self.airway_lumen)
        region = np.maximum(lung, cavity)
        _paint(img, wall * region, 10.0)
        _paint(img, lumen * region, -990.0)

        # Nodules.
        for blob in self.blobs:
            box = _blob_bbox(blob, self.x0, self.y0, sp, (n, n), z)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            sub = img[r0:r1, c0:c1]
            frac = blob.fraction(xs[c0:c1], ys[r0:r1], z, sp)
            if blob.kind == "part-solid-nodule":
                _paint(sub, frac, blob.value + 40 * tex[r0:r1, c0:c1])
                core = blob.fraction(xs[c0:c1], ys[r0:r1], z, sp, scale=0.42)
                _paint(sub, core, 30.0 + 8 * tex[r0:r1, c0:c1])
            else:
                _paint(sub, frac, blob.value + 10 * tex[r0:r1, c0:c1])

        self._bones(img, x, y, t, z, edge, btex)
        # Scanner: blur (PSF) then CT-like correlated noise.
        img = ndimage.gaussian_filter(img, 0.45 * max(1.0, 512 / n) ** 0 * (n / 512) + 0.25)
        img += _correlated_noise(self.rng, img.shape, self.noise_hu, n)
        return img

    def _bones(self, img, x, y, t, z, edge, btex) -> None:  # noqa: ANN001
        sy = self.spine_y
        disc = (z % 28.0) < 5.0
        body_val = 80.0 if disc else 230.0 + 40 * btex
        _paint(img, _ellipse(x, y, 0, sy, 20, 17, edge), 700.0)  # vertebral body cortex
        _paint(img, _ellipse(x, y, 0, sy, 18, 15, edge), body_val)
        # Posterior elements: ring around the canal, spinous process.
        _paint(img, _ellipse(x, y, 0, sy + 27, 16, 13, edge), 600.0)
        _paint(img, _ellipse(x, y, 0, sy + 27, 8, 8.5, edge), 15.0)  # canal (CSF/cord)
        phase = (z % 28.0) / 28.0
        sp_len = 14 + 12 * np.cos(2 * np.pi * phase) ** 2
        _paint(img, _ellipse(x, y, 0, sy + 40 + sp_len / 2, 4.5, sp_len / 2 + 2, edge), 520.0)
        for side in (-1, 1):  # transverse processes
            _paint(img, _ellipse(x, y, side * 24, sy + 20, 11, 5, edge, side * 0.4), 550.0)
        # Ribs: oval cross-sections along the chest-wall ring, shifting with z (ribs slope).
        q_mid, _ = self.body_q(x, y, t, inset=self.fat + self.muscle + 6)
        theta_px = np.arctan2(y - self.cy, x)
        n_ribs = 11
        for side in (-1, 1):
            for j in range(n_ribs):
                base = (j + 0.5) / n_ribs * np.pi * 0.92 + 0.04 * np.pi
                ang = base + 0.18 * np.sin(2 * np.pi * (z / 40.0 + self.rib_phase + j * 0.37))
                vis = np.sin(2 * np.pi * (z / 35.0 + j * 0.23 + self.rib_phase))
                if vis < -0.35:
                    continue
                # Mirror left/right; the first half of the ribs run anteriorly, the rest
                # posteriorly (image rows grow towards the back).
                theta = -((np.pi - ang) if side < 0 else ang)
                theta = theta if j < n_ribs // 2 else -theta
                d_ang = np.angle(np.exp(1j * (theta_px - theta)))
                near = np.abs(d_ang) < 0.12
                if not near.any():
                    continue
                radial = np.abs(q_mid - 1.0)
                rib_q = np.sqrt((d_ang / 0.055) ** 2 + (radial / 0.04) ** 2)
                cortex = _soft(rib_q, 5.0, edge) * near
                value = 110.0 if abs(np.sin(theta)) > 0.93 and np.sin(theta) < 0 else 850.0
                _paint(img, cortex, value)
                _paint(img, _soft(rib_q / 0.6, 3.0, edge) * near, 260.0 + 30 * btex)
        # Sternum (anterior), scapulae (upper posterior).
        if t < 0.8:
            sq, ss = self.body_q(x, y, t, inset=self.fat + 2.0)
            st = _ellipse(
                x,
                y,
                0,
                self.cy - self.b_ant * (0.93 + 0.07 * _ramp(t, 0, 0.4)) + self.fat + 12,
                16,
                7,
                edge,
            )
            _paint(img, st, 500.0)
            _paint(
                img,
                st
                * _ellipse(
                    x,
                    y,
                    0,
                    self.cy - self.b_ant * (0.93 + 0.07 * _ramp(t, 0, 0.4)) + self.fat + 12,
                    13,
                    4.5,
                    edge,
                ),
                220.0,
            )
        if t < 0.45:
            fade = 1 - _ramp(t, 0.35, 0.45)
            for side in (-1, 1):
                sc = _ellipse(
                    x,
                    y,
                    side * (self.a - 55),
                    self.cy + self.b_post - self.fat - 18,
                    40,
                    3.5,
                    edge,
                    side * 0.55,
                )
                _paint(img, sc * fade, 650.0)


# ----------------------------------------------------------------------------- breast MRI


class _BreastMR:
    """Prone breast MRI, T1-weighted fat-saturated, after contrast (the Duke set's look)."""

    def __init__(self, rng: np.random.Generator, size: int, n_slices: int) -> None:
        self.rng = rng
        self.size = size
        self.fov = float(rng.uniform(320, 360))
        self.spacing = self.fov / size
        self.dz = float(rng.choice([1.0, 1.1, 1.2, 2.0]))
        self.thickness = self.dz
        self.x0 = -self.fov / 2 + self.spacing / 2
        self.y0 = -self.fov / 2 + self.spacing / 2
        self.chest_cy = float(rng.uniform(55, 70))
        self.chest_a = float(rng.uniform(150, 168))
        self.chest_b = float(rng.uniform(85, 100))
        self.wall_y = self.chest_cy - self.chest_b * 0.82
        self.breast_x = float(rng.uniform(78, 95))
        self.breast_w = float(rng.uniform(58, 78))
        self.breast_d = float(rng.uniform(65, 110))
        self.density = float(rng.uniform(-0.6, 0.8))  # higher -> denser fibroglandular tissue
        self.noise = float(rng.uniform(10, 20))
        self.half_height = float(rng.uniform(70, 95))
        cover = n_slices * self.dz
        centre = float(rng.uniform(-0.35, 0.35)) * max(self.half_height - cover / 2, 0)
        self.z = [round(centre - cover / 2 + self.dz * (k + 0.5), 3) for k in range(n_slices)]
        grid = min(128, size)
        self.fgt = _Texture3D(rng, n_slices, self.dz, grid, 3.0, self.fov)
        self.fine = _Texture3D(rng, n_slices, self.dz, grid, 1.2, self.fov)
        self.bias_coef = rng.normal(scale=0.12, size=5)
        self.vessels: list[_Segment] = []
        for side in (-1, 1):
            for _ in range(3):
                root = np.array(
                    [
                        side * (self.breast_x + rng.uniform(-30, 30)),
                        self.wall_y,
                        rng.uniform(-40, 40),
                    ]
                )
                d = np.array([rng.uniform(-0.3, 0.3), -1.0, rng.uniform(-0.4, 0.4)])
                self.vessels += _grow_forest(
                    rng,
                    [(root, d, rng.uniform(1.0, 1.6), 22.0)],
                    4,
                    lambda pts: np.ones(len(pts), bool),
                )
        self.blobs: list[_Blob] = []

    def profile(self, z: float | np.ndarray) -> np.ndarray:
        u = (np.asarray(z) + 10.0) / self.half_height
        return np.sqrt(np.clip(1 - u**2, 0, 1))

    def breast_fraction(self, x, y, z, edge: float = 1.0, inset: float = 0.0) -> np.ndarray:  # noqa: ANN001
        p = self.profile(z)
        out = np.zeros(np.broadcast(x, y).shape)
        for side in (-1, 1):
            w = self.breast_w * np.sqrt(p) - inset
            d = self.breast_d * p - inset
            base = self.wall_y + 12
            yy = np.where(y < base, (base - y) / np.maximum(d, 1), (y - base) / 45.0)
            q = np.sqrt(((x - side * self.breast_x) / np.maximum(w, 1)) ** 2 + yy**1.8)
            frac = _soft(q, np.maximum(np.minimum(w, d), 1), edge)
            out = np.maximum(out, frac * (p > 0.05))
        return out

    def inside_breast(self, p: np.ndarray, margin: float = 0.0) -> bool:
        return bool(self.breast_fraction(p[0], p[1], p[2], inset=margin) > 0.5)

    def add_masses(self, n: int) -> list[_Blob]:
        rng = self.rng
        tries = 0
        while len(self.blobs) < n and tries < 400:
            tries += 1
            radius = float(np.exp(rng.uniform(np.log(3.0), np.log(14.0))))
            side = rng.choice([-1, 1])
            c = np.array(
                [
                    side * self.breast_x + rng.uniform(-50, 50),
                    self.wall_y - rng.uniform(10, 90),
                    rng.uniform(self.z[0] - 0.4 * self.dz, self.z[-1] + 0.4 * self.dz),
                ]
            )
            if not self.inside_breast(c, margin=radius + 6):
                continue
            if any(np.linalg.norm(c - b.centre) < radius + b.radius + 6 for b in self.blobs):
                continue
            kind = "rim-enhancing-mass" if radius > 6 and rng.random() < 0.4 else "mass"
            self.blobs.append(_make_blob(rng, c, radius, kind, float(rng.uniform(850, 1250))))
        return self.blobs

    def render(self, k: int) -> np.ndarray:
        z = self.z[k]
        n = self.size
        sp = self.spacing
        xs = self.x0 + sp * np.arange(n)
        ys = self.y0 + sp * np.arange(n)
        x, y = np.meshgrid(xs, ys)
        edge = max(sp, 0.6)
        img = np.zeros((n, n))
        fgt_t = self.fgt.slice(k, n)
        fine = self.fine.slice(k, n)
        # Body outline = thorax + breasts: skin, suppressed fat, then the breast parenchyma;
        # the chest wall (pectoral muscle, ribs, lungs, heart) is painted last, over the base.
        chest = _ellipse(x, y, 0, self.chest_cy, self.chest_a, self.chest_b, edge)
        br = self.breast_fraction(x, y, z, edge)
        _paint(img, np.maximum(chest, br), 330.0)
        chest_fat = _ellipse(x, y, 0, self.chest_cy, self.chest_a - 2, self.chest_b - 2, edge)
        br_fat = self.breast_fraction(x, y, z, edge, inset=1.8)
        _paint(img, np.maximum(chest_fat, br_fat), 112.0 + 12 * fine)
        deep = self.breast_fraction(x, y, z, edge, inset=9.0)
        # Fibroglandular tissue: denser behind the nipple, thresholded smooth 3-D texture.
        centre_w = np.zeros_like(x)
        for side in (-1, 1):
            centre_w = np.maximum(centre_w, np.exp(-(((x - side * self.breast_x) / 45.0) ** 2)))
        level = 0.8 * fgt_t + 1.4 * centre_w + self.density - 1.0
        fgt = 1 / (1 + np.exp(-level / 0.3))
        _paint(img, deep * fgt, 330.0 + 60 * fine + 40 * fgt_t)
        muscle = _ellipse(x, y, 0, self.chest_cy, self.chest_a - 14, self.chest_b - 12, edge)
        _paint(img, muscle, 250.0 + 12 * fine)
        inner = _ellipse(x, y, 0, self.chest_cy + 6, self.chest_a - 30, self.chest_b - 26, edge)
        _paint(img, inner, 120.0)
        for j in range(9):
            ang = np.pi * (0.08 + 0.84 * j / 8)
            rx = (self.chest_a - 22) * np.cos(ang)
            ry = self.chest_cy + 6 - (self.chest_b - 18) * np.sin(ang) * 0.95
            _paint(img, _ellipse(x, y, rx, ry, 7, 4, edge, -ang + np.pi / 2), 60.0)
            _paint(img, _ellipse(x, y, rx, ry, 5, 2.5, edge, -ang + np.pi / 2), 170.0)
        for side in (-1, 1):
            _paint(
                img, _ellipse(x, y, side * 62, self.chest_cy + 20, 52, 58, edge), 35.0 + 8 * fine
            )
        _paint(img, _ellipse(x, y, 12, self.chest_cy - 2, 48, 42, edge, 0.4), 720.0 + 15 * fine)
        _paint(img, _ellipse(x, y, 0, self.chest_cy + 62, 16, 15, edge), 160.0)  # vertebra
        for side in (-1, 1):  # internal mammary vessels
            _paint(img, _ellipse(x, y, side * 22, self.wall_y + 10, 2.2, 2.2, edge), 800.0)

        vessel = _tube_fraction(self.vessels, self.x0, self.y0, sp, (n, n), z)
        _paint(img, vessel * br, 700.0)
        for blob in self.blobs:
            box = _blob_bbox(blob, self.x0, self.y0, sp, (n, n), z)
            if box is None:
                continue
            r0, r1, c0, c1 = box
            sub = img[r0:r1, c0:c1]
            f = blob.fraction(xs[c0:c1], ys[r0:r1], z, sp)
            _paint(sub, f, blob.value + 60 * fine[r0:r1, c0:c1])
            if blob.kind == "rim-enhancing-mass":
                _paint(sub, blob.fraction(xs[c0:c1], ys[r0:r1], z, sp, scale=0.62), 420.0)

        # Scanner: blur, coil bias field (breast coil: brighter anteriorly), Rician noise.
        img = ndimage.gaussian_filter(img, 0.35 * n / 512 + 0.2)
        c = self.bias_coef
        u, v = x / self.fov, y / self.fov
        bias = np.exp(c[0] * u + c[1] * v + c[2] * u * v + c[3] * u**2 + c[4] * v**2)
        bias *= 1.0 + 0.35 * np.clip(-(y - self.wall_y) / 120.0, -0.6, 1.0)
        img *= bias
        n1 = self.rng.normal(scale=self.noise, size=img.shape)
        n2 = self.rng.normal(scale=self.noise, size=img.shape)
        return np.sqrt((img + n1) ** 2 + n2**2)


# ----------------------------------------------------------------------------- DICOM


_FIRST = [
    "Ada",
    "Alan",
    "Grace",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Claude",
    "Hedy",
    "John",
]


_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:tamperscan:tamper-lab")


def _uid(seed: int, *parts: object) -> str:
    """Deterministic ``2.25.<UUIDv5>`` UID (PS3.5 B.2).

    ``generate_uid(prefix=None, entropy_srcs=...)`` ignores the entropy in pydicom 3 and
    returns a random UUID4, so the name-based UUID is derived here instead.
    """
    name = "/".join(["tamperscan-lab", str(seed), *map(str, parts)])
    return UID(f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}")


def _base_dataset(study: dict, modality: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = study["patient_name"]
    ds.PatientID = study["patient_id"]
    ds.PatientBirthDate = study["birth_date"]
    ds.PatientSex = study["sex"]
    ds.PatientAge = study["age"]
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "Synthetic phantom (TamperScan tamper lab); no real patient"
    ds.StudyInstanceUID = study["study_uid"]
    ds.StudyDate = study["date"]
    ds.StudyTime = study["time"]
    ds.ReferringPhysicianName = ""
    ds.StudyID = study["study_id"]
    ds.AccessionNumber = study["accession"]
    ds.StudyDescription = study["description"]
    ds.Modality = modality
    ds.SeriesInstanceUID = study["series_uid"]
    ds.SeriesNumber = 2
    ds.SeriesDate = study["date"]
    ds.SeriesTime = study["time"]
    ds.SeriesDescription = study["series_description"]
    ds.BodyPartExamined = study["body_part"]
    if modality == "MR":
        ds.ImageLaterality = "B"  # both breasts; satisfies the paired-body-part condition
    ds.PatientPosition = study["position"]
    ds.FrameOfReferenceUID = study["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "TamperScan tamper lab"
    ds.ManufacturerModelName = "Synthetic phantom"
    ds.InstitutionName = "Synthetic"
    ds.SoftwareVersions = "tamperscan-lab 1"
    ds.AcquisitionNumber = 1
    ds.ContentDate = study["date"]
    ds.ContentTime = study["time"]
    ds.AcquisitionDate = study["date"]
    ds.AcquisitionTime = study["time"]
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.PixelRepresentation = 0
    return ds


def generate_study(modality: str, slices: int, seed: int, size: int = 512) -> PhantomStudy:
    """One synthetic patient/study/series of ``slices`` axial slices, deterministic by seed."""
    modality = modality.upper()
    if modality == "MRI":
        modality = "MR"
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected CT or MR")
    if slices < 1:
        raise ValueError("slices must be at least 1")
    if size < 64:
        raise ValueError("size must be at least 64 pixels")
    rng = np.random.default_rng([seed, 0 if modality == "CT" else 1])
    sex = "F" if modality == "MR" else str(rng.choice(["F", "M"]))
    age = int(rng.integers(42, 80))
    date = _dt.date(2020, 1, 1) + _dt.timedelta(days=int(rng.integers(0, 1500)))
    birth = date - _dt.timedelta(days=365 * age + int(rng.integers(0, 365)))
    patient_id = f"LAB-{modality}-{seed:06d}"
    info = {
        "patient_name": f"SYNTHETIC^{_FIRST[seed % len(_FIRST)]} {modality}{seed}",
        "patient_id": patient_id,
        "birth_date": birth.strftime("%Y%m%d"),
        "sex": sex,
        "age": f"{age:03d}Y",
        "study_uid": _uid(seed, modality, "study"),
        "series_uid": _uid(seed, modality, "series"),
        "for_uid": _uid(seed, modality, "frame-of-reference"),
        "date": date.strftime("%Y%m%d"),
        "time": f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}00",
        "study_id": f"{seed % 100000}",
        "accession": f"SYN{seed:08d}",
        "description": "CT CHEST WO CONTRAST (SYNTHETIC)"
        if modality == "CT"
        else "MRI BREAST BILATERAL W CONTRAST (SYNTHETIC)",
        "series_description": "Lung 1.25 (synthetic)"
        if modality == "CT"
        else "ax t1 fs post (synthetic)",
        "body_part": "CHEST" if modality == "CT" else "BREAST",
        "position": "HFS" if modality == "CT" else "FFP",
    }
    scene: _ChestCT | _BreastMR
    if modality == "CT":
        scene = _ChestCT(rng, size, slices)
        scene.add_nodules(int(rng.integers(2, 5)))
    else:
        scene = _BreastMR(rng, size, slices)
        scene.add_masses(int(rng.integers(1, 4)))

    datasets: list[pydicom.Dataset] = []
    for k in range(slices):
        hu = scene.render(k)
        ds = _base_dataset(info, modality)
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = (
            CTImageStorage if modality == "CT" else MRImageStorage
        )
        sop_uid = _uid(seed, modality, "instance", k)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta.ImplementationVersionName = "TAMPERSCAN_LAB"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [round(scene.x0, 4), round(scene.y0, 4), scene.z[k]]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [round(scene.spacing, 6), round(scene.spacing, 6)]
        ds.SliceThickness = scene.thickness
        ds.SliceLocation = scene.z[k]
        ds.Rows = size
        ds.Columns = size
        ds.BitsStored = CT_BITS_STORED if modality == "CT" else MR_BITS_STORED
        ds.HighBit = ds.BitsStored - 1
        top = (1 << ds.BitsStored) - 1
        if modality == "CT":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.KVP = 120
            ds.XRayTubeCurrent = int(rng.integers(120, 300))
            ds.ConvolutionKernel = "STANDARD"
            ds.RescaleIntercept = CT_INTERCEPT
            ds.RescaleSlope = CT_SLOPE
            ds.RescaleType = "HU"
            ds.WindowCenter = [-600, 40]
            ds.WindowWidth = [1500, 400]
            stored = np.clip(np.rint((hu - CT_INTERCEPT) / CT_SLOPE), 0, top)
        else:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = ["SP", "SS"]
            ds.ScanOptions = "FS"
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = 4.6
            ds.EchoTime = 2.3
            ds.EchoTrainLength = 1
            ds.FlipAngle = 10
            ds.MagneticFieldStrength = 1.5
            ds.ImagedNucleus = "1H"
            ds.SpacingBetweenSlices = scene.dz
            stored = np.clip(np.rint(hu), 0, top)
            ds.WindowCenter = 600
            ds.WindowWidth = 1200
        ds.PixelData = stored.astype(np.uint16).tobytes()
        datasets.append(ds)

    lesions = []
    for blob in scene.blobs:
        k = int(np.argmin([abs(z - blob.centre[2]) for z in scene.z]))
        col = int(round((blob.centre[0] - scene.x0) / scene.spacing))
        row = int(round((blob.centre[1] - scene.y0) / scene.spacing))
        lesions.append(
            Lesion(
                k,
                col,
                row,
                round(blob.radius, 2),
                blob.kind,
                round(float(blob.centre[2]), 3),
                patient_id,
                PhantomStudy.file_name(k),
            )
        )
    return PhantomStudy(modality, patient_id, datasets, lesions, list(scene.z))


def write_lesions_csv(lesions: list[Lesion], path: Path) -> None:
    """Ground truth of genuine lesions, which the tamper command needs for removal."""
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study", "path", "slice_index", "x", "y", "z_mm", "radius_mm", "kind"])
        for les in lesions:
            w.writerow(
                [
                    les.study,
                    f"{les.study}/{les.file}",
                    les.slice_index,
                    les.x,
                    les.y,
                    les.z_mm,
                    les.radius_mm,
                    les.kind,
                ]
            )


def read_lesions_csv(path: Path) -> list[Lesion]:
    """Inverse of :func:`write_lesions_csv`."""
    import csv

    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            out.append(
                Lesion(
                    int(row["slice_index"]),
                    int(row["x"]),
                    int(row["y"]),
                    float(row["radius_mm"]),
                    row["kind"],
                    float(row["z_mm"]),
                    row["study"],
                    Path(row["path"]).name,
                )
            )
    return out


def write_phantoms(
    modality: str,
    studies: int,
    slices: int,
    out_dir: str | Path,
    seed: int,
    size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``studies`` phantom studies, one folder per patient, and ``lesions.csv``.

    Study ``i`` uses seed ``seed * 1000 + i`` so adding studies never changes earlier ones.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    all_lesions: list[Lesion] = []
    for i in range(studies):
        study = generate_study(modality, slices, seed * 1000 + i, size)
        folder = out / study.folder_name
        folder.mkdir(parents=True, exist_ok=True)
        for k, ds in enumerate(study.datasets):
            ds.save_as(folder / study.file_name(k), enforce_file_format=True)
        folders.append(folder)
        all_lesions.extend(study.lesions)
        if progress is not None:
            progress(i + 1)
    lesion_file = out / LESIONS_CSV
    existing = read_lesions_csv(lesion_file) if lesion_file.exists() else []
    new_ids = {f.name for f in folders}
    keep = [les for les in existing if les.study not in new_ids]
    write_lesions_csv(keep + all_lesions, lesion_file)
    return folders
