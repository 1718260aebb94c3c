"""Calibration: the four entropy thresholds, target-accuracy profiling, and Learn-then-Test."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from certaindex.core.calibration import (
    PolicyPoint,
    binomial_cdf,
    cheapest_within,
    cohens_d,
    entropy_thresholds,
    ltt_fixed_sequence,
    min_examples_for_certificate,
    threshold_bayes,
    threshold_info,
    threshold_mean,
    threshold_universal,
)

# Correct examples' entropies 1, 2, 3: mu_c = 2, sigma_c = 1 (sample sd).
# Incorrect examples' entropies 4, 6, 8: mu_i = 6, sigma_i = 2.
# Pooled variance ((3-1)*1 + (3-1)*4) / (3+3-2) = 2.5, so d = 4 / sqrt(2.5) = 2.5298221281.
CORRECT, INCORRECT = [1.0, 2.0, 3.0], [4.0, 6.0, 8.0]
D = 2.5298221281347035


def test_cohens_d_by_hand() -> None:
    assert cohens_d(CORRECT, INCORRECT) == pytest.approx(D, rel=1e-12)
    assert cohens_d([1, 1], [1, 1]) == 0.0
    assert cohens_d([1, 1], [2, 2]) == math.inf


def test_the_four_thresholds_by_hand() -> None:
    t = entropy_thresholds(CORRECT + INCORRECT, [True] * 3 + [False] * 3)
    assert (t.mu_c, t.sigma_c, t.mu_i, t.sigma_i, t.n_c, t.n_i) == (2.0, 1.0, 6.0, 2.0, 3, 3)
    # mean: mu_c = 2.
    assert t.mean == 2.0
    # info: 2 + 1 * ln(1 + 2.5298221) = 2 + ln(3.5298221) = 2 + 1.2612475 = 3.2612475.
    assert t.info == pytest.approx(3.2612475, abs=1e-7)
    # universal: 2 + 2.5298221/3.5298221 * (6 - 2) * max(0, 1 - 1/2) = 2 + 0.7166996 * 4 * 0.5 = 3.4333992.
    assert t.universal == pytest.approx(3.4333992, abs=1e-7)
    # bayes (equal priors): a = 1/2 - 1/8 = 0.375, b = 6/4 - 2/1 = -0.5,
    # c = 4/2 - 36/8 + ln(1/2) = -3.1931472; roots (0.5 +- sqrt(0.25 + 1.5 * 3.1931472)) / 0.75
    # = (0.5 +- 2.2449318) / 0.75 = 3.6599091 or -2.3265757; the one between the means is 3.6599091.
    assert t.bayes == pytest.approx(3.6599097, abs=1e-6)
    # ...where the two densities are indeed equal.
    def density(x, mu, sd):
        return math.exp(-((x - mu) ** 2) / (2 * sd * sd)) / (sd * math.sqrt(2 * math.pi))
    assert density(t.bayes, 2, 1) == pytest.approx(density(t.bayes, 6, 2), rel=1e-9)


def test_bayes_with_equal_variances_is_linear_and_moves_with_the_prior() -> None:
    # Equal variances (1) and priors: the midpoint of the means.
    assert threshold_bayes(2.0, 1.0, 6.0, 1.0, 0.5) == pytest.approx(4.0)
    # prior_c = 0.8: x = -c/b with b = 6 - 2 = 4, c = (4 - 36)/2 - ln(0.8/0.2) = -17.3862944, so x = 4.3465736.
    assert threshold_bayes(2.0, 1.0, 6.0, 1.0, 0.8) == pytest.approx(4.3465736, abs=1e-7)


def test_single_formulas_and_edge_cases() -> None:
    assert threshold_mean(0.7) == 0.7
    assert threshold_info(1.0, 0.5, -2.0) == pytest.approx(1.0 + 0.5 * math.log(3.0))
    # sigma_c >= mu_c switches the universal correction off.
    assert threshold_universal(1.0, 1.5, 3.0, 1.0) == 1.0
    assert threshold_universal(0.0, 0.5, 3.0, 1.0) == 0.0
    with pytest.raises(ValueError, match="at least 2 correct and 2 incorrect"):
        entropy_thresholds([1.0, 2.0, 3.0], [True, True, False])
    with pytest.raises(ValueError, match="differ in length"):
        entropy_thresholds([1.0, 2.0], [True])
    with pytest.raises(ValueError, match="positive standard deviation"):
        threshold_bayes(1.0, 0.0, 2.0, 1.0)


def test_cheapest_within_the_target() -> None:
    points = [
        PolicyPoint("full", 0.60, 300.0),
        PolicyPoint("a", 0.60, 200.0),
        PolicyPoint("b", 0.58, 120.0),
        PolicyPoint("c", 0.50, 80.0),
    ]
    assert cheapest_within(points, 0.60, 0.0).policy == "a"
    assert cheapest_within(points, 0.60, 0.02).policy == "b"  # 0.58 >= 0.60 - 0.02
    assert cheapest_within(points, 0.60, 0.10).policy == "c"
    assert cheapest_within(points[2:], 0.70, 0.05) is None


def test_binomial_cdf_by_hand() -> None:
    assert binomial_cdf(0, 10, 0.1) == pytest.approx(0.9**10)  # 0.3486784401
    # P(Bin(30, 0.1) <= 1) = 0.9^30 + 30 * 0.1 * 0.9^29 = 0.0423912 + 0.1413039 = 0.1836950.
    assert binomial_cdf(1, 30, 0.1) == pytest.approx(0.1836950, abs=1e-7)
    assert binomial_cdf(-1, 5, 0.3) == 0.0 and binomial_cdf(5, 5, 0.3) == 1.0
    # Large n stays finite and accurate: the mean of Bin(20000, 0.5) is its median.
    assert binomial_cdf(10000, 20000, 0.5) == pytest.approx(0.5 + 0.5 * float(Fraction(math.comb(20000, 10000), 2**20000)), rel=1e-9)


def test_fixed_sequence_stops_at_the_first_failure() -> None:
    # n = 50, alpha = delta = 0.1: p(0) = 0.9^50 = 0.0051538, p(1) = 0.9^50 + 5 * 0.9^49 = 0.0337859,
    # p(5) = P(Bin(50, .1) <= 5) = 0.6161230 > delta: testing stops there, and the later 0 is not tested.
    result = ltt_fixed_sequence([0, 0, 1, 5, 0], n=50, alpha=0.1, delta=0.1)
    assert result.p_values[:4] == pytest.approx([0.0051538, 0.0051538, 0.0337859, 0.6161230], abs=1e-7)
    assert result.certified == (0, 1, 2) and result.index == 2
    assert ltt_fixed_sequence([3, 0], n=50, alpha=0.1, delta=0.1).index is None
    # With 21 examples even zero harmful exits are not enough at alpha = delta = 0.1 (0.9^21 = 0.109).
    assert min_examples_for_certificate(0.1, 0.1) == 22
    assert ltt_fixed_sequence([0], n=21, alpha=0.1, delta=0.1).index is None
    assert ltt_fixed_sequence([0], n=22, alpha=0.1, delta=0.1).index == 0
    with pytest.raises(ValueError, match="harmful counts must be ints"):
        ltt_fixed_sequence([51], n=50, alpha=0.1, delta=0.1)


def test_ltt_guarantee_holds_in_simulation() -> None:
    """Many calibration sets drawn from a known harmful-exit curve R(j), rising from 0 to 0.3 as the
    setting gets more aggressive: the chosen setting's true risk exceeds alpha in at most ~delta of them."""
    rng = np.random.default_rng(12345)
    alpha, delta, n, trials = 0.1, 0.1, 200, 1500
    risk = np.linspace(0.0, 0.3, 16)  # risk[j] > alpha from j = 6 on
    violations = chosen_any = 0
    for _ in range(trials):
        u = rng.random(n)
        # Nested harmful sets: an example harmful at setting j is harmful at every more aggressive one.
        counts = (u[:, None] < risk[None, :]).sum(axis=0)
        result = ltt_fixed_sequence(counts.tolist(), n, alpha, delta)
        if result.index is not None:
            chosen_any += 1
            violations += risk[result.index] > alpha
    rate = violations / trials
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)
    assert chosen_any > 0.9 * trials  # and it is not vacuous: a setting is certified almost always
    # The certificate is tight-ish: a setting at risk 0.1 (the boundary) is chosen sometimes.
    assert rate > 0.0
