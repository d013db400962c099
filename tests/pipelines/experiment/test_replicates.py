"""Inference over replicates against independent references: scipy's t-test, hand arithmetic, simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipelines.experiment.replicates import (
    minimum_detectable_effect,
    power,
    replicates_for_power,
    t_interval,
    variance_components,
)


@pytest.mark.parametrize("means", [[1.0, 2.0, 4.0], [0.5, -0.25, 1.75, 0.0, 3.5, -1.0, 2.0, 1.25], [3.0, 3.0001]])
def test_the_t_interval_is_scipys_one_sample_interval(means):
    got = t_interval(means)
    low, high = stats.ttest_1samp(means, 0.0).confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    assert got.mean == pytest.approx(np.mean(means), rel=1e-15)


def test_the_t_interval_by_hand_for_three_replicates():
    # mean 7/3, sd sqrt(7/3), t(0.975, 2) = 4.302652729911275 -> half width 4.3026527 * sqrt(7/3) / sqrt(3)
    got = t_interval([1.0, 2.0, 4.0])
    half = 4.302652729911275 * math.sqrt(7 / 3) / math.sqrt(3)
    assert (got.low, got.high) == pytest.approx((7 / 3 - half, 7 / 3 + half), rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([1.0])


def test_power_matches_a_simulated_t_test():
    rng = np.random.default_rng(0)
    effect, sd, r = 1.0, 1.5, 8
    draws = rng.normal(effect, sd, size=(40_000, r))
    p = stats.ttest_1samp(draws, 0.0, axis=1).pvalue
    simulated = float((p < 0.05).mean())
    assert power(effect, sd, r) == pytest.approx(simulated, abs=0.01)


def test_replicates_for_power_against_the_hand_computation():
    # Normal approximation: R = ((z_0.975 + z_0.8) * sd / effect)^2 = (2.8016 * 2)^2 = 31.4; the t-test
    # needs a couple more. The exact answer is the first R whose power reaches 0.8, checked both sides.
    r = replicates_for_power(effect=1.0, sd=2.0)
    assert 32 <= r <= 35
    assert power(1.0, 2.0, r) >= 0.8 > power(1.0, 2.0, r - 1)
    assert replicates_for_power(effect=2.0, sd=2.0) < r  # a larger effect needs fewer
    assert replicates_for_power(effect=0.0, sd=1.0) is None


def test_the_minimum_detectable_effect_inverts_power():
    mde = minimum_detectable_effect(sd=2.0, replicates=10)
    assert power(mde, 2.0, 10) == pytest.approx(0.8, abs=1e-6)
    # hand check, normal approximation (a slight underestimate for the t-test): 2.8016 * 2 / sqrt(10) = 1.772
    assert 1.77 < mde < 2.1


def test_replicates_that_agree_exactly_detect_any_effect():
    """Short runs where nothing happens give identical replicates (sd 0): no division by zero."""
    assert minimum_detectable_effect(sd=0.0, replicates=3) == 0.0
    assert power(0.5, 0.0, 3) == 1.0 and power(0.0, 0.0, 3) == 0.0
    assert replicates_for_power(1.0, 0.0) == 2


def test_variance_components_recover_what_was_simulated():
    rng = np.random.default_rng(1)
    between_sd, within_sd = 1.0, 3.0
    groups = {f"r{i}": rng.normal(rng.normal(0, between_sd), within_sd, size=60) for i in range(400)}
    vc = variance_components(groups)
    assert vc.between == pytest.approx(between_sd**2, rel=0.15)
    assert vc.within == pytest.approx(within_sd**2, rel=0.02)
    assert vc.icc == pytest.approx(0.1, abs=0.02)


def test_variance_components_on_a_small_balanced_table_by_hand():
    groups = {"a": [1.0, 3.0], "b": [5.0, 7.0]}
    # means 2 and 6, grand 4; MS_between = 2 * (4 + 4) / 1 = 16; MS_within = (1 + 1 + 1 + 1) / 2 = 2
    # between = (16 - 2) / 2 = 7
    vc = variance_components(groups)
    assert (vc.between, vc.within, vc.mean) == pytest.approx((7.0, 2.0, 4.0))
    assert vc.icc == pytest.approx(7 / 9)
