"""``tamperscan train``: train a BTD or inpainting detector from folders of DICOM files.

The checkpoint written at ``--model-path`` is resumable (``--resume``) and, once training
ends, carries the calibration measured on held-out patients. User errors (missing folder,
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


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a BTD or inpainting detector on genuine DICOM studies",
        description="Train a detector on folders of genuine DICOM files (one sub-folder per "
        "patient), hold out patients for calibration, and write a resumable checkpoint.",
    )
    p.add_argument("--detector", choices=("btd", "inpaint"), required=True,
                   help="btd: Back-in-Time Diffusion; inpaint: the CHAIMELEON-style inpainter")
    p.add_argument("--modality", type=str.upper, choices=("CT", "MR", "MRI"), required=True,
                   help="modality (and so preprocessing) of the training scans")
    p.add_argument("--data", required=True, help="folder of patient sub-folders of .dcm files")
    p.add_argument("--model-path", required=True, help="checkpoint to write (or resume)")
    p.add_argument("--epochs", type=positive, default=10, help="passes over the data (10)")
    p.add_argument("--batch-size", type=positive, default=64, help="patches per step (64)")
    p.add_argument("--num-workers", type=non_negative, default=0,
                   help="data-loading processes (0: in the training process)")
    p.add_argument("--regions", help="CSV 'filename, X, Y' of areas of interest to train on")
    p.add_argument("--resume", action="store_true", help="continue the checkpoint at --model-path")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-4 BTD, 2e-4 inpaint)")
    p.add_argument("--patch-size", type=positive,
                   help="patch side (default BTD 96 CT / 128 MR, inpaint 128)")
    p.add_argument("--model-dim", type=positive,
                   help="BTD Unet dim (default 32) / inpainting width (default 32)")
    p.add_argument("--dim-mults", type=_mults, help="BTD Unet stages, e.g. 1,2,4,8 (default)")
    p.add_argument("--hole-size", type=positive, help="inpainting hidden centre (default patch/2)")
    p.add_argument("--patches-per-slice", type=positive, default=4,
                   help="patches drawn per slice (or per region row) each epoch")
    p.add_argument("--calibration-patches", type=positive, default=512,
                   help="held-out genuine patches scored for calibration (512)")
    p.add_argument("--max-steps", type=positive, help="stop after this many optimiser steps")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--seed", type=int, default=0, help="seed for patches and splits (0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> int:
    from detector.checkpoint import CheckpointError
    from detector.training import TrainingError, TrainOptions, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        opts = TrainOptions(
            detector=args.detector, modality=args.modality, data=args.data,
            model_path=args.model_path, epochs=args.epochs, batch_size=args.batch_size,
            num_workers=args.num_workers, regions=args.regions, resume=args.resume,
            lr=args.lr, patch_size=args.patch_size, model_dim=args.model_dim,
            dim_mults=args.dim_mults, hole_size=args.hole_size,
            patches_per_slice=args.patches_per_slice,
            calibration_patches=args.calibration_patches, max_steps=args.max_steps,
            device=args.device, seed=args.seed, progress=not args.quiet,
        )
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
    print(
        f"trained {args.detector} ({opts.modality}) for {result.epochs} epochs, {result.steps} "
        f"steps on {result.train_slices} slices; loss {first:.4f} -> {last:.4f}; calibrated "
        f"on {calibrated} held-out patches from {result.held_out_slices} slices; "
        f"wrote {result.model_path}"
    )
    return 0
