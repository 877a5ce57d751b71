"""Attack family A: the lab's first, CT-GAN-style attacks (see docs/tamper-lab.md).

- ``injection``: a lobulated 3-D nodule/mass spanning the slices its radius reaches, with
  intensity, texture and edge matched to the surroundings and noise re-synthesised at the
  locally measured level (the attacker's noise model is a Gaussian-filtered one, not the
  scanner's own spectrum: the trace a detector can find, as with CT-GAN's touch-up).
- ``removal``: an existing lesion (from ``lesions.csv``) erased by normalised-convolution
  inpainting from its surround plus re-synthesised noise, on every slice it reaches.
- ``copy-move``: a disc copied (feathered edge) from one place in the study to another,
  half of the time a real lesion, so a copy can also inject one.
- ``adversarial-noise``: an L-infinity bounded perturbation, ``|delta| <= epsilon`` (10 HU by
  default for CT, 1.5 % of the slice's robust range for MR), of PGD-like sign structure,
  confined to a disc of 12-20 mm radius.

Family B (:mod:`detector.lab.attacks_b`) is written independently and shares none of the
synthesis helpers below. Each function places one instance in one of ``studies`` and returns
its record, or None when it found no room.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from detector.lab.edits import (
    LabState,
    Region,
    StudySeries,
    TamperError,
    TamperRecord,
    candidate_mask,
    disc,
    pick_location,
    read_slice_data,
    stored_range,
    to_stored,
    write_pixels,
)
from detector.lab.shapes import make_blob


def _noise_sigma(values: np.ndarray, mask: np.ndarray) -> float:
    """Noise level an attacker measures: robust std of the median-filter residual."""
    resid = values - ndimage.median_filter(values, size=3)
    r = resid[mask]
    if r.size < 10:
        return 1.0
    return float(1.4826 * np.median(np.abs(r - np.median(r))) * 1.15 + 1e-3)


def _attacker_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:  # noqa: ANN001
    n = ndimage.gaussian_filter(rng.normal(size=shape), 0.8)
    return n * (sigma / (n.std() + 1e-9))


def inject(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    rng = lab.rng
    for _ in range(100):
        st = studies[int(rng.integers(len(studies)))]
        free = lab.free_slices(st)
        if not free:
            continue
        c = int(rng.choice(free))
        radius_mm = float(rng.uniform(3.0, 10.0))
        affected = [k for k in range(len(st.paths)) if abs(st.z[k] - st.z[c]) < radius_mm * 0.95]
        if any((st.name, k) in lab.touched for k in affected):
            continue
        centre = read_slice_data(st.paths[c])
        r_px = radius_mm / st.spacing
        mask = candidate_mask(centre.values, st.modality, r_px * 1.6 + 3)
        loc = pick_location(rng, mask, lab.avoid(st, c))
        if loc is None:
            continue
        x, y = loc
        kind = "solid-nodule" if st.modality == "CT" else "mass"
        blob = make_blob(rng, (0.0, 0.0, 0.0), radius_mm, kind, 0.0)
        reach_px = r_px * (1 + float(np.sum(blob.amps))) + 2.0
        region_r = reach_px + 2.0
        ring = disc(centre.values.shape, x, y, region_r + 8) & ~disc(
            centre.values.shape, x, y, region_r
        )
        if st.modality == "CT":
            value = float(rng.uniform(10, 50))
        else:
            value = float(np.percentile(centre.values[ring], 95) * rng.uniform(1.6, 2.2))
        rec = TamperRecord("injection", st.name, st.modality, "FM", radius_mm=radius_mm)
        for k in affected:
            sl = centre if k == c else read_slice_data(st.paths[k])
            dz = st.z[k] - st.z[c]
            rows, cols = sl.values.shape
            xs = (np.arange(cols) - x) * st.spacing
            ys = (np.arange(rows) - y) * st.spacing
            frac = blob.fraction(xs, ys, dz, st.spacing)
            if frac.max() < 0.05:
                continue
            ring_k = disc(sl.values.shape, x, y, region_r + 8) & ~disc(
                sl.values.shape, x, y, region_r
            )
            sigma = _noise_sigma(sl.values, ring_k)
            tex = ndimage.gaussian_filter(rng.normal(size=sl.values.shape), 2.0)
            tex *= (0.06 * abs(value) + 8.0) / (tex.std() + 1e-9)
            lesion = value + tex + _attacker_noise(rng, sl.values.shape, sigma)
            new = sl.values * (1 - frac) + lesion * frac
            region = disc(sl.values.shape, x, y, region_r)
            before = sl.stored.copy()
            after = write_pixels(sl, to_stored(new, sl.ds), region, lab.out(st.paths[k]))
            rec.regions.append(Region(lab.rel(st.paths[k]), x, y, region_r, k))
            lab.touched.add((st.name, k))
            if k == c:
                lab.example("injection", before, after, rec, sl.ds)
        if rec.regions:
            return rec
    return None


def remove(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    rng = lab.rng
    options = []
    for st in studies:
        for i, les in lab.study_lesions(st):
            affected = [
                k
                for k in range(len(st.paths))
                if les.radius_on_slice_mm(st.z[k]) > 0.3 * st.spacing
            ]
            if affected and not any((st.name, k) in lab.touched for k in affected):
                options.append((st, i, les, affected))
    if not options:
        return None
    st, i, les, affected = options[int(rng.integers(len(options)))]
    lab.removed.add(i)
    rec = TamperRecord("removal", st.name, st.modality, "FB", radius_mm=les.radius_mm)
    for k in affected:
        sl = read_slice_data(st.paths[k])
        r_px = les.radius_on_slice_mm(st.z[k]) / st.spacing
        hole_r = r_px * 1.35 + 2.0
        region_r = hole_r + 3.0
        shape = sl.values.shape
        hole = disc(shape, les.x, les.y, hole_r)
        known = (~hole).astype(float)
        sig = max(2.0, hole_r / 2)
        fill = ndimage.gaussian_filter(sl.values * known, sig) / np.maximum(
            ndimage.gaussian_filter(known, sig), 1e-6
        )
        ring = disc(shape, les.x, les.y, region_r + 8) & ~disc(shape, les.x, les.y, region_r)
        sigma = _noise_sigma(sl.values, ring)
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        dist = np.sqrt((cols - les.x) ** 2 + (rows - les.y) ** 2)
        alpha = np.clip((region_r - 0.5 - dist) / 2.5, 0, 1)
        new = sl.values * (1 - alpha) + (fill + _attacker_noise(rng, shape, sigma)) * alpha
        region = disc(shape, les.x, les.y, region_r)
        before = sl.stored.copy()
        after = write_pixels(sl, to_stored(new, sl.ds), region, lab.out(st.paths[k]))
        rec.regions.append(Region(lab.rel(st.paths[k]), les.x, les.y, region_r, k))
        lab.touched.add((st.name, k))
        if k == les.slice_index:
            lab.example("removal", before, after, rec, sl.ds)
    return rec


def copy_move(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    rng = lab.rng
    for _ in range(100):
        st = studies[int(rng.integers(len(studies)))]
        free = lab.free_slices(st)
        if not free:
            continue
        lesions = lab.study_lesions(st)
        if lesions and rng.random() < 0.5:
            _, les = lesions[int(rng.integers(len(lesions)))]
            s, sx, sy = les.slice_index, les.x, les.y
            r_px = les.radius_mm / st.spacing * 1.4 + 3
            kind = "FM"
        else:
            s = int(rng.integers(len(st.paths)))
            r_px = float(rng.uniform(6, 14)) / st.spacing
            src_vals = read_slice_data(st.paths[s]).values
            loc = pick_location(rng, candidate_mask(src_vals, st.modality, r_px + 2), [])
            if loc is None:
                continue
            sx, sy = loc
            kind = "FB"
        if lab.edited(st, s):  # copy genuine pixels, which stay in the scan
            continue
        # A copy big enough to carry tissue: at least 5 px of exact core (about 10 mm).
        r_px = max(r_px, 5.0)
        d = int(rng.choice(free))
        dst = read_slice_data(st.paths[d])
        src = dst if s == d else read_slice_data(st.paths[s])
        shape = dst.values.shape
        margin = r_px + 3
        if not (margin <= sx < shape[1] - margin and margin <= sy < shape[0] - margin):
            continue
        avoid = lab.avoid(st, d)
        if s == d:
            avoid.append((sx, sy, 3 * r_px))
        loc = pick_location(rng, candidate_mask(dst.values, st.modality, margin), avoid)
        if loc is None:
            continue
        x, y = loc
        shifted = ndimage.shift(src.values, (y - sy, x - sx), order=0, mode="nearest")
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        dist = np.sqrt((cols - x) ** 2 + (rows - y) ** 2)
        alpha = np.clip((r_px + 2 - dist) / 2.0, 0, 1)
        new = dst.values * (1 - alpha) + shifted * alpha
        region_r = r_px + 2.5
        region = disc(shape, x, y, region_r)
        before = dst.stored.copy()
        after = write_pixels(dst, to_stored(new, dst.ds), region, lab.out(st.paths[d]))
        rec = TamperRecord(
            "copy-move",
            st.name,
            st.modality,
            kind,
            regions=[Region(lab.rel(st.paths[d]), x, y, region_r, d)],
            source={
                "path": lab.rel(st.paths[s]),
                "x": int(sx),
                "y": int(sy),
                "slice_index": s,
            },
            radius_mm=r_px * st.spacing,
        )
        lab.touched.add((st.name, d))
        lab.keep_genuine(st, [s])
        lab.example("copy-move", before, after, rec, dst.ds)
        return rec
    return None


def adversarial(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    rng = lab.rng
    for _ in range(100):
        st = studies[int(rng.integers(len(studies)))]
        free = lab.free_slices(st)
        if not free:
            continue
        lesions = [(i, les) for i, les in lab.study_lesions(st) if les.slice_index in free]
        radius_px = float(rng.uniform(12, 20)) / st.spacing
        if lesions and rng.random() < 0.5:
            _, les = lesions[int(rng.integers(len(lesions)))]
            k, x, y, kind = les.slice_index, les.x, les.y, "FM"
            sl = read_slice_data(st.paths[k])
        else:
            k = int(rng.choice(free))
            sl = read_slice_data(st.paths[k])
            loc = pick_location(
                rng, candidate_mask(sl.values, st.modality, radius_px * 0.5), lab.avoid(st, k)
            )
            if loc is None:
                continue
            (x, y), kind = loc, "FB"
        shape = sl.values.shape
        if st.modality == "CT":
            eps = lab.eps_hu
        else:
            lo, hi = np.percentile(sl.values, (0.5, 99.5))
            eps = lab.eps_mr * float(hi - lo)
        slope = float(sl.ds.get("RescaleSlope", 1.0) or 1.0)
        step = math.floor(eps / slope + 1e-9)  # largest stored change within the bound
        if step < 1:
            raise TamperError(f"epsilon {eps:g} is below one stored unit ({slope:g})")
        z = ndimage.gaussian_filter(rng.normal(size=shape), 0.7)
        sign = np.clip(z / (0.5 * z.std()), -1, 1)
        region = disc(shape, x, y, radius_px)
        delta = np.rint(sign * step)
        lo_s, hi_s = stored_range(sl.ds)
        new_stored = np.clip(sl.stored.astype(np.int64) + delta, lo_s, hi_s)
        before = sl.stored.copy()
        after = write_pixels(sl, new_stored, region, lab.out(st.paths[k]))
        rec = TamperRecord(
            "adversarial-noise",
            st.name,
            st.modality,
            kind,
            regions=[Region(lab.rel(st.paths[k]), x, y, radius_px, k)],
            epsilon=step * slope,
            radius_mm=radius_px * st.spacing,
        )
        lab.touched.add((st.name, k))
        lab.example("adversarial-noise", before, after, rec, sl.ds)
        return rec
    return None


# --- controls
