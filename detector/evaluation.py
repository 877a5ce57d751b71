"""The evaluation harness: score every manifest location, report what BTD/CHAIMELEON users expect.

Per detector, modality and attack: ROC AUC with a bootstrap 95 % interval, and TPR at 1 % and
5 % FPR. Positives of an attack are its tampered rows; negatives are all genuine rows of the
same modality (half of them on real lesions in lab manifests, so "has a lesion" is no signal).
The same code reads the BTD Kaggle layout (``.npy`` CT in HU, ``.png`` MRI, ``path, x, y, type``
CSVs), so the paper's protocol is one command on the real test sets.

Outputs: ``summary.json``, ``scores.csv`` (every row and score), ``roc_<detector>_<modality>.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve
from tqdm import tqdm

from detector import registry
from detector.interface import Detector, Location, SliceImage
from detector.lab.manifest import GENUINE, ManifestRow, discover_btd_manifests, read_manifest
from detector.slices import read_slice, series_files, volume_intensity_range

BOOTSTRAP_SAMPLES = 1000
FPR_POINTS = (0.01, 0.05)


class EvaluationError(ValueError):
    """User-facing problem with the evaluation input."""


# ----------------------------------------------------------------------------- metrics


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """ROC AUC (ties count one half, so identical scores give 0.5); NaN with one class only."""
    y = np.asarray(labels)
    if y.min(initial=1) == y.max(initial=0) or len(set(y.tolist())) < 2:
        return math.nan
    return float(roc_auc_score(y, np.asarray(scores, dtype=float)))


def bootstrap_auc_ci(
    labels: Sequence[int],
    scores: Sequence[float],
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC, resampling positives and negatives separately.

    Stratified resampling keeps both classes in every replicate (small attack groups would
    otherwise lose their positives) and matches how the test sets were built: fixed counts.
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_boot)
    for i in range(n_boot):
        p = pos[rng.integers(0, pos.size, pos.size)]
        n = np.sort(neg[rng.integers(0, neg.size, neg.size)])
        # Mann-Whitney form of the AUC: P(pos > neg) + 0.5 P(pos == neg), by binary search.
        below = np.searchsorted(n, p, side="left")
        upto = np.searchsorted(n, p, side="right")
        aucs[i] = (below.sum() + 0.5 * (upto - below).sum()) / (p.size * n.size)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(aucs, (alpha, 1 - alpha))
    return (float(lo), float(hi))


def tpr_at_fpr(labels: Sequence[int], scores: Sequence[float], fpr_target: float) -> float:
    """Highest TPR reachable with FPR <= target (no interpolation: an achievable threshold)."""
    y = np.asarray(labels)
    if len(set(y.tolist())) < 2:
        return math.nan
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=float))
    ok = fpr <= fpr_target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def metrics(labels: Sequence[int], scores: Sequence[float], seed: int = 0) -> dict:
    """AUC, its bootstrap 95 % interval, TPR at 1 % and 5 % FPR, class counts."""
    lo, hi = bootstrap_auc_ci(labels, scores, seed=seed)
    y = np.asarray(labels)
    out = {
        "n_tampered": int((y == 1).sum()),
        "n_genuine": int((y == 0).sum()),
        "auc": roc_auc(labels, scores),
        "auc_ci95": [lo, hi],
    }
    for f in FPR_POINTS:
        out[f"tpr_at_{int(round(f * 100))}pct_fpr"] = tpr_at_fpr(labels, scores, f)
    return out


# ----------------------------------------------------------------------------- scoring


@dataclass
class ScoredRow:
    row: ManifestRow
    modality: str
    score: float


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
    """Holds the one series being scored (context slices and the MR volume range)."""

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.slices: dict[Path, SliceImage] = {}
        self.range: tuple[float, float] | None = None

    def load(self, path: Path, need_context: bool) -> tuple[SliceImage, list[SliceImage]]:
        if path.suffix.lower() in (".npy", ".png"):
            return read_slice(path), []
        folder = path.parent
        if folder != self.folder:
            self.folder, self.slices, self.range = folder, {}, None
            self._files = series_files(folder)
            first = read_slice(path)
            if first.modality == "MR":
                self.range = volume_intensity_range(self._files)
        if need_context and len(self.slices) < len(self._files):
            for f in self._files:
                if f not in self.slices:
                    self.slices[f] = read_slice(f, intensity_range=self.range)
        image = self.slices.get(path) or read_slice(path, intensity_range=self.range)
        context = list(self.slices.values()) if need_context else []
        return image, context


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


def score_rows(
    rows: Sequence[ManifestRow],
    data_dir: Path,
    detectors: dict[str, Detector] | None = None,
    detector_names: Sequence[str] = (),
    models: Sequence[Path] = (),
    manifest_dir: Path | None = None,
    batch_size: int = 16,
    progress: bool = True,
    optional_names: Sequence[str] = (),
    skipped: dict[str, str] | None = None,
) -> dict[str, list[ScoredRow]]:
    """Score every row with every detector; detectors are built per modality on first need.

    A detector in ``optional_names`` whose factory fails (``--detector all`` without the
    learned models' ``--model``) is skipped and its reason stored in ``skipped``.
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
                if name in optional:
                    skipped[name] = f"{modality}: {exc}"
                    built[key] = None
                else:
                    raise EvaluationError(
                        f"cannot load detector {name!r} for {modality}: {exc}"
                    ) from exc
        return built[key]

    optional = set(optional_names)
    built: dict[tuple[str, str], Detector | None] = {}
    order = sorted(range(len(rows)), key=lambda i: (str(resolved[i].parent), str(resolved[i])))
    results: dict[str, list[ScoredRow | None]] = {n: [None] * len(rows) for n in names}
    cache = _SeriesCache()
    first_modality = rows[order[0]].modality or read_slice(resolved[order[0]]).modality
    need_context = any(getattr(get(n, first_modality), "needs_context", False) for n in names)
    bar = tqdm(total=len(rows) * len(names), desc="scoring", unit="loc", disable=not progress)
    # Batches never cross a series, so one series is in memory at a time.
    i = 0
    while i < len(order):
        folder = resolved[order[i]].parent
        batch = []
        while i < len(order) and resolved[order[i]].parent == folder and len(batch) < batch_size:
            batch.append(order[i])
            i += 1
        locs: list[Location] = []
        modalities: list[str] = []
        for j in batch:
            image, context = cache.load(resolved[j], need_context)
            rows_j = rows[j]
            h, w = image.pixels.shape
            if not (0 <= rows_j.x < w and 0 <= rows_j.y < h):
                raise EvaluationError(
                    f"{rows_j.path}: location x={rows_j.x}, y={rows_j.y} is outside the "
                    f"{w}x{h} image (x = column, y = row)"
                )
            locs.append(Location(image, rows_j.x, rows_j.y, context))
            modalities.append(rows_j.modality or image.modality)
        for name in names:
            by_mod: dict[str, list[int]] = defaultdict(list)
            for k, m in enumerate(modalities):
                by_mod[m].append(k)
            for m, idx in by_mod.items():
                det = get(name, m)
                if det is None:  # optional detector that cannot load (e.g. no --model)
                    continue
                scores = det.score([locs[k] for k in idx])
                if len(scores) != len(idx):
                    raise EvaluationError(
                        f"detector {name} returned {len(scores)} scores for {len(idx)} locations"
                    )
                for k, s in zip(idx, scores, strict=True):
                    results[name][batch[k]] = ScoredRow(rows[batch[k]], m, float(s.score))
            bar.update(len(batch))
    bar.close()
    return {
        n: [r for r in v if r is not None]
        for n, v in results.items()
        if any(r is not None for r in v)
    }


# ----------------------------------------------------------------------------- reporting


def summarize(scored: Iterable[ScoredRow], seed: int = 0) -> dict:
    """Metrics per modality and per attack (and per BTD generator group where present)."""
    by_mod: dict[str, list[ScoredRow]] = defaultdict(list)
    for s in scored:
        by_mod[s.modality].append(s)
    out: dict[str, dict] = {}
    for modality, items in sorted(by_mod.items()):
        genuine = [s for s in items if s.row.label == 0]
        fakes = [s for s in items if s.row.label == 1]
        groups: dict[str, list[ScoredRow]] = defaultdict(list)
        for s in fakes:
            groups[s.row.attack].append(s)
            if s.row.group:
                groups[f"{s.row.attack}/{s.row.group}"].append(s)
        if len(groups) > 1:
            groups["all"] = fakes
        res = {}
        for attack, pos in sorted(groups.items()):
            labels = [1] * len(pos) + [0] * len(genuine)
            scores = [s.score for s in pos] + [s.score for s in genuine]
            res[attack] = metrics(labels, scores, seed=seed)
        out[modality] = res
    return out


def plot_rocs(scored: list[ScoredRow], title: str, path: Path) -> None:
    """One PNG with the ROC curve of every attack (vs. all genuine rows of the modality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    genuine = [s.score for s in scored if s.row.label == 0]
    attacks = sorted({s.row.attack for s in scored if s.row.label == 1})
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for attack in attacks:
        pos = [s.score for s in scored if s.row.label == 1 and s.row.attack == attack]
        if not pos or not genuine:
            continue
        y = [1] * len(pos) + [0] * len(genuine)
        fpr, tpr, _ = roc_curve(y, pos + genuine)
        ax.plot(fpr, tpr, label=f"{attack} (AUC {roc_auc(y, pos + genuine):.3f}, n={len(pos)})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _json_safe(obj: object) -> object:
    """NaN (an attack with one class only) becomes null: strict JSON readers reject NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_table(summary: dict) -> str:
    """Plain-text table of the summary, as printed by ``tamperscan evaluate``."""
    lines = [
        f"{'detector':<16}{'mod':<4}{'attack':<20}{'n+':>5}{'n-':>5}  "
        f"{'AUC':>5}  {'95% CI':<13}  TPR@1%  TPR@5%"
    ]
    for det, per_mod in summary["detectors"].items():
        for mod, per_attack in per_mod.items():
            for attack, m in per_attack.items():
                lo, hi = m["auc_ci95"]
                lines.append(
                    f"{det:<16}{mod:<4}{attack:<20}{m['n_tampered']:>5}{m['n_genuine']:>5}  "
                    f"{_fmt(m['auc'])}  [{_fmt(lo)}, {_fmt(hi)}]  "
                    f"{_fmt(m['tpr_at_1pct_fpr']):>6}  {_fmt(m['tpr_at_5pct_fpr']):>6}"
                )
    return "\n".join(lines)


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
) -> dict:
    """Score, summarise and write ``summary.json``, ``scores.csv`` and ROC PNGs to ``out_dir``."""
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
    summary = {
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
        "detectors": {n: summarize(v, seed=seed) for n, v in all_scored.items()},
        "skipped_detectors": skipped,
        "plots": [],
    }
    with open(out_dir / "scores.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            ["detector", "path", "x", "y", "label", "attack", "type", "modality", "group", "score"]
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
                        s.row.type,
                        s.modality,
                        s.row.group,
                        f"{s.score:.6g}",
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
        json.dump(_json_safe(summary), fh, indent=2)
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
