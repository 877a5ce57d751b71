"""``train``: slices -> held-out split -> fit -> calibrate -> the checkpoint file.

About 10 % of the patients (at least one when there are two or more) are held out: they never
reach the optimiser and their genuine patches calibrate the finished model. A resumable
checkpoint is written after every epoch (atomically); ``--resume`` continues to ``--epochs``.
When the time budget runs out the loop stops early, the EMA weights are still calibrated and
the file is complete: a budget stop is a normal end, reported as such (``TrainResult.stopped``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from detector.calibration import Calibration
from detector.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from detector.preprocess import Preprocessing
from detector.training.data import (
    find_dicom_slices,
    median_spacing_mm,
    read_regions_csv,
    split_holdout,
)
from detector.training.loop import StopReason, fit
from detector.training.options import DEFAULT_LR, TrainingError, TrainOptions, build_model
from detector.training.patches import PatchDataset, calibration_patches

log = logging.getLogger(__name__)


def calibrate(detector: Any, patches: np.ndarray) -> Calibration:
    """Score held-out genuine patches with the finished detector; keep the distribution."""
    scores, _ = detector.score_patches(patches)
    return Calibration.from_scores(scores)


def detector_from_model(
    kind: str, model: nn.Module, prep: Preprocessing, scoring: dict, device: str = "auto"
) -> Any:
    """Wrap a trained network as its detector (for calibration right after training)."""
    if kind == "btd":
        from detector.btd import BTDDetector, BTDScoring

        return BTDDetector(model, prep, BTDScoring.from_dict(scoring), device=device)
    from detector.inpainting import InpaintDetector, InpaintScoring

    return InpaintDetector(model, prep, InpaintScoring.from_dict(scoring), device=device)


@dataclass
class TrainResult:
    model_path: Path
    losses: list[float]
    steps: int
    epochs: int
    calibration: Calibration | None  # None on non-main processes of a multi-GPU run
    train_slices: int
    held_out_slices: int
    stopped: StopReason = StopReason.EPOCHS
    seconds: float = 0.0


@dataclass
class _Start:
    """Where the optimisation starts: fresh, resumed, or fine-tuned from another checkpoint."""

    epoch: int = 0
    step: int = 0
    opt_state: dict | None = None
    ema_state: dict | None = None


def _starting_point(
    opts: TrainOptions, model: nn.Module, prep: Preprocessing, model_config: dict
) -> _Start:
    """Load the weights ``--resume`` / ``init_from`` ask for, refusing a size mismatch."""
    model_path = Path(opts.model_path)
    source = model_path if opts.resume else opts.init_from
    if source is None:
        if model_path.exists():
            log.warning("%s exists and will be overwritten (--resume continues it)", model_path)
        return _Start()
    if opts.resume and not model_path.is_file():
        raise TrainingError(f"--resume: no checkpoint at {model_path} to resume from")
    ckpt = load_checkpoint(source, expected_kind=opts.detector, modality=opts.modality)
    if ckpt.model_config != model_config or ckpt.preprocessing != prep:
        what = "cannot resume" if opts.resume else "cannot fine-tune from it"
        raise CheckpointError(
            f"{source}: {what}: it holds {ckpt.model_config} with "
            f"{ckpt.preprocessing}, but these options build {model_config} with {prep}"
        )
    model.load_state_dict(ckpt.model_state)
    if opts.resume:
        log.info("resuming %s from epoch %d, step %d", model_path, ckpt.epoch, ckpt.step)
        return _Start(ckpt.epoch, ckpt.step, ckpt.optimizer_state, ckpt.ema_state)
    log.info("fine-tuning from %s (step %d)", source, ckpt.step)
    return _Start(ema_state=ckpt.ema_state)  # the EMA continues from the production weights


def _loaders(dataset: PatchDataset, opts: TrainOptions) -> Callable[[int], DataLoader]:
    def batches(epoch: int) -> DataLoader:
        dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(opts.seed * 1000 + epoch)
        return DataLoader(
            dataset,
            batch_size=opts.batch_size,
            shuffle=True,
            generator=g,
            num_workers=opts.num_workers,
            drop_last=len(dataset) > opts.batch_size,
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
        )

    return batches


def snapshot_path(model_path: str | Path, minutes: float) -> Path:
    """``ct-btd.ckpt`` at 4 minutes -> ``ct-btd.at-4min.ckpt`` (beside the final file)."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.at-{minutes:g}min{path.suffix}")


def train(opts: TrainOptions, between_steps: Callable[[], None] | None = None) -> TrainResult:
    """Train, checkpoint every epoch, calibrate on held-out patients, write the final file.

    ``between_steps`` is passed to :func:`fit` (it is not an option: checkpoints store options).
    """
    torch.manual_seed(opts.seed)
    slices = find_dicom_slices(opts.data, opts.modality)
    regions = read_regions_csv(opts.regions, opts.data) if opts.regions else []
    model, prep, model_config, scoring = build_model(opts, median_spacing_mm(slices))
    start = _starting_point(opts, model, prep, model_config)
    train_slices, held_out = split_holdout(slices, opts.holdout_fraction, opts.seed)
    if regions and not {s.path for s in train_slices} & {r[0] for r in regions}:
        raise TrainingError(
            f"{opts.regions}: none of its files are among the training slices under {opts.data}"
        )
    dataset = PatchDataset(
        train_slices,
        prep,
        regions,
        opts.patches_per_slice,
        opts.seed,
        proposal_fraction=opts.proposal_fraction,
    )
    lr = opts.lr or DEFAULT_LR[opts.detector]
    training = {
        **asdict(opts),
        "lr": lr,
        "train_slices": len(train_slices),
        "held_out": len(held_out),
    }
    last: dict[str, Any] = {"epoch": start.epoch, "step": start.step, "opt": None}

    def save(
        net: nn.Module,
        ema: Any,
        calibration: Calibration | None = None,
        path: Path | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        opt = last["opt"]
        save_checkpoint(
            path or opts.model_path,
            kind=opts.detector,
            preprocessing=prep,
            model_config=model_config,
            scoring=scoring,
            model_state=net.state_dict(),
            ema_state=ema.state_dict(),
            optimizer_state=opt.state_dict() if opt is not None else start.opt_state,
            step=int(last["step"]),
            epoch=int(last["epoch"]),
            calibration=calibration,
            training={**training, **(extra or {})},
        )

    def on_epoch_end(epoch: int, step: int, net: nn.Module, ema: Any, opt: Any) -> None:
        last.update(epoch=epoch, step=step, opt=opt)
        save(net, ema)

    due = list(opts.snapshot_minutes)

    def snapshot(step: int, elapsed_s: float, net: nn.Module, ema: Any) -> None:
        """The weights as they are at each asked-for minute, uncalibrated, for AUC curves."""
        while due and elapsed_s >= due[0] * 60:
            minutes = due.pop(0)
            last["step"] = step
            extra = {"snapshot_minutes": minutes, "snapshot_elapsed_s": elapsed_s}
            save(net, ema, path=snapshot_path(opts.model_path, minutes), extra=extra)

    fitted = fit(
        opts.detector,
        model,
        _loaders(dataset, opts),
        epochs=opts.epochs,
        lr=lr,
        start_epoch=start.epoch,
        start_step=start.step,
        ema_decay=opts.ema_decay,
        optimizer_state=start.opt_state,
        ema_state=start.ema_state,
        max_steps=opts.max_steps,
        device=opts.device,
        progress=opts.progress,
        on_epoch_end=on_epoch_end,
        max_seconds=opts.max_seconds,
        between_steps=between_steps,
        max_timestep=opts.max_timestep if opts.detector == "btd" else None,
        reserve_steps=1 + opts.calibration_patches / (3 * opts.batch_size),
        after_step=snapshot if due else None,
    )
    from accelerate.state import PartialState

    calibration = None
    if PartialState().is_main_process:  # other GPUs: the main process calibrates and saves
        scoring_model = copy.deepcopy(fitted.ema.ema_model).float()
        detector = detector_from_model(opts.detector, scoring_model, prep, scoring, opts.device)
        patches = calibration_patches(
            held_out, prep, regions, opts.calibration_patches, opts.seed, opts.proposal_fraction
        )
        calibration = calibrate(detector, patches)
        save(fitted.model, fitted.ema, calibration)
    return TrainResult(
        Path(opts.model_path),
        fitted.losses,
        int(last["step"]),
        int(last["epoch"]),
        calibration,
        len(train_slices),
        len(held_out),
        fitted.stopped,
        fitted.seconds,
    )
