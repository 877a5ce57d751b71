"""Evaluation reports: metrics per detector, modality, attack and family; tables and ROC plots.

Positives of an attack are its tampered rows; negatives are all genuine rows of the same
modality. With ``holdout`` set, only the tampered rows of that attack family are reported and
the summary says which families the detectors were tuned on, so a figure never hides whether
its attacker was seen during development. No scoring here (see :mod:`detector.evaluation`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sklearn.metrics import roc_curve

from detector.lab.manifest import ManifestRow
from detector.metrics import MIN_CELL, metrics, roc_auc


@dataclass
class ScoredRow:
    row: ManifestRow
    modality: str
    score: float
    p: float | None = None  # calibrated p-value, where the detector has a null


def family_of(row: ManifestRow) -> str:
    """The attack family of a row ("A" for manifests written before families existed)."""
    return str(getattr(row, "family", "") or "A")


def summarize(scored: Iterable[ScoredRow], seed: int = 0, holdout: str | None = None) -> dict:
    """Metrics per modality and attack (per family and BTD generator group where present).

    ``holdout``: report only tampered rows of that family (genuine rows are all kept).
    """
    by_mod: dict[str, list[ScoredRow]] = defaultdict(list)
    for s in scored:
        if holdout is not None and s.row.label == 1 and family_of(s.row) != holdout:
            continue
        by_mod[s.modality].append(s)
    out: dict[str, dict] = {}
    for modality, items in sorted(by_mod.items()):
        genuine = [s for s in items if s.row.label == 0]
        fakes = [s for s in items if s.row.label == 1]
        groups: dict[str, list[ScoredRow]] = defaultdict(list)
        families = {family_of(s.row) for s in fakes}
        for s in fakes:
            groups[s.row.attack].append(s)
            if s.row.group:
                groups[f"{s.row.attack}/{s.row.group}"].append(s)
            if len(families) > 1:
                groups[f"{s.row.attack}@{family_of(s.row)}"].append(s)
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


def json_safe(obj: object) -> object:
    """NaN (an attack with one class only) becomes null: strict JSON readers reject NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def _fmt(v: float) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def format_table(summary: dict) -> str:
    """Plain-text table of the summary, as printed by ``tamperscan evaluate``."""
    lines = []
    if summary.get("holdout_family"):
        lines.append(
            f"reported on family {summary['holdout_family']} "
            f"(tuned on: {', '.join(summary.get('tuned_on') or ['-'])})"
        )
    lines.append(
        f"{'detector':<19}{'mod':<4}{'attack':<20}{'n+':>5}{'n-':>5}  "
        f"{'AUC':>5}  {'95% CI':<14}  TPR@1%  TPR@5%"
    )
    for det, per_mod in summary["detectors"].items():
        for mod, per_attack in per_mod.items():
            for attack, m in per_attack.items():
                lo, hi = m["auc_ci95"]
                flag = " *" if m.get("small_cell") else ""
                lines.append(
                    f"{det:<19}{mod:<4}{attack:<20}{m['n_tampered']:>5}{m['n_genuine']:>5}  "
                    f"{_fmt(m['auc'])}  [{_fmt(lo)}, {_fmt(hi)}]  "
                    f"{_fmt(m['tpr_at_1pct_fpr']):>6}  {_fmt(m['tpr_at_5pct_fpr']):>6}{flag}"
                )
    if any("*" in line[-2:] for line in lines):
        lines.append(
            f"* fewer than {MIN_CELL} tampered rows: the AUC can swing widely between draws"
        )
    return "\n".join(lines)
