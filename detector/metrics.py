"""Detection metrics as BTD and CHAIMELEON users read them: AUC, its interval, TPR at low FPR.

Pure functions of labels and scores; no files, no detectors. A cell (detector, modality, attack)
with fewer than :data:`MIN_CELL` tampered rows is flagged by the reports: its AUC can swing by
0.2 between draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

BOOTSTRAP_SAMPLES = 1000
FPR_POINTS = (0.01, 0.05)
MIN_CELL = 30  # tampered rows below which a cell's figures are flagged as unreliable


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
        "small_cell": bool((y == 1).sum() < MIN_CELL),
        "n_genuine": int((y == 0).sum()),
        "auc": roc_auc(labels, scores),
        "auc_ci95": [lo, hi],
    }
    for f in FPR_POINTS:
        out[f"tpr_at_{int(round(f * 100))}pct_fpr"] = tpr_at_fpr(labels, scores, f)
    return out
