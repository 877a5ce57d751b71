"""The GPU recipe of docs/detectors.md in one prepared run, under 10 minutes on one GPU.

NOT RUN YET: written without a GPU (none was available to the session that wrote it); CPU-only
machines exit with status 2 at once. On a CUDA machine, from the repository root:

    .venv/bin/python benchmarks/gpu_recipe.py                # ~9 minutes
    .venv/bin/python benchmarks/gpu_recipe.py --quick        # ~3 minutes, smaller everything
    .venv/bin/python benchmarks/gpu_recipe.py --smoke        # CPU, tiny models: checks the code

Steps, each timed and printed, and a JSON summary at the end (``--out``):

1. phantom CT studies to train on (``tamperscan phantoms``), plus one 300-slice study to score;
2. ``tamperscan train`` with the paper-size GPU recipe (BTD ``Unet(dim=32, (1,2,4,8))`` patch
   96, inpainting width 32 patch 128, batch 64, bf16, ``--max-timestep 50``) for a fixed
   ``--time-budget`` each (4 + 2 minutes by default), calibrated as always;
3. BTD scoring throughput on the trained model: the library's reference ``p_sample`` (fp32,
   one patch at a time, :func:`detector.btd.reference_residual`) against
   ``BTDDetector.score_patches`` (batched, bf16 where supported), with their agreement;
   the issue's target is >= 20x;
4. the 300-slice study: read, region proposals with the GPU's sliding window (stride 48), both
   detectors on every region; the issue's target is < 5 s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cli(*args: str) -> float:
    """Run ``tamperscan ARGS`` as a user would; returns its wall-clock seconds."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "tamperscan.cli", *args], cwd=REPO, check=True)
    return time.monotonic() - started


def _train(work: Path, args: argparse.Namespace) -> dict[str, float]:
    data = work / "train-ct"
    phantoms = f"phantoms --modality CT --studies {args.studies} --slices {args.slices} "
    phantoms += f"--size {args.size} --seed 101 --quiet --out"
    seconds = {"phantoms": _cli(*phantoms.split(), str(data))}
    common = f"--modality CT --epochs 100000 --device {args.device} --quiet {args.sizes}"
    common += f" --calibration-patches {args.calibration} --data"
    btd = f"train --detector btd --max-timestep 50 --time-budget {args.btd_minutes} {common}"
    seconds["train_btd"] = _cli(*btd.split(), str(data), "--model-path", str(work / "ct-btd.ckpt"))
    inpaint = f"train --detector inpaint --time-budget {args.inpaint_minutes} {common}"
    model = str(work / "ct-inpaint.ckpt")
    seconds["train_inpaint"] = _cli(*inpaint.split(), str(data), "--model-path", model)
    return seconds


def _throughput(work: Path, device: str, n_reference: int, n_ours: int) -> dict[str, float]:
    import torch

    from detector.btd import load_btd, reference_residual
    from detector.training import calibration_patches, find_dicom_slices

    det = load_btd(str(work / "ct-btd.ckpt"), "CT", device=device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    slices = find_dicom_slices(work / "train-ct", "CT")
    patches = calibration_patches(slices, det.prep, [], n_ours, seed=5, proposal_fraction=0.5)
    det.score_patches(patches[:256])  # warm-up: kernels, autotuning
    sync()
    started = time.perf_counter()
    ours, maps = det.score_patches(patches)
    sync()
    ours_rate = len(patches) / (time.perf_counter() - started)
    reference_residual(det.diffusion, patches[0])
    sync()
    started = time.perf_counter()
    ref_maps = np.stack([reference_residual(det.diffusion, p) for p in patches[:n_reference]])
    sync()
    ref_rate = n_reference / (time.perf_counter() - started)
    ref_scores = np.square(ref_maps).mean(axis=(1, 2))
    rel = np.abs(ours[:n_reference] - ref_scores) / np.maximum(ref_scores, 1e-12)
    return {
        "reference_patches_per_s": ref_rate,
        "ours_patches_per_s": ours_rate,
        "speedup": ours_rate / ref_rate,
        "precision": det.step.precision,
        "max_relative_score_difference": float(rel.max()),
        "max_map_difference": float(np.abs(maps[:n_reference] - ref_maps).max()),
    }


def _study(work: Path, device: str, slices: int, size: int) -> dict[str, float]:
    from detector.interface import Location
    from detector.lab.phantoms import write_phantoms
    from detector.loading import load_detector
    from detector.proposals import propose
    from detector.slices import read_slice

    [folder] = write_phantoms("CT", 1, slices, work / "study", seed=909, size=size)
    files = sorted(folder.rglob("*.dcm"))
    detectors = [load_detector(work / f"ct-{d}.ckpt", device=device) for d in ("btd", "inpaint")]
    started = time.monotonic()
    locations = []
    for path in files:
        image = read_slice(path)
        locations += [Location(image, p.x, p.y) for p in propose(image, stride_px=48)]
    read_s = time.monotonic() - started
    for det in detectors:
        det.score(locations)
    total = time.monotonic() - started
    return {
        "slices": len(files),
        "regions": len(locations),
        "read_and_propose_s": read_s,
        "total_s": total,
    }


#: (studies, slices, size, model options, calibration patches, BTD/inpaint minutes, reference
#: patches, our patches, study slices) per mode. Full and quick are the paper-size GPU recipe.
MODES = {
    "full": (10, 32, 512, "--batch-size 64 --num-workers 8", 2000, 4.0, 2.0, 64, 4096, 300),
    "quick": (4, 32, 512, "--batch-size 64 --num-workers 8", 2000, 1.0, 0.5, 32, 4096, 100),
    "smoke": (2, 6, 128, "--batch-size 8 --patch-size 32 --model-dim 8 --dim-mults 1,2", 32,
              0.2, 0.2, 2, 16, 4),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("gpu-recipe"), help="new folder for files")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="about 3 minutes instead of 9")
    mode.add_argument("--smoke", action="store_true", help="CPU, tiny models: checks the code")
    p.add_argument("--out", type=Path, help="write the summary JSON here too")
    args = p.parse_args(argv)
    import torch

    args.device = "cpu" if args.smoke else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_recipe: needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    name = "smoke" if args.smoke else "quick" if args.quick else "full"
    (args.studies, args.slices, args.size, args.sizes, args.calibration, args.btd_minutes,
     args.inpaint_minutes, n_ref, n_ours, study_slices) = MODES[name]  # fmt: skip
    args.work.mkdir(parents=True, exist_ok=False)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none (smoke run on CPU)"
    summary: dict[str, object] = {"mode": name, "gpu": gpu}
    summary["seconds"] = _train(args.work, args)
    summary["btd_throughput"] = _throughput(args.work, args.device, n_ref, n_ours)
    summary["study"] = _study(args.work, args.device, study_slices, args.size)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
