"""Pure certainty signals: how settled is a reasoning program's answer already?

Everything here is a small, deterministic function of numbers and strings: no I/O, no engine,
no model. Answer equivalence is injected as ``equal(a, b) -> bool`` so that this module does not
depend on the answer parser (programs pass ``certaindex.core.answers.answers_equal``).

Four families of signal, one per reasoning program:

1. Probe agreement for one chain of thought (Dynasor-CoT): the last ``k`` probed answers agree
   and none of them hesitates.
2. Parallel samples (self-consistency): semantic entropy of the answer clusters, normalised to
   the certaindex ``1 - H / log(n)`` of the Dynasor paper, plus majority vote and vote margin.
3. Token-level entropy and DeepConf confidence (arXiv 2508.15260) from top-k logprobs.
4. Reward aggregation for search (PRM scores), whose mean is the reward certaindex.

Every function raises ``ValueError`` with a message naming the argument on invalid input.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Literal

import numpy as np

__all__ = [
    "Equal",
    "ProbeObservation",
    "TraceConfidence",
    "Vote",
    "aggregate_rewards",
    "cluster_answers",
    "entropy_certaindex",
    "group_confidences",
    "majority_vote",
    "mean_token_entropy",
    "probe_certaindex",
    "probes_agree",
    "reward_certaindex",
    "semantic_entropy",
    "token_confidence",
    "token_entropy",
    "trace_confidence",
    "vote_margin",
]

Equal = Callable[[str, str], bool]
"""Answer equivalence, e.g. ``certaindex.core.answers.answers_equal``."""

# Engines round logprobs; a top token with probability ~1 may come back as a tiny positive number.
_LOGPROB_TOLERANCE = 1e-6
# Guards floor(fraction * n) against 0.29 * 100 == 28.999999999999996.
_FRACTION_EPS = 1e-9


# --------------------------------------------------------------------------- validation helpers


def _check_int(name: str, value: object, minimum: int) -> int:
    """An integer (not a bool) of at least ``minimum``; ints only, so 2.5 probes never slip in."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_finite(name: str, values: Sequence[float]) -> np.ndarray:
    """A 1-d float array with no NaN or infinity (they would silently poison every mean)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a sequence of numbers: {exc}") from None
    if array.ndim != 1:
        raise ValueError(f"{name} must be a flat sequence of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite (no NaN or infinity)")
    return array


def _check_sizes(cluster_sizes: Sequence[int]) -> list[int]:
    """Cluster sizes: positive ints (a cluster exists because at least one sample is in it)."""
    sizes = []
    for size in cluster_sizes:
        if isinstance(size, bool) or not isinstance(size, Integral):
            raise ValueError(f"cluster sizes must be ints, got {size!r}")
        if size <= 0:
            raise ValueError(f"cluster sizes must be positive, got {size}")
        sizes.append(int(size))
    return sizes


def _check_sizes_and_samples(cluster_sizes: Sequence[int], n_samples: int) -> list[int]:
    n = _check_int("n_samples", n_samples, 1)
    sizes = _check_sizes(cluster_sizes)
    if sum(sizes) > n:
        raise ValueError(f"cluster sizes sum to {sum(sizes)}, more than n_samples={n}")
    return sizes


def _has_answer(answer: str | None) -> bool:
    """None and whitespace-only answers are "no answer": they never agree with anything."""
    return answer is not None and answer.strip() != ""


# --------------------------------------------------------------------------- 1. probe agreement


@dataclass(frozen=True)
class ProbeObservation:
    """One probe of the reasoning so far: the answer it gave (None if none) and whether it hedged."""

    answer: str | None
    hesitant: bool


def _trailing_run(probes: Sequence[ProbeObservation], limit: int, equal: Equal) -> int:
    """Length (capped at ``limit``) of the trailing run of confident probes agreeing with the latest.

    Each earlier probe is compared to the latest as ``equal(latest, earlier)``. Both public probe
    signals use this one function, so ``probes_agree`` and ``probe_certaindex == 1`` cannot drift.
    """
    if not probes:
        return 0
    latest = probes[-1]
    if latest.hesitant or not _has_answer(latest.answer):
        return 0
    run = 1
    for probe in reversed(probes[:-1]):
        if run >= limit:
            break
        if probe.hesitant or not _has_answer(probe.answer) or not equal(latest.answer, probe.answer):
            break
        run += 1
    return min(run, limit)


def probes_agree(probes: Sequence[ProbeObservation], k: int, equal: Equal) -> bool:
    """True iff the last ``k`` probes all answered, none hesitated, and all match the latest.

    This is Dynasor-CoT's early-exit rule: an answer that survives ``k`` consecutive probes
    without hedging has stabilised, so further reasoning is unlikely to change it.
    """
    k = _check_int("k", k, 1)
    return len(probes) >= k and _trailing_run(probes, k, equal) >= k


def probe_certaindex(probes: Sequence[ProbeObservation], k: int, equal: Equal) -> float:
    """Progress towards ``probes_agree`` in [0, 1]: trailing consistent run / ``k``, capped at 1.

    0.0 when the latest probe gave no answer or hesitated; 1.0 exactly when ``probes_agree``.
    """
    k = _check_int("k", k, 1)
    return _trailing_run(probes, k, equal) / k


# --------------------------------------------------------------------------- 2. parallel samples


def cluster_answers(answers: Sequence[str | None], equal: Equal) -> list[list[int]]:
    """Group sample indices into classes of equivalent answers (semantic clustering).

    Greedy: each answer joins the first cluster whose representative (its first member) it
    equals, tested as ``equal(representative, answer)``; otherwise it founds a new cluster.
    Samples without an answer (None or whitespace-only) are in no cluster. Clusters are sorted
    by size descending, ties by first index, so ``clusters[0]`` is the plurality answer.
    """
    clusters: list[list[int]] = []
    for index, answer in enumerate(answers):
        if not _has_answer(answer):
            continue
        for cluster in clusters:
            if equal(answers[cluster[0]], answer):
                cluster.append(index)
                break
        else:
            clusters.append([index])
    # Clusters were founded in order of first index, and sort() is stable.
    clusters.sort(key=len, reverse=True)
    return clusters


def semantic_entropy(cluster_sizes: Sequence[int]) -> float:
    """Shannon entropy (nats) of the cluster-size distribution: 0 when all samples agree.

    Low entropy means the samples concentrate on few answers, i.e. the model is certain.
    """
    sizes = _check_sizes(cluster_sizes)
    if not sizes:
        raise ValueError("cluster_sizes must hold at least one cluster")
    total = sum(sizes)
    # -sum p log p term by term: a single cluster gives exactly 0.0 (log 1 == 0), which keeps
    # "certaindex == 1 iff one cluster" exact rather than up to rounding.
    entropy = -math.fsum((s / total) * math.log(s / total) for s in sizes)
    return max(0.0, entropy)


def entropy_certaindex(cluster_sizes: Sequence[int], n_samples: int) -> float:
    """The paper's normalised certaindex ``1 - H / log(n_samples)`` in [0, 1].

    Samples without an answer count as singleton clusters (``n_samples - sum(cluster_sizes)``
    of them): a missing answer is evidence of uncertainty, not a vote for the majority.
    1 means every sample gave the same answer, 0 that all samples differ.
    ``n_samples == 1`` gives 1.0 if that sample has an answer, else 0.0.
    """
    sizes = _check_sizes_and_samples(cluster_sizes, n_samples)
    n = int(n_samples)
    if n == 1:
        return 1.0 if sizes else 0.0
    full = sizes + [1] * (n - sum(sizes))
    value = 1.0 - semantic_entropy(full) / math.log(n)
    return min(1.0, max(0.0, value))


def vote_margin(cluster_sizes: Sequence[int], n_samples: int) -> float:
    """Lead of the plurality answer over the runner-up, as a fraction of all samples, in [0, 1].

    Only answered clusters compete: samples without an answer are not a rival answer, they only
    dilute the margin through ``n_samples``. 0.0 when there is no answer or a tie for first.
    """
    sizes = sorted(_check_sizes_and_samples(cluster_sizes, n_samples), reverse=True)
    if not sizes:
        return 0.0
    second = sizes[1] if len(sizes) > 1 else 0
    return (sizes[0] - second) / int(n_samples)


@dataclass(frozen=True)
class Vote:
    """Outcome of a (weighted) majority vote over parallel samples, with its certainty signals."""

    answer: str | None
    count: int
    n_samples: int
    clusters: list[list[int]]
    certaindex: float
    margin: float


def majority_vote(
    answers: Sequence[str | None],
    equal: Equal,
    weights: Sequence[float] | None = None,
) -> Vote:
    """Self-consistency vote: the representative answer of the heaviest cluster.

    A cluster's weight is the sum of its members' weights (1 each by default, so plurality);
    ties go to the earlier cluster in ``cluster_answers`` order. ``count`` is the winning
    cluster's size. ``certaindex`` and ``margin`` use unweighted sizes, so they measure how much
    the samples agree, independent of any confidence weighting. With no samples at all (a vote
    before the first round) the answer is None and both signals are 0.0.
    """
    n = len(answers)
    if weights is not None:
        if len(weights) != n:
            raise ValueError(f"weights has {len(weights)} entries but there are {n} answers")
        weight_array = _check_finite("weights", weights)
        if np.any(weight_array < 0):
            raise ValueError("weights must be non-negative")
    else:
        weight_array = np.ones(n, dtype=np.float64)
    clusters = cluster_answers(answers, equal)
    if not clusters:
        # Every sample unanswered is all-distinct (certaindex 0), and no samples is no evidence.
        return Vote(answer=None, count=0, n_samples=n, clusters=[], certaindex=0.0, margin=0.0)
    cluster_weights = [math.fsum(float(weight_array[i]) for i in cluster) for cluster in clusters]
    best = max(range(len(clusters)), key=lambda c: (cluster_weights[c], -c))
    winner = clusters[best]
    sizes = [len(c) for c in clusters]
    return Vote(
        answer=answers[winner[0]],
        count=len(winner),
        n_samples=n,
        clusters=clusters,
        certaindex=entropy_certaindex(sizes, n),
        margin=vote_margin(sizes, n),
    )


# --------------------------------------------------------------------------- 3. token level


def _logprob_array(top_logprobs: Mapping[str, float], *, allow_neg_inf: bool) -> np.ndarray:
    if len(top_logprobs) == 0:
        raise ValueError("top_logprobs must hold at least one token")
    try:
        values = np.fromiter((float(v) for v in top_logprobs.values()), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"top_logprobs values must be numbers: {exc}") from None
    if np.any(np.isnan(values)) or np.any(values == np.inf):
        raise ValueError("top_logprobs values must not be NaN or +infinity")
    if not allow_neg_inf and np.any(np.isinf(values)):
        raise ValueError("top_logprobs values must be finite for token confidence")
    if np.any(values > _LOGPROB_TOLERANCE):
        raise ValueError(f"top_logprobs values are log probabilities and must be <= 0, got {values.max()}")
    return np.minimum(values, 0.0)


def token_entropy(top_logprobs: Mapping[str, float]) -> float:
    """Entropy (nats) of one token's top-k distribution, renormalised to sum to 1.

    High entropy means the model was torn between alternatives at this token. The result lies
    in [0, log k]; a single entry gives 0. ``-inf`` logprobs are zero-probability entries.
    """
    values = _logprob_array(top_logprobs, allow_neg_inf=True)
    peak = values.max()
    if not np.isfinite(peak):
        raise ValueError("top_logprobs has no probability mass (all values are -infinity)")
    shifted = values - peak
    log_z = math.log(math.fsum(np.exp(shifted)))
    log_p = shifted[np.isfinite(shifted)] - log_z  # zero-mass entries contribute 0 * log 0 = 0
    entropy = -math.fsum(np.exp(log_p) * log_p)
    return min(max(0.0, entropy), math.log(len(values)))


def token_confidence(top_logprobs: Mapping[str, float]) -> float:
    """DeepConf token confidence: the negative mean logprob of the top-k entries (>= 0).

    A peaked distribution leaves its alternatives with very negative logprobs, so higher means
    more confident. Logprobs must be finite (a -inf alternative would make it infinite).
    """
    values = _logprob_array(top_logprobs, allow_neg_inf=False)
    return max(0.0, -math.fsum(values) / len(values))


def mean_token_entropy(top_logprobs_seq: Sequence[Mapping[str, float]]) -> float:
    """Mean ``token_entropy`` over a generated sequence: its average per-token indecision."""
    if len(top_logprobs_seq) == 0:
        raise ValueError("top_logprobs_seq must hold at least one token")
    return math.fsum(token_entropy(t) for t in top_logprobs_seq) / len(top_logprobs_seq)


def group_confidences(token_confs: Sequence[float], window: int) -> np.ndarray:
    """Sliding-window means of token confidences (DeepConf group confidence), O(n).

    A window of low confidence localises a stretch where the reasoning wobbled, which a
    whole-trace mean would average away. Returns ``max(1, n - window + 1)`` values; when the
    trace is shorter than the window, a single mean of all of it.
    """
    window = _check_int("window", window, 1)
    confs = _check_finite("token_confs", token_confs)
    n = len(confs)
    if n == 0:
        raise ValueError("token_confs must hold at least one token")
    if n < window:
        return np.array([confs.mean()])
    cumulative = np.concatenate(([0.0], np.cumsum(confs)))
    return (cumulative[window:] - cumulative[:-window]) / window


@dataclass(frozen=True)
class TraceConfidence:
    """DeepConf's trace-level confidences: whole mean, worst window, bottom share, and tail."""

    mean: float
    lowest_group: float
    bottom_fraction: float
    tail: float


def trace_confidence(
    token_confs: Sequence[float],
    window: int = 2048,
    tail_tokens: int = 2048,
    bottom_fraction: float = 0.1,
) -> TraceConfidence:
    """Summarise one trace's token confidences the ways DeepConf filters and weights traces.

    ``mean``: mean token confidence; ``lowest_group``: the lowest sliding-window mean;
    ``bottom_fraction``: mean of the lowest ``bottom_fraction`` share of window means (at least
    one window); ``tail``: mean of the last ``tail_tokens`` token confidences, where the answer is.
    """
    window = _check_int("window", window, 1)
    tail_tokens = _check_int("tail_tokens", tail_tokens, 1)
    if isinstance(bottom_fraction, bool) or not isinstance(bottom_fraction, Real):
        raise ValueError(f"bottom_fraction must be a number, got {bottom_fraction!r}")
    if not 0.0 < bottom_fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"bottom_fraction must be in (0, 1], got {bottom_fraction}")
    confs = _check_finite("token_confs", token_confs)
    if len(confs) == 0:
        raise ValueError("token_confs must hold at least one token")
    groups = group_confidences(confs, window)
    n_bottom = max(1, math.floor(bottom_fraction * len(groups) + _FRACTION_EPS))
    bottom = np.partition(groups, n_bottom - 1)[:n_bottom]
    return TraceConfidence(
        mean=float(confs.mean()),
        lowest_group=float(groups.min()),
        bottom_fraction=float(bottom.mean()),
        tail=float(confs[-tail_tokens:].mean()),
    )


# --------------------------------------------------------------------------- 4. rewards


def aggregate_rewards(
    step_rewards: Sequence[float],
    how: Literal["min", "last", "mean", "prod"] = "min",
) -> float:
    """One score for a candidate from its per-step PRM rewards.

    ``min`` (default): a solution is only as sound as its weakest step; ``last``: the PRM's view
    of the whole solution; ``mean`` and ``prod`` (independent-step correctness) for comparison.
    """
    rewards = _check_finite("step_rewards", step_rewards)
    if len(rewards) == 0:
        raise ValueError("step_rewards must hold at least one step")
    if how == "min":
        return float(rewards.min())
    if how == "last":
        return float(rewards[-1])
    if how == "mean":
        return math.fsum(rewards) / len(rewards)
    if how == "prod":
        return float(np.prod(rewards))
    raise ValueError(f"how must be one of 'min', 'last', 'mean', 'prod', got {how!r}")


def reward_certaindex(candidate_rewards: Sequence[float]) -> float:
    """Reward certaindex for search (MCTS, REBASE): mean aggregated reward of the candidates.

    When the reward model scores the parallel candidates highly, search is close to a solution.
    Rewards must lie in [0, 1]; the result is the mean, clipped to [0, 1] against rounding.
    """
    rewards = _check_finite("candidate_rewards", candidate_rewards)
    if len(rewards) == 0:
        raise ValueError("candidate_rewards must hold at least one candidate")
    if np.any(rewards < 0.0) or np.any(rewards > 1.0):
        raise ValueError("candidate_rewards must lie in [0, 1]; aggregate PRM probabilities, not logits")
    return min(1.0, max(0.0, math.fsum(rewards) / len(rewards)))
