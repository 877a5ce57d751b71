"""AUC against training time for the 15-minute CPU recipe (docs/detectors.md, "Recipes").

Does each learned detector reach its best AUC within its 15-minute budget on 2 cores, and how
fast does it get there? Every run draws fresh phantoms (``--seed``, random by default and
printed): 10 training studies per modality as the recipe says, and a separate test lab tampered
with family A (all four attacks) and family B (injection, removal, copy-move). Each model is
trained once with the recipe and ``--snapshots``; every snapshot and the final (calibrated)
model are evaluated on the same lab. Baseline, measured in the same run on the same rows: the
training-free ``noise-residual`` detector. After training, family B's white-box PGD attack is
run against the final models (all learned models of the modality at once) and each model's AUC
on those regions is printed: the lower it is, the more the attack works.

``--parallel`` trains two models at a time with one thread each (a 1-core recipe, for a machine
that is shared), otherwise one at a time on every core.

    python benchmarks/training_curve.py --out /tmp/curve
    python benchmarks/training_curve.py --out /tmp/curve --minutes 2 --snapshots 0.5,1 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_recipe import RECIPES  # noqa: E402 - needs ROOT on the path


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tamperscan.cli", *args]


ENV = {**os.environ, "PYTHONWARNINGS": "ignore::FutureWarning"}  # the library's amp notices


def run(*args: str) -> None:
    subprocess.run(command(*args), check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=ENV)


def phantoms(modality: str, studies: int, slices: int, size: int, out: Path, seed: int) -> None:
    run("phantoms", "--modality", modality, "--studies", str(studies), "--slices", str(slices),
        "--size", str(size), "--out", str(out), "--seed", str(seed), "--quiet")  # fmt: skip


def train_all(jobs: list[tuple[str, str, Path, Path]], args: argparse.Namespace) -> dict:
    """Start the recipe for each (detector, modality, data, model); wall seconds per model."""
    env = dict(ENV)
    if args.parallel:
        env["OMP_NUM_THREADS"] = "1"
    times: dict[str, float] = {}
    width = 2 if args.parallel else 1
    pending = list(jobs)
    while pending:
        batch, pending = pending[:width], pending[width:]
        procs = []
        for detector, modality, data, model in batch:
            extra = ["--max-steps", "3"] if args.quick else []
            cmd = command(
                "train", "--detector", detector, "--modality", modality, "--data", str(data),
                "--model-path", str(model), "--epochs", "100000", "--time-budget",
                str(args.minutes), "--snapshots", args.snapshots, "--calibration-patches",
                "1000", "--device", "cpu", "--quiet", *RECIPES[detector], *extra,
            )  # fmt: skip
            procs.append(
                (
                    f"{detector}/{modality}",
                    time.monotonic(),
                    subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL),
                )
            )
        for name, started, proc in procs:
            if proc.wait() != 0:
                raise SystemExit(f"training {name} failed ({proc.returncode})")
            times[name] = time.monotonic() - started
            print(f"trained {name} in {times[name]:.0f} s", flush=True)
    return times


def evaluate(data: Path, detector: str, model: Path | None, out: Path) -> dict:
    extra = ["--model", str(model)] if model else []
    run("evaluate", "--data", str(data), "--detector", detector, *extra, "--out", str(out),
        "--quiet")  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def cell(summary: dict, detector: str, modality: str, key: str = "all") -> str:
    per_attack = summary["detectors"].get(detector, {}).get(modality, {})
    plain = [k for k in per_attack if "@" not in k and "/" not in k]
    m = per_attack.get(key) or (per_attack[plain[0]] if len(plain) == 1 else None)
    if not m or m["auc"] is None:
        return "  n/a        "
    lo, hi = m["auc_ci95"]
    return f"{m['auc']:.2f} [{lo:.2f},{hi:.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True, help="new work folder")
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh random draw")
    ap.add_argument("--modality", action="append", choices=("CT", "MR"), default=None)
    ap.add_argument("--minutes", type=float, default=15.0, help="the recipe's budget per model")
    ap.add_argument("--snapshots", default="1,2,4,8", help="elapsed minutes to evaluate")
    ap.add_argument("--train-studies", type=int, default=10)
    ap.add_argument("--train-slices", type=int, default=16)
    ap.add_argument("--train-size", type=int, default=512)
    ap.add_argument("--test-studies", type=int, default=6)
    ap.add_argument("--test-slices", type=int, default=32)
    ap.add_argument("--test-size", type=int, default=256)
    ap.add_argument("--count", type=int, default=12, help="tampered rows per cell")
    ap.add_argument("--parallel", action="store_true", help="two trainings at once, 1 thread")
    ap.add_argument("--quick", action="store_true", help="3 steps per model: checks the code")
    args = ap.parse_args()
    from detector.training import snapshot_path

    modalities = args.modality or ["CT", "MR"]
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "big")
    work = args.out
    work.mkdir(parents=True, exist_ok=False)
    print(f"seed {seed}: training phantoms {seed * 10 + 1}, test phantoms {seed * 10 + 2}")
    jobs, labs = [], {}
    for i, modality in enumerate(modalities):
        data = work / f"train-{modality.lower()}"
        phantoms(modality, args.train_studies, args.train_slices, args.train_size, data,
                 seed * 10 + 1 + 100 * i)  # fmt: skip
        jobs += [(d, modality, data, work / f"{modality.lower()}-{d}.ckpt") for d in RECIPES]
        genuine = work / f"test-{modality.lower()}"
        phantoms(modality, args.test_studies, args.test_slices, args.test_size, genuine,
                 seed * 10 + 2 + 100 * i)  # fmt: skip
        lab = work / f"lab-{modality.lower()}"
        run("tamper", "--in", str(genuine), "--out", str(lab), "--attack", "all",
            "--family", "A", "--count", str(args.count), "--seed", str(seed + 7))  # fmt: skip
        labs[modality] = (genuine, lab)
    # Family B on its own copy (the slices a family A attack took are not free for it).
    for modality, (genuine, _) in labs.items():
        run("tamper", "--in", str(genuine), "--out", str(work / f"labB-{modality.lower()}"),
            "--attack", "injection,removal,copy-move", "--family", "B", "--count",
            str(args.count), "--seed", str(seed + 8))  # fmt: skip
    times = train_all(jobs, args)
    minutes = [float(m) for m in args.snapshots.split(",") if m]
    rows: dict[str, dict] = {}
    for detector, modality, _, model in jobs:
        steps = [(f"{m:g} min", snapshot_path(model, m)) for m in minutes]
        steps.append((f"final ({times[f'{detector}/{modality}'] / 60:.1f} min)", model))
        for label, path in steps:
            if not path.exists():
                continue  # the run ended before this minute
            from detector.checkpoint import load_checkpoint

            step = load_checkpoint(path).step
            for fam in ("A", "B"):
                lab = labs[modality][1] if fam == "A" else work / f"labB-{modality.lower()}"
                out = work / f"eval-{path.stem}-{fam}"
                rows.setdefault(f"{detector}/{modality}/{fam}", {})[f"{label}, step {step}"] = cell(
                    evaluate(lab, detector, path, out), detector, modality, "all"
                )
    for modality in modalities:
        for fam in ("A", "B"):
            lab = labs[modality][1] if fam == "A" else work / f"labB-{modality.lower()}"
            base = evaluate(lab, "noise-residual", None, work / f"eval-base-{modality}-{fam}")
            rows[f"noise-residual/{modality}/{fam}"] = {
                "no training": cell(base, "noise-residual", modality, "all")
            }
    print("\nAUC over every attack of the family (95% bootstrap CI), per snapshot:")
    for name, points in rows.items():
        print(f"  {name}")
        for label, value in points.items():
            print(f"    {label:<28} {value}")
    # White-box PGD against the final models, all of a modality's learned models at once.
    print("\nfamily B white-box PGD against the final models: AUC of each target on its regions")
    for modality, (genuine, _) in labs.items():
        targets = [m for d, mod, _, m in jobs if mod == modality]
        adv = work / f"labW-{modality.lower()}"
        target_args = [a for m in targets for a in ("--target-model", str(m))]
        run("tamper", "--in", str(genuine), "--out", str(adv), "--attack", "adversarial-noise",
            "--family", "B", "--count", str(args.count), "--seed", str(seed + 9),
            *target_args)  # fmt: skip
        records = json.loads((adv / "regions.json").read_text())["records"]
        for detector, mod, _, model in jobs:
            if mod != modality:
                continue
            s = evaluate(adv, detector, model, work / f"eval-W-{model.stem}")
            change = [
                t["score_after"] / t["score_before"] - 1
                for r in records
                for t in r["detail"]["targets"]
                if t["model"] == str(model) and t["score_before"] > 0
            ]
            lowered = sum(c < 0 for c in change)
            print(
                f"  {detector}/{modality}: AUC {cell(s, detector, modality)}; score lowered on "
                f"{lowered}/{len(change)} regions, median change {100 * median(change):+.0f} %"
            )
    (work / "curve.json").write_text(json.dumps({"seed": seed, "times": times, "rows": rows}))
    print(
        f"\ntraining wall time per model (s): {json.dumps({k: round(v) for k, v in times.items()})}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
