"""BTD scoring throughput: the library's reference path against ours, on the same patches.

(a) reference: ``GaussianDiffusion.p_sample(x, t=0)`` — the library's own step — fp32, one
    patch at a time, input mapped to [-1, 1] with ``diffusion.normalize`` (``p_sample`` does not
    normalise; only ``forward()`` does);
(b) ours: :class:`detector.btd.BTDDetector` — batched, inference mode, time conditioning
    computed once, channels-last, bf16 autocast where the hardware has it.

Both use the full-size released architecture (``Unet(dim=32, dim_mults=(1,2,4,8))``, patch 96
for CT / 128 for MR) with random weights, which is enough to time it and to check agreement.
Agreement: fp32 scores within 1e-4 relative and residual maps within 1e-5 absolute; bf16
scores within 2 % relative (bf16 keeps 8 bits of mantissa in the Unet; the step itself stays
fp32). Exit status 1 if any run disagrees.

    .venv/bin/python benchmarks/scoring.py            # 48 patches
    .venv/bin/python benchmarks/scoring.py --quick    # 8 patches
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.btd import (  # noqa: E402
    DEFAULT_PATCH,
    BTDDetector,
    BTDModelConfig,
    BTDScoring,
    build_diffusion,
    default_preprocessing,
    reduce_residual,
    reference_residual,
)
from detector.device import resolve_device, resolve_precision  # noqa: E402

TOLERANCE = {"fp32": (1e-4, 1e-5), "bf16": (2e-2, None)}  # (score rtol, map atol)


def make_patches(n: int, size: int, seed: int) -> np.ndarray:
    """Tissue-like patches in [0, 1]: smooth structure plus fine noise, some air (clamped)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 6, 6))
    smooth = (smooth - smooth.mean()) / (smooth.std() + 1e-9)
    patches = 0.3 + 0.12 * smooth + 0.01 * rng.normal(size=(n, size, size))
    return np.clip(patches, 0.0, 1.0).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 patches instead of 48")
    p.add_argument("--n", type=int, help="number of patches")
    p.add_argument("--modality", default="CT", choices=("CT", "MR"))
    p.add_argument("--device", default="auto")
    p.add_argument("--precisions", default="fp32,auto", help="ours, comma separated")
    p.add_argument("--batch-size", type=int, help="ours; default 4 on CPU, 256 on CUDA")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (8 if args.quick else 48)
    device = resolve_device(args.device)
    size = DEFAULT_PATCH[args.modality]
    torch.manual_seed(0)
    diffusion = build_diffusion(BTDModelConfig(image_size=size))
    patches = make_patches(n, size, seed=1)
    scoring = BTDScoring()
    reference = copy.deepcopy(diffusion).to(device).eval()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_reference() -> np.ndarray:
        return np.stack([reference_residual(reference, patch) for patch in patches])

    runners: dict[str, BTDDetector] = {}
    for requested in args.precisions.split(","):
        precision = resolve_precision(requested.strip(), device)
        if precision not in runners:
            runners[precision] = BTDDetector(
                copy.deepcopy(diffusion),
                default_preprocessing(args.modality),
                scoring,
                device=device,
                precision=precision,
                batch_size=args.batch_size,
            )

    # Warm-up, then interleaved rounds; the best round of each is reported, which is robust
    # to other processes sharing the machine (they only ever slow a round down).
    reference_residual(reference, patches[0])
    for detector in runners.values():
        detector.score_patches(patches[: detector.batch_size])
    best: dict[str, float] = {}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    ref_maps = np.empty(0)
    for _ in range(args.rounds):
        start = time.perf_counter()
        ref_maps = run_reference()
        sync()
        best["reference"] = min(best.get("reference", np.inf), time.perf_counter() - start)
        for precision, detector in runners.items():
            start = time.perf_counter()
            results[precision] = detector.score_patches(patches)
            sync()
            best[precision] = min(best.get(precision, np.inf), time.perf_counter() - start)
    ref_scores = reduce_residual(ref_maps, scoring)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}), threads {torch.get_num_threads()}, {args.modality} "
        f"patch {size}, {n} patches, best of {args.rounds} rounds, Unet dim 32 mults "
        f"(1,2,4,8), t=0, reduction mse"
    )
    ref_time = best["reference"]
    print(f"reference p_sample fp32 batch 1: {n / ref_time:8.2f} patches/s")
    ok = True
    for precision, detector in runners.items():
        scores, maps = results[precision]
        ours_time = best[precision]
        rel = float(np.max(np.abs(scores - ref_scores) / np.abs(ref_scores)))
        diff = float(np.max(np.abs(maps - ref_maps)))
        rtol, atol = TOLERANCE[precision]
        agree = rel <= rtol and (atol is None or diff <= atol)
        ok &= agree
        print(
            f"ours {precision} batch {detector.batch_size}: {n / ours_time:8.2f} patches/s, "
            f"{ref_time / ours_time:5.2f}x reference; max score rel diff {rel:.2e} "
            f"(tol {rtol:g}), max map abs diff {diff:.2e}"
            + (f" (tol {atol:g})" if atol else "")
            + (" OK" if agree else " DISAGREE")
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
