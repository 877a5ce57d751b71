"""Attack family B: injection, removal and copy-move written independently of family A.

What differs from family A (:mod:`detector.lab.attacks_a`), on purpose and by construction
(no helper is shared; B's tools are :mod:`.b_tools` and :mod:`.b_shapes`):

- ``injection``: lobulated, spiculated, part-solid or calcified nodules (CT) and lobulated,
  spiculated or necrotic masses (MR), averaged across the slice thickness; the scan's own
  noise is kept under the lesion's partial-volume edge and topped up with a residual patch
  borrowed from another slice of the same series, so no synthetic noise enters. A quarter of
  the injections touch one slice only (a hasty attacker), the rest every slice they reach.
- ``removal``: a harmonic (steady-state diffusion) fill from the hole's border, plus borrowed
  scan noise; a quarter of the removals edit the centre slice only.
- ``copy-move``: a disc (a real lesion half of the time) rotated by any angle, scaled by
  0.8-1.25, sometimes mirrored, resampled with cubic splines and blended either by a raised
  cosine feather or seamlessly (Poisson / gradient-domain cloning); lesions are copied over
  one to three consecutive slices.

Each function places one instance in one of ``studies`` and returns its record (family B), or
None when it found no room. The white-box adversarial attack is :mod:`detector.lab.whitebox`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from detector.lab.b_shapes import LesionModel, draw_model, occupancy, texture
from detector.lab.b_tools import (
    borrowed_noise,
    choose_spot,
    lesions_near,
    noise_level,
    poisson_fill,
    ring,
    tissue_mask,
)
from detector.lab.edits import (
    LabState,
    Region,
    StudySeries,
    TamperRecord,
    disc,
    read_slice_data,
    to_stored,
    write_pixels,
)

SINGLE_SLICE_SHARE = 0.25


def _slice_gap(st: StudySeries) -> float:
    return float(np.median(np.abs(np.diff(st.z)))) if len(st.z) > 1 else 1.0


def _thickness(st: StudySeries) -> float:
    return st.thickness or _slice_gap(st)


def _untouched(lab: LabState, st: StudySeries, slices: list[int]) -> bool:
    return bool(slices) and not any((st.name, k) in lab.touched for k in slices)


def _mix(values: np.ndarray, frac: np.ndarray, target: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Partial-volume mix that keeps the noise variance: the scan's own noise weighted by
    (1 - frac), topped up by borrowed noise so the sum has the original level."""
    return values * (1 - frac) + target * frac + noise * np.sqrt(np.clip(1 - (1 - frac) ** 2, 0, 1))


def _lesion_values(rng: np.random.Generator, model: LesionModel, local: float) -> tuple:
    """(body value, core value) in modality units; MR values relative to the local tissue."""
    if model.kind == "part-solid":
        return float(rng.uniform(-650, -420)), float(rng.uniform(10, 50))
    if model.kind == "calcified":
        return float(rng.uniform(20, 60)), float(rng.uniform(250, 900))
    if model.kind == "heterogeneous":
        body = local * float(rng.uniform(1.7, 2.4))
        return body, body * float(rng.uniform(0.35, 0.6))
    if local:  # MR lobulated / spiculated
        return local * float(rng.uniform(1.7, 2.4)), 0.0
    return float(rng.uniform(15, 60)), 0.0


def inject(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    rng = lab.rng
    for _ in range(80):
        st = studies[int(rng.integers(len(studies)))]
        c = int(rng.integers(len(st.paths)))
        model = draw_model(rng, st.modality, float(np.exp(rng.uniform(np.log(3), np.log(11)))))
        thick = _thickness(st)
        single = rng.random() < SINGLE_SLICE_SHARE
        affected = (
            [c]
            if single
            else [
                k for k in range(len(st.paths)) if abs(st.z[k] - st.z[c]) < model.reach + thick / 2
            ]
        )
        if not _untouched(lab, st, affected):
            continue
        centre = read_slice_data(st.paths[c])
        reach_px = model.reach / st.spacing
        tissue = tissue_mask(centre.values, st.modality)
        spot = choose_spot(rng, tissue, reach_px + 3, lesions_near(lab, st, c))
        if spot is None:
            continue
        x, y = spot
        local = 0.0
        if st.modality == "MR":
            near = tissue & disc(tissue.shape, x, y, reach_px + 30)
            local = float(np.percentile(centre.values[near], 75)) if near.any() else 300.0
        body, core_value = _lesion_values(rng, model, local)
        rec = TamperRecord(
            "injection",
            st.name,
            st.modality,
            "FM",
            radius_mm=model.radius,
            family="B",
            detail={"shape": model.kind, "slices": "single" if single else "multi"},
        )
        half = int(np.ceil(reach_px)) + 3
        tex3d = texture(rng, (2 * half + 1, 2 * half + 1), 3.0)
        for k in affected:
            sl = centre if k == c else read_slice_data(st.paths[k])
            shape = sl.values.shape
            r0, r1 = max(y - half, 0), min(y + half + 1, shape[0])
            c0, c1 = max(x - half, 0), min(x + half + 1, shape[1])
            dy = (np.arange(r0, r1)[:, None] - y) * st.spacing
            dx = (np.arange(c0, c1)[None, :] - x) * st.spacing
            dz = 0.0 if single else st.z[k] - st.z[c]
            frac, core = occupancy(model, dx, dy, dz, thick, max(st.spacing, 0.5))
            if frac.max() < 0.05:
                continue
            win = sl.values[r0:r1, c0:c1]
            tex = tex3d[: r1 - r0, : c1 - c0] * 0.8 + 0.2 * texture(rng, win.shape, 2.0)
            amp = 0.05 * abs(body) + 6.0
            lesion = np.where(frac > 0, ((frac - core) * (body + amp * tex) + core * core_value), 0)
            lesion = lesion / np.maximum(frac, 1e-6)
            sigma = noise_level(sl.values, ring(shape, x, y, reach_px + 3, reach_px + 14))
            noise = borrowed_noise(rng, st, k, win.shape, sigma)
            new = sl.values.copy()
            new[r0:r1, c0:c1] = _mix(win, frac, lesion, noise)
            region_r = reach_px + 1.5
            before = sl.stored.copy()
            region = disc(shape, x, y, region_r)
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
        thick = _thickness(st)
        for i, les in lab.study_lesions(st):
            reach = [
                k
                for k in range(len(st.paths))
                if abs(st.z[k] - les.z_mm) < les.radius_mm + thick / 2
            ]
            if _untouched(lab, st, reach):
                options.append((st, i, les, reach))
    if not options:
        return None
    st, i, les, reach = options[int(rng.integers(len(options)))]
    single = rng.random() < SINGLE_SLICE_SHARE
    affected = [les.slice_index] if single and les.slice_index in reach else reach
    lab.removed.add(i)
    rec = TamperRecord(
        "removal",
        st.name,
        st.modality,
        "FB",
        radius_mm=les.radius_mm,
        family="B",
        detail={"fill": "harmonic", "slices": "single" if len(affected) == 1 else "multi"},
    )
    for k in affected:
        sl = read_slice_data(st.paths[k])
        shape = sl.values.shape
        dz = abs(st.z[k] - les.z_mm)
        r_mm = np.sqrt(max(les.radius_mm**2 - dz**2, (0.45 * les.radius_mm) ** 2))
        hole_r = r_mm / st.spacing * 1.3 + 2.5
        hole = disc(shape, les.x, les.y, hole_r)
        fill = poisson_fill(sl.values, hole)
        rr, cc = np.ogrid[: shape[0], : shape[1]]
        alpha = np.clip((hole_r - np.hypot(cc - les.x, rr - les.y)) / 2.5, 0, 1)
        sigma = noise_level(sl.values, ring(shape, les.x, les.y, hole_r + 2, hole_r + 12))
        half = int(np.ceil(hole_r)) + 1
        r0, r1 = max(les.y - half, 0), min(les.y + half + 1, shape[0])
        c0, c1 = max(les.x - half, 0), min(les.x + half + 1, shape[1])
        noise = np.zeros(shape)
        noise[r0:r1, c0:c1] = borrowed_noise(rng, st, k, (r1 - r0, c1 - c0), sigma)
        new = _mix(sl.values, alpha, fill, noise)
        before = sl.stored.copy()
        region_r = hole_r + 0.5
        region = disc(shape, les.x, les.y, region_r)
        after = write_pixels(sl, to_stored(new, sl.ds), region, lab.out(st.paths[k]))
        rec.regions.append(Region(lab.rel(st.paths[k]), les.x, les.y, region_r, k))
        lab.touched.add((st.name, k))
        if k == les.slice_index:
            lab.example("removal", before, after, rec, sl.ds)
    return rec


def _warp(src: np.ndarray, sx: float, sy: float, x: int, y: int, half: int, t: dict) -> tuple:
    """Source pixels around (sx, sy) rotated, scaled and mirrored into a window at (x, y)."""
    rows = np.arange(y - half, y + half + 1)[:, None] - y
    cols = np.arange(x - half, x + half + 1)[None, :] - x
    cos, sin = np.cos(t["angle"]), np.sin(t["angle"])
    u = (cos * cols + sin * rows) / t["scale"]
    v = (-sin * cols + cos * rows) / t["scale"]
    if t["mirror"]:
        u = -u
    coords = np.stack(np.broadcast_arrays(sy + v, sx + u))
    return ndimage.map_coordinates(src, coords, order=3, mode="nearest"), (y - half, x - half)


def copy_move(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    rng = lab.rng
    for _ in range(80):
        st = studies[int(rng.integers(len(studies)))]
        lesions = lab.study_lesions(st)
        if lesions and rng.random() < 0.5:
            _, les = lesions[int(rng.integers(len(lesions)))]
            s, sx, sy, kind = les.slice_index, les.x, les.y, "FM"
            r_src = les.radius_mm / st.spacing * 1.3 + 3
            n = int(rng.choice([1, 2, 3]))
        else:
            s = int(rng.integers(len(st.paths)))
            r_src = float(rng.uniform(5, 12)) / st.spacing
            spot = choose_spot(
                rng, tissue_mask(read_slice_data(st.paths[s]).values, st.modality), r_src + 2, []
            )
            if spot is None:
                continue
            (sx, sy), kind, n = spot, "FB", int(rng.choice([1, 2]))
        r_src = max(r_src, 4.0)
        t = {
            "angle": float(rng.uniform(0, 2 * np.pi)),
            "scale": float(rng.uniform(0.8, 1.25)),
            "mirror": bool(rng.random() < 0.3),
            "blend": str(rng.choice(["feather", "poisson"])),
        }
        region_r = r_src * t["scale"] + 2.0
        d = int(rng.integers(len(st.paths)))
        s = min(s, len(st.paths) - n)
        dst_slices = list(range(d, d + n))
        src_slices = list(range(s, s + n))
        if s < 0 or d + n > len(st.paths) or not _untouched(lab, st, dst_slices):
            continue
        if any(lab.edited(st, k) for k in src_slices):  # the source must stay genuine
            continue
        dst0 = read_slice_data(st.paths[d])
        keep_away = lesions_near(lab, st, d) + ([(sx, sy, 3 * region_r)] if abs(s - d) < n else [])
        spot = choose_spot(rng, tissue_mask(dst0.values, st.modality), region_r + 3, keep_away)
        if spot is None:
            continue
        x, y = spot
        rec = TamperRecord(
            "copy-move",
            st.name,
            st.modality,
            kind,
            source={"path": lab.rel(st.paths[s]), "x": int(sx), "y": int(sy), "slice_index": s},
            radius_mm=region_r * st.spacing,
            family="B",
            detail={**t, "slices": n},
        )
        half = int(np.ceil(region_r)) + 2
        for j in range(n):
            dst = dst0 if j == 0 else read_slice_data(st.paths[d + j])
            src = read_slice_data(st.paths[s + j]).values
            shape = dst.values.shape
            warped, (r0, c0) = _warp(src, sx, sy, x, y, half, t)
            guide = dst.values.copy()
            guide[r0 : r0 + warped.shape[0], c0 : c0 + warped.shape[1]] = warped
            if t["blend"] == "poisson":
                new = poisson_fill(dst.values, disc(shape, x, y, region_r - 1), guidance=guide)
            else:
                rr, cc = np.ogrid[: shape[0], : shape[1]]
                edge = np.clip((np.hypot(cc - x, rr - y) - (region_r - 3.5)) / 3.0, 0, 1)
                alpha = 0.5 * (1 + np.cos(np.pi * edge))
                new = dst.values * (1 - alpha) + guide * alpha
            before = dst.stored.copy()
            region = disc(shape, x, y, region_r)
            after = write_pixels(dst, to_stored(new, dst.ds), region, lab.out(st.paths[d + j]))
            rec.regions.append(Region(lab.rel(st.paths[d + j]), x, y, region_r, d + j))
            lab.touched.add((st.name, d + j))
            if j == 0:
                lab.example("copy-move", before, after, rec, dst.ds)
        lab.keep_genuine(st, src_slices)
        return rec
    return None
