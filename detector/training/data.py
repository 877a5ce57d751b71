"""Finding the training slices: DICOM folders, regions CSVs, and the held-out split.

Data: ``DATA/<patient>/.../*.dcm`` (any depth; non-DICOM files and other modalities are
skipped). Headers only are read here; pixels are read by :mod:`detector.training.patches`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detector.preprocess import normalise_modality
from detector.training.options import TrainingError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceRef:
    path: str
    patient: str
    series: str
    intensity_range: tuple[float, float] | None = None
    pixel_spacing_mm: float | None = None  # mean of row and column spacing, None if absent


def _spacing(ds: object) -> float | None:
    spacing = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None)
    try:
        return float(np.mean([float(v) for v in spacing])) if spacing else None
    except (TypeError, ValueError):
        return None


def median_spacing_mm(slices: Sequence[SliceRef]) -> float | None:
    """The training data's typical pixel spacing (converts lesion sizes in mm to pixels)."""
    known = [s.pixel_spacing_mm for s in slices if s.pixel_spacing_mm]
    return float(np.median(known)) if known else None


def find_dicom_slices(data_dir: str | Path, modality: str | None = None) -> list[SliceRef]:
    """All single-frame DICOM images of ``modality`` under ``data_dir`` (headers only).

    The patient is the first folder level below ``data_dir``. MR series get their per-volume
    intensity range here, so training normalises exactly as scoring will.
    """
    import pydicom

    root = Path(data_dir)
    if not root.is_dir():
        raise TrainingError(f"data folder not found: {root}")
    wanted = normalise_modality(modality) if modality else None
    found: list[SliceRef] = []
    other: dict[str, int] = {}
    # os.walk follows symlinked patient folders (a training set is often a folder of links).
    files = (Path(d) / f for d, _, names in os.walk(root, followlinks=True) for f in names)
    for path in sorted(p for p in files if p.is_file()):
        if path.suffix.lower() in (".csv", ".json", ".txt", ".md", ".npy", ".png", ".ckpt"):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # not DICOM: training folders hold notes and CSVs too
            continue
        if "Rows" not in ds or "Columns" not in ds:
            continue
        file_modality = str(ds.get("Modality", "")).upper()
        file_modality = "MR" if file_modality == "MR" else file_modality
        if wanted is not None and file_modality != wanted:
            other[file_modality or "unknown"] = other.get(file_modality or "unknown", 0) + 1
            continue
        rel = path.relative_to(root)
        patient = rel.parts[0] if len(rel.parts) > 1 else "."
        series = str(ds.get("SeriesInstanceUID", patient))
        found.append(SliceRef(str(path), patient, series, None, _spacing(ds)))
    if not found:
        detail = f" (found {other} of other modalities)" if other else ""
        raise TrainingError(
            f"{root}: no {wanted or ''} DICOM image files found{detail}; expected "
            f"patient sub-folders of .dcm slices"
        )
    if wanted == "MR":
        from detector.slices import volume_intensity_range

        by_series: dict[str, list[str]] = {}
        for ref in found:
            by_series.setdefault(ref.series, []).append(ref.path)
        ranges = {s: volume_intensity_range(paths) for s, paths in by_series.items()}
        found = [replace(r, intensity_range=ranges[r.series]) for r in found]
    return found


def infer_modality(data_dir: str | Path) -> str:
    """The majority modality of the DICOM files under ``data_dir`` (CHAIMELEON CLI has none)."""
    refs = find_dicom_slices(data_dir)
    import pydicom

    counts: dict[str, int] = {}
    for ref in refs:
        m = str(pydicom.dcmread(ref.path, stop_before_pixels=True).get("Modality", "")).upper()
        counts[m] = counts.get(m, 0) + 1
    best = max(counts, key=lambda k: counts[k])
    try:
        return normalise_modality(best)
    except ValueError as exc:
        raise TrainingError(f"{data_dir}: DICOM modality {best!r} is neither CT nor MR") from exc


def read_regions_csv(path: str | Path, data_dir: str | Path) -> list[tuple[str, int, int]]:
    """Rows ``(absolute file path, x, y)`` of a ``filename, X, Y`` CSV (header required)."""
    path, root = Path(path), Path(data_dir)
    if not path.is_file():
        raise TrainingError(f"regions CSV not found: {path}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in reader.fieldnames or []}
        missing = [c for c in ("filename", "x", "y") if c not in fields]
        if missing:
            raise TrainingError(
                f"{path}: expected columns filename, X, Y; found {reader.fieldnames}"
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            name = (row[fields["filename"]] or "").strip()
            try:
                x, y = int(float(row[fields["x"]])), int(float(row[fields["y"]]))
            except (TypeError, ValueError) as exc:
                raise TrainingError(f"{path}:{i}: X and Y must be numbers, got {row}") from exc
            file = Path(name) if Path(name).is_absolute() else root / name
            if not file.is_file():
                raise TrainingError(f"{path}:{i}: file {name!r} not found under {root}")
            rows.append((str(file), x, y))
    if not rows:
        raise TrainingError(f"{path}: no rows")
    return rows


def split_holdout(
    slices: Sequence[SliceRef], fraction: float, seed: int
) -> tuple[list[SliceRef], list[SliceRef]]:
    """(train, held-out) by patient; by slice when there is one patient only."""
    rng = np.random.default_rng(seed)
    patients = sorted({s.patient for s in slices})
    if len(patients) >= 2:
        n = min(len(patients) - 1, max(1, math.ceil(fraction * len(patients))))
        held = set(rng.choice(patients, size=n, replace=False).tolist())
        train = [s for s in slices if s.patient not in held]
        return train, [s for s in slices if s.patient in held]
    if len(slices) >= 2:
        n = min(len(slices) - 1, max(1, math.ceil(fraction * len(slices))))
        idx = set(rng.choice(len(slices), size=n, replace=False).tolist())
        return (
            [s for i, s in enumerate(slices) if i not in idx],
            [s for i, s in enumerate(slices) if i in idx],
        )
    log.warning("one slice only: calibrating on the training slice itself (biased low)")
    return list(slices), list(slices)
