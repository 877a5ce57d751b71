"""How evidence becomes a decision: every check and every model, one rule, one promised rate.

Each detector (learned or forensic) gives a calibrated p-value per region. Checks look at the
same pixels and regions overlap, so the p-values are dependent in ways nobody can model. The
rule is therefore Bonferroni at both levels, the one combination whose false-alarm rate holds
under *any* dependence:

- region: ``p_region = min(1, m * min_i p_i)`` over the ``m`` detectors that scored it;
- study:  ``p_study  = min(1, n * min_r p_region)`` over the ``n`` regions checked.

A genuine study is called tampered with probability at most ``false_alarm_rate``, provided
each p-value is valid (super-uniform) under the null; ``benchmarks/detection.py`` measures the
delivered rate on held-out genuine studies. The Cauchy combination or Fisher's method would be
more powerful when several checks fire together, but their guarantees need independence or a
known dependence, which regions of one slice do not have.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """Study outcomes, the same strings storage records."""

    TAMPERED = "tampered"
    SUSPICIOUS = "suspicious"
    CLEAN = "clean"


def bonferroni(p_values: Iterable[float | None]) -> float | None:
    """``min(1, m * min p)`` over the given p-values (None entries ignored; None if none)."""
    ps = [p for p in p_values if p is not None and not math.isnan(p)]
    return min(1.0, len(ps) * min(ps)) if ps else None


def region_p(evidence: Mapping[str, Mapping[str, object]]) -> float | None:
    """The fused p-value of one region from ``{detector: {"p": float | None, ...}}``."""
    return bonferroni(e.get("p") for e in evidence.values())  # type: ignore[misc]


def evidence_score(p: float | None) -> float:
    """``-log10 p``: the fused p as a score (higher = more suspicious), for ROC analysis."""
    if p is None:
        return 0.0
    return -math.log10(max(p, 1e-300))


@dataclass(frozen=True)
class StudyDecision:
    outcome: Outcome
    p_study: float
    region_threshold: float  # a region is flagged when its p_region is at most this


def decide(
    region_ps: list[float], false_alarm_rate: float, suspicious_rate: float
) -> StudyDecision:
    """The study outcome from the fused p-values of all ``n`` regions checked (n >= 1)."""
    if not region_ps:
        raise ValueError("decide needs at least one region p-value")
    n = len(region_ps)
    p_study = min(1.0, n * min(region_ps))
    if p_study <= false_alarm_rate:
        outcome = Outcome.TAMPERED
    elif p_study <= suspicious_rate:
        outcome = Outcome.SUSPICIOUS
    else:
        outcome = Outcome.CLEAN
    return StudyDecision(outcome, p_study, suspicious_rate / n)
