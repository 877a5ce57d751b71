"""``tamperscan train``: train a BTD or inpainting detector from folders of DICOM files.

The checkpoint written at ``--model-path`` is resumable (``--resume``) and, once training
ends, carries the calibration measured on held-out patients. ``--time-budget`` bounds the whole
run (training and calibration): when it runs out the loop stops, the model is calibrated and
saved all the same, and the summary says the budget ended it. User errors (missing folder,
wrong modality, unreadable CSV, a checkpoint that does not match) print one line, exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from tamperscan.argtypes import non_negative, positive

EXIT_USAGE = 2


def _mults(value: str) -> tuple[int, ...]:
    try:
        mults = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,2,4,8, got {value!r}") from None
    if not mults or min(mults) < 1:
        raise argparse.ArgumentTypeError(f"expected positive multipliers, got {value!r}")
    return mults


def _minutes(value: str) -> float:
    try:
        minutes = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes, got {value!r}") from None
    if not minutes > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 minutes, got {value!r}")
    return minutes


def _minute_list(value: str) -> tuple[float, ...]:
    return tuple(_minutes(v) for v in value.split(",") if v.strip())


def _fraction(value: str) -> float:
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {value!r}") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value!r}")
    return share


def _timestep(value: str) -> int | None:
    if value.strip().lower() in ("all", "none"):
        return None
    return non_negative(value)


def register(subparsers: Any) -> None:
    from detector.btd_config import DEFAULT_TRAIN_MAX_TIMESTEP as DEFAULT_BTD_MAX_TIMESTEP

    p = subparsers.add_parser(
        "train",
        help="train a BTD or inpainting detector on genuine DICOM studies",
        description="Train a detector on folders of genuine DICOM files (one sub-folder per "
        "patient), hold out patients for calibration, and write a resumable checkpoint. "
        "Recipes for CPU and GPU: docs/detectors.md.",
    )
    add = p.add_argument
    add(
        "--detector",
        choices=("btd", "inpaint"),
        required=True,
        help="btd: Back-in-Time Diffusion; inpaint: the CHAIMELEON-style inpainter",
    )
    add(
        "--modality",
        type=str.upper,
        choices=("CT", "MR", "MRI"),
        required=True,
        help="modality (and so preprocessing) of the training scans",
    )
    add("--data", required=True, help="folder of patient sub-folders of .dcm files")
    add("--model-path", required=True, help="checkpoint to write (or resume)")
    add("--epochs", type=positive, default=10, help="passes over the data (10)")
    add(
        "--time-budget",
        type=_minutes,
        metavar="MIN",
        help="wall-clock minutes for training and calibration; when spent, the model is "
        "calibrated and saved as it is",
    )
    add(
        "--snapshots",
        type=_minute_list,
        default=(),
        metavar="MIN,MIN,...",
        help="also save the weights (uncalibrated) at these elapsed minutes, beside the model "
        "as NAME.at-MINmin.ckpt: for AUC-against-training-time curves",
    )
    add("--max-steps", type=positive, help="stop after this many optimiser steps")
    add("--batch-size", type=positive, default=64, help="patches per step (64)")
    add(
        "--num-workers",
        type=non_negative,
        default=0,
        help="data-loading processes (0: in the training process)",
    )
    add("--regions", help="CSV 'filename, X, Y' of areas of interest to train on")
    add(
        "--proposal-fraction",
        type=_fraction,
        default=0.5,
        help="share of patches centred on the slices' own region proposals, the rest "
        "anywhere in the body (0.5; ignored with --regions)",
    )
    add("--resume", action="store_true", help="continue the checkpoint at --model-path")
    add("--lr", type=float, help="learning rate (default 1e-4 BTD, 2e-4 inpaint)")
    add("--patch-size", type=positive, help="patch side (default BTD 96 CT / 128 MR, inpaint 128)")
    add(
        "--model-dim",
        type=positive,
        help="BTD Unet dim (default 32) / inpainting width (default 32)",
    )
    add("--dim-mults", type=_mults, help="BTD Unet stages, e.g. 1,2,4,8 (default)")
    add(
        "--max-timestep",
        type=_timestep,
        default=DEFAULT_BTD_MAX_TIMESTEP,
        metavar="T",
        help=f"BTD: train on timesteps 0..T, the ones it is scored at "
        f"({DEFAULT_BTD_MAX_TIMESTEP}; 'all' for the paper's 0..999)",
    )
    add(
        "--hole-mm",
        type=float,
        help="inpainting hidden centre in mm, converted with the data's pixel spacing "
        "(default lesion scale: 20 CT, 30 MR)",
    )
    add("--hole-size", type=positive, help="inpainting hidden centre in pixels (wins over mm)")
    add(
        "--normalise-score",
        choices=("auto", "on", "off"),
        default="auto",
        help="inpainting: divide the hole error by the surround's variance "
        "(auto: on for MR, off for CT)",
    )
    add(
        "--patches-per-slice",
        type=positive,
        default=4,
        help="patches drawn per slice (or per region row) each epoch (4)",
    )
    add(
        "--calibration-patches",
        type=positive,
        default=512,
        help="held-out genuine patches scored for calibration (512)",
    )
    add("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    add("--seed", type=int, default=0, help="seed for patches and splits (0)")
    add("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)


def _options(args: argparse.Namespace) -> Any:
    from detector.training import TrainOptions

    normalise = {"auto": None, "on": True, "off": False}[args.normalise_score]
    return TrainOptions(
        detector=args.detector,
        modality=args.modality,
        data=args.data,
        model_path=args.model_path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        regions=args.regions,
        resume=args.resume,
        lr=args.lr,
        patch_size=args.patch_size,
        model_dim=args.model_dim,
        dim_mults=args.dim_mults,
        hole_size=args.hole_size,
        hole_mm=args.hole_mm,
        normalise_score=normalise,
        max_timestep=args.max_timestep,
        proposal_fraction=args.proposal_fraction,
        patches_per_slice=args.patches_per_slice,
        calibration_patches=args.calibration_patches,
        max_steps=args.max_steps,
        max_seconds=args.time_budget * 60 if args.time_budget else None,
        snapshot_minutes=args.snapshots,
        device=args.device,
        seed=args.seed,
        progress=not args.quiet,
    )


def run_train(args: argparse.Namespace) -> int:
    from detector.checkpoint import CheckpointError
    from detector.training import StopReason, TrainingError, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        opts = _options(args)
        result = train(opts)
    except (TrainingError, CheckpointError, FileNotFoundError) as exc:
        print(f"tamperscan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # bad geometry (patch not divisible, hole too big, ...)
        print(f"tamperscan: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    first = sum(result.losses[:5]) / max(1, len(result.losses[:5]))
    last = sum(result.losses[-5:]) / max(1, len(result.losses[-5:]))
    calibrated = result.calibration.size if result.calibration else 0
    if result.stopped == StopReason.TIME_BUDGET:
        ended = f"time budget of {args.time_budget:g} min spent (epoch {result.epochs})"
    elif result.stopped == StopReason.MAX_STEPS:
        ended = f"--max-steps reached at epoch {result.epochs}"
    else:
        ended = f"all {result.epochs} epochs done"
    print(
        f"trained {args.detector} ({opts.modality}): {result.steps} steps in "
        f"{result.seconds / 60:.1f} min on {result.train_slices} slices, {ended}; loss "
        f"{first:.4f} -> {last:.4f}; calibrated on {calibrated} held-out patches from "
        f"{result.held_out_slices} slices; wrote {result.model_path}"
    )
    return 0
