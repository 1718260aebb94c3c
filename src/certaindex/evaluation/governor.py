"""Evaluating early-exit policies on Governor traces (real reasoning models, probes every 64 tokens).

Pure over in-memory trajectories and a filled :class:`~certaindex.evaluation.grading.GradeCache`:
:func:`grading_inputs` says what must be graded, :func:`run_policy` replays one policy on one
trajectory, :func:`evaluate_policy` gives the per model x dataset figures of the ``--json`` output
and :func:`family_points` every point of every policy family for the tables and the Pareto plot.

Policies (``--policy``): ``default`` (the shipped profile the proxy would apply to each
trajectory's model; where that profile reads DEER trials and the trajectory has none recorded, the
no-trial ``conservative`` profile, as the proxy runs for an engine without logprobs:
:func:`default_profile`), ``full``, ``oracle``, ``dynasor:k=8[,interval=128]``, ``events:k=4``,
``deer:0.95``, ``profile:NAME`` (a shipped profile by name, applied to every model), or the path
of a profile JSON file.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

from certaindex.core.answers import extract_answer
from certaindex.evaluation.grading import GradeCache
from certaindex.evaluation.peers import (
    Outcome,
    deer,
    dynasor,
    dynasor_all_k,
    event_probes,
    full_reasoning,
    oracle,
)
from certaindex.evaluation.profile_choice import without_trials
from certaindex.evaluation.profiles import Profile, load_profile, profile_for_model, shipped_profiles
from certaindex.evaluation.score_policy import THRESHOLDS, sweep_score
from certaindex.traces.governor import Trajectory

__all__ = [
    "DEER_THRESHOLDS",
    "DYNASOR_INTERVALS",
    "DYNASOR_KS",
    "EVENT_KS",
    "GRID",
    "GroupResult",
    "Point",
    "PolicySpec",
    "DEER_FIXED",
    "best_in_band",
    "default_label",
    "default_profile",
    "deployable_points",
    "evaluate_policy",
    "family_points",
    "final_answer",
    "grading_inputs",
    "groups",
    "parse_policy",
    "run_policy",
    "shipped_profile",
    "with_final_answers",
]

GRID = 64  # the traces' probe granularity
DYNASOR_KS = tuple(range(2, 33))
DYNASOR_INTERVALS = (64, 128, 256, 512)
EVENT_KS = tuple(range(2, 21))
DEER_THRESHOLDS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9995)
# The default score model swept over its threshold: its own frontier, for comparing signals at equal
# accuracy (every third LTT candidate, conservative first).
SCORE_SWEEP: tuple[float, ...] = tuple(THRESHOLDS[::3])
FINAL_SOURCES = ("recorded", "extracted")
DEER_FIXED = 0.999  # DEER's threshold fixed in advance (no tuning): reported beside the tuned peers
DEPLOYED = ("dynasor", "events", "deer")  # the peers whose knob a user chooses on train problems


# ------------------------------------------------------------------------------ policies


@dataclass(frozen=True)
class PolicySpec:
    family: str  # default | full | oracle | dynasor | events | deer | profile
    k: int | None = None
    interval: int = GRID
    threshold: float | None = None
    profile: Profile | None = None

    @property
    def label(self) -> str:
        if self.family == "dynasor":
            return f"dynasor k={self.k} interval={self.interval}"
        if self.family == "events":
            return f"events k={self.k}"
        if self.family == "deer":
            return f"deer {self.threshold:g}"
        if self.family == "profile" and self.profile is not None:
            return f"profile {self.profile.label}"
        return self.family


def _interval(value: int, what: str) -> int:
    if value < GRID or value % GRID:
        raise ValueError(f"{what}: probe interval {value} is not a multiple of the traces' {GRID}-token grid")
    return value


def parse_policy(text: str) -> PolicySpec:
    """``default``, ``full``, ``oracle``, ``dynasor:k=8[,interval=128]``, ``events:k=4``,
    ``deer:0.95``, ``profile:NAME`` (a shipped profile applied to every model) or a profile JSON
    path; ``ValueError`` with the accepted forms otherwise."""
    forms = ("default, full, oracle, dynasor:k=8[,interval=128], events:k=4, deer:0.95, profile:NAME "
             "or a profile .json file")
    text = text.strip()
    if text in ("default", "full", "oracle"):
        return PolicySpec(text)
    if text.startswith("profile:"):
        return PolicySpec("profile", profile=shipped_profile(text[len("profile:"):].strip()))
    m = re.fullmatch(r"(dynasor|events):(.*)", text)
    if m:
        params: dict[str, int] = {}
        for part in m[2].split(","):
            name, _, value = part.partition("=")
            if name.strip() not in ("k", "interval") or not value.strip().isdigit():
                raise ValueError(f"--policy {text!r}: expected {m[1]}:k=N{',interval=M' if m[1] == 'dynasor' else ''}")
            params[name.strip()] = int(value)
        if "k" not in params or params["k"] < 1:
            raise ValueError(f"--policy {text!r}: needs k >= 1, e.g. {m[1]}:k=8")
        if m[1] == "events" and "interval" in params:
            raise ValueError(f"--policy {text!r}: event probes have no interval")
        return PolicySpec(m[1], k=params["k"], interval=_interval(params.get("interval", GRID), f"--policy {text!r}"))
    m = re.fullmatch(r"deer:(.*)", text)
    if m:
        try:
            threshold = float(m[1])
        except ValueError:
            threshold = math.nan
        if not 0 <= threshold <= 1:
            raise ValueError(f"--policy {text!r}: DEER takes a confidence threshold in [0, 1], e.g. deer:0.95")
        return PolicySpec("deer", threshold=threshold)
    if text.endswith(".json") or Path(text).is_file():
        if not Path(text).is_file():
            raise ValueError(f"--policy {text!r}: no such profile file")
        profile = load_profile(text)
        _interval(profile.probe_interval, f"profile {text}")
        return PolicySpec("profile", profile=profile)
    raise ValueError(f"--policy {text!r} is not a policy; use {forms}")


def shipped_profile(name: str) -> Profile:
    """The shipped profile called ``name``; ``ValueError`` listing the shipped names otherwise."""
    shipped = {p.name: p for p in shipped_profiles()}
    if name not in shipped:
        raise ValueError(f"--policy profile:{name}: no shipped profile is called {name!r}; "
                         f"the shipped profiles are {', '.join(sorted(shipped))}")
    profile = shipped[name]
    _interval(profile.probe_interval, f"profile {name}")
    return profile


def final_answer(traj: Trajectory, source: str = "extracted") -> str | None:
    """The answer full reasoning submits: the recorded ``final_answer`` or one re-extracted from
    ``full_text`` with the project's extractor."""
    if source == "recorded":
        return traj.final_answer
    if source == "extracted":
        return extract_answer(traj.full_text)
    raise ValueError(f"final answer source must be one of {', '.join(FINAL_SOURCES)}, got {source!r}")


def grading_inputs(trajs: Iterable[Trajectory]) -> tuple[list[tuple[str, str]], list[str]]:
    """(answer, target) pairs to grade and answers needing an agreement key, without repeats."""
    trajs = list(trajs)
    pairs: dict[tuple[str, str], None] = {}
    keys: dict[str, None] = {}
    for t in trajs:
        for p in (*t.probes, *t.events):
            if p.answer is not None:
                pairs[(p.answer, t.target)] = None
                keys[p.answer] = None
        for x in t.trials or ():
            if x.answer is not None:
                pairs[(x.answer, t.target)] = None
        if t.final_answer is not None:
            pairs[(t.final_answer, t.target)] = None
    from certaindex.evaluation.score_policy import score_grading_inputs

    more_pairs, more_keys = score_grading_inputs(trajs)  # boxed answers and trial keys for the score rule
    pairs.update(dict.fromkeys(more_pairs))
    keys.update(dict.fromkeys(more_keys))
    return list(pairs), list(keys)


def with_final_answers(trajs: Iterable[Trajectory], source: str = "extracted") -> list[Trajectory]:
    """The trajectories with ``final_answer`` set to what full reasoning submits (see :func:`final_answer`)."""
    from dataclasses import replace

    if source == "recorded":
        return list(trajs)
    return [replace(t, final_answer=final_answer(t, source)) for t in trajs]


def run_policy(spec: PolicySpec, traj: Trajectory, cache: GradeCache,
               profile_for: Callable[[str], Profile] = profile_for_model) -> Outcome:
    """Replay one policy on one trajectory (answers graded through ``cache``)."""

    def correct(answer: str | None) -> bool:
        return cache.correct(answer, traj.target)

    key = cache.key
    if spec.family == "full":
        return full_reasoning(traj, correct)
    if spec.family == "oracle":
        return oracle(traj, correct)
    if spec.family == "dynasor":
        return dynasor(traj, spec.k or 1, key, correct, spec.interval)
    if spec.family == "events":
        return event_probes(traj, spec.k or 1, key, correct)
    if spec.family == "deer":
        return deer(traj, spec.threshold if spec.threshold is not None else 1.0, correct)
    profile = spec.profile if spec.family == "profile" else default_profile(traj, profile_for)
    assert profile is not None
    return run_profile(profile, traj, key, correct)


def default_profile(traj: Trajectory, profile_for: Callable[[str], Profile] = profile_for_model) -> Profile:
    """The profile ``--policy default`` runs on ``traj``: its model's (``profile_for``), or where that
    reads DEER trials and the trajectory has none recorded, the no-trial stand-in
    (:func:`~certaindex.evaluation.profile_choice.without_trials`: the proxy's rule for an engine
    without logprobs), so the replay never runs a trial-reading score blind to its trials."""
    profile = profile_for(traj.model_name)
    return profile if traj.trials is not None else without_trials(profile)


def default_label(ts: Sequence[Trajectory], profile_for: Callable[[str], Profile] = profile_for_model) -> str:
    """``default: <profile label>; ...`` for the profiles :func:`default_profile` runs on ``ts``,
    naming a stand-in and why (``conservative (...) [no trials recorded; generic reads them]``)."""
    names = set()
    for t in ts:
        own, run = profile_for(t.model_name), default_profile(t, profile_for)
        names.add(run.label if run.name == own.name else f"{run.label} [no trials recorded; {own.name} reads them]")
    return "default: " + "; ".join(sorted(names))


def run_profile(profile: Profile, traj: Trajectory, key: Callable, correct: Callable) -> Outcome:
    """The profile's rule on the trajectory, probing every ``probe_interval`` tokens."""
    if profile.kind == "dynasor":
        return dynasor(traj, int(profile.rule["k"]), key, correct, _interval(profile.probe_interval, profile.name))
    if profile.kind == "score":
        from certaindex.evaluation.score_policy import replay_score

        return replay_score(profile.rule, traj, key, correct)
    raise ValueError(f"profile {profile.name}: rule kind {profile.kind!r} cannot be replayed by this version")


# ------------------------------------------------------------------------------ summaries


def groups(trajs: Iterable[Trajectory]) -> dict[tuple[str, str], list[Trajectory]]:
    """Trajectories by (model, dataset), in first-seen order."""
    out: dict[tuple[str, str], list[Trajectory]] = {}
    for t in trajs:
        out.setdefault((t.model, t.dataset), []).append(t)
    return out


@dataclass(frozen=True)
class GroupResult:
    """One row of ``--json``: a policy on one model x dataset (every seed pooled)."""

    model: str
    dataset: str
    n: int
    full_accuracy: float
    full_tokens: float
    accuracy: float
    tokens: float
    saved: float  # 1 - tokens / full_tokens
    harmful_exits: int  # trajectories answered wrong where full reasoning was right

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _summary(model: str, dataset: str, outs: Sequence[Outcome], fulls: Sequence[Outcome]) -> GroupResult:
    n = len(outs)
    full_tokens = sum(f.tokens for f in fulls) / n
    tokens = sum(o.tokens for o in outs) / n
    return GroupResult(
        model, dataset, n,
        full_accuracy=sum(f.correct for f in fulls) / n,
        full_tokens=full_tokens,
        accuracy=sum(o.correct for o in outs) / n,
        tokens=tokens,
        saved=1 - tokens / full_tokens if full_tokens else 0.0,
        harmful_exits=sum(1 for o, f in zip(outs, fulls) if f.correct and not o.correct),
    )


def evaluate_policy(spec: PolicySpec, trajs: Sequence[Trajectory], cache: GradeCache) -> list[GroupResult]:
    """The figures of one policy per model x dataset."""
    out = []
    for (model, dataset), ts in groups(trajs).items():
        if spec.family == "deer" and any(t.trials is None for t in ts):
            continue  # DEER trials were recorded only for some models
        fulls = [run_policy(PolicySpec("full"), t, cache) for t in ts]
        outs = [run_policy(spec, t, cache) for t in ts]
        out.append(_summary(model, dataset, outs, fulls))
    return out


@dataclass(frozen=True)
class Point:
    """One policy setting on one model x dataset: a point of the Pareto plot."""

    family: str  # full | dynasor | events | deer | oracle | default
    label: str
    accuracy: float
    tokens: float
    saved: float
    harmful_exits: int
    interval: int | None = None  # dynasor points: their probe interval


def _point(family: str, label: str, outs: Sequence[Outcome], fulls: Sequence[Outcome], interval: int | None = None) -> Point:
    s = _summary("", "", outs, fulls)
    return Point(family, label, s.accuracy, s.tokens, s.saved, s.harmful_exits, interval)


def family_points(ts: Sequence[Trajectory], cache: GradeCache,
                  profile_for: Callable[[str], Profile] = profile_for_model,
                  ks: Sequence[int] = DYNASOR_KS, intervals: Sequence[int] = DYNASOR_INTERVALS,
                  event_ks: Sequence[int] = EVENT_KS, thresholds: Sequence[float] = DEER_THRESHOLDS,
                  extra: PolicySpec | None = None, with_default: bool = True) -> list[Point]:
    """Every setting of every family on one group of trajectories (one model x dataset), plus the
    ``extra`` policy (family "policy") where it applies. ``with_default=False`` leaves out the
    default profile and its score sweep (the peers alone, e.g. to choose their knobs on train)."""
    key = cache.key
    corrects = [(lambda a, tg=t.target: cache.correct(a, tg)) for t in ts]
    fulls = [full_reasoning(t, c) for t, c in zip(ts, corrects)]
    points = [_point("full", "full reasoning", fulls, fulls)]
    for interval in intervals:
        per_traj = [dynasor_all_k(t, ks, key, c, interval) for t, c in zip(ts, corrects)]
        for j, k in enumerate(ks):
            points.append(_point("dynasor", f"dynasor k={k} interval={interval}", [o[j] for o in per_traj], fulls, interval))
    if any(t.events for t in ts):
        per_traj = [dynasor_all_k(t, event_ks, key, c, probes=[p for p in t.events if p.pos < t.tokens_used])
                    for t, c in zip(ts, corrects)]
        for j, k in enumerate(event_ks):
            points.append(_point("events", f"events k={k}", [o[j] for o in per_traj], fulls))
    if all(t.trials is not None for t in ts):
        for th in thresholds:
            points.append(_point("deer", f"deer {th:g}", [deer(t, th, c) for t, c in zip(ts, corrects)], fulls))
    points.append(_point("oracle", "oracle bound", [oracle(t, c) for t, c in zip(ts, corrects)], fulls))
    if not with_default:
        return points
    profiles = {p.name: p for p in (default_profile(t, profile_for) for t in ts)}
    label = default_label(ts, profile_for)
    if len(profiles) == 1 and next(iter(profiles.values())).kind == "score":
        # one feature pass per trajectory gives the default (its own threshold, last) and its frontier
        rule = next(iter(profiles.values())).rule
        per_traj = [sweep_score(rule, t, key, c, [*SCORE_SWEEP, rule.get("threshold")]) for t, c in zip(ts, corrects)]
        points.append(_point("default", label, [o[-1] for o in per_traj], fulls))
        for j, th in enumerate(SCORE_SWEEP):
            points.append(_point("score", f"score threshold {th:.4f}", [o[j] for o in per_traj], fulls))
    else:
        outs = [run_profile(default_profile(t, profile_for), t, key, c) for t, c in zip(ts, corrects)]
        points.append(_point("default", label, outs, fulls))
    if extra is not None and extra.family not in ("default", "full") and not (
            extra.family == "deer" and any(t.trials is None for t in ts)):
        outs = [run_policy(extra, t, cache, profile_for) for t in ts]
        points.append(_point("policy", extra.label, outs, fulls))
    return points


def best_in_band(points: Iterable[Point], family: str, full_accuracy: float, band: float = 0.01) -> Point | None:
    """The point of ``family`` saving the most tokens with accuracy >= full - ``band``."""
    ok = [p for p in points if p.family == family and p.accuracy >= full_accuracy - band - 1e-12]
    return max(ok, key=lambda p: p.saved) if ok else None


def deployable_points(points: Sequence[Point], train: Sequence[Point] | None, band: float = 0.01) -> list[Point]:
    """The peers as a user would deploy them, read off ``points`` (the reported problems): each
    peer's setting chosen on the ``train`` points of the same model x dataset (the one saving most
    within ``band`` of full reasoning's accuracy there; where none is, the user keeps full
    reasoning), family ``<peer>-train``; and DEER at the fixed threshold :data:`DEER_FIXED`
    (family ``deer-fixed``). Peers without points here (no event probes, no trials) are left out."""
    full = next(p for p in points if p.family == "full")
    out: list[Point] = []
    for family in DEPLOYED if train is not None else ():
        if not any(p.family == family for p in points) or not any(p.family == family for p in train or ()):
            continue
        train_full = next(p for p in train or () if p.family == "full")
        chosen = best_in_band(train or (), family, train_full.accuracy, band)
        match = [p for p in points if chosen is not None and p.family == family and p.label == chosen.label]
        if match:
            out.append(replace(match[0], family=f"{family}-train"))
        else:
            out.append(replace(full, family=f"{family}-train", label="none in band on train: full reasoning"))
    fixed = [p for p in points if p.family == "deer" and p.label == f"deer {DEER_FIXED:g}"]
    out += [replace(p, family="deer-fixed") for p in fixed]
    return out
