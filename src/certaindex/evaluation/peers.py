"""Early-exit policies and bounds replayed on one recorded trajectory (pure functions, no I/O).

Every function returns an :class:`Outcome`: where the policy exits, what it submits and what it
spent. Cost: reasoning tokens up to the exit plus every probe / trial output token spent so far,
including the one that decided the exit. A policy that never fires runs to the end: it spends
``tokens_used`` plus all its probes, and submits the model's final answer. Full reasoning spends
``tokens_used``.

Answers are handled by two injected functions, so the rules stay pure and testable:

* ``key(answer)``: the agreement key (two probes agree when their keys are equal and not None);
  the evaluation passes the project's ``canonical_answer`` through the grade cache;
* ``correct(answer)``: whether an answer equals the trajectory's target (to score outcomes, and
  for the oracle, which knows the target).

Peers: Dynasor's rule (the last ``k`` probes agree and none hesitates) on the probe grid
subsampled to a multiple of 64 tokens, the same rule on the event probes, DEER (exit at the first
"Wait" trial whose confidence reaches a threshold, submit its answer) and the oracle bound. The
rules decide through the exit policy objects of :mod:`certaindex.core.exit_policy`, the ones the
live program calls; :func:`dynasor_all_k` sweeps every ``k`` in one pass (``tests/test_exit_policy.py``
checks it against the object).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence

from certaindex.core.exit_policy import Decision, Deer, Dynasor, key_equal, replay
from certaindex.core.exit_score import Obs
from certaindex.traces.governor import Probe, Trajectory

__all__ = [
    "CorrectFn",
    "KeyFn",
    "Outcome",
    "agreement_runs",
    "deer",
    "dynasor",
    "dynasor_all_k",
    "event_probes",
    "full_reasoning",
    "grid",
    "observations",
    "oracle",
    "replayed_outcome",
]

KeyFn = Callable[[Optional[str]], Optional[Hashable]]
CorrectFn = Callable[[Optional[str]], bool]


@dataclass(frozen=True, slots=True)
class Outcome:
    exit_pos: int | None  # reasoning tokens at the exit; None: ran to the end
    answer: str | None
    correct: bool
    tokens: int  # reasoning + probe / trial output tokens
    overhead: int  # the probe / trial output tokens alone


def full_reasoning(traj: Trajectory, correct: CorrectFn) -> Outcome:
    return Outcome(None, traj.final_answer, correct(traj.final_answer), traj.tokens_used, 0)


def _to_end(traj: Trajectory, spent: int, correct: CorrectFn) -> Outcome:
    return Outcome(None, traj.final_answer, correct(traj.final_answer), traj.tokens_used + spent, spent)


def grid(traj: Trajectory, interval: int = 64) -> list[Probe]:
    """The probes a policy probing every ``interval`` tokens sees: grid positions that are
    multiples of ``interval``, below the end of the reasoning."""
    if interval < 1:
        raise ValueError(f"interval must be at least 1, got {interval}")
    return [p for p in traj.probes if p.pos % interval == 0 and p.pos < traj.tokens_used]


def agreement_runs(probes: Sequence[Probe], key: KeyFn) -> list[int]:
    """Length of the run of agreeing, unhesitating probes ending at each probe."""
    runs: list[int] = []
    prev: Hashable | None = None
    run = 0
    for p in probes:
        k = key(p.answer) if p.certain else None
        run = run + 1 if (k is not None and k == prev and run > 0) else (1 if k is not None else 0)
        prev = k
        runs.append(run)
    return runs


def observations(probes: Sequence[Probe], src: str = "grid") -> list[Obs]:
    """Recorded probes as the observations a live program makes (``src``: ``grid`` or ``event``)."""
    return [Obs(p.pos, src, p.answer, p.certain, p.out_tokens) for p in probes]


def replayed_outcome(traj: Trajectory, decision_spent: tuple[Decision, int], correct: CorrectFn) -> Outcome:
    """The outcome of :func:`~certaindex.core.exit_policy.replay`'s (decision, tokens spent) on ``traj``."""
    decision, spent = decision_spent
    if not decision.exit:
        return _to_end(traj, spent, correct)
    assert decision.at is not None
    return Outcome(decision.at.pos, decision.answer, correct(decision.answer), decision.at.pos + spent, spent)


def dynasor(traj: Trajectory, k: int, key: KeyFn, correct: CorrectFn, interval: int = 64,
            probes: Sequence[Probe] | None = None, src: str = "grid") -> Outcome:
    """Dynasor's rule (:class:`~certaindex.core.exit_policy.Dynasor`): exit at the first probe where
    the last ``k`` probes agree and none hesitates; submit that probe's answer."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ps = list(probes) if probes is not None else grid(traj, interval)
    return replayed_outcome(traj, replay(Dynasor(k, key_equal(key)), observations(ps, src)), correct)


def dynasor_all_k(traj: Trajectory, ks: Sequence[int], key: KeyFn, correct: CorrectFn, interval: int = 64,
                  probes: Sequence[Probe] | None = None) -> list[Outcome]:
    """:func:`dynasor` for every ``k`` in ``ks`` at once (one pass over the probes)."""
    if any(k < 1 for k in ks):
        raise ValueError(f"k must be at least 1, got {min(ks)}")
    ps = list(probes) if probes is not None else grid(traj, interval)
    runs = agreement_runs(ps, key)
    first: dict[int, int] = {}  # k -> first index whose run reaches k
    best = 0
    for i, r in enumerate(runs):
        while best < r:
            best += 1
            first[best] = i
    total = sum(p.out_tokens for p in ps)
    out = []
    for k in ks:
        i = first.get(k)
        if i is None:
            out.append(_to_end(traj, total, correct))
            continue
        spent = sum(p.out_tokens for p in ps[: i + 1])
        p = ps[i]
        out.append(Outcome(p.pos, p.answer, correct(p.answer), p.pos + spent, spent))
    return out


def event_probes(traj: Trajectory, k: int, key: KeyFn, correct: CorrectFn) -> Outcome:
    """Dynasor's rule on the event probes only (conclusion markers, "Wait", entropy drops, ...)."""
    return dynasor(traj, k, key, correct, probes=[p for p in traj.events if p.pos < traj.tokens_used], src="event")


def deer(traj: Trajectory, threshold: float, correct: CorrectFn) -> Outcome:
    """DEER: exit at the first "Wait" trial whose confidence is at least ``threshold`` and that has an
    answer; submit the trial's answer. Every trial up to it costs its output tokens."""
    if traj.trials is None:
        raise ValueError(f"{traj.model} {traj.dataset} problem {traj.problem_id} has no DEER trials")
    trials = []
    for t in traj.trials:
        if t.pos >= traj.tokens_used:
            break
        trials.append(Obs(t.pos, "trial", t.answer, True, t.out_tokens, t.confidence, t.min_prob))
    return replayed_outcome(traj, replay(Deer(threshold), trials), correct)


def oracle(traj: Trajectory, correct: CorrectFn, interval: int = 64) -> Outcome:
    """The bound for rules reading the probe grid: exit at the earliest probe after which every probe
    (it included) equals the correct final answer. Where the final answer is wrong, or no such
    probe exists, it runs to the end. Probe tokens up to the exit count, as for every policy."""
    ps = grid(traj, interval)
    if not ps or not correct(traj.final_answer):
        return _to_end(traj, sum(p.out_tokens for p in ps), correct)
    j = len(ps)
    while j > 0 and correct(ps[j - 1].answer):
        j -= 1
    if j == len(ps):
        return _to_end(traj, sum(p.out_tokens for p in ps), correct)
    spent = sum(p.out_tokens for p in ps[: j + 1])
    p = ps[j]
    return Outcome(p.pos, p.answer, True, p.pos + spent, spent)
