"""Raw scores -> calibrated tail probabilities against held-out genuine patches.

Raw detector scores have no common scale (a BTD residual and an inpainting error are not
comparable, nor are two BTD checkpoints). After training we score genuine patches the model
never saw and keep that empirical null distribution in the checkpoint. A new score ``s`` then
gets the conformal p-value

    p(s) = (1 + #{genuine scores >= s}) / (n + 1)

which is exactly uniform (super-uniform with ties) under the null when the new patch is
exchangeable with the held-out ones: p <= alpha happens with probability <= alpha. The +1 keeps
p > 0, so a score above every held-out one reads "at most 1/(n+1)", not "impossible".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

TAIL_FRACTION = 0.1  # share of held-out scores above the tail threshold


@dataclass(frozen=True)
class Calibration:
    """Sorted held-out genuine scores; turns raw scores into p-values."""

    genuine_scores: np.ndarray  # float64, ascending

    @classmethod
    def from_scores(cls, scores: Sequence[float] | np.ndarray) -> Calibration:
        arr = np.sort(np.asarray(scores, dtype=np.float64).ravel())
        if arr.size == 0:
            raise ValueError("calibration needs at least one held-out genuine score")
        if not np.all(np.isfinite(arr)):
            raise ValueError("calibration scores must be finite")
        return cls(genuine_scores=arr)

    @property
    def size(self) -> int:
        return int(self.genuine_scores.size)

    def p_values(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Tail probability of each raw score under the genuine distribution (vectorised)."""
        s = np.asarray(scores, dtype=np.float64)
        n = self.genuine_scores.size
        at_least = n - np.searchsorted(self.genuine_scores, s, side="left")
        return (1.0 + at_least) / (n + 1.0)

    @cached_property
    def tail(self) -> tuple[float, int, float, float] | None:
        """The fitted tail ``(u, k, shape, scale)``, fitted once per calibration, or None.

        Above the threshold u (the top ~10 % of held-out scores, at least 20 of them) the
        exceedances are fitted with a generalised Pareto distribution (peaks over threshold).
        A fitted shape below 0 (a tail that ends) is replaced by the exponential tail (shape 0,
        scale = mean exceedance); a heavier tail is kept as fitted. Both choices only ever make
        p-values larger than the fit: the tail never claims more than the data support.
        Fewer than 40 held-out scores: no tail.
        """
        from scipy import stats

        n = self.size
        k = max(20, int(TAIL_FRACTION * n))
        if n < 40 or k >= n:
            return None
        u = float(self.genuine_scores[n - k - 1])
        excess = self.genuine_scores[n - k :] - u
        if not np.any(excess > 0):
            return None
        try:
            shape, _, scale = stats.genpareto.fit(excess, floc=0.0)
        except Exception:  # a degenerate sample: fall back to the exponential tail
            shape, scale = 0.0, float(excess.mean())
        if not (np.isfinite(shape) and np.isfinite(scale) and scale > 0) or shape < 0:
            shape, scale = 0.0, float(excess.mean())
        return u, k, float(shape), float(scale)

    def tail_p_values(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Like ``p_values``, with the fitted tail (:attr:`tail`) beyond the held-out scores.

        A study check takes the smallest p over hundreds of regions (Bonferroni), so it needs
        p-values below 1/(n+1), which no empirical null of n scores can give. Above u,
        ``p(s) = k/(n+1) * sf(s - u)``, and never below the conformal p-value where the
        score is still inside the held-out range (there the data say how rare it is). Below
        u this equals the conformal p-value.
        """
        from scipy import stats

        s = np.asarray(scores, dtype=np.float64)
        p = self.p_values(s)
        if self.tail is None:
            return p
        u, k, shape, scale = self.tail
        n = self.size
        above = s > u
        tail = (k / (n + 1.0)) * stats.genpareto.sf(s[above] - u, shape, 0.0, scale)
        inside = s[above] <= self.genuine_scores[-1]
        tail = np.where(inside, np.maximum(tail, p[above]), tail)
        p[above] = np.maximum(tail, np.finfo(np.float64).tiny)
        return p

    def p_value(self, score: float) -> float:
        return float(self.p_values([score])[0])

    def to_dict(self) -> dict:
        return {"genuine_scores": self.genuine_scores.tolist(), "n": self.size}

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls.from_scores(data["genuine_scores"])


@dataclass(frozen=True)
class AnalyticNull:
    """A null known from first principles rather than fitted: p for scores at a threshold.

    Used where genuine data essentially never produce the score (an exact repeat of textured
    blocks): ``p = p_at_or_above`` for scores >= ``threshold``, else 1. Same methods as
    :class:`Calibration`, so scorers need not know which kind they hold.
    """

    threshold: float
    p_at_or_above: float

    def p_values(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        s = np.asarray(scores, dtype=np.float64)
        return np.where(s >= self.threshold, self.p_at_or_above, 1.0)

    def tail_p_values(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        return self.p_values(scores)
