"""What ``tamperscan train`` accepts, and the fresh network those options build.

No data reading and no training loop here: :mod:`detector.training.data` finds the slices,
:mod:`detector.training.loop` runs the optimiser, :mod:`detector.training.run` ties them up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from detector.btd_config import DEFAULT_TRAIN_MAX_TIMESTEP
from detector.preprocess import Preprocessing, normalise_modality

DETECTORS = ("btd", "inpaint")
DEFAULT_LR = {"btd": 1e-4, "inpaint": 2e-4}

#: BTD scores at t = 0 (``BTDScoring.t``) and trains on t in [0, this] (see btd_config).
DEFAULT_BTD_MAX_TIMESTEP = DEFAULT_TRAIN_MAX_TIMESTEP

#: Share of body patches centred on the slices' region proposals (training, calibration, gate).
DEFAULT_PROPOSAL_FRACTION = 0.5

#: Inpainting hole side at lesion scale, in mm: CT-GAN hides the central 20 mm of its cubes
#: (nodules are 3-30 mm); breast MR masses run larger (5-40 mm).
DEFAULT_HOLE_MM = {"CT": 20.0, "MR": 30.0}

#: Inpainting scores divided by the surround's variance: on for MR, whose units are per-volume
#: percentiles (contrast differs between series), off for CT, whose HU are absolute.
DEFAULT_NORMALISE_SCORE = {"CT": False, "MR": True}


class TrainingError(ValueError):
    """A user error in the training inputs; the message says what was expected and found."""


@dataclass
class TrainOptions:
    """Everything ``tamperscan train`` accepts; saved in the checkpoint's ``training``."""

    detector: str
    modality: str
    data: str
    model_path: str
    epochs: int = 10
    batch_size: int = 64
    num_workers: int = 0
    regions: str | None = None
    resume: bool = False
    lr: float | None = None
    patch_size: int | None = None
    model_dim: int | None = None  # BTD Unet dim / inpainting width
    dim_mults: tuple[int, ...] | None = None  # BTD only
    hole_size: int | None = None  # inpainting only, pixels; wins over hole_mm
    hole_mm: float | None = None  # inpainting only; None: DEFAULT_HOLE_MM of the modality
    normalise_score: bool | None = None  # inpainting only; None: DEFAULT_NORMALISE_SCORE
    max_timestep: int | None = DEFAULT_BTD_MAX_TIMESTEP  # BTD only; None: all timesteps
    proposal_fraction: float = DEFAULT_PROPOSAL_FRACTION
    patches_per_slice: int = 4
    holdout_fraction: float = 0.1
    calibration_patches: int = 512
    ema_decay: float = 0.995
    max_steps: int | None = None
    max_seconds: float | None = None  # wall-clock budget of training + calibration
    snapshot_minutes: tuple[float, ...] = ()  # also save the EMA weights at these elapsed minutes
    init_from: str | None = None  # fine-tune: start from this checkpoint's weights (same size)
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise TrainingError(f"--detector must be one of {DETECTORS}, got {self.detector!r}")
        self.modality = normalise_modality(self.modality)
        if self.epochs < 1 or self.batch_size < 1 or self.num_workers < 0:
            raise TrainingError("--epochs and --batch-size must be >= 1, --num-workers >= 0")
        if not 0.0 <= self.proposal_fraction <= 1.0:
            raise TrainingError(
                f"--proposal-fraction must be in [0, 1], got {self.proposal_fraction}"
            )
        if self.max_timestep is not None and self.max_timestep < 0:
            raise TrainingError(f"--max-timestep must be >= 0, got {self.max_timestep}")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise TrainingError(f"the time budget must be positive, got {self.max_seconds} s")
        if any(m <= 0 for m in self.snapshot_minutes):
            raise TrainingError(
                f"--snapshots must be positive minutes, got {self.snapshot_minutes}"
            )
        self.snapshot_minutes = tuple(sorted(set(self.snapshot_minutes)))


def hole_pixels(opts: TrainOptions, patch: int, spacing_mm: float | None) -> int:
    """The inpainting hole side in pixels: given, or ``hole_mm`` over the data's pixel spacing.

    Kept inside the patch with a surround of at least a quarter patch on each side (the
    network needs context to in-paint from).
    """
    if opts.hole_size is not None:
        return opts.hole_size
    mm = opts.hole_mm if opts.hole_mm is not None else DEFAULT_HOLE_MM[opts.modality]
    px = round(mm / (spacing_mm or 1.0))
    return int(min(max(px, 2), patch // 2))


def build_model(
    opts: TrainOptions, spacing_mm: float | None = None
) -> tuple[nn.Module, Preprocessing, dict, dict]:
    """A fresh network for ``opts`` with its preprocessing, config and scoring dicts.

    ``spacing_mm`` (the training data's median pixel spacing) converts ``hole_mm`` to pixels.
    """
    if opts.detector == "btd":
        from detector.btd import DEFAULT_PATCH, BTDModelConfig, BTDScoring, build_diffusion

        cfg = BTDModelConfig(
            dim=opts.model_dim or 32,
            dim_mults=tuple(opts.dim_mults or (1, 2, 4, 8)),
            image_size=opts.patch_size or DEFAULT_PATCH[opts.modality],
        )
        if opts.max_timestep is not None and opts.max_timestep >= cfg.timesteps:
            raise TrainingError(
                f"--max-timestep must be below the schedule's {cfg.timesteps} steps, "
                f"got {opts.max_timestep}"
            )
        prep = Preprocessing(opts.modality, cfg.image_size)
        return build_diffusion(cfg), prep, cfg.to_dict(), BTDScoring().to_dict()
    from detector.inpainting import DEFAULT_PATCH as IP_PATCH
    from detector.inpainting import InpaintConfig, InpaintNet, InpaintScoring

    patch = opts.patch_size or IP_PATCH[opts.modality]
    icfg = InpaintConfig(
        patch_size=patch,
        hole_size=hole_pixels(opts, patch, spacing_mm),
        width=opts.model_dim or 32,
    )
    normalise = opts.normalise_score
    if normalise is None:
        normalise = DEFAULT_NORMALISE_SCORE[opts.modality]
    prep = Preprocessing(opts.modality, patch)
    return InpaintNet(icfg), prep, icfg.to_dict(), InpaintScoring(normalise=normalise).to_dict()
