"""Calibrating Dynasor's rule and the certainty score on a user's own traces (shadow traffic, or
``certaindex record``): pure functions, no I/O. The score part (:func:`calibrate_score`) turns the
traces into trajectories (:func:`as_trajectories`) and uses :mod:`certaindex.evaluation.score_policy`.

Each trace holds the probe at every g tokens of a full-reasoning run, so the rule "stop when the
last k probes, taken every m*g tokens, agree and none hesitates" is replayed exactly by reading
them: the same probes, decisions and token counts as :func:`certaindex.programs.cot.solve_cot`
on the recorded engine (``tests/test_self_calibration.py`` checks it against the replay engine).

What counts as harmful depends on the reference:

* ``full`` (traffic without gold answers): the early answer differs from the model's own
  full-reasoning answer. With no gold answer this is the conservative label: an exit that changes
  the answer counts as harmful even where full reasoning was wrong.
* ``gold``: the early answer is wrong where full reasoning was right (as ``certaindex evaluate``).

Settings are certified by Learn-then-Test in a fixed order fixed before the data is seen
(:func:`certaindex.evaluation.evaluate.probe_grid`), and :func:`traces_to_certify` says how many
traces a setting needs before its observed harmful rate would pass.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Literal, Optional, Sequence

from certaindex.core.answers import answers_equal
from certaindex.core.calibration import LTTResult, binomial_cdf, ltt_fixed_sequence
from certaindex.core.exit_policy import Dynasor, Observation
from certaindex.traces.format import TraceRecord
from certaindex.traces.governor import Probe, Trajectory

__all__ = [
    "Candidate",
    "ScoreCandidate",
    "as_trajectories",
    "calibrate_score",
    "score_schedule",
    "refit_schedules",
    "Reference",
    "SelfCalibration",
    "calibrate_dynasor",
    "harmful",
    "replay_dynasor",
    "traces_to_certify",
]

Reference = Literal["full", "gold"]
Equal = Callable[[str | None, str | None], bool]
KeyFn = Callable[[Optional[str]], Optional[Hashable]]


def same_answer(a: str | None, b: str | None) -> bool:
    """Two answers agree: both missing, or both present and equal by the project's equivalence."""
    if a is None or b is None:
        return a is None and b is None
    return answers_equal(a, b)


@dataclass(frozen=True)
class Replayed:
    answer: str | None
    tokens: int  # everything generated: reasoning, probes, the answer
    exited: bool  # stopped early by the rule


def replay_dynasor(record: TraceRecord, interval: int, k: int, budget: int, equal: Equal = same_answer) -> Replayed:
    """Dynasor's rule with probes every ``interval`` tokens (a multiple of the trace's g) on one
    trace recorded with reasoning budget ``budget``: the probes it would take are the recorded ones
    at multiples of ``interval`` below the budget that the reasoning went on from. The decision is
    the live program's (:class:`~certaindex.core.exit_policy.Dynasor`)."""
    probes = {c.probe.at_tokens: c.probe for c in record.chunks if c.probe is not None}
    total = record.reasoning_tokens
    policy = Dynasor(k, equal)
    spent = 0
    for at in range(interval, min(total, budget - 1) + 1, interval):
        probe = probes.get(at)
        if probe is None:
            break  # the reasoning ended here, by itself, with no probe after it
        spent += probe.tokens
        decision = policy.observe(Observation(at, "grid", probe.answer, not probe.hesitant, probe.tokens))
        if decision.exit:
            return Replayed(decision.answer, at + spent, True)
    # Full reasoning from here: the model's answer, or the probe that forces one at the budget.
    return Replayed(record.final.answer, total + spent + record.final.tokens, False)


def harmful(record: TraceRecord, answer: str | None, reference: Reference, equal: Equal = same_answer) -> bool:
    """Whether exiting with ``answer`` harms this trace, against ``reference``."""
    if reference == "full":
        return not equal(answer, record.final.answer)
    full_right = record.final.answer is not None and equal(record.final.answer, record.gold)
    return full_right and not (answer is not None and equal(answer, record.gold))


@dataclass(frozen=True)
class Candidate:
    interval: int
    k: int
    n: int
    harmful: int
    exits: int
    mean_tokens: float
    full_mean_tokens: float

    @property
    def saved(self) -> float:
        return 1.0 - self.mean_tokens / self.full_mean_tokens if self.full_mean_tokens else 0.0

    @property
    def label(self) -> str:
        return f"dynasor k={self.k}, interval {self.interval}"


@dataclass(frozen=True)
class SelfCalibration:
    candidates: tuple[Candidate, ...]  # in LTT's testing order, conservative first
    ltt: LTTResult
    chosen: Candidate | None  # the cheapest certified setting; None: none certified
    reference: Reference
    # The useful setting (saves tokens) that needs the fewest traces to be certified (of those, the
    # one saving most), and how many in all, if its harmful rate (and every earlier setting's)
    # held; None when none could be.
    next_target: Candidate | None = None
    next_target_n: int | None = None

    @property
    def n(self) -> int:
        return self.ltt.n

    @property
    def more_needed(self) -> int | None:
        return None if self.next_target_n is None else max(0, self.next_target_n - self.n)


def traces_to_certify(harmful_count: int, n: int, alpha: float, delta: float, cap: int = 1_000_000) -> int | None:
    """The fewest traces N (>= ``n``) at which a setting whose harmful rate stays
    ``harmful_count / n`` passes the binomial test ``P(Binomial(N, alpha) <= rate*N) <= delta``;
    None if the rate is not below alpha or N would exceed ``cap``."""
    rate = harmful_count / n if n else 0.0
    if rate >= alpha:
        return None

    def passes(m: int) -> bool:
        return binomial_cdf(math.floor(rate * m + 1e-9), m, alpha) <= delta

    lo = max(1, n)
    if passes(lo):
        return lo
    hi = lo
    while not passes(hi):
        if hi >= cap:
            return None
        lo, hi = hi, min(cap, hi * 2)
    while hi - lo > 1:  # nearly monotone in m: the floor makes it step; "about N" is what is asked
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def calibrate_dynasor(
    records: Sequence[TraceRecord],
    budgets: Sequence[int],
    grid: Sequence[tuple[int, int]],
    reference: Reference,
    alpha: float,
    delta: float,
    equal: Equal = same_answer,
) -> SelfCalibration:
    """Replay every (interval, k) of ``grid`` (ordered conservative first) on ``records``
    (``budgets[i]``: the reasoning budget record i was recorded with), certify by Learn-then-Test
    and pick the cheapest certified setting."""
    if not records:
        raise ValueError("no traces to calibrate on")
    n = len(records)
    full_tokens = [r.full_tokens for r in records]
    full_mean = math.fsum(full_tokens) / n
    candidates = []
    for interval, k in grid:
        runs = [replay_dynasor(r, interval, k, b, equal) for r, b in zip(records, budgets)]
        candidates.append(Candidate(
            interval=interval, k=k, n=n,
            harmful=sum(1 for r, run in zip(records, runs) if run.exited and harmful(r, run.answer, reference, equal)),
            exits=sum(run.exited for run in runs),
            mean_tokens=math.fsum(run.tokens for run in runs) / n,
            full_mean_tokens=full_mean,
        ))
    ltt = ltt_fixed_sequence([c.harmful for c in candidates], n, alpha, delta)
    chosen = min((candidates[j] for j in ltt.certified), key=lambda c: c.mean_tokens, default=None)
    # Fixed-sequence testing: a setting passes only after every one before it has.
    target, target_n, prefix = None, None, 0
    for c in candidates:
        need = traces_to_certify(c.harmful, n, alpha, delta)
        if need is None:
            break
        prefix = max(prefix, need)
        if c.saved > 0 and (chosen is None or c.mean_tokens < chosen.mean_tokens) and prefix > n:
            if target is None or target_n is None or prefix < target_n or (prefix == target_n and c.saved > target.saved):
                target, target_n = c, prefix
    return SelfCalibration(tuple(candidates), ltt, chosen, reference, target, target_n)


# ------------------------------------------------------------------------------ the certainty score


def as_trajectories(records: Sequence[TraceRecord], model: str, dataset: str, budgets: Sequence[int],
                    reference: Reference) -> list[Trajectory]:
    """Recorded traces as trajectories the score can be fitted on: the reasoning text, a probe at
    every recorded boundary below the budget the reasoning went on from, and as ``target`` what an
    exit is judged against (the model's own final answer for ``full``, the gold answer for ``gold``).
    Traces carry no DEER trials, so ``trials`` is None. ``problem_id`` is a hash of the trace id,
    which splits fit / calibration problems as for the Governor traces."""
    out = []
    for r, budget in zip(records, budgets):
        end = min(r.reasoning_tokens, budget)
        probes = [Probe(p.at_tokens, p.answer, not p.hesitant, p.tokens) for p in r.probes() if p.at_tokens < end]
        target = r.gold if reference == "gold" else (r.final.answer or "")
        out.append(Trajectory(
            model=model, model_name=model, dataset=dataset, seed=r.seed or 0,
            problem_id=zlib.crc32(f"{r.id}/{r.sample}".encode()), split="all", target=target,
            tokens_used=r.full_tokens, full_text=r.reasoning, final_answer=r.final.answer,
            final_correct=bool(r.correct), finish_reason=r.finish_reason, probes=probes, problem=r.question))
    return out


@dataclass(frozen=True)
class ScoreCandidate:
    """One way to get a certified score: the starting profile's score re-certified, or refitted."""

    name: str  # "start" | "refit"
    calibration: Any  # score_policy.Calibration
    note: str = ""

    @property
    def certified(self) -> bool:
        return self.calibration is not None and self.calibration.threshold is not None

    @property
    def saved(self) -> float:
        return self.calibration.cal_saved if self.calibration is not None else 0.0


def score_schedule(start_schedule: str, granularity: int, has_trials: bool) -> str | None:
    """The starting profile's schedule as the traces can replay it: its probe grid where that is a
    multiple of the recorded one (else the recorded grid), trials only where the traces have them;
    None when the recorded grid is not a multiple of 64 tokens (the score's features assume it)."""
    if granularity % 64:
        return None
    parts = []
    for p in start_schedule.split("+"):
        if p.startswith("g"):
            n = int(p[1:])
            p = f"g{n if n % granularity == 0 else granularity}"
        if p == "tr" and not has_trials:
            continue
        if p == "ev":
            continue  # event probes are not recorded in traces
        parts.append(p)
    if not any(p.startswith("g") for p in parts):
        parts.append(f"g{granularity}")
    return "+".join(parts)


def refit_schedules(schedule: str, has_trials: bool) -> list[str]:
    """The schedules the score is refitted on: the starting profile's replayable ``schedule``, and
    with DEER trials also ``bx+tc+tr`` (trials, boxes and one probe after ``</think>``, no grid:
    on R1-7B train problems out of fold it saves about 2.5 points more than the grid at equal
    accuracy)."""
    extra = ["bx+tc+tr"] if has_trials and schedule != "bx+tc+tr" else []
    return [schedule] + extra


def calibrate_score(trajs: Sequence[Trajectory], schedule: str, start_model: Any, key: KeyFn,
                    correct: Callable[[Trajectory, str | None], bool], alpha: float, delta: float,
                    refit: Sequence[str] | None = None, strength: float | None = None,
                    fit_mod: int = 3) -> list[ScoreCandidate]:
    """The score candidates on ``trajs``: the starting profile's fitted score with its threshold
    re-certified on every trace (observing ``schedule``), and for each schedule of ``refit``
    (default: ``schedule`` alone) a score refitted on a third toward the start's weights
    (:func:`certaindex.evaluation.score_refit.calibrate_toward`, pull ``strength``, default its
    ``PRIOR_STRENGTH``; on 1 / ``fit_mod`` of the problems) and certified on the rest; a refit is left out, with why, when the traces
    cannot be split into a fit and a calibration part. Each candidate is certified at ``delta``:
    the caller splits its delta among them."""
    from certaindex.evaluation.score_policy import certify_model
    from certaindex.evaluation.score_refit import PRIOR_STRENGTH, calibrate_toward

    out = [ScoreCandidate("start", certify_model(trajs, schedule, start_model, key, correct, alpha, delta))]
    for sched in refit or [schedule]:
        try:
            cal = calibrate_toward(trajs, sched, start_model, key, correct, alpha, delta,
                                   PRIOR_STRENGTH if strength is None else strength, fit_mod)
            out.append(ScoreCandidate("refit", cal))
        except ValueError as exc:
            out.append(ScoreCandidate("refit", None, str(exc)))
    return out
