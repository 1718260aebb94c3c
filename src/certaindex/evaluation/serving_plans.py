"""Serving plans of recorded Governor trajectories: what one program sends to the engine under a policy.

The simulator (``certaindex simulate --traces <Governor folder>``) serves real reasoning programs
without re-running them: each trajectory's outcome under a policy is computed first by the pure
policy functions (:mod:`certaindex.evaluation.peers` through
:func:`certaindex.evaluation.governor.run_policy`, deciding with the exit policy objects of
:mod:`certaindex.core.exit_policy`), then turned into the request sequence the
proxy would send upstream:

* full reasoning: one request generating the whole trajectory (``tokens_used`` tokens);
* an early-exit policy probing every ``interval`` tokens: a reasoning chunk up to each probe
  position, then the probe (prompt = question + reasoning so far + probe suffix, generating the
  probe's recorded output tokens), until the probe where the policy exits; a policy that never
  fires reasons to the end (the last chunk stops at ``tokens_used``) and submits the model's answer.

That sequence is the chunked timing (the reasoning pausing for each probe). The simulator's default,
one-stream timing (issue 11) reads the same plan as one main stream of the whole trajectory
(``stream_tokens``) with each probe forked at its position, closed at ``exit_pos`` once the deciding
probe returns: the tokens it streams meanwhile (the overrun) are added to the plan's by the simulator.

Each request is ``(is_probe, prompt_tokens, max_tokens, tokens[, certaindex])``, the request-log
format of :func:`certaindex.serving.simulator.simulate_logged`; a probe carries the certaindex the
program reports after it (Dynasor's: the trailing run of agreeing, unhesitating probes over k,
capped at 1), which the ``*-sched`` scheduler core hears. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from certaindex.core.exit_policy import Dynasor, ScoreRule, key_equal, replay
from certaindex.evaluation.governor import GRID, PolicySpec, default_profile, run_policy
from certaindex.evaluation.grading import GradeCache
from certaindex.evaluation.peers import Outcome, grid, observations as probe_observations
from certaindex.evaluation.profiles import Profile, profile_for_model
from certaindex.traces.governor import Probe, Trajectory

__all__ = [
    "COLLECTION_BUDGETS",
    "DEFAULT_BUDGET",
    "PLAN_FAMILIES",
    "ProgramPlan",
    "collection_budget",
    "plan_for",
    "plan_requests",
    "probe_schedule",
]

#: Generation budgets the traces were collected with (``../shared/traces/governor/README.md``):
#: 16,384 tokens, 32,768 for aime24. A program's scheduler budget (what it may still spend).
DEFAULT_BUDGET = 16_384
COLLECTION_BUDGETS = {"aime24": 32_768}
#: Policy families a plan can be built for (the ones that read the probe grid).
PLAN_FAMILIES = ("full", "default", "profile", "dynasor", "oracle")

Request = tuple  # (is_probe, prompt_tokens, max_tokens, tokens[, certaindex])


def collection_budget(dataset: str) -> int:
    return COLLECTION_BUDGETS.get(dataset, DEFAULT_BUDGET)


@dataclass(frozen=True)
class ProgramPlan:
    """One trajectory served under one policy: its requests in order and its outcome."""

    trajectory: str  # model/dataset/seed/problem
    model: str
    dataset: str
    requests: tuple[Request, ...]
    tokens: int  # every generated token: reasoning chunks and probe outputs
    correct: bool
    answer: str | None
    exit_pos: int | None  # reasoning tokens at the exit; None: reasoned to the end
    budget: int
    stream_tokens: int = 0  # the trajectory's reasoning: where one main stream ends if never closed

    @property
    def probes(self) -> int:
        return sum(1 for r in self.requests if r[0])


def probe_schedule(spec: PolicySpec, traj: Trajectory,
                   profile_for: Callable[[str], Profile] = profile_for_model) -> tuple[list[Probe], int | None]:
    """The probes a policy takes on ``traj`` (before it exits) and its k (None: no certaindex rule)."""
    if spec.family == "full":
        return [], None
    if spec.family == "dynasor":
        return grid(traj, spec.interval), spec.k
    if spec.family == "oracle":
        return grid(traj, GRID), None
    if spec.family in ("default", "profile"):
        profile = spec.profile if spec.family == "profile" else default_profile(traj, profile_for)
        assert profile is not None
        if profile.kind != "dynasor":
            raise ValueError(f"profile {profile.name}: rule kind {profile.kind!r} has no probe grid "
                             "(plan_for serves it with score_plan_requests)")
        return grid(traj, profile.probe_interval), int(profile.rule["k"])
    raise ValueError(f"policy {spec.label!r} cannot be served from the probe grid; "
                     f"use one of {', '.join(PLAN_FAMILIES)} (dynasor:k=N[,interval=M] or a profile file)")


def _certaindex(probes: Sequence[Probe], k: int | None, exit_pos: int | None,
                key: Callable[[str | None], Hashable | None]) -> list[float]:
    """Dynasor's certaindex after each probe, as the policy object reports it: trailing run of
    agreeing, unhesitating probes / k (capped at 1). Without a rule (the oracle) 0 until the exit
    probe, 1 there."""
    if k is None:
        return [1.0 if p.pos == exit_pos else 0.0 for p in probes]
    policy = Dynasor(k, key_equal(key))
    return [policy.observe(o).certaindex for o in probe_observations(probes)]


def plan_requests(traj: Trajectory, outcome: Outcome, probes: Sequence[Probe], certaindex: Sequence[float], *,
                  prompt_tokens: int, suffix_tokens: int, probe_max_tokens: int = 32) -> tuple[Request, ...]:
    """The requests of one program: reasoning chunks between probes, each probe after its chunk, up to
    the exit (or to the end of the trajectory when the policy never fires)."""
    if prompt_tokens < 0 or suffix_tokens < 0:
        raise ValueError("prompt_tokens and suffix_tokens must be >= 0")
    end = outcome.exit_pos if outcome.exit_pos is not None else traj.tokens_used
    requests: list[Request] = []
    pos = 0
    for p, cdx in zip(probes, certaindex):
        if p.pos > end:
            break
        if p.pos > pos:
            requests.append((0, prompt_tokens + pos, p.pos - pos, p.pos - pos))
        pos = p.pos
        requests.append((1, prompt_tokens + pos + suffix_tokens, max(probe_max_tokens, p.out_tokens), p.out_tokens,
                         float(cdx)))
        if outcome.exit_pos is not None and p.pos == outcome.exit_pos:
            break
    if outcome.exit_pos is None and end > pos:
        requests.append((0, prompt_tokens + pos, end - pos, end - pos))
    if not requests:  # an empty trajectory still costs one request
        requests.append((0, prompt_tokens, 1, 0))
    return tuple(requests)


def _profile(spec: PolicySpec, traj: Trajectory, profile_for: Callable[[str], Profile]) -> Profile | None:
    if spec.family == "profile":
        return spec.profile
    if spec.family == "default":
        return default_profile(traj, profile_for)
    return None


def score_plan_requests(profile: Profile, traj: Trajectory, outcome: Outcome, key: Callable, *,
                        prompt_tokens: int, suffix_tokens: int, probe_max_tokens: int = 32) -> tuple[Request, ...]:
    """The requests of a program under a ``score`` profile: every observation its schedule makes that
    costs tokens (a grid or event probe, a DEER-style trial) is a probe request after the reasoning up
    to its position; reading the model's own ``\\boxed{}`` costs nothing and sends nothing. Each probe
    carries the score after it (clipped to [0, 1]) as the certaindex the scheduler hears."""
    from certaindex.core.exit_score import ScoreModel
    from certaindex.evaluation.score_policy import markers, observations, stream_features
    from certaindex.evaluation.trial_reading import trials_as_read

    if prompt_tokens < 0 or suffix_tokens < 0:
        raise ValueError("prompt_tokens and suffix_tokens must be >= 0")
    rule = profile.rule
    traj = trials_as_read(traj, rule.get("trials"))  # as replay_score reads them
    obs = observations(traj, rule["schedule"])
    marks = markers(traj) if obs else None
    scores = ScoreModel.from_dict(rule["model"]).score(stream_features(obs, marks, key)) if marks else []
    end = outcome.exit_pos if outcome.exit_pos is not None else traj.tokens_used
    taken = len(obs)
    if outcome.exit_pos is not None:  # the observation that fired: the policy object's decision
        decision, _ = replay(ScoreRule.recorded(rule, key, marks), obs)
        taken = next(i + 1 for i, o in enumerate(obs) if o is decision.at)
    requests: list[Request] = []
    pos = 0
    for o, score in zip(obs[:taken], scores):
        if not o.out_tokens:
            continue
        if o.pos > pos:
            requests.append((0, prompt_tokens + pos, o.pos - pos, o.pos - pos))
            pos = o.pos
        requests.append((1, prompt_tokens + pos + suffix_tokens, max(probe_max_tokens, o.out_tokens), o.out_tokens,
                         float(min(1.0, max(0.0, score)))))
    if end > pos:
        requests.append((0, prompt_tokens + pos, end - pos, end - pos))
    if not requests:
        requests.append((0, prompt_tokens, 1, 0))
    return tuple(requests)


def plan_for(spec: PolicySpec, traj: Trajectory, cache: GradeCache, *, prompt_tokens: int, suffix_tokens: int,
             budget: int | None = None, profile_for: Callable[[str], Profile] = profile_for_model) -> ProgramPlan:
    """The plan of ``traj`` under ``spec`` (answers graded through the filled ``cache``).

    Its tokens equal the policy's :class:`~certaindex.evaluation.peers.Outcome` tokens: the plan
    serves exactly what the offline evaluation counts."""
    profile = _profile(spec, traj, profile_for)
    if profile is not None and profile.kind == "score":
        outcome = run_policy(spec, traj, cache, profile_for)
        requests = score_plan_requests(profile, traj, outcome, cache.key,
                                       prompt_tokens=prompt_tokens, suffix_tokens=suffix_tokens)
    else:
        probes, k = probe_schedule(spec, traj, profile_for)  # raises for a policy with no plan
        outcome = run_policy(spec, traj, cache, profile_for)
        cdx = _certaindex(probes, k, outcome.exit_pos, cache.key)
        requests = plan_requests(traj, outcome, probes, cdx, prompt_tokens=prompt_tokens, suffix_tokens=suffix_tokens)
    tokens = sum(r[3] for r in requests)
    if tokens != outcome.tokens:
        raise AssertionError(f"plan of {traj.model} {traj.dataset} problem {traj.problem_id} counts {tokens} tokens, "
                             f"the policy {outcome.tokens}")
    return ProgramPlan(
        trajectory=f"{traj.model}/{traj.dataset}/seed_{traj.seed}/{traj.problem_id}", model=traj.model,
        dataset=traj.dataset, requests=requests, tokens=tokens, correct=outcome.correct, answer=outcome.answer,
        exit_pos=outcome.exit_pos, budget=max(budget or collection_budget(traj.dataset), tokens),
        stream_tokens=traj.tokens_used,
    )
