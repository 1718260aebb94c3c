"""Stopping rules: hand-computed e-values, and the anytime-valid guarantee checked by simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certaindex.core.stopping import anytime_valid_leader, entropy_rule, pair_evalue


def numeric_evalue(x: int, y: int, steps: int = 200_000) -> float:
    theta = np.linspace(0.5, 1.0, steps + 1)
    f = theta**x * (1 - theta) ** y
    integral = float(np.sum((f[1:] + f[:-1]) / 2) * (0.5 / steps))
    return 2 ** (x + y) * 2 * integral


@pytest.mark.parametrize(("x", "y"), [(0, 0), (1, 0), (3, 0), (5, 2), (10, 3), (7, 7), (2, 9)])
def test_pair_evalue_matches_numerical_integration(x: int, y: int) -> None:
    assert pair_evalue(x, y) == pytest.approx(numeric_evalue(x, y), rel=1e-6)


def test_pair_evalue_closed_forms() -> None:
    assert pair_evalue(0, 0) == 1.0
    # y = 0: 2^(x+1) * (1 - 2^-(x+1)) / (x+1) = (2^(x+1) - 1) / (x + 1)
    for x in range(0, 30):
        assert pair_evalue(x, 0) == pytest.approx((2 ** (x + 1) - 1) / (x + 1))


@given(st.integers(0, 60), st.integers(0, 60))
def test_pair_evalue_grows_with_lead_and_shrinks_with_competition(x: int, y: int) -> None:
    assert pair_evalue(x + 1, y) > pair_evalue(x, y)
    assert pair_evalue(x, y + 1) < pair_evalue(x, y)


def test_unanimous_votes_stop_at_the_first_sample_that_clears_the_threshold() -> None:
    n, alpha = 16, 0.05
    threshold = (n - 1) / alpha
    # The leader's first sighting is not evidence: c unanimous samples give E(c - 1, 0).
    needed = next(c for c in range(1, 100) if (2**c - 1) / c >= threshold)
    assert anytime_valid_leader([needed], n, alpha).stop
    assert not anytime_valid_leader([needed - 1], n, alpha).stop


def test_a_close_vote_does_not_stop() -> None:
    decision = anytime_valid_leader([6, 5, 1], max_samples=16, alpha=0.05)
    assert not decision.stop and decision.leader == 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"counts": [1], "max_samples": 1}, "max_samples"),
        ({"counts": [1], "max_samples": 8, "alpha": 0}, "alpha"),
        ({"counts": [1], "max_samples": 8, "alpha": 1.5}, "alpha"),
        ({"counts": [-1], "max_samples": 8}, "counts"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        anytime_valid_leader(**kwargs)


def test_entropy_rule_threshold_range() -> None:
    assert entropy_rule(0.9, 0.8) and not entropy_rule(0.7, 0.8)
    with pytest.raises(ValueError):
        entropy_rule(0.5, 1.5)


def simulate_wrong_declarations(probs: list[float], n: int, alpha: float, streams: int, seed: int) -> tuple[float, float]:
    """Fraction of vote streams where the rule, looking after every sample, ever declares an answer
    that is not the true mode (answer 0); and the mean samples used."""
    rng = np.random.default_rng(seed)
    wrong = 0
    used = 0
    draws = rng.choice(len(probs), size=(streams, n), p=probs)
    for stream in draws:
        counts = [0] * len(probs)
        stopped_at = n
        for t, answer in enumerate(stream, start=1):
            counts[answer] += 1
            decision = anytime_valid_leader(counts, n, alpha)
            if decision.stop:
                wrong += decision.leader != 0
                stopped_at = t
                break
        used += stopped_at
    return wrong / streams, used / streams


@pytest.mark.parametrize(
    "probs",
    [
        [0.34, 0.33, 0.33],  # nearly tied: the hardest case for a sequential test
        [0.5, 0.49, 0.01],
        [0.3, 0.25, 0.25, 0.2],
    ],
)
def test_anytime_rule_keeps_its_error_rate_in_simulation(probs: list[float]) -> None:
    alpha, streams = 0.1, 3000
    error, _ = simulate_wrong_declarations(probs, n=64, alpha=alpha, streams=streams, seed=7)
    # Binomial noise on 3000 streams: allow three standard errors above alpha.
    assert error <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / streams)


def test_anytime_rule_saves_samples_when_the_mode_is_clear() -> None:
    error, mean_used = simulate_wrong_declarations([0.9, 0.05, 0.05], n=64, alpha=0.05, streams=500, seed=3)
    assert error <= 0.05
    assert mean_used < 32  # stops in well under half the budget
