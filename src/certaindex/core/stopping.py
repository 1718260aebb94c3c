"""Stopping rules for parallel sampling: when has the vote been decided?

Pure functions over vote counts, so they can be tested exhaustively and in simulation.

* :func:`entropy_rule` — the paper's rule: stop once the certaindex (1 - normalised semantic entropy)
  of the answers so far reaches a threshold. Cheap and tunable, but without a guarantee.
* :func:`anytime_valid_leader` — stop once the leading answer's lead over every other answer is
  significant under an e-process, valid under continuous monitoring (any number of looks).

The anytime-valid rule. For a pair of answers (a, b), look only at samples that give a or b; under
H0 "a is not more likely than b" each such sample is a with probability theta <= 1/2. The mixture
likelihood ratio against a uniform prior on theta in [1/2, 1],

    E(x, y) = 2^(x+y) * 2 * integral_{1/2}^{1} theta^x (1 - theta)^y dtheta,

is a non-negative supermartingale under H0 (for theta >= 1/2 >= theta0 each factor has mean
2(theta*theta0 + (1-theta)(1-theta0)) <= 1), so by Ville's inequality it ever reaches 1/alpha' with
probability at most alpha'. A wrong declaration means some answer c that is not the true mode a*
beats a* in its pair test. Counting c's sightings only after its first (so the sighting that made it
a candidate is not evidence) and all of a*'s sightings (more y only lowers E), each of the at most
N - 1 competitors that can appear in N samples gets alpha' = alpha / (N - 1). The chance of ever
declaring a wrong leader is then at most alpha, however often one looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Sequence


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


@lru_cache(maxsize=65536)
def pair_evalue(x: int, y: int) -> float:
    """E(x, y) above, exactly: with n = x + y + 1,
    integral_{1/2}^{1} theta^x (1-theta)^y = x! y! / n! * P(Binomial(n, 1/2) >= y + 1)."""
    if x < 0 or y < 0:
        raise ValueError(f"counts must be >= 0, got {x}, {y}")
    n = x + y + 1
    tail = sum(math.comb(n, k) for k in range(y + 1, n + 1))  # P(Bin >= y+1) * 2^n
    value = Fraction(2 * math.factorial(x) * math.factorial(y) * tail * 2 ** (x + y), math.factorial(n) * 2**n)
    return float(value)


@dataclass(frozen=True)
class LeaderDecision:
    stop: bool
    leader: int | None  # index into the counts
    evalue: float  # the smallest pair e-value of the leader against any other answer
    threshold: float


def anytime_valid_leader(counts: Sequence[int], max_samples: int, alpha: float = 0.05) -> LeaderDecision:
    """Decide whether the leading answer (by ``counts`` of answer clusters) is the mode at level alpha.

    ``max_samples`` is the sampling budget N; it fixes the Bonferroni split over at most N - 1
    competitors, so it must be fixed before sampling starts.
    """
    _check_alpha(alpha)
    if max_samples < 2:
        raise ValueError(f"max_samples must be at least 2 for a test, got {max_samples}")
    if any(c < 0 for c in counts):
        raise ValueError("counts must be >= 0")
    threshold = (max_samples - 1) / alpha
    if not counts or max(counts) == 0:
        return LeaderDecision(False, None, 0.0, threshold)
    leader = max(range(len(counts)), key=lambda i: (counts[i], -i))
    others = [c for i, c in enumerate(counts) if i != leader]
    runner_up = max(others, default=0)
    # E decreases in y, so the strongest competitor decides (and also covers unseen answers, y = 0).
    evalue = pair_evalue(counts[leader] - 1, runner_up)
    return LeaderDecision(evalue >= threshold, leader, evalue, threshold)


def entropy_rule(certaindex: float, threshold: float) -> bool:
    """Stop once the certaindex reaches the threshold (both in [0, 1])."""
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return certaindex >= threshold
