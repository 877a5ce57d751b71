"""Family B's adversarial-noise: a white-box PGD attack on TamperScan's own inpainting detector.

The attacker knows the detector: given the checkpoint (``--target-model``, one per modality,
as ``tamperscan train`` writes them) it differentiates the detector's score at the attacked
location with respect to the pixels of a disc there, and runs projected gradient descent to
*lower* that score, within ``|delta| <= epsilon`` (10 HU for CT, 1.5 % of the slice's robust
range for MR, rounded down to whole stored units). It starts from a random point of the
epsilon ball (so the region always carries a perturbation) and averages the gradient over
small shifts of the patch (expectation over transformation), so the effect survives a
proposal a few pixels off. The score before and after (quantised) is kept in the record.
A white-box attacker perturbs where the target can see: spots where less than a quarter of
the disc lies inside the detector's intensity window (CT lung below -700 HU is clipped by the
BTD window) are passed over.

Only inpainting checkpoints are supported; a BTD checkpoint or a missing modality is refused
with an error that says what to give. Nothing here is shared with family A.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from detector.lab.b_tools import choose_spot, lesions_near, tissue_mask
from detector.lab.edits import (
    LabState,
    Region,
    StudySeries,
    TamperError,
    TamperRecord,
    disc,
    read_slice_data,
    stored_range,
    write_pixels,
)

STEPS = 30
SHIFTS = ((0, 0), (2, -2), (-2, 2))
MIN_VISIBLE = 0.25  # share of the disc inside the detector's intensity window


def targets_by_modality(paths: Any, modalities: set[str]) -> dict[str, Path]:
    """Check the target checkpoints: one inpainting model per modality that will be attacked."""
    from detector.checkpoint import CheckpointError, kind_and_modality

    found: dict[str, Path] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise TamperError(f"--target-model {path}: no such file")
        try:
            kind, modality = kind_and_modality(path)
        except CheckpointError as exc:
            raise TamperError(str(exc)) from None
        if kind != "inpaint" or modality is None:
            raise TamperError(
                f"--target-model {path}: a {kind} checkpoint; the white-box attack "
                "differentiates the inpainting detector: give an inpaint checkpoint"
            )
        found[modality] = path
    missing = sorted(modalities - set(found))
    if missing:
        raise TamperError(
            "family B adversarial-noise is a white-box attack on TamperScan's inpainting "
            f"detector: give --target-model CKPT for {', '.join(missing)} (an inpaint "
            "checkpoint from 'tamperscan train'), or leave adversarial-noise out of family B"
        )
    return found


class _Target:
    """The detector as a differentiable function of modality-unit pixels around (x, y)."""

    def __init__(self, path: Path, modality: str) -> None:
        import torch

        from detector.inpainting import hole_mask, load_inpaint

        self.torch = torch
        self.det = load_inpaint(str(path), modality, device="cpu", precision="fp32")
        self.det.net.eval().requires_grad_(False)
        self.size = self.det.net.cfg.patch_size
        self.mask = hole_mask(self.det.net.cfg)
        self.ring = 1.0 - self.mask

    def window(self, st: StudySeries, values: np.ndarray, lab: LabState) -> tuple[float, float]:
        prep = self.det.prep
        if st.modality == "CT":
            return float(prep.ct_window[0]), float(prep.ct_window[1])
        key = ("range", st.name)
        if key not in lab.cache:
            from detector.slices import volume_intensity_range

            lab.cache[key] = volume_intensity_range(st.paths, tuple(prep.mr_percentiles))
        return lab.cache[key]

    def score(self, patch_values: Any, lo: float, hi: float) -> Any:
        """Mean detector score over the shifted patches ((S+4, S+4) modality units in)."""
        torch = self.torch
        unit = ((patch_values - lo) / (hi - lo)).clamp(0.0, 1.0)
        s = self.size
        batch = torch.stack([unit[2 + dy : 2 + dy + s, 2 + dx : 2 + dx + s] for dy, dx in SHIFTS])
        p = batch[:, None].contiguous(memory_format=torch.channels_last)
        err = ((self.det.net(p) - p) ** 2 * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum()
        if self.det.scoring.normalise:
            vis = p[:, 0][:, self.ring.bool()]
            err = err / (vis.var(dim=1) + self.det.scoring.eps)
        return err.mean()


def _target(lab: LabState, modality: str) -> _Target:
    key = ("target", modality)
    if key not in lab.cache:
        lab.cache[key] = _Target(lab.target_models[modality], modality)
    return lab.cache[key]


def _spot(lab: LabState, st: StudySeries, radius_px: float):  # noqa: ANN202
    rng = lab.rng
    lesions = [
        (i, les)
        for i, les in lab.study_lesions(st)
        if (st.name, les.slice_index) not in lab.touched
    ]
    if lesions and rng.random() < 0.5:
        _, les = lesions[int(rng.integers(len(lesions)))]
        return les.slice_index, les.x, les.y, "FM"
    free = [k for k in range(len(st.paths)) if (st.name, k) not in lab.touched]
    if not free:
        return None
    k = int(free[int(rng.integers(len(free)))])
    values = read_slice_data(st.paths[k]).values
    spot = choose_spot(
        rng, tissue_mask(values, st.modality), radius_px * 0.6, lesions_near(lab, st, k)
    )
    return None if spot is None else (k, spot[0], spot[1], "FB")


def attack(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    """One PGD-perturbed disc on one slice (family B's adversarial-noise)."""
    import torch

    rng = lab.rng
    for _ in range(60):
        st = studies[int(rng.integers(len(studies)))]
        target = _target(lab, st.modality)
        radius_px = min(float(rng.uniform(8, 16)) / st.spacing, target.size / 2 - 3)
        found = _spot(lab, st, radius_px)
        if found is None:
            continue
        k, x, y, kind = found
        sl = read_slice_data(st.paths[k])
        slope = float(sl.ds.get("RescaleSlope", 1.0) or 1.0)
        if st.modality == "CT":
            eps = lab.eps_hu
        else:
            p_lo, p_hi = np.percentile(sl.values, (0.5, 99.5))
            eps = lab.eps_mr * float(p_hi - p_lo)
        step_units = int(np.floor(eps / slope + 1e-9))
        if step_units < 1:
            raise TamperError(f"epsilon {eps:g} is below one stored unit ({slope:g})")
        bound = step_units * slope
        half = target.size // 2 + 2
        padded = np.pad(sl.values, half, mode="constant", constant_values=np.nan)
        win = padded[y : y + 2 * half, x : x + 2 * half]
        lo, hi = target.window(st, sl.values, lab)
        win = np.where(np.isnan(win), lo, win)
        shape_w = win.shape
        in_disc = disc(shape_w, half, half, radius_px)
        seen = (win[in_disc] > lo) & (win[in_disc] < hi)
        if seen.mean() < MIN_VISIBLE:  # the detector's window clips this spot: go elsewhere
            continue
        inside = torch.from_numpy(in_disc.astype(np.float32))
        base = torch.from_numpy(win.astype(np.float32))
        delta = torch.from_numpy(rng.uniform(-bound, bound, shape_w).astype(np.float32))
        delta = (delta * inside).requires_grad_(True)
        with torch.no_grad():
            before = float(target.score(base, lo, hi))
        alpha = bound / 6
        for _ in range(STEPS):
            loss = target.score(base + delta * inside, lo, hi)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= alpha * grad.sign()
                delta.clamp_(-bound, bound)
        units = np.rint(delta.detach().numpy() * inside.numpy() / slope)
        units = np.clip(units, -step_units, step_units)
        with torch.no_grad():
            after = float(target.score(base + torch.from_numpy(units * slope).float(), lo, hi))
        full = np.zeros(sl.values.shape)
        r0, c0 = y - half, x - half
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + shape_w[0], full.shape[0]), min(c0 + shape_w[1], full.shape[1])
        full[rs:re, cs:ce] = units[rs - r0 : re - r0, cs - c0 : ce - c0]
        lo_s, hi_s = stored_range(sl.ds)
        new_stored = np.clip(sl.stored.astype(np.int64) + full, lo_s, hi_s)
        before_px = sl.stored.copy()
        region = disc(sl.values.shape, x, y, radius_px)
        after_px = write_pixels(sl, new_stored, region, lab.out(st.paths[k]))
        rec = TamperRecord(
            "adversarial-noise",
            st.name,
            st.modality,
            kind,
            regions=[Region(lab.rel(st.paths[k]), x, y, radius_px, k)],
            epsilon=bound,
            radius_mm=radius_px * st.spacing,
            family="B",
            detail={
                "method": "pgd",
                "target_model": str(lab.target_models[st.modality]),
                "steps": STEPS,
                "score_before": before,
                "score_after": after,
            },
        )
        lab.touched.add((st.name, k))
        lab.example("adversarial-noise", before_px, after_px, rec, sl.ds)
        return rec
    return None
