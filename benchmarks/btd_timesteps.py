"""Ablation: BTD trained on the timesteps it is scored at (t <= T) against the paper's 0..999.

BTD scores at t = 0 only. This trains two models that differ in nothing but the training
timesteps (same data, seed, size, number of steps), then reports for each:

- ``eps_mse_t0``: the pred_noise loss at t = 0 on held-out genuine patches — how well the model
  does the one job scoring asks of it (lower is better);
- ``auc``: tampered against genuine locations of a tamper-lab set made from held-out phantoms
  (injection and adversarial noise; copy-move and removal too when ``--attacks`` says so).

    .venv/bin/python benchmarks/btd_timesteps.py --quick     # tiny models, ~2 min on 2 cores
    .venv/bin/python benchmarks/btd_timesteps.py --steps 400 --patch 64 --dim 16 --device cuda

A tiny run says little about full-size models; the command and its output are what to quote.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    from scipy.stats import mannwhitneyu

    pos, neg = scores[labels == 1], scores[labels == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


def _lab_patches(work: Path, prep: object, attacks: list[str], count: int, seed: int) -> tuple:
    from detector.lab.attacks import tamper_dataset
    from detector.preprocess import extract_patch, to_unit
    from detector.slices import read_slice

    result = tamper_dataset(work / "held", work / "lab", attacks, count, seed)
    patches = [
        extract_patch(to_unit(read_slice(work / "lab" / r.path), prep), r.x, r.y, prep.patch_size)
        for r in result.rows
    ]
    return np.stack(patches), np.array([r.label for r in result.rows])


def _eps_mse_t0(diffusion: object, patches: np.ndarray, seed: int) -> float:
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(patches)[:, None].to(diffusion.betas.device)
    t = torch.zeros(len(x), dtype=torch.long, device=x.device)
    with torch.no_grad():
        return float(diffusion.p_losses(diffusion.normalize(x), t))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models and data (CPU, ~2 min)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--max-timestep", type=int, default=50, help="T of the restricted model")
    p.add_argument("--attacks", default="injection,adversarial-noise")
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, default=Path("btd-timesteps"))
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    from detector.btd import BTDDetector
    from detector.lab.phantoms import write_phantoms
    from detector.preprocess import Preprocessing
    from detector.training import (
        PatchDataset,
        TrainOptions,
        build_model,
        calibration_patches,
        find_dicom_slices,
        fit,
    )

    if args.quick:
        args.steps, args.patch, args.dim = 25, 32, 8
    size, slices = (128, 8) if args.quick else (512, 16)
    args.work.mkdir(parents=True, exist_ok=False)
    write_phantoms("CT", 3 if args.quick else 8, slices, args.work / "train", seed=3, size=size)
    write_phantoms("CT", 4 if args.quick else 8, slices, args.work / "held", seed=4, size=size)
    prep = Preprocessing("CT", args.patch)
    train = find_dicom_slices(args.work / "train", "CT")
    held = find_dicom_slices(args.work / "held", "CT")
    genuine = calibration_patches(held, prep, [], 128, seed=9, proposal_fraction=0.5)
    lab, labels = _lab_patches(
        args.work, prep, args.attacks.split(","), 1 if args.quick else 4, seed=11
    )
    dataset = PatchDataset(train, prep, patches_per_item=64, proposal_fraction=0.5)
    batch = 8 if args.quick else 16
    out: dict[str, object] = {"args": vars(args) | {"work": str(args.work)}}
    for name, t_max in ((f"t<={args.max_timestep}", args.max_timestep), ("all", None)):
        torch.manual_seed(0)
        mults = (1, 2) if args.quick else (1, 2, 4)
        opts = TrainOptions(
            "btd", "CT", ".", "x", patch_size=args.patch, model_dim=args.dim, dim_mults=mults
        )
        model, *_ = build_model(opts)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True)
        started = time.monotonic()
        fitted = fit(
            "btd",
            model,
            lambda _e, dl=loader: dl,
            epochs=1000,
            lr=1e-3,
            max_steps=args.steps,
            device=args.device,
            progress=False,
            max_timestep=t_max,
        )
        seconds = time.monotonic() - started
        ema = fitted.ema.ema_model.float().eval()
        det = BTDDetector(ema, prep, device=args.device, precision="fp32")
        scores, _ = det.score_patches(lab)
        out[name] = {
            "eps_mse_t0": _eps_mse_t0(ema, genuine, seed=1),
            "auc": _auc(labels, scores),
            "train_loss_last": float(np.mean(fitted.losses[-5:])),
            "seconds": round(seconds, 1),
        }
        print(name, out[name], flush=True)
    print(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
