"""Branching 3-D tube trees (pulmonary vessels, airways, breast vessels) and their cross-sections.

Trees are grown once per patient in millimetres and cut by each image plane, so a vessel seen
on one slice continues on the next. No pixels are written here beyond the inside-fraction map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Segment:
    """One straight tube piece from p0 to p1 (mm) of constant radius."""

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


def grow_forest(
    rng: np.random.Generator,
    roots: list[tuple[np.ndarray, np.ndarray, float, float]],
    generations: int,
    inside: Callable[[np.ndarray], np.ndarray],
    pull: bool = True,
    free_generations: int = 3,
    min_radius: float = 0.35,
) -> list[Segment]:
    """Dichotomous branching trees (vessels, airways) that stay inside ``inside``.

    Grown one generation at a time so the inside test runs on all branch tips at once.
    Children are thinner (Murray-like 0.7-0.88 ratio) and shorter, and bend by 20-45 degrees;
    a pull towards the root direction keeps each tree heading for the periphery as real ones
    do. The first ``free_generations`` may cross the mediastinum (hilum to lung).
    """
    segments: list[Segment] = []
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
            segments.append(Segment(p, q, r))
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


def tube_fraction(
    segments: list[Segment],
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
