"""The detectors family B's white-box attack differentiates: TamperScan's own learned models.

Each target turns a window of modality-unit pixels around the attacked point into the
detector's score, exactly as serving computes it (the checkpoint's preprocessing window, the
inpainting hole error or the BTD one-step residual and its reduction), averaged over small
shifts of the patch so the effect survives a proposal a few pixels off (expectation over
transformation). Several targets per modality (``--target-model`` given for an inpainting and
a BTD checkpoint) are attacked together: the loss is the sum of their scores relative to the
unperturbed ones, so neither model dominates by its scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector.lab.edits import LabState, StudySeries, TamperError
from detector.preprocess import Preprocessing

if TYPE_CHECKING:  # torch loads only when a white-box attack runs
    import torch

SHIFTS = ((0, 0), (2, -2), (-2, 2))
MARGIN = 2  # pixels around the largest patch, room for the shifts
KINDS = ("inpaint", "btd")


def targets_by_modality(paths: Iterable[str | Path], modalities: set[str]) -> dict[str, list[Path]]:
    """Check the target checkpoints: at least one of ours (inpaint or BTD) per attacked modality."""
    from detector.checkpoint import CheckpointError, kind_and_modality

    found: dict[str, list[Path]] = {}
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise TamperError(f"--target-model {path}: no such file")
        try:
            kind, modality = kind_and_modality(path)
        except CheckpointError as exc:
            raise TamperError(str(exc)) from None
        if kind not in KINDS:
            raise TamperError(
                f"--target-model {path}: a {kind} checkpoint; the white-box attack "
                "differentiates the learned detectors: give an inpaint or btd checkpoint"
            )
        if modality is None:
            raise TamperError(
                f"--target-model {path}: released BTD weights do not record their modality; "
                "give a checkpoint written by 'tamperscan train'"
            )
        found.setdefault(modality, []).append(path)
    missing = sorted(modalities - set(found))
    if missing:
        raise TamperError(
            "family B adversarial-noise is a white-box attack on TamperScan's learned "
            f"detectors: give --target-model CKPT for {', '.join(missing)} (an inpaint or btd "
            "checkpoint from 'tamperscan train'), or leave adversarial-noise out of family B"
        )
    return found


class Target:
    """One detector as a differentiable function of the pixels around the attacked point."""

    kind: str
    prep: Preprocessing
    device: torch.device

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def size(self) -> int:
        return self.prep.patch_size

    def window(self, st: StudySeries, lab: LabState) -> tuple[float, float]:
        """The modality-unit range mapped to [0, 1], as serving maps it for this series."""
        prep = self.prep
        if st.modality == "CT":
            return float(prep.ct_window[0]), float(prep.ct_window[1])
        key = ("range", f"{st.name}|{prep.mr_percentiles}")
        if key not in lab.cache:
            from detector.slices import volume_intensity_range

            lab.cache[key] = volume_intensity_range(st.paths, tuple(prep.mr_percentiles))
        return lab.cache[key]

    def score(self, values: torch.Tensor, half: int, lo: float, hi: float) -> torch.Tensor:
        """Mean score over the shifted patches; ``values`` is (2 half, 2 half), centred."""
        import torch

        unit = ((values - lo) / (hi - lo)).clamp(0.0, 1.0)
        s = self.size
        top = half - s // 2
        batch = torch.stack(
            [unit[top + dy : top + dy + s, top + dx : top + dx + s] for dy, dx in SHIFTS]
        )
        p = batch[:, None].contiguous(memory_format=torch.channels_last)
        return self.batch_scores(p).mean()

    def batch_scores(self, p: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class InpaintTarget(Target):
    """Hole reconstruction error (normalised by the surround's variance where serving does)."""

    kind = "inpaint"

    def __init__(self, path: Path, modality: str) -> None:
        from detector.inpainting import hole_mask, load_inpaint

        super().__init__(path)
        self.det = load_inpaint(str(path), modality, device="auto", precision="fp32")
        self.det.net.eval().requires_grad_(False)
        self.prep = self.det.prep
        self.device = self.det.device
        self.mask = hole_mask(self.det.net.cfg).to(self.device)
        self.ring = 1.0 - self.mask

    def batch_scores(self, p: torch.Tensor) -> torch.Tensor:
        err = ((self.det.net(p) - p) ** 2 * self.mask).sum(dim=(1, 2, 3)) / self.mask.sum()
        if self.det.scoring.normalise:
            vis = p[:, 0][:, self.ring.bool()]
            err = err / (vis.var(dim=1) + self.det.scoring.eps)
        return err


class BTDTarget(Target):
    """The back-in-time step's residual, reduced as the checkpoint's scoring says."""

    kind = "btd"

    def __init__(self, path: Path, modality: str) -> None:
        from detector.btd import load_btd

        super().__init__(path)
        self.det = load_btd(str(path), modality, device="auto", precision="fp32")
        self.det.diffusion.requires_grad_(False)
        self.prep = self.det.prep
        self.device = self.det.step.device

    def batch_scores(self, p: torch.Tensor) -> torch.Tensor:
        from detector.btd import residual_scores

        return residual_scores(self.det.step.residual(p), self.det.scoring)


def load_target(path: Path, modality: str) -> Target:
    from detector.checkpoint import kind_and_modality

    kind, _ = kind_and_modality(path)
    return BTDTarget(path, modality) if kind == "btd" else InpaintTarget(path, modality)


def targets_for(lab: LabState, modality: str) -> list[Target]:
    """The loaded targets of one modality, once per run."""
    key = ("targets", modality)
    if key not in lab.cache:
        lab.cache[key] = [load_target(p, modality) for p in lab.target_models[modality]]
    return lab.cache[key]


def visible_share(win: np.ndarray, in_disc: np.ndarray, lo: float, hi: float) -> float:
    """Share of the disc inside a target's intensity window (outside it the target is blind)."""
    vals = win[in_disc]
    return float(((vals > lo) & (vals < hi)).mean())
