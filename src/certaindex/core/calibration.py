"""Choosing early-exit settings from labelled data: pure functions, no I/O.

Three tools, all fed by replaying recorded traces (:mod:`certaindex.evaluation.evaluate` does the replaying):

1. **Entropy-stopping thresholds** (Sharma & Chopra, "Think Just Enough"). Given the mean token
   entropy of examples whose answer was correct (c) or incorrect (i), with means ``mu``, sample
   standard deviations ``sigma`` and Cohen's ``d = (mu_i - mu_c) / s_pooled``, reasoning stops when
   the entropy is at most ``tau``, where ``tau`` is one of

   * mean:          ``mu_c``
   * info:          ``mu_c + sigma_c * ln(1 + |d|)``
   * bayes:         where the prior-weighted Gaussian class densities cross between the means
   * universal:     ``mu_c + |d| / (1 + |d|) * (mu_i - mu_c) * max(0, 1 - sigma_c / mu_c)``

2. **Target-accuracy profiling** (Dynasor's profiler): the cheapest policy whose accuracy is within
   ``max_loss`` of full reasoning's.

3. **A distribution-free guarantee on harmful exits** (Learn-then-Test, Angelopoulos et al. 2021):
   an exit is harmful when the early answer is wrong where full reasoning's was right. Settings are
   tested in a fixed order from conservative to aggressive; setting j's null hypothesis "its
   harmful-exit rate exceeds alpha" is rejected when the exact binomial p-value
   ``P(Binomial(n, alpha) <= k_j)`` is at most delta, and testing stops at the first failure. With
   probability at least ``1 - delta`` over the calibration set, every certified setting, and so the
   most aggressive one returned, has a harmful-exit rate of at most alpha (on exchangeable data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Sequence, TypeVar

import numpy as np

__all__ = [
    "EntropyThresholds",
    "LTTResult",
    "PolicyPoint",
    "binomial_cdf",
    "cheapest_within",
    "cohens_d",
    "entropy_thresholds",
    "hoeffding_bentkus_pvalue",
    "ltt_fixed_sequence",
    "min_examples_for_certificate",
    "threshold_bayes",
    "threshold_info",
    "threshold_mean",
    "threshold_universal",
]

THRESHOLD_METHODS = ("mean", "info", "bayes", "universal")


def _values(name: str, values: Sequence[float], minimum: int = 2) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    if len(array) < minimum:
        raise ValueError(f"{name} needs at least {minimum} values, got {len(array)}")
    return array


# ------------------------------------------------------------------------------ 1. entropy thresholds


def cohens_d(correct: Sequence[float], incorrect: Sequence[float]) -> float:
    """Cohen's d of incorrect against correct, ``(mu_i - mu_c) / s_pooled`` (sample variances).

    0.0 when both classes have zero spread and equal means; infinite when they have zero spread but
    differ."""
    c, i = _values("correct", correct), _values("incorrect", incorrect)
    pooled_var = ((len(c) - 1) * c.var(ddof=1) + (len(i) - 1) * i.var(ddof=1)) / (len(c) + len(i) - 2)
    diff = float(i.mean() - c.mean())
    if pooled_var <= 0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return diff / math.sqrt(pooled_var)


def threshold_mean(mu_c: float) -> float:
    """The entropy-mean method: the mean entropy of the correct class."""
    return float(mu_c)


def threshold_info(mu_c: float, sigma_c: float, d: float) -> float:
    """The information-theoretic method: ``mu_c + sigma_c * ln(1 + |d|)``."""
    return float(mu_c + sigma_c * math.log1p(abs(d)))


def threshold_universal(mu_c: float, sigma_c: float, mu_i: float, d: float) -> float:
    """The scale-free universal method: ``mu_c + |d|/(1+|d|) * (mu_i - mu_c) * max(0, 1 - sigma_c/mu_c)``.

    The coefficient of variation needs ``mu_c > 0`` (entropies are >= 0); at ``mu_c == 0`` the
    correction term is taken as 0, giving ``mu_c``. An infinite ``d`` gives the weight 1."""
    if mu_c <= 0:
        return float(mu_c)
    weight = 1.0 if math.isinf(d) else abs(d) / (1 + abs(d))
    return float(mu_c + weight * (mu_i - mu_c) * max(0.0, 1.0 - sigma_c / mu_c))


def threshold_bayes(mu_c: float, sigma_c: float, mu_i: float, sigma_i: float, prior_c: float = 0.5) -> float:
    """The Bayes-optimal boundary under Gaussian classes: where ``p_c N(x; mu_c, sigma_c)`` equals
    ``p_i N(x; mu_i, sigma_i)``.

    Taking logs gives ``a x^2 + b x + c = 0`` with ``a = 1/(2 s_c^2) - 1/(2 s_i^2)``,
    ``b = mu_i/s_i^2 - mu_c/s_c^2`` and ``c = mu_c^2/(2 s_c^2) - mu_i^2/(2 s_i^2) + ln(s_c/s_i) - ln(p_c/p_i)``.
    Of the two roots ``(-b +- sqrt(b^2 - 4ac)) / 2a`` the one between the means is returned (else the
    one nearer their midpoint); with equal variances (``a == 0``) the boundary is the single root
    ``-c/b``. When the weighted densities never cross, the point where they come closest, ``-b/2a``,
    is returned, clipped to the means' range.
    """
    if sigma_c <= 0 or sigma_i <= 0:
        raise ValueError("the Bayes threshold needs both classes to have a positive standard deviation")
    if not 0 < prior_c < 1:
        raise ValueError(f"prior_c must be in (0, 1), got {prior_c}")
    vc, vi = sigma_c**2, sigma_i**2
    a = 1 / (2 * vc) - 1 / (2 * vi)
    b = mu_i / vi - mu_c / vc
    c = mu_c**2 / (2 * vc) - mu_i**2 / (2 * vi) + math.log(sigma_c / sigma_i) - math.log(prior_c / (1 - prior_c))
    lo, hi = min(mu_c, mu_i), max(mu_c, mu_i)
    if abs(a) < 1e-12 * max(1 / vc, 1 / vi):
        if b == 0:  # identical classes: no boundary; the midpoint is as good as any
            return float((mu_c + mu_i) / 2)
        return float(-c / b)
    disc = b * b - 4 * a * c
    if disc < 0:
        return float(min(hi, max(lo, -b / (2 * a))))
    root = math.sqrt(disc)
    roots = sorted(((-b - root) / (2 * a), (-b + root) / (2 * a)))
    inside = [r for r in roots if lo <= r <= hi]
    if inside:
        return float(inside[0])
    mid = (mu_c + mu_i) / 2
    return float(min(roots, key=lambda r: abs(r - mid)))


@dataclass(frozen=True)
class EntropyThresholds:
    mean: float
    info: float
    bayes: float
    universal: float
    mu_c: float
    sigma_c: float
    mu_i: float
    sigma_i: float
    n_c: int
    n_i: int
    d: float

    def as_dict(self) -> dict[str, float]:
        return {m: getattr(self, m) for m in THRESHOLD_METHODS}


def entropy_thresholds(entropies: Sequence[float], correct: Sequence[bool]) -> EntropyThresholds:
    """All four thresholds from labelled per-example entropies (at least 2 examples per class)."""
    values = _values("entropies", entropies, minimum=1)
    labels = np.asarray(correct, dtype=bool)
    if labels.shape != values.shape:
        raise ValueError(f"entropies and correct differ in length ({len(values)} and {len(labels)})")
    c, i = values[labels], values[~labels]
    if len(c) < 2 or len(i) < 2:
        raise ValueError(f"need at least 2 correct and 2 incorrect examples, got {len(c)} and {len(i)}")
    mu_c, mu_i = float(c.mean()), float(i.mean())
    sigma_c, sigma_i = float(c.std(ddof=1)), float(i.std(ddof=1))
    d = cohens_d(c, i)
    prior_c = len(c) / (len(c) + len(i))
    if sigma_c > 0 and sigma_i > 0:
        bayes = threshold_bayes(mu_c, sigma_c, mu_i, sigma_i, prior_c)
    else:
        bayes = (mu_c + mu_i) / 2  # a degenerate class: no density to intersect
    return EntropyThresholds(
        mean=threshold_mean(mu_c),
        info=threshold_info(mu_c, sigma_c, d),
        bayes=bayes,
        universal=threshold_universal(mu_c, sigma_c, mu_i, d),
        mu_c=mu_c,
        sigma_c=sigma_c,
        mu_i=mu_i,
        sigma_i=sigma_i,
        n_c=int(len(c)),
        n_i=int(len(i)),
        d=d,
    )


# ------------------------------------------------------------------------------ 2. target accuracy

P = TypeVar("P")


@dataclass(frozen=True)
class PolicyPoint(Generic[P]):
    """A policy's replayed accuracy and mean cost (tokens per problem, probes included)."""

    policy: P
    accuracy: float
    mean_tokens: float


def cheapest_within(points: Sequence[PolicyPoint[P]], full_accuracy: float, max_loss: float) -> PolicyPoint[P] | None:
    """The cheapest policy with ``accuracy >= full_accuracy - max_loss`` (ties: the more accurate,
    then the first); None when none qualifies."""
    if not 0 <= max_loss <= 1:
        raise ValueError(f"max_loss must be in [0, 1], got {max_loss}")
    floor = full_accuracy - max_loss - 1e-12
    ok = [p for p in points if p.accuracy >= floor]
    if not ok:
        return None
    return min(ok, key=lambda p: (p.mean_tokens, -p.accuracy))


# ------------------------------------------------------------------------------ 3. Learn then Test


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Binomial(n, p) <= k)``, exactly summed in log space (stable for large n)."""
    if n < 0 or not 0 <= p <= 1:
        raise ValueError(f"need n >= 0 and p in [0, 1], got n={n}, p={p}")
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p == 0:
        return 1.0
    if p == 1:
        return 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * lp + (n - j) * lq for j in range(k + 1)]
    peak = max(logs)
    return min(1.0, math.exp(peak) * math.fsum(math.exp(v - peak) for v in logs))


@dataclass(frozen=True)
class LTTResult:
    index: int | None  # the most aggressive certified setting (into the given order); None: none
    certified: tuple[int, ...]  # every certified setting, in testing order
    p_values: tuple[float, ...]  # one per setting (all computed; only a prefix is tested)
    n: int
    alpha: float
    delta: float


def hoeffding_bentkus_pvalue(k: int, n: int, alpha: float) -> float:
    """The Hoeffding-Bentkus p-value of H0: risk > ``alpha`` after ``k`` losses in ``n`` Bernoulli
    trials (Bates et al. 2021; the p-value Learn-then-Test uses for losses in [0, 1])."""
    if n < 1:
        return 1.0
    r = k / n
    if r >= alpha:
        hoeffding = 1.0
    else:
        a = min(max(r, 1e-12), 1 - 1e-12)
        kl = a * math.log(a / alpha) + (1 - a) * math.log((1 - a) / (1 - alpha))
        hoeffding = math.exp(-n * kl)
    bentkus = math.e * binomial_cdf(math.ceil(n * r), n, alpha)
    return min(1.0, hoeffding, bentkus)


def ltt_fixed_sequence(harmful_counts: Sequence[int], n: int, alpha: float, delta: float,
                       method: str = "binomial") -> LTTResult:
    """Learn-then-Test with fixed-sequence testing.

    ``harmful_counts[j]``: harmful exits of setting j on the ``n`` calibration examples, settings
    ordered from conservative to aggressive *before* looking at the data. Setting j is certified when
    it and every setting before it have ``P(Binomial(n, alpha) <= k) <= delta`` (``method="binomial"``,
    exact for 0/1 losses) or a Hoeffding-Bentkus p-value <= delta (``method="hb"``).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 < alpha < 1 or not 0 < delta < 1:
        raise ValueError(f"alpha and delta must be in (0, 1), got {alpha} and {delta}")
    for k in harmful_counts:
        if isinstance(k, bool) or int(k) != k or not 0 <= k <= n:
            raise ValueError(f"harmful counts must be ints in [0, n={n}], got {k!r}")
    if method not in ("binomial", "hb"):
        raise ValueError(f"method must be binomial or hb, got {method!r}")
    pvalue = binomial_cdf if method == "binomial" else hoeffding_bentkus_pvalue
    p_values = tuple(pvalue(int(k), n, alpha) for k in harmful_counts)
    certified: list[int] = []
    for j, p in enumerate(p_values):
        if p > delta:
            break
        certified.append(j)
    return LTTResult(
        index=certified[-1] if certified else None,
        certified=tuple(certified),
        p_values=p_values,
        n=n,
        alpha=alpha,
        delta=delta,
    )


def min_examples_for_certificate(alpha: float, delta: float) -> int:
    """The fewest calibration examples with which a setting without harmful exits is certified:
    the smallest n with ``(1 - alpha)^n <= delta``."""
    if not 0 < alpha < 1 or not 0 < delta < 1:
        raise ValueError(f"alpha and delta must be in (0, 1), got {alpha} and {delta}")
    return math.ceil(math.log(delta) / math.log1p(-alpha))
