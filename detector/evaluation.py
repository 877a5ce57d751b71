"""The evaluation harness: score every manifest location, report what BTD/CHAIMELEON users expect.

Per detector, modality and attack: ROC AUC with a bootstrap 95 % interval, and TPR at 1 % and
5 % FPR (:mod:`detector.metrics`, :mod:`detector.eval_report`). Every detector's raw score is
also turned into a calibrated p-value (learned: the checkpoint's calibration; forensic: a null
fitted once per series) and the ``fused`` row is the serving decision's own region rule
(:func:`detector.fusion.bonferroni`) over the serving detectors among those scored (the default
``[detector] checks`` and the learned models; :func:`serving_set`). Positives of an
attack are its tampered rows; negatives are all genuine rows of the same modality (half of them
on real lesions in lab manifests, so "has a lesion" is no signal). The same code reads the BTD
Kaggle layout (``.npy`` CT in HU, ``.png`` MRI, ``path, x, y, type`` CSVs).

Outputs: ``summary.json``, ``scores.csv`` (every row and score), ``roc_<detector>_<modality>.png``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from detector import registry
from detector.calibration import Calibration
from detector.eval_report import ScoredRow, family_of, format_table, json_safe, plot_rocs, summarize
from detector.forensics.references import neighbours_of
from detector.fusion import bonferroni, evidence_score
from detector.interface import Detector, EvidenceKind, Location, SliceImage
from detector.lab.manifest import GENUINE, ManifestRow, discover_btd_manifests, read_manifest
from detector.metrics import BOOTSTRAP_SAMPLES, bootstrap_auc_ci, metrics, roc_auc, tpr_at_fpr
from detector.slices import read_slice, series_files, volume_intensity_range

FUSED = "fused"


class EvaluationError(ValueError):
    """User-facing problem with the evaluation input."""


# ----------------------------------------------------------------------------- scoring


def resolve_path(data_dir: Path, row_path: str, manifest_dir: Path | None = None) -> Path:
    """Manifest paths are relative to the data folder (or the manifest's folder), or absolute."""
    p = Path(row_path)
    if p.is_absolute():
        return p
    first = data_dir / p
    if first.exists() or manifest_dir is None:
        return first
    second = manifest_dir / p
    return second if second.exists() else first


class _SeriesCache:
    """Holds the one series being scored: its slices in order and the MR volume range."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.series: list[SliceImage] = []
        self.index: dict[Path, int] = {}

    def load(self, path: Path) -> tuple[list[SliceImage], int]:
        """The series ``path`` belongs to and its position in it (one slice for .npy/.png)."""
        if path.suffix.lower() in (".npy", ".png"):
            return [read_slice(path)], 0
        folder = path.parent
        if folder != self.folder:
            files = series_files(folder)
            first = read_slice(files[0]) if files else read_slice(path)
            rng = volume_intensity_range(files) if first.modality == "MR" else None
            self.folder = folder
            self.series = [read_slice(f, intensity_range=rng) for f in files]
            self.index = {f: k for k, f in enumerate(files)}
        if path not in self.index:
            return [read_slice(path)], 0
        return self.series, self.index[path]


def pick_model(models: Sequence[Path], name: str, modality: str) -> Path | None:
    """The one model file for this detector and modality (checkpoints record both; released
    BTD weights fit either modality). None when there is none; ambiguous is an error."""
    from detector.checkpoint import kind_and_modality

    if not models or name not in ("btd", "inpaint"):
        return None
    fits = []
    for path in models:
        kind, recorded = kind_and_modality(path)
        if kind == name and recorded in (None, modality):
            fits.append(path)
    if len(fits) > 1:
        raise EvaluationError(
            f"{len(fits)} --model files fit {name}/{modality}: {', '.join(map(str, fits))}"
        )
    return fits[0] if fits else None


def _null(det: Detector, series: list[SliceImage]) -> Calibration | None:
    """The calibration a detector's p-values come from on this series (None: raw only).

    A detector registered from outside that predates ``calibrate`` still scores; it just
    takes no part in the fused row.
    """
    if getattr(det, "kind", None) == EvidenceKind.LEARNED:
        return getattr(det, "calibration", None)
    calibrate = getattr(det, "calibrate", None)
    return calibrate(series) if calibrate is not None else None


def score_rows(
    rows: Sequence[ManifestRow],
    data_dir: Path,
    detectors: dict[str, Detector] | None = None,
    detector_names: Sequence[str] = (),
    models: Sequence[Path] = (),
    manifest_dir: Path | None = None,
    progress: bool = True,
    optional_names: Sequence[str] = (),
    skipped: dict[str, str] | None = None,
) -> dict[str, list[ScoredRow]]:
    """Score every row with every detector, one series at a time; add the ``fused`` row.

    Detectors are built per modality on first need. A detector in ``optional_names`` whose
    factory fails (``--detector all`` without the learned models' ``--model``) is skipped and
    its reason stored in ``skipped``.
    """
    skipped = {} if skipped is None else skipped
    resolved = [resolve_path(data_dir, r.path, manifest_dir) for r in rows]
    missing = [(r, p) for r, p in zip(rows, resolved, strict=True) if not p.is_file()]
    if missing:
        r, p = missing[0]
        raise EvaluationError(
            f"{len(missing)} manifest row(s) point to missing files; first: {r.path!r} "
            f"(looked for {p})"
        )
    names = list(detector_names) or list((detectors or {}).keys())
    optional = set(optional_names)
    built: dict[tuple[str, str], Detector | None] = {}

    def get(name: str, modality: str) -> Detector | None:
        if detectors and name in detectors:
            return detectors[name]
        key = (name, modality)
        if key not in built:
            try:
                built[key] = registry.create(name, pick_model(models, name, modality), modality)
            except registry.UnknownDetectorError:
                raise
            except Exception as exc:  # a factory's own complaint: no model, wrong file, ...
                if name not in optional:
                    raise EvaluationError(
                        f"cannot load detector {name!r} for {modality}: {exc}"
                    ) from exc
                skipped[name] = f"{modality}: {exc}"
                built[key] = None
        return built[key]

    results: dict[str, list[ScoredRow | None]] = {n: [None] * len(rows) for n in names}
    cache = _SeriesCache()
    by_folder: dict[Path, list[int]] = {}
    for i in sorted(range(len(rows)), key=lambda i: (str(resolved[i].parent), str(resolved[i]))):
        key = (
            resolved[i].parent
            if resolved[i].suffix.lower() not in (".npy", ".png")
            else resolved[i]
        )
        by_folder.setdefault(key, []).append(i)
    bar = tqdm(total=len(rows) * len(names), desc="scoring", unit="loc", disable=not progress)
    for idx in by_folder.values():
        series, _ = cache.load(resolved[idx[0]])
        locs: list[Location] = []
        for j in idx:
            series, k = cache.load(resolved[j])
            image, row = series[k], rows[j]
            h, w = image.pixels.shape
            if not (0 <= row.x < w and 0 <= row.y < h):
                raise EvaluationError(
                    f"{row.path}: location x={row.x}, y={row.y} is outside the "
                    f"{w}x{h} image (x = column, y = row)"
                )
            locs.append(Location(image, row.x, row.y, tuple(series), neighbours_of(series, k)))
        modality = rows[idx[0]].modality or series[0].modality
        for name in names:
            det = get(name, modality)
            if det is None:  # optional detector that cannot load (e.g. no --model)
                bar.update(len(idx))
                continue
            scores = det.score(locs)
            if len(scores) != len(idx):
                raise EvaluationError(
                    f"detector {name} returned {len(scores)} scores for {len(idx)} locations"
                )
            null = _null(det, series)
            ps = null.tail_p_values([s.score for s in scores]) if null is not None else None
            for n, (j, s) in enumerate(zip(idx, scores, strict=True)):
                p = None if ps is None else float(ps[n])
                results[name][j] = ScoredRow(rows[j], modality, float(s.score), p)
            bar.update(len(idx))
    bar.close()
    out = {
        n: [r for r in v if r is not None]
        for n, v in results.items()
        if any(r is not None for r in v)
    }
    fused = _fuse(results, rows)
    if fused:
        out[FUSED] = fused
    return out


def serving_set() -> set[str]:
    """The detectors serving fuses by default: the default ``[detector] checks`` + learned ones."""
    from detector.settings import DetectorSettings

    return set(DetectorSettings().checks) | {"btd", "inpaint"}


def _fuse(
    results: dict[str, list[ScoredRow | None]], rows: Sequence[ManifestRow]
) -> list[ScoredRow]:
    """The serving rule per row: Bonferroni over the p-values of the serving detectors scored."""
    fused = []
    serving = {n: v for n, v in results.items() if n in serving_set()}
    for j, row in enumerate(rows):
        scored = [v[j] for v in serving.values() if v[j] is not None and v[j].p is not None]
        if not scored:
            continue
        p = bonferroni(s.p for s in scored)
        fused.append(ScoredRow(row, scored[0].modality, evidence_score(p), p))
    return fused


def load_manifests(data_dir: Path, manifests: Sequence[Path]) -> list[tuple[Path, ManifestRow]]:
    """Rows of every manifest (or of the BTD layout found under ``data_dir`` when none given)."""
    paths = list(manifests)
    if not paths:
        paths = discover_btd_manifests(data_dir)
        for name in ("manifest_btd.csv", "test.csv"):
            if not paths and (data_dir / name).is_file():
                paths = [data_dir / name]
        if not paths:
            raise EvaluationError(
                f"{data_dir}: no --manifest given and none found (manifest_btd.csv, test.csv, "
                "or the BTD layout CT/<attack>/CT_<attack>.csv, MRI/MRI_<attack>.csv)"
            )
    out = []
    for p in paths:
        out += [(p.parent, r) for r in read_manifest(p)]
    return out


def evaluate(
    data_dir: str | Path,
    manifests: Sequence[str | Path],
    detector_names: Sequence[str],
    out_dir: str | Path,
    models: Sequence[Path] = (),
    seed: int = 0,
    progress: bool = True,
    detectors: dict[str, Detector] | None = None,
    optional_names: Sequence[str] = (),
    holdout: str | None = None,
) -> dict:
    """Score, summarise and write ``summary.json``, ``scores.csv`` and ROC PNGs to ``out_dir``.

    ``holdout``: the attack family reported on; the summary names the others as tuned on.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if not data_dir.is_dir():
        raise EvaluationError(f"{data_dir}: no such data folder")
    pairs = load_manifests(data_dir, [Path(m) for m in manifests])
    if not pairs:
        raise EvaluationError("the manifests hold no rows")
    rows = [r for _, r in pairs]
    names = list(detector_names) or list((detectors or {}).keys())
    all_scored: dict[str, list[ScoredRow]] = {}
    skipped: dict[str, str] = {}
    # Rows of different manifests can resolve relative to different folders.
    for mdir in sorted({d for d, _ in pairs}, key=str):
        subset = [r for d, r in pairs if d == mdir]
        part = score_rows(
            subset,
            data_dir,
            detectors,
            names,
            models,
            mdir,
            progress=progress,
            optional_names=optional_names,
            skipped=skipped,
        )
        for n, v in part.items():
            all_scored.setdefault(n, []).extend(v)
    out_dir.mkdir(parents=True, exist_ok=True)
    families = sorted({family_of(r) for r in rows if r.label == 1})
    if holdout is not None and holdout not in families:
        raise EvaluationError(
            f"--holdout-family {holdout}: the manifests hold no tampered rows of that family "
            f"(families present: {', '.join(families) or 'none'})"
        )
    summary = {
        "holdout_family": holdout,
        "tuned_on": [f for f in families if f != holdout] if holdout else families,
        "data": str(data_dir),
        "manifests": [str(m) for m in sorted({str(d) for d, _ in pairs})],
        "rows": len(rows),
        "negatives": "all genuine rows of the same modality",
        "bootstrap": {
            "samples": BOOTSTRAP_SAMPLES,
            "seed": seed,
            "level": 0.95,
            "stratified": True,
        },
        "detectors": {n: summarize(v, seed=seed, holdout=holdout) for n, v in all_scored.items()},
        "skipped_detectors": skipped,
        "plots": [],
    }
    with open(out_dir / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "detector",
                "path",
                "x",
                "y",
                "label",
                "attack",
                "family",
                "type",
                "modality",
                "group",
                "score",
                "p",
            ]
        )
        for n, v in all_scored.items():
            for s in v:
                w.writerow(
                    [
                        n,
                        s.row.path,
                        s.row.x,
                        s.row.y,
                        s.row.label,
                        s.row.attack,
                        family_of(s.row),
                        s.row.type,
                        s.modality,
                        s.row.group,
                        f"{s.score:.6g}",
                        "" if s.p is None else f"{s.p:.6g}",
                    ]
                )
    for n, v in all_scored.items():
        for modality in sorted({s.modality for s in v}):
            items = [s for s in v if s.modality == modality]
            if any(s.row.label == 1 for s in items) and any(s.row.label == 0 for s in items):
                png = out_dir / f"roc_{n}_{modality}.png"
                plot_rocs(items, f"{n} - {modality}", png)
                summary["plots"].append(png.name)
    with open(out_dir / "summary.json", "w") as fh:
        json.dump(json_safe(summary), fh, indent=2)
    return summary


__all__ = [
    "EvaluationError",
    "GENUINE",
    "bootstrap_auc_ci",
    "evaluate",
    "format_table",
    "metrics",
    "roc_auc",
    "score_rows",
    "summarize",
    "tpr_at_fpr",
]
