"""Family B's adversarial-noise: a white-box PGD attack on TamperScan's own learned detectors.

The attacker knows the detectors: given their checkpoints (``--target-model``, inpainting
and/or BTD, one or more per modality, as ``tamperscan train`` writes them) it differentiates
their scores at the attacked location with respect to the pixels of a disc there
(:mod:`detector.lab.whitebox_targets`), and runs projected gradient descent to *lower* them
together, within ``|delta| <= epsilon`` (10 HU for CT, 1.5 % of the slice's robust range for
MR, rounded down to whole stored units). It starts from a random point of the epsilon ball (so
the region always carries a perturbation) and averages the gradient over small shifts of the
patch. Every target's score before and after (quantised) is kept in the record. A white-box
attacker perturbs where its targets can see: spots where less than a quarter of the disc lies
inside a target's intensity window (CT lung below -700 HU is clipped) are passed over.

A checkpoint of another kind, released BTD weights (no modality recorded) or a missing
modality is refused with an error that says what to give. Nothing here is shared with
family A.
"""

from __future__ import annotations

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
from detector.lab.whitebox_targets import (
    MARGIN,
    Target,
    targets_by_modality,
    targets_for,
    visible_share,
)

STEPS = 30
MIN_VISIBLE = 0.25  # share of the disc inside each target's intensity window

__all__ = ["attack", "targets_by_modality"]


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


def _descend(
    targets: list[Target],
    windows: list[tuple[float, float]],
    win: np.ndarray,
    in_disc: np.ndarray,
    start: np.ndarray,
    bound: float,
    before: list[float],
) -> np.ndarray:
    """PGD on the sum of the targets' scores relative to ``before``; returns the delta."""
    import torch

    half = win.shape[0] // 2
    dev = targets[0].device
    inside = torch.from_numpy(in_disc.astype(np.float32)).to(dev)
    base = torch.from_numpy(win.astype(np.float32)).to(dev)
    delta = (torch.from_numpy(start).to(dev) * inside).requires_grad_(True)

    def scores(values: torch.Tensor) -> list[torch.Tensor]:
        return [t.score(values, half, lo, hi) for t, (lo, hi) in zip(targets, windows, strict=True)]

    for _ in range(STEPS):
        now = scores(base + delta * inside)
        loss = sum(v / max(b, 1e-12) for v, b in zip(now, before, strict=True))
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta -= (bound / 6) * grad.sign()
            delta.clamp_(-bound, bound)
    return (delta * inside).detach().cpu().numpy()


def _scores_of(
    targets: list[Target], windows: list[tuple[float, float]], values: np.ndarray
) -> list[float]:
    import torch

    half = values.shape[0] // 2
    with torch.no_grad():
        tensor = torch.from_numpy(values.astype(np.float32)).to(targets[0].device)
        pairs = zip(targets, windows, strict=True)
        return [float(t.score(tensor, half, lo, hi)) for t, (lo, hi) in pairs]


def attack(lab: LabState, studies: list[StudySeries]) -> TamperRecord | None:
    """One PGD-perturbed disc on one slice (family B's adversarial-noise)."""
    import torch

    rng = lab.rng
    for _ in range(60):
        st = studies[int(rng.integers(len(studies)))]
        targets = targets_for(lab, st.modality)
        smallest = min(t.size for t in targets)
        radius_px = min(float(rng.uniform(8, 16)) / st.spacing, smallest / 2 - 3)
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
        half = max(t.size for t in targets) // 2 + MARGIN
        padded = np.pad(sl.values, half, mode="constant", constant_values=np.nan)
        win = padded[y : y + 2 * half, x : x + 2 * half]
        win = np.where(np.isnan(win), float(np.min(sl.values)), win)
        in_disc = disc(win.shape, half, half, radius_px)
        windows = [t.window(st, lab) for t in targets]
        if min(visible_share(win, in_disc, lo, hi) for lo, hi in windows) < MIN_VISIBLE:
            continue  # a target's window clips this spot: go elsewhere
        start = rng.uniform(-bound, bound, win.shape).astype(np.float32)
        threads = torch.get_num_threads()
        if targets[0].device.type == "cpu":  # small nets: one thread beats OpenMP barriers
            torch.set_num_threads(1)
        try:
            before = _scores_of(targets, windows, win)
            delta = _descend(targets, windows, win, in_disc, start, bound, before)
            units = np.clip(np.rint(delta / slope), -step_units, step_units)
            after = _scores_of(targets, windows, win + units * slope)
        finally:
            torch.set_num_threads(threads)
        full = np.zeros(sl.values.shape)
        r0, c0 = y - half, x - half
        rs, cs = max(r0, 0), max(c0, 0)
        re, ce = min(r0 + win.shape[0], full.shape[0]), min(c0 + win.shape[1], full.shape[1])
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
                "steps": STEPS,
                "targets": [
                    {"kind": t.kind, "model": str(t.path), "score_before": b, "score_after": a}
                    for t, b, a in zip(targets, before, after, strict=True)
                ],
            },
        )
        lab.touched.add((st.name, k))
        lab.example("adversarial-noise", before_px, after_px, rec, sl.ds)
        return rec
    return None
