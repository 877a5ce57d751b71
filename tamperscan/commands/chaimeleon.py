"""The CHAIMELEON deepfakes-detector command line, kept so existing jobs run unchanged.

    tamperscan -mode Train -model_path M.ckpt -data_path DIR -epochs 100 -batch_size 64 \\
               -num_workers 6
    tamperscan -mode Test -model_path M.ckpt -data_path DIR

Train fits the inpainting detector (the CHAIMELEON approach) on ``DIR``'s DICOM files; the
modality is read from the files, since that interface has no flag for it. Test reads
``DIR/test.csv`` (``filename, X, Y``; filenames relative to DIR), scores every row with the
checkpoint (inpainting or BTD — ours or the released BTD weights), writes ``results.csv`` next
to it (or to ``-output``) with the raw score, the calibrated p-value when the checkpoint has a
calibration, and prints where. Extra flags beyond the original (``-modality``, ``-lr``,
``-patch_size``, ``-width``, ``-device``, ``-output``) are optional.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tamperscan -mode Train|Test",
        description="CHAIMELEON deepfakes-detector interface (inpainting detector).",
    )
    p.add_argument("-mode", "--mode", required=True, type=str.capitalize, choices=("Train", "Test"))
    p.add_argument("-model_path", required=True)
    p.add_argument("-data_path", required=True)
    p.add_argument("-epochs", type=int, default=100)
    p.add_argument("-batch_size", type=int, default=64)
    p.add_argument("-num_workers", type=int, default=0)
    p.add_argument("-modality", help="CT or MR; default: read from the DICOM files")
    p.add_argument("-lr", type=float)
    p.add_argument("-patch_size", type=int)
    p.add_argument("-width", type=int, help="inpainting network width (default 32)")
    p.add_argument("-max_steps", type=int)
    p.add_argument("-device", default="auto")
    p.add_argument("-output", help="results CSV (default DATA_PATH/results.csv)")
    p.add_argument("-quiet", action="store_true")
    return p


def _fail(message: str) -> int:
    print(f"tamperscan: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def run_legacy(argv: list[str]) -> int:
    """Entry point for ``tamperscan -mode ...`` (dispatched by :mod:`tamperscan.cli`)."""
    from detector.checkpoint import CheckpointError
    from detector.slices import SliceReadError
    from detector.training import TrainingError

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.mode == "Train":
            return _train(args)
        return _test(args)
    except (TrainingError, CheckpointError, SliceReadError, FileNotFoundError) as exc:
        return _fail(str(exc))


def _train(args: argparse.Namespace) -> int:
    from detector.training import TrainOptions, infer_modality, train

    data = Path(args.data_path)
    if not data.is_dir():
        return _fail(f"-data_path: folder not found: {data}")
    modality = args.modality or infer_modality(data)
    opts = TrainOptions(
        detector="inpaint",
        modality=modality,
        data=str(data),
        model_path=args.model_path,
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        lr=args.lr,
        patch_size=args.patch_size,
        model_dim=args.width,
        max_steps=args.max_steps,
        device=args.device,
        progress=not args.quiet,
    )
    result = train(opts)
    calibrated = result.calibration.size if result.calibration else 0
    print(
        f"trained inpainting detector ({modality}) for {result.epochs} epochs, "
        f"{result.steps} steps; calibrated on {calibrated} held-out patches; "
        f"wrote {result.model_path}"
    )
    return 0


def _read_test_csv(path: Path) -> list[tuple[str, int, int]]:
    from detector.training import TrainingError

    if not path.is_file():
        raise FileNotFoundError(f"test CSV not found: {path} (expected columns filename, X, Y)")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        if not all(c in fields for c in ("filename", "x", "y")):
            raise TrainingError(
                f"{path}: expected columns filename, X, Y; found {reader.fieldnames}"
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            try:
                rows.append(
                    (
                        row[fields["filename"]].strip(),
                        int(float(row[fields["x"]])),
                        int(float(row[fields["y"]])),
                    )
                )
            except (TypeError, ValueError, AttributeError) as exc:
                raise TrainingError(f"{path}:{i}: bad row {row}") from exc
    return rows


def _test(args: argparse.Namespace) -> int:
    from detector.interface import Location
    from detector.loading import load_detector
    from detector.slices import SliceReadError, read_slice, series_files, volume_intensity_range

    data = Path(args.data_path)
    if not data.is_dir():
        return _fail(f"-data_path: folder not found: {data}")
    rows = _read_test_csv(data / "test.csv")
    detector = load_detector(args.model_path, args.modality, device=args.device)
    ranges: dict[Path, tuple[float, float]] = {}
    locations = []
    for name, x, y in rows:
        path = data / name
        if not path.is_file():
            return _fail(f"{data / 'test.csv'}: file {name!r} not found under {data}")
        image = read_slice(path)
        if image.modality == "MR":  # scale by the whole series, as training did
            folder = path.parent
            if folder not in ranges:
                try:
                    files = series_files(folder) or [path]
                except SliceReadError:  # several series in one folder: this slice's own
                    files = [path]
                ranges[folder] = volume_intensity_range(files)
            image = read_slice(path, intensity_range=ranges[folder])
        locations.append(Location(image=image, x=x, y=y))
    results = detector.score(locations)
    calibration = getattr(detector, "calibration", None)
    p_values = calibration.p_values([r.score for r in results]) if calibration else None
    out = Path(args.output) if args.output else data / "results.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["filename", "X", "Y", "score", "p_value"])
        for i, ((name, x, y), res) in enumerate(zip(rows, results, strict=True)):
            p = "" if p_values is None else f"{p_values[i]:.6g}"
            writer.writerow([name, x, y, f"{res.score:.8g}", p])
    print(
        f"scored {len(rows)} regions with {detector.name} ({detector.modality}); "
        f"results written to {out}"
    )
    return 0
