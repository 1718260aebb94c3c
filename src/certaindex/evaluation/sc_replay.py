"""Replay of certaindex's sampling programs on recorded rollouts (several samples of one problem).

Pure logic over in-memory rollouts, no I/O. A program draws samples in rounds, as on a server:
``config.first_round`` samples, then ``config.round_size`` at a time, up to ``config.n``; after each
round the program's own decision (:func:`certaindex.programs.self_consistency.decide`, which uses the
stopping rules of :mod:`certaindex.core.stopping`) says whether the vote is settled. The samples of a
round run side by side, so a round costs the tokens of all its samples, and its latency is its
longest sample. Which recorded rollout comes next is a random order; many seeded orders per problem
give the spread a real deployment would see.

Per-sample early exit (the combined program, Dynasor's self-consistency): every sample is probed on
its recorded grid and stops once its last ``probe_k`` probes agree and none hesitates
(:class:`certaindex.core.exit_policy.Dynasor`, the live program's rule); its answer is the agreed probe answer and its cost
the tokens up to that probe plus every probe's cost. A sample that never agrees runs to its end, pays
all its probes and answers with its final answer.

Answers arrive as class representatives (:class:`certaindex.traces.rollouts.AnswerBook`), so voting
compares them with ``==`` and grading is a lookup: no grader runs in the loop.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from certaindex.core.exit_policy import Dynasor, Observation
from certaindex.programs.self_consistency import SCConfig, decide
from certaindex.traces.rollouts import AnswerBook, Problem, Rollout

__all__ = [
    "Outcome",
    "Policy",
    "ReplayProblem",
    "SampleRun",
    "Summary",
    "choose",
    "default_grid",
    "majority_policies",
    "problem_orders",
    "replay",
    "replay_order",
    "replay_streaming",
    "run_sample",
    "split_problems",
    "summarise",
]


def _same(a: str | None, b: str | None) -> bool:
    """Equivalence of class representatives: plain equality (None equals nothing)."""
    return a is not None and a == b


@dataclass(frozen=True)
class SampleRun:
    """What one sample costs and answers under one per-sample rule."""

    answer: str | None
    reasoning_tokens: int
    probe_tokens: int  # decoded by its probes
    exited_early: bool
    probes_used: int
    probe_prefill: int = 0  # suffix tokens its probes prefilled (not in ``tokens``: see Outcome)

    @property
    def tokens(self) -> int:
        return self.reasoning_tokens + self.probe_tokens


def run_sample(rollout: Rollout, book: AnswerBook, probe_k: int | None) -> SampleRun:
    """One sample of a program: the whole rollout (``probe_k`` None), or the rollout probed on its
    grid and stopped at the first probe where the last ``probe_k`` probes agree without hesitating."""
    final = book.rep(rollout.final_answer)
    if probe_k is None:
        return SampleRun(final, rollout.tokens_used, 0, False, 0, 0)
    if probe_k < 1:
        raise ValueError(f"probe_k must be at least 1, got {probe_k}")
    policy = Dynasor(probe_k, _same)
    spent = prefill = used = 0
    for probe in rollout.probes:
        used += 1
        spent += probe.decode_tokens
        prefill += probe.prefill_tokens
        decision = policy.observe(Observation(probe.position, "grid", book.rep(probe.answer), not probe.hesitant,
                                              probe.decode_tokens))
        if decision.exit:
            return SampleRun(decision.answer, probe.position, spent, True, used, prefill)
    return SampleRun(final, rollout.tokens_used, spent, False, used, prefill)


@dataclass(frozen=True)
class Policy:
    """A sampling program: its round structure and vote rule (``config``) and, for the combined
    program, the per-sample probe rule (``probe_k``)."""

    name: str  # the family: majority, sc-early, sc-anytime, combined
    label: str  # the setting, for tables
    config: SCConfig
    probe_k: int | None = None
    streaming: bool = False  # keep first_round samples in flight and decide at every finish (see replay_streaming)


def majority_policies(n: int) -> list[Policy]:
    """Majority of k for k = 1..n: k samples in one round, no early stop."""
    return [
        Policy("majority", f"majority of {k}", SCConfig(n=k, first_round=k, round_size=k, rule="fixed", min_samples=1))
        for k in range(1, n + 1)
    ]


@dataclass(frozen=True)
class Outcome:
    answer: str | None
    tokens: int  # all generated tokens of all samples drawn: reasoning and probe decoding
    probe_tokens: int  # the probes' share of ``tokens``
    latency_tokens: int  # sum over rounds of the round's longest sample: the program's wall time in tokens
    samples: int
    rounds: int
    probe_prefill: int = 0  # prompt tokens the probes prefilled on top (suffixes; prefix cached)


class _Decisions:
    """``decide`` memoised on (answers in order, config): the same prefixes recur across orders."""

    def __init__(self) -> None:
        self._cache: dict[tuple, str | None | bool] = {}

    def __call__(self, answers: tuple[str | None, ...], config: SCConfig) -> tuple[bool, str | None]:
        key = (answers, config)
        hit = self._cache.get(key)
        if hit is None:
            vote, reason = decide(list(answers), config, equal=_same)
            hit = (reason is not None, vote.answer)
            self._cache[key] = hit
        return hit  # type: ignore[return-value]


def replay_order(
    samples: Sequence[SampleRun], order: Sequence[int], config: SCConfig, decisions: _Decisions | None = None
) -> Outcome:
    """One program on one order of the samples: rounds until ``decide`` stops or ``config.n`` are drawn."""
    if config.n > len(order):
        raise ValueError(f"the program draws up to {config.n} samples but the order has {len(order)}")
    decisions = decisions or _Decisions()
    answers: list[str | None] = []
    tokens = probe = prefill = latency = rounds = 0
    answer: str | None = None
    while len(answers) < config.n:
        size = config.first_round if not answers else config.round_size
        size = min(size, config.n - len(answers))
        drawn = [samples[i] for i in order[len(answers) : len(answers) + size]]
        answers.extend(s.answer for s in drawn)
        tokens += sum(s.tokens for s in drawn)
        probe += sum(s.probe_tokens for s in drawn)
        prefill += sum(s.probe_prefill for s in drawn)
        latency += max(s.tokens for s in drawn)
        rounds += 1
        stop, answer = decisions(tuple(answers), config)
        if stop:
            break
    return Outcome(answer, tokens, probe, latency, len(answers), rounds, prefill)


def replay_streaming(
    samples: Sequence[SampleRun], order: Sequence[int], config: SCConfig, decisions: _Decisions | None = None
) -> Outcome:
    """One program as a server would run it without round barriers: ``config.first_round`` samples
    in flight, the vote decided each time one finishes, a new one started in its place while the
    budget ``config.n`` lasts, and the rest cancelled the moment the vote is settled.

    Time is counted in a sample's own tokens (reasoning and probes alike, all samples decoding side by
    side at one token a step). A cancelled sample costs what it had generated by then: ``elapsed``
    tokens, its probe tokens in proportion. ``rounds`` counts decisions."""
    if config.n > len(order):
        raise ValueError(f"the program draws up to {config.n} samples but the order has {len(order)}")
    decisions = decisions or _Decisions()
    width = min(config.first_round, config.n)
    flight: list[tuple[int, int, int]] = []  # (finish time, launch number, start time)
    launched = 0

    def launch(now: int) -> None:
        nonlocal launched
        flight.append((now + samples[order[launched]].tokens, launched, now))
        launched += 1

    for _ in range(width):
        launch(0)
    answers: list[str | None] = []
    tokens = probe = prefill = decided = 0
    answer: str | None = None
    now = 0
    while flight:
        flight.sort()
        now, number, _start = flight.pop(0)
        sample = samples[order[number]]
        answers.append(sample.answer)
        tokens += sample.tokens
        probe += sample.probe_tokens
        prefill += sample.probe_prefill
        decided += 1
        stop, answer = decisions(tuple(answers), config)
        if stop:
            for _end, other, start in flight:
                s = samples[order[other]]
                done = min(s.tokens, now - start)
                tokens += done
                probe += round(s.probe_tokens * done / s.tokens) if s.tokens else 0
                prefill += round(s.probe_prefill * done / s.tokens) if s.tokens else 0
            break
        if launched < config.n:
            launch(now)
    return Outcome(answer, tokens, probe, now, launched, decided, prefill)


@dataclass(frozen=True)
class ReplayProblem:
    """A problem ready to replay: its rollouts and the classes of its answers."""

    problem: Problem
    book: AnswerBook

    @property
    def key(self) -> tuple[str, int]:
        return self.problem.key


def problem_orders(key: tuple[str, int], n: int, count: int, seed: int) -> np.ndarray:
    """``count`` random orders of ``n`` rollouts, fixed by (seed, problem): (count, n) ints.
    Each problem has its own stream, so adding a problem or a policy changes no other order."""
    rng = np.random.default_rng([seed, zlib.crc32(key[0].encode()), key[1]])
    return np.array([rng.permutation(n) for _ in range(count)], dtype=np.int64).reshape(count, n)


@dataclass
class PolicyRuns:
    """One policy on every (problem, order): arrays of shape (problems, orders)."""

    policy: Policy
    keys: list[tuple[str, int]]
    correct: np.ndarray
    tokens: np.ndarray
    probe_tokens: np.ndarray
    latency: np.ndarray
    samples: np.ndarray
    probe_prefill: np.ndarray


def replay(problems: Sequence[ReplayProblem], policies: Sequence[Policy], orders: int = 200, seed: int = 0) -> list[PolicyRuns]:
    """Every policy on every problem under the same ``orders`` seeded orders (paired comparisons)."""
    if orders < 1:
        raise ValueError(f"orders must be at least 1, got {orders}")
    if not problems:
        raise ValueError("no problems to replay")
    shape = (len(problems), orders)
    runs = [
        PolicyRuns(p, [q.key for q in problems], np.zeros(shape, bool), *(np.zeros(shape, np.int64) for _ in range(5)))
        for p in policies
    ]
    decisions = _Decisions()
    for i, rp in enumerate(problems):
        rollouts = rp.problem.rollouts
        table = problem_orders(rp.key, len(rollouts), orders, seed)
        per_k: dict[int | None, list[SampleRun]] = {}
        for run in runs:
            k = run.policy.probe_k
            if k not in per_k:
                per_k[k] = [run_sample(r, rp.book, k) for r in rollouts]
            samples = per_k[k]
            for j in range(orders):
                program = replay_streaming if run.policy.streaming else replay_order
                out = program(samples, table[j], run.policy.config, decisions)
                run.correct[i, j] = rp.book.correct(out.answer)
                run.tokens[i, j] = out.tokens
                run.probe_tokens[i, j] = out.probe_tokens
                run.latency[i, j] = out.latency_tokens
                run.samples[i, j] = out.samples
                run.probe_prefill[i, j] = out.probe_prefill
    return runs


def split_problems(keys: Iterable[tuple[str, int]], seed: int = 0) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
    """A seeded half split of the problems within each dataset: (choose, report). Settings are
    picked on the first half and reported on the second, so the report is not in-sample."""
    by_dataset: dict[str, list[tuple[str, int]]] = {}
    for key in sorted(set(keys)):
        by_dataset.setdefault(key[0], []).append(key)
    choose: set[tuple[str, int]] = set()
    report: set[tuple[str, int]] = set()
    for dataset, members in sorted(by_dataset.items()):
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
        shuffled = [members[i] for i in rng.permutation(len(members))]
        half = len(shuffled) // 2
        choose.update(shuffled[:half])
        report.update(shuffled[half:])
    return choose, report


@dataclass(frozen=True)
class Summary:
    """A policy on a set of problems: per order, accuracy and mean tokens per problem; then the mean
    and the 5th-95th percentile across orders."""

    policy: Policy
    problems: int
    accuracy: float
    accuracy_p5: float
    accuracy_p95: float
    tokens: float
    tokens_p5: float
    tokens_p95: float
    probe_tokens: float
    probe_prefill: float
    latency: float
    samples: float
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        c = self.policy.config
        return {
            "family": self.policy.name,
            "label": self.policy.label,
            "probe_k": self.policy.probe_k,
            "rule": c.rule, "threshold": c.threshold, "alpha": c.alpha,
            "n": c.n, "first_round": c.first_round, "round_size": c.round_size,
            "problems": self.problems,
            "accuracy": self.accuracy, "accuracy_p5": self.accuracy_p5, "accuracy_p95": self.accuracy_p95,
            "tokens": self.tokens, "tokens_p5": self.tokens_p5, "tokens_p95": self.tokens_p95,
            "probe_tokens": self.probe_tokens, "probe_prefill": self.probe_prefill, "latency_tokens": self.latency, "samples": self.samples,
            **self.extra,
        }


def summarise(run: PolicyRuns, keys: set[tuple[str, int]]) -> Summary:
    """The policy on the problems in ``keys`` (rows of the run)."""
    rows = [i for i, key in enumerate(run.keys) if key in keys]
    if not rows:
        raise ValueError("no problems selected")
    acc = run.correct[rows].mean(axis=0)
    tok = run.tokens[rows].mean(axis=0)
    return Summary(
        policy=run.policy,
        problems=len(rows),
        accuracy=float(acc.mean()),
        accuracy_p5=float(np.percentile(acc, 5)),
        accuracy_p95=float(np.percentile(acc, 95)),
        tokens=float(tok.mean()),
        tokens_p5=float(np.percentile(tok, 5)),
        tokens_p95=float(np.percentile(tok, 95)),
        probe_tokens=float(run.probe_tokens[rows].mean()),
        probe_prefill=float(run.probe_prefill[rows].mean()),
        latency=float(run.latency[rows].mean()),
        samples=float(run.samples[rows].mean()),
    )


# ------------------------------------------------------------------------------ grid and choice

ROUNDS = ((2, 1), (2, 2), (3, 1), (4, 2))  # (first round, later rounds)


def default_grid(n: int = 8) -> list[Policy]:
    """The settings tried: majority of k, sc-early, sc-anytime and the combined program in rounds,
    and the two early-stopping programs streamed (no round barrier, see :func:`replay_streaming`)."""
    grid = majority_policies(n)
    for first, later in ROUNDS:
        rounds = f"{first}+{later}"
        for t in (0.4, 0.5, 0.6, 0.7, 0.8, 1.0):
            for least in (2, 3):
                config = SCConfig(n=n, first_round=first, round_size=later, rule="entropy", threshold=t, min_samples=least)
                grid.append(Policy("sc-early", f"t={t} rounds {rounds} min {least}", config))
        for alpha in (0.05, 0.1, 0.2, 0.5):
            config = SCConfig(n=n, first_round=first, round_size=later, rule="anytime", alpha=alpha)
            grid.append(Policy("sc-anytime", f"alpha={alpha} rounds {rounds}", config))
        for k in (4, 8, 16, 24, 32):
            for t in (0.5, 0.6, 0.7, 1.0):
                config = SCConfig(n=n, first_round=first, round_size=later, rule="entropy", threshold=t)
                grid.append(Policy("combined", f"k={k} t={t} rounds {rounds}", config, probe_k=k))
    for width in (2, 3):
        for t in (0.5, 0.7, 1.0):
            config = SCConfig(n=n, first_round=width, round_size=1, rule="entropy", threshold=t)
            grid.append(Policy("sc-early stream", f"t={t} width {width}", config, streaming=True))
            for k in (8, 16, 24):
                grid.append(Policy("combined stream", f"k={k} t={t} width {width}", config, probe_k=k, streaming=True))
    return grid


def choose(candidates: Sequence[Summary], baseline: Summary, tolerance: float = 0.0) -> Summary:
    """The cheapest candidate (mean tokens) whose mean accuracy is at least ``baseline``'s less
    ``tolerance``; when none is, the most accurate one, ties to the cheaper."""
    if not candidates:
        raise ValueError("no candidates to choose from")
    good = [c for c in candidates if c.accuracy >= baseline.accuracy - tolerance - 1e-12]
    if good:
        return min(good, key=lambda c: (c.tokens, -c.accuracy))
    return max(candidates, key=lambda c: (c.accuracy, -c.tokens))
