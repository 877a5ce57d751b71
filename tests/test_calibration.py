"""Calibration: conformal p-values with the +1 correction, uniform under the genuine null."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detector.calibration import Calibration
from detector.checkpoint import load_checkpoint, save_checkpoint
from detector.preprocess import Preprocessing


def test_p_value_is_fraction_at_least_as_extreme_plus_one() -> None:
    cal = Calibration.from_scores([3.0, 1.0, 2.0, 2.0])
    # n = 4: p(s) = (1 + #{g >= s}) / 5
    np.testing.assert_allclose(
        cal.p_values([0.5, 1.0, 2.0, 2.5, 3.0, 99.0]), [5 / 5, 5 / 5, 4 / 5, 2 / 5, 2 / 5, 1 / 5]
    )
    assert cal.p_value(1e9) == pytest.approx(0.2)  # never 0: "at most 1/(n+1)"
    assert cal.size == 4


def test_genuine_scores_map_to_uniform_tail_probabilities() -> None:
    rng = np.random.default_rng(7)
    held_out = rng.gamma(2.0, 1.0, size=2000)  # skewed, like reconstruction errors
    cal = Calibration.from_scores(held_out)
    fresh = rng.gamma(2.0, 1.0, size=5000)  # new genuine patches, same distribution
    p = cal.p_values(fresh)
    # Kolmogorov-Smirnov distance to U(0, 1): 1.63 / sqrt(n_eff) is the 1 % critical value;
    # n_eff = 1/(1/2000 + 1/5000) for a two-sample comparison.
    grid = np.linspace(0, 1, 201)
    ks = np.max(np.abs(np.searchsorted(np.sort(p), grid, side="right") / p.size - grid))
    assert ks < 1.63 / np.sqrt(1 / (1 / 2000 + 1 / 5000))
    for alpha in (0.01, 0.05, 0.1, 0.5):
        # both samples are finite: the held-out quantile and the fresh frequency both vary
        se = np.sqrt(alpha * (1 - alpha) * (1 / 2000 + 1 / 5000))
        assert abs(np.mean(p <= alpha) - alpha) < 4 * se


def test_tampered_scores_get_small_p_values() -> None:
    rng = np.random.default_rng(8)
    cal = Calibration.from_scores(rng.normal(0, 1, 500))
    assert np.all(cal.p_values(rng.normal(6, 0.5, 50)) <= 2 / 501)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Calibration.from_scores([])
    with pytest.raises(ValueError, match="finite"):
        Calibration.from_scores([1.0, float("nan")])


def test_calibration_travels_with_the_checkpoint(tmp_path: Path) -> None:
    cal = Calibration.from_scores(np.random.default_rng(1).random(100))
    path = save_checkpoint(
        tmp_path / "m.ckpt",
        kind="inpaint",
        preprocessing=Preprocessing("MR", 32),
        model_config={},
        scoring={},
        model_state={"w": torch.zeros(2)},
        calibration=cal,
    )
    loaded = load_checkpoint(path).calibration
    assert loaded is not None
    np.testing.assert_array_equal(loaded.genuine_scores, cal.genuine_scores)
    assert Calibration.from_dict(cal.to_dict()).size == 100


def test_tail_extends_below_one_over_n_and_stays_calibrated() -> None:
    from scipy import stats

    rng = np.random.default_rng(7)
    # An exponential-tailed null: the fitted tail should follow the truth closely.
    cal = Calibration.from_scores(rng.exponential(size=2000))
    far = [9.0, 11.0]  # beyond every held-out score: the empirical p is stuck at 1/(n+1)
    assert np.all(cal.p_values(far) == pytest.approx(1 / 2001))
    tail = cal.tail_p_values(far)
    truth = stats.expon.sf(far)
    assert np.all(tail < 1 / 2001)
    assert np.all(tail / truth < 3) and np.all(truth / tail < 3)
    # A lighter (Gaussian) tail is treated as exponential: p too large, never too small.
    gauss = Calibration.from_scores(rng.normal(size=2000))
    assert np.all(gauss.tail_p_values([4.0, 5.0]) >= stats.norm.sf([4.0, 5.0]))
    # Fresh genuine scores get p <= a with probability about a (never much more).
    for null, draw in ((cal, rng.exponential), (gauss, rng.normal)):
        fresh = null.tail_p_values(draw(size=20000))
        for alpha in (0.001, 0.01, 0.05):
            assert np.mean(fresh <= alpha) <= alpha * 1.5 + 0.001
    # Below the tail threshold it is exactly the conformal p-value.
    assert cal.tail_p_values([0.1])[0] == cal.p_values([0.1])[0]
