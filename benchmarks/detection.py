"""Detection quality on fresh draws: per detector, modality, attack and family, plus the fused
verdict and the study-level false-alarm rate it actually delivers.

Every run draws new phantoms (``--seed``, random by default and printed), trains the learned
detectors with the CPU recipe of docs/detectors.md on *other* genuine studies (``--train-minutes``
per model; 0 = forensic checks only), tampers the test studies with both attack families, and
evaluates with ``tamperscan evaluate --holdout-family`` so every figure says which family it is
reported on. The checks were developed looking at family A only; family B (written separately,
detector/lab) is the held-out attacker. Then ``--genuine-studies`` further genuine studies are
scored by the serving scorer itself (``StudyScorer``, the configured checks plus the models) to
measure the study false-alarm rate against the configured rate, with a Clopper-Pearson interval,
and the tampered test studies are scored the same way (study-level detection).

    python benchmarks/detection.py --out /tmp/det            # full size: about 2 h on 2 cores
    python benchmarks/detection.py --out /tmp/det --train-minutes 0 --size 256 --slices 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_recipe import RECIPES  # noqa: E402 - needs ROOT on the path


def cli(*args: str) -> float:
    """Run one tamperscan command; its wall time in seconds (a failure stops the benchmark)."""
    start = time.monotonic()
    cmd = [sys.executable, "-m", "tamperscan.cli", *args]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def phantoms(modality: str, studies: int, slices: int, size: int, out: Path, seed: int) -> None:
    cli("phantoms", "--modality", modality, "--studies", str(studies), "--slices", str(slices),
        "--size", str(size), "--out", str(out), "--seed", str(seed), "--quiet")  # fmt: skip


def train_models(args: argparse.Namespace, work: Path, seed: int) -> tuple[list[Path], dict]:
    """The CPU recipe, one model per detector and modality, on studies never tested on."""
    models, times = [], {}
    if args.train_minutes <= 0:
        return models, times
    for modality in ("CT", "MR"):
        data = work / f"train-{modality.lower()}"
        phantoms(
            modality, args.train_studies, args.slices, args.size, data, seed + (modality == "MR")
        )
        for detector, extra in RECIPES.items():
            path = work / f"{modality.lower()}-{detector}.ckpt"
            times[f"{detector}/{modality}"] = cli(
                "train", "--detector", detector, "--modality", modality, "--data", str(data),
                "--model-path", str(path), "--epochs", "100000", "--time-budget",
                str(args.train_minutes), "--calibration-patches", "1000", "--device", "cpu",
                "--quiet", *extra,
            )  # fmt: skip
            models.append(path)
    return models, times


def evaluate(data: Path, models: list[Path], family: str, out: Path) -> dict:
    model_args = [a for m in models for a in ("--model", str(m))]
    cli("evaluate", "--data", str(data), "--detector", "all", *model_args,
        "--holdout-family", family, "--out", str(out), "--quiet")  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def study_outcomes(folders: list[Path], models: list[Path], work: Path) -> list[str]:
    """Score each study folder with the serving scorer; the outcomes, in order."""
    import pydicom

    from detector.model_set import ModelSet
    from detector.settings import DetectorSettings
    from detector.study_scoring import StudyScorer
    from scp.validate import inspect_dataset
    from storage.db import Database
    from storage.instances import InstanceStore, Origin

    settings = DetectorSettings(device="cpu", window_stride_px=0)
    model_set = ModelSet.load(models, "cpu", checks=settings.checks)
    outcomes = []
    for n, folder in enumerate(folders):
        root = work / f"db-{n}"
        root.mkdir(parents=True, exist_ok=True)
        db = Database(f"sqlite:///{root / 'index.db'}")
        db.migrate()
        store = InstanceStore(db, root / "data", 0)
        study_id = 0
        for path in sorted(folder.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
            study_id = store.store(
                path.read_bytes(), meta, Origin("dimse", "BENCH", "127.0.0.1")
            ).study_id
        scorer = StudyScorer(db, root / "data", settings, model_set)
        outcomes.append(scorer.score(study_id, 1).outcome)
        db.engine.dispose()
    return outcomes


HEADER = f"{'detector':<19}{'mod':<4}{'attack':<19}{'n+':>5}{'n-':>5}  AUC   95% CI        TPR@1%"


def rate(hits: int, n: int) -> str:
    lo = stats.beta.ppf(0.025, hits, n - hits + 1) if hits else 0.0
    hi = stats.beta.ppf(0.975, hits + 1, n - hits) if hits < n else 1.0
    return f"{hits}/{n} = {hits / max(n, 1):.3f} (95% CI {lo:.3f}-{hi:.3f})"


def table(summary: dict) -> list[str]:
    lines = []
    for det, per_mod in summary["detectors"].items():
        for mod, per_attack in per_mod.items():
            for attack, m in per_attack.items():
                if "@" in attack or "/" in attack:
                    continue
                lo, hi = m["auc_ci95"]
                auc = "  n/a" if m["auc"] is None else f"{m['auc']:.3f}"
                ci = "" if lo is None else f"[{lo:.2f}, {hi:.2f}]"
                tpr = m["tpr_at_1pct_fpr"]
                small = " *" if m.get("small_cell") else ""
                lines.append(
                    f"{det:<19}{mod:<4}{attack:<19}{m['n_tampered']:>5}{m['n_genuine']:>5}  "
                    f"{auc} {ci:<13} {'n/a' if tpr is None else f'{tpr:.3f}':>6}{small}"
                )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, required=True, help="new work folder")
    ap.add_argument("--seed", type=int, default=None, help="default: a fresh random draw")
    ap.add_argument("--ct", type=int, default=10, help="CT test studies")
    ap.add_argument("--mr", type=int, default=10, help="MR test studies")
    ap.add_argument("--slices", type=int, default=48)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--count", type=int, default=30, help="tampered rows per cell (>= 30)")
    ap.add_argument("--train-studies", type=int, default=10)
    ap.add_argument("--train-minutes", type=float, default=15.0, help="per model; 0: none")
    ap.add_argument("--genuine-studies", type=int, default=50, help="for the false-alarm rate")
    ap.add_argument("--fa-slices", type=int, default=24)
    ap.add_argument("--fa-size", type=int, default=256)
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(3), "big")
    work = args.out
    work.mkdir(parents=True, exist_ok=False)
    print(
        f"seed {seed}: phantom seeds {seed * 10} (CT test), {seed * 10 + 5} (MR test), "
        f"{seed * 10 + 1} (training), {seed * 10 + 3}/{seed * 10 + 4} (false-alarm set)"
    )
    models, train_times = train_models(args, work, seed * 10 + 1)
    genuine = work / "genuine"
    phantoms("CT", args.ct, args.slices, args.size, genuine, seed * 10)
    phantoms("MR", args.mr, args.slices, args.size, genuine, seed * 10 + 5)
    learned = [m for m in models if "inpaint" in m.name or "btd" in m.name]
    summaries = {}
    for family in ("A", "B"):
        out = work / f"tampered-{family}"
        attack = "all"
        # family B's white-box attack descends every learned model of the modality at once
        extra = [a for m in learned for a in ("--target-model", str(m))] if family == "B" else []
        if family == "B" and not learned:
            attack = "injection,removal,copy-move"  # the white-box attack needs a model to attack
        cli("tamper", "--in", str(genuine), "--out", str(out), "--attack", attack, "--family",
            family, "--count", str(args.count), "--seed", str(seed + 7), *extra)  # fmt: skip
        summaries[family] = evaluate(out, models, family, work / f"eval-{family}")
    print(
        "\ntraining time per model (s):", json.dumps({k: round(v) for k, v in train_times.items()})
    )
    for family, summary in summaries.items():
        print(f"\n== reported on family {family}; checks developed on family A; "
              f"tuned on: {', '.join(summary.get('tuned_on') or ['-'])}")  # fmt: skip
        print(HEADER)
        print("\n".join(table(summary)))
    print("* fewer than 30 tampered rows in the cell")
    fa_root = work / "fa"
    phantoms(
        "CT", (args.genuine_studies + 1) // 2, args.fa_slices, args.fa_size, fa_root, seed * 10 + 3
    )
    phantoms("MR", args.genuine_studies // 2, args.fa_slices, args.fa_size, fa_root, seed * 10 + 4)
    folders = sorted(p for p in fa_root.iterdir() if p.is_dir())
    start = time.monotonic()
    outcomes = study_outcomes(folders, models, work / "fa-db")
    per_study = (time.monotonic() - start) / max(1, len(folders))
    print(
        "\nstudy false-alarm rate (configured 0.01):",
        rate(outcomes.count("tampered"), len(outcomes)),
    )
    print(
        "studies called suspicious or tampered:",
        rate(sum(o != "clean" for o in outcomes), len(outcomes)),
    )
    print(
        f"serving scorer: {per_study:.1f} s per genuine study "
        f"({args.fa_slices} slices, {args.fa_size} px)"
    )
    for family in ("A", "B"):
        out = work / f"tampered-{family}"
        edited = {r["study"] for r in json.loads((out / "regions.json").read_text())["records"]}
        tampered = sorted(p for p in out.iterdir() if p.is_dir() and p.name in edited)
        got = study_outcomes(tampered, models, work / f"db-{family}")
        print(
            f"tampered studies (family {family}) called tampered:",
            rate(got.count("tampered"), len(got)),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
