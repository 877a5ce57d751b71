"""Cost of scoring one large CT study on this machine: the serving scorer against its I/O floor.

Target (issue "Verdicts worth trusting"): a 300-slice CT scored in under 2 minutes on 2 CPU cores,
cheap checks over every region first. Baseline, measured in the same run: reading and decoding
every slice once (``read_slice``), which no scorer can beat. With ``--model`` the learned
detectors score every region too (the worst case; give tiny CPU-recipe checkpoints).

    python benchmarks/study_cost.py --slices 300 --size 512
    python benchmarks/study_cost.py --checks noise-consistency,slice-consistency,exact-repeat
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--model", type=Path, action="append", default=[], help="learned checkpoint")
    ap.add_argument("--checks", help="comma list of forensic checks (default: the configured ones)")
    args = ap.parse_args()

    import pydicom

    from detector.lab.phantoms import write_phantoms
    from detector.model_set import ModelSet
    from detector.settings import DetectorSettings
    from detector.slices import read_slice, series_files
    from detector.study_scoring import StudyScorer
    from scp.validate import inspect_dataset
    from storage.db import Database
    from storage.instances import InstanceStore, Origin

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.monotonic()
        write_phantoms("CT", 1, args.slices, root / "in", seed=args.seed, size=args.size)
        print(f"phantom written in {time.monotonic() - start:.0f} s")
        study = next(p for p in (root / "in").iterdir() if p.is_dir())
        db = Database(f"sqlite:///{root / 'index.db'}")
        db.migrate()
        store = InstanceStore(db, root / "data", 0)
        study_id = 0
        for path in sorted(study.rglob("*.dcm")):
            ds = pydicom.dcmread(path)
            meta = inspect_dataset(ds, str(ds.file_meta.TransferSyntaxUID))
            origin = Origin("dimse", "BENCH", "127.0.0.1")
            study_id = store.store(path.read_bytes(), meta, origin).study_id
        start = time.monotonic()
        for f in series_files(study):
            read_slice(f)
        floor = time.monotonic() - start
        chosen = {"checks": args.checks.split(",")} if args.checks else {}
        settings = DetectorSettings(device="cpu", window_stride_px=0, **chosen)
        models = ModelSet.load(args.model, "cpu", checks=settings.checks)
        scorer = StudyScorer(db, root / "data", settings, models)
        start = time.monotonic()
        result = scorer.score(study_id, 1)
        took = time.monotonic() - start
    print(f"baseline: read + decode {args.slices} slices of {args.size} px: {floor:.1f} s")
    print(
        f"serving scorer ({', '.join(settings.checks)}"
        f"{' + ' + ', '.join(m.name for m in args.model) if args.model else ''}): {took:.1f} s "
        f"= {took / max(floor, 1e-9):.1f}x the read floor; {result.details['regions_checked']} "
        f"regions; outcome {result.outcome}; target < 120 s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
