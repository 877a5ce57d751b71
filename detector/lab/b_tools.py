"""Family B's own tools: where to edit, noise borrowed from the scan, and a Poisson solver.

Written apart from family A (:mod:`detector.lab.attacks_a`) and sharing nothing with it:

- placement: tissue found from local statistics (a box-filtered mean and a distance
  transform), not A's smoothed threshold and erosion;
- noise: never synthesised. :func:`borrowed_noise` cuts a residual patch out of a quiet,
  homogeneous area of *another slice of the same series* (the scanner's own noise, its own
  kernel and its own level there) and scales it to the level measured around the target;
- :func:`poisson_fill` solves the discrete Poisson equation on a region with the surrounding
  pixels as boundary: with no guidance it is a harmonic (diffusion) fill, with a source
  image's Laplacian as guidance it is seamless (gradient-domain) cloning.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from detector.lab.edits import LabState, StudySeries, read_slice_data


def tissue_mask(values: np.ndarray, modality: str) -> np.ndarray:
    """Pixels where a lesion is plausible: lung parenchyma (CT) or breast tissue (MR)."""
    local = ndimage.uniform_filter(values, 9)
    if modality == "CT":
        mask = (local > -960) & (local < -620)
        labels, n = ndimage.label(mask)
        if n:
            sizes = ndimage.sum(mask, labels, range(1, n + 1))
            mask = np.isin(labels, 1 + np.flatnonzero(sizes > 0.01 * mask.size))
        return mask
    level = np.percentile(values, 98)
    fg = local > 0.18 * level
    width = fg.sum(axis=1)
    breast_rows = (width > 0) & (width < 0.75 * max(int(width.max()), 1))
    rows = np.flatnonzero(width)
    if rows.size:  # only the anterior part (breasts hang towards row 0 when prone)
        breast_rows[int(rows[0] + 0.5 * (rows[-1] - rows[0])) :] = False
    return fg & breast_rows[:, None]


def choose_spot(
    rng: np.random.Generator,
    mask: np.ndarray,
    clearance_px: float,
    keep_away: list[tuple[float, float, float]],
) -> tuple[int, int] | None:
    """A pixel at least ``clearance_px`` inside ``mask`` and outside every keep-away disc."""
    inside = ndimage.distance_transform_edt(mask) >= clearance_px
    rows, cols = np.nonzero(inside)
    if rows.size == 0:
        return None
    order = rng.permutation(rows.size)[:64]
    for i in order:
        y, x = int(rows[i]), int(cols[i])
        if all(np.hypot(x - kx, y - ky) > kr for kx, ky, kr in keep_away):
            return x, y
    return None


def lesions_near(lab: LabState, st: StudySeries, k: int) -> list[tuple[float, float, float]]:
    """Keep-away discs (x, y, radius px) of every genuine lesion within reach of slice ``k``."""
    out = []
    for _, les in lab.known_lesions(st):
        if abs(st.z[k] - les.z_mm) < les.radius_mm + 6.0:
            out.append((float(les.x), float(les.y), 2.0 * les.radius_mm / st.spacing + 8.0))
    return out


def noise_level(values: np.ndarray, mask: np.ndarray) -> float:
    """Noise std estimate from horizontal pixel differences (robust, same for any source)."""
    d = np.diff(values, axis=1)[mask[:, 1:] & mask[:, :-1]]
    if d.size < 16:
        return 0.0
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2.0))


def ring(shape: tuple[int, int], x: float, y: float, r_in: float, r_out: float) -> np.ndarray:
    """Annulus between ``r_in`` and ``r_out`` pixels around (x = column, y = row)."""
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    d = np.hypot(cc - x, rr - y)
    return (d >= r_in) & (d <= r_out)


def _quiet_window(values: np.ndarray, modality: str, size: int) -> tuple[int, int] | None:
    """Top-left corner of the most homogeneous ``size`` window of soft tissue in a slice."""
    mean = ndimage.uniform_filter(values, size)
    var = ndimage.uniform_filter(values**2, size) - mean**2
    if modality == "CT":
        ok = (mean > -150) & (mean < 120)
    else:
        ok = mean > 0.1 * np.percentile(values, 98)
    half = size // 2
    ok[:half] = ok[-half:] = False
    ok[:, :half] = ok[:, -half:] = False
    if not ok.any():
        return None
    flat = np.where(ok, var, np.inf)
    r, c = np.unravel_index(int(np.argmin(flat)), flat.shape)
    return int(r) - half, int(c) - half


def borrowed_noise(
    rng: np.random.Generator,
    st: StudySeries,
    avoid_slice: int,
    shape: tuple[int, int],
    sigma: float,
) -> np.ndarray:
    """A ``shape`` patch of the series' own noise at std ``sigma`` (zeros if none is found).

    The donor is the quietest soft-tissue window of a random other slice; its low-frequency
    content (anatomy) is removed with a wide Gaussian, so what is left is the scanner's noise
    with its own power spectrum. A random flip/transpose avoids copying the same texture twice.
    """
    size = max(shape) + 4
    others = [k for k in range(len(st.paths)) if k != avoid_slice] or [avoid_slice]
    for _ in range(4):
        k = int(others[int(rng.integers(len(others)))])
        donor = read_slice_data(st.paths[k]).values
        if size >= min(donor.shape) // 2:
            size = min(donor.shape) // 2 - 1
        corner = _quiet_window(donor, st.modality, size)
        if corner is None:
            continue
        r, c = corner
        patch = donor[r : r + size, c : c + size]
        resid = patch - ndimage.gaussian_filter(patch, 6.0, mode="reflect")
        if rng.random() < 0.5:
            resid = resid.T
        resid = resid[:: rng.choice([-1, 1]), :: rng.choice([-1, 1])]
        level = noise_level(resid, np.ones(resid.shape, bool))
        if level <= 0:
            continue
        out = resid[: shape[0], : shape[1]] * (sigma / level)
        if out.shape == shape:
            return out
    return np.zeros(shape)


def poisson_fill(
    target: np.ndarray, region: np.ndarray, guidance: np.ndarray | None = None
) -> np.ndarray:
    """Solve Laplace(u) = Laplace(guidance) inside ``region`` with u = target outside it.

    ``guidance`` None gives the harmonic (steady-state diffusion) fill. Returns a copy of
    ``target`` with the region replaced; the region must not touch the image border.
    """
    out = np.array(target, dtype=np.float64)
    rows, cols = np.nonzero(region)
    n = rows.size
    if n == 0:
        return out
    index = -np.ones(region.shape, dtype=np.int64)
    index[rows, cols] = np.arange(n)
    lap = None
    if guidance is not None:
        g = np.asarray(guidance, dtype=np.float64)
        lap = 4 * g - np.roll(g, 1, 0) - np.roll(g, -1, 0) - np.roll(g, 1, 1) - np.roll(g, -1, 1)
    data, ri, ci = [np.full(n, 4.0)], [np.arange(n)], [np.arange(n)]
    rhs = np.zeros(n) if lap is None else lap[rows, cols].copy()
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        nr, nc = rows + dr, cols + dc
        j = index[nr, nc]
        inside = j >= 0
        data.append(np.full(int(inside.sum()), -1.0))
        ri.append(np.flatnonzero(inside))
        ci.append(j[inside])
        rhs[~inside] += out[nr[~inside], nc[~inside]]
    a = sparse.csr_matrix(
        (np.concatenate(data), (np.concatenate(ri), np.concatenate(ci))), shape=(n, n)
    )
    out[rows, cols] = spsolve(a, rhs)
    return out
