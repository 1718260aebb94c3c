"""The certainty-score rule (profile rule kind ``score``) on Governor trajectories: replay and fitting.

Replay: a profile's ``schedule`` says which observations a live program would make on the
trajectory (see :func:`observations`); at each one the score of
:mod:`certaindex.core.exit_score` is computed from what was seen so far, and the program exits at
the first observation with an answer whose score reaches the profile's threshold, submitting that
answer. Cost as for every policy: reasoning tokens up to the exit plus every probe / trial output
token spent so far; a rule that never fires pays them all and submits the final answer.

Fitting (:func:`calibrate`, behind ``certaindex calibrate`` and the shipped profiles): train-split
problems are split by a hash of (dataset, problem) into FIT (a third) and CAL (two thirds). The
logistic score is fitted on FIT with the label "exiting here is not harmful" (the answer is right,
or full reasoning is wrong anyway), each trajectory weighing the same. The threshold is picked on
CAL by Learn-then-Test fixed-sequence testing (harmful exits <= alpha with probability >= 1 - delta),
walking from conservative to aggressive, and stopping also where one dataset's CAL trajectories
show more than alpha harmful exits (the stratum guard: the certificate holds for the calibration
mixture, which is mostly MATH500, and hard benchmarks behave differently).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from certaindex.core.answers import _boxes
from certaindex.core.calibration import ltt_fixed_sequence
from certaindex.core.exit_policy import ScoreRule, replay
from certaindex.core.exit_score import (
    FEATURES,
    Obs,
    ScoreModel,
    TextMarkers,
    fit_logistic,
    stream_features,
    text_markers,
)
from certaindex.evaluation.peers import CorrectFn, KeyFn, Outcome, replayed_outcome
from certaindex.evaluation.trial_reading import trials_as_read
from certaindex.traces.governor import Trajectory
from certaindex.traces.tokenmap import char_ends

__all__ = [
    "LABELS",
    "SCHEDULE_PARTS",
    "THRESHOLDS",
    "Calibration",
    "HELD_TURNS",
    "HeldOut",
    "Rotation",
    "calibrate",
    "certify_model",
    "check_schedule",
    "fit_split",
    "fitted_scores",
    "held_aside_outcomes",
    "markers",
    "observations",
    "part_of",
    "reach_savings",
    "Reached",
    "threshold_reaching",
    "replay_score",
    "score_grading_inputs",
    "score_profile_json",
    "select_setting",
    "sweep_score",
]

SCHEDULE_PARTS = ("bx", "tc", "tr", "ev")  # plus gN: a probe every N tokens (N a multiple of 64)
# Thresholds tested by LTT, conservative first (fixed before looking at any data).
THRESHOLDS: tuple[float, ...] = tuple(np.concatenate([1 - np.logspace(-4, -1, 40), np.linspace(0.9, 0.3, 61)[1:]]).tolist())
LABELS = {"noharm": "not harmful: the exit answer is right, or full reasoning's answer is wrong",
          "ok": "the exit answer is right"}
_ORDER = {"box": 0, "grid": 1, "event": 2, "trial": 3}


def check_schedule(schedule: str) -> list[str]:
    """The parts of a ``+``-joined schedule; ``ValueError`` for an unknown part."""
    parts = schedule.split("+")
    for p in parts:
        if p in SCHEDULE_PARTS:
            continue
        if p.startswith("g") and p[1:].isdigit() and int(p[1:]) >= 64 and int(p[1:]) % 64 == 0:
            continue
        raise ValueError(f"schedule part {p!r} is unknown (use bx, tc, tr, ev or gN with N a multiple of 64)")
    return parts


_MARKS: dict[tuple, TextMarkers] = {}


def markers(traj: Trajectory) -> TextMarkers:
    """The text markers of a trajectory (tokenised with its model's vocabulary), cached."""
    k = (traj.model, traj.dataset, traj.seed, traj.problem_id, traj.tokens_used, hash(traj.full_text))
    m = _MARKS.get(k)
    if m is None:
        ends, _ = char_ends(traj.full_text, traj.model, traj.tokens_used)
        m = _MARKS[k] = text_markers(traj.full_text, ends)
        if len(_MARKS) > 50000:
            _MARKS.clear()
    return m


def observations(traj: Trajectory, schedule: str, marks: TextMarkers | None = None) -> list[Obs]:
    """What a live program following ``schedule`` observes on ``traj``, in order.

    Parts: ``bx`` every ``\\boxed{}`` the model writes (free), ``tc`` one probe at the first 64-grid
    point after ``</think>``, ``tr`` the DEER trials at "Wait" points, ``ev`` the event probes, ``gN``
    a probe every N tokens. Only positions before the end of the reasoning count."""
    end = traj.tokens_used
    obs: list[Obs] = []
    for part in check_schedule(schedule):
        if part in ("bx", "tc"):
            marks = marks if marks is not None else markers(traj)
        if part == "bx":
            obs += [Obs(int(p), "box", c) for p, c in zip(marks.box_pos, marks.box_content) if p < end]
        elif part == "tc":
            nxt = [p for p in traj.probes if marks.think_close <= p.pos < end]
            if nxt:
                p = nxt[0]
                obs.append(Obs(p.pos, "grid", p.answer, p.certain, p.out_tokens))
        elif part == "tr":
            obs += [Obs(t.pos, "trial", t.answer, True, t.out_tokens, t.confidence, t.min_prob)
                    for t in (traj.trials or ()) if t.pos < end]
        elif part == "ev":
            obs += [Obs(p.pos, "event", p.answer, p.certain, p.out_tokens) for p in traj.events if p.pos < end]
        else:
            step = int(part[1:])
            obs += [Obs(p.pos, "grid", p.answer, p.certain, p.out_tokens) for p in traj.probes
                    if p.pos % step == 0 and p.pos < end]
    obs.sort(key=lambda o: (o.pos, _ORDER[o.src]))
    out: list[Obs] = []
    for o in obs:  # tc may repeat a grid probe already in the stream
        if not out or out[-1] != o:
            out.append(o)
    return out


def replay_score(rule: dict[str, Any], traj: Trajectory, key: KeyFn, correct: CorrectFn) -> Outcome:
    """A ``score`` rule on one trajectory (``rule`` as in a profile: schedule, threshold, model),
    decided by the :class:`~certaindex.core.exit_policy.ScoreRule` the live program calls. Trials are
    read as the rule reads them live (:func:`~certaindex.evaluation.trial_reading.trials_as_read`)."""
    traj = trials_as_read(traj, rule.get("trials"))
    obs = observations(traj, rule["schedule"])
    marks = markers(traj) if obs else None  # no observation: nothing is scored, no text tokenised
    return replayed_outcome(traj, replay(ScoreRule.recorded(rule, key, marks), obs), correct)


def sweep_score(rule: dict[str, Any], traj: Trajectory, key: KeyFn, correct: CorrectFn,
                thresholds: Sequence[float | None]) -> list[Outcome]:
    """A ``score`` rule's model on one trajectory at each of ``thresholds`` (None: never exit), the
    observations and scores computed once: the score's own accuracy / tokens frontier. Equal to
    :func:`replay_score` at each threshold (``tests/test_exit_policy.py`` checks it)."""
    traj = trials_as_read(traj, rule.get("trials"))
    obs = observations(traj, rule["schedule"])
    spent = np.cumsum([o.out_tokens for o in obs]) if obs else np.zeros(0)
    total = int(spent[-1]) if len(spent) else 0
    to_end = Outcome(None, traj.final_answer, correct(traj.final_answer), traj.tokens_used + total, total)
    if not obs or all(th is None for th in thresholds):
        return [to_end for _ in thresholds]
    scores = ScoreModel.from_dict(rule["model"]).score(stream_features(obs, markers(traj), key))
    answered = np.array([o.answer is not None for o in obs])
    best = np.maximum.accumulate(np.where(answered, scores, -np.inf))
    out: list[Outcome] = []
    for th in thresholds:
        if th is None or best[-1] < th:
            out.append(to_end)
            continue
        i = int(np.searchsorted(best, th, side="left"))  # the first answered observation reaching th
        o = obs[i]
        out.append(Outcome(o.pos, o.answer, correct(o.answer), int(o.pos + spent[i]), int(spent[i])))
    return out


def score_grading_inputs(trajs: Iterable[Trajectory]) -> tuple[list[tuple[str, str]], list[str]]:
    """What the score needs graded beyond the probes: boxed answers in the text (pairs and keys)
    and trial answers (keys)."""
    pairs: dict[tuple[str, str], None] = {}
    keys: dict[str, None] = {}
    for t in trajs:
        for _, content in _boxes(t.full_text):
            if content is not None and content.strip():
                pairs[(content.strip(), t.target)] = None
                keys[content.strip()] = None
        for x in t.trials or ():
            if x.answer is not None:
                keys[x.answer] = None
        if t.final_answer is not None:
            keys[t.final_answer] = None
    return list(pairs), list(keys)


PROBE_SUFFIX = "**Final Answer**\n\n\\[ \\boxed{"  # the probe the Governor traces were recorded with
TRIAL_SUFFIX = "\n**Final Answer**\n\\boxed"  # DEER's trial inducer at "Wait" points

# ------------------------------------------------------------------------------ fitting


@dataclass
class _Table:
    """Observation rows of many trajectories for one schedule."""

    X: np.ndarray
    row_traj: np.ndarray
    cost: np.ndarray  # pos + tokens spent so far (this observation included)
    ok: np.ndarray  # the row's answer is right
    valid: np.ndarray  # the row has an answer
    overhead: np.ndarray  # per trajectory: every observation's tokens
    final_ok: np.ndarray  # per trajectory
    tokens_used: np.ndarray  # per trajectory


def _table(trajs: Sequence[Trajectory], schedule: str, key: KeyFn, correct: Callable[[Trajectory, str | None], bool]) -> _Table:
    Xs, rt, cost, ok, valid = [], [], [], [], []
    overhead = np.zeros(len(trajs), dtype=np.int64)
    for i, t in enumerate(trajs):
        obs = observations(t, schedule)
        if not obs:
            continue
        Xs.append(stream_features(obs, markers(t), key))
        spent = np.cumsum([o.out_tokens for o in obs])
        overhead[i] = spent[-1]
        rt.append(np.full(len(obs), i))
        cost.append(np.array([o.pos for o in obs]) + spent)
        ok.append([correct(t, o.answer) for o in obs])
        valid.append([o.answer is not None for o in obs])
    cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dtype=dt))
    return _Table(np.vstack(Xs) if Xs else np.zeros((0, len(FEATURES))), cat(rt, np.int64), cat(cost, np.int64),
                  cat(ok, bool), cat(valid, bool), overhead,
                  np.array([correct(t, t.final_answer) for t in trajs], dtype=bool),
                  np.array([t.tokens_used for t in trajs], dtype=np.int64))


def _exits(tab: _Table, scores: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Per trajectory of ``ids``: the running max of the score over its answered rows, and rows."""
    s = np.where(tab.valid, scores, -np.inf)
    order = np.argsort(tab.row_traj, kind="stable")
    sorted_rt = tab.row_traj[order]
    lo, hi = np.searchsorted(sorted_rt, ids, "left"), np.searchsorted(sorted_rt, ids, "right")
    return [(np.maximum.accumulate(s[order[a:b]]), order[a:b]) for a, b in zip(lo, hi)]


def _replay(tab: _Table, runs: list, ids: np.ndarray, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, correct) per trajectory of ``ids`` at ``threshold`` (None: never exit)."""
    tok = (tab.tokens_used[ids] + tab.overhead[ids]).astype(float)
    cor = tab.final_ok[ids].copy()
    if threshold is None:
        return tok, cor
    for j, (cm, rows) in enumerate(runs):
        if len(cm) and cm[-1] >= threshold:
            r = rows[int(np.searchsorted(cm, threshold, side="left"))]
            tok[j], cor[j] = tab.cost[r], tab.ok[r]
    return tok, cor


def fit_split(t: Trajectory, fit_mod: int = 3) -> str:
    """``fit`` for a third of the problems (by a hash of dataset and problem id), else ``cal``."""
    return "fit" if zlib.crc32(f"{t.dataset}/{t.problem_id}".encode()) % fit_mod == 0 else "cal"


@dataclass
class Calibration:
    """A fitted score and its certified threshold, with what the certificate rests on."""

    schedule: str
    model: ScoreModel
    threshold: float | None  # None: nothing certified (the rule never exits)
    alpha: float
    delta: float
    n_fit: int
    n_cal: int
    cal_harmful: int  # at the chosen threshold
    cal_saved: float
    stopped_by: str  # why the walk stopped: ltt | stratum <name> | end
    strata: dict[str, int]  # CAL trajectories per dataset
    label: str = "noharm"
    guard: bool = True  # the walk also stopped where one stratum showed more than alpha harmful exits

    def summary(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "delta": self.delta, "fit_trajectories": self.n_fit,
                "calibration_trajectories": self.n_cal, "calibration_harmful_exits": self.cal_harmful,
                "calibration_saved": round(self.cal_saved, 4), "stopped_by": self.stopped_by,
                "calibration_strata": self.strata, "stratum_guard": self.guard, "label": LABELS[self.label]}


def calibrate(trajs: Sequence[Trajectory], schedule: str, key: KeyFn,
              correct: Callable[[Trajectory, str | None], bool], alpha: float = 0.03, delta: float = 0.1,
              fit_mod: int = 3, features: Sequence[str] | None = None, l2: float = 2.0,
              strata: str | None = "dataset", label: str = "noharm") -> Calibration:
    """Fit the score on the FIT part of ``trajs`` (train-split problems) and certify a threshold on
    the CAL part (see the module docstring). ``features`` defaults to every feature the schedule
    can move (no trial features without ``tr``). ``strata``: what the guard checks separately
    (``dataset``, ``model+dataset`` for a profile meant for unknown models, or None: LTT alone). ``label``: ``noharm`` (exiting here is not harmful:
    the answer is right or full reasoning is wrong anyway) or ``ok`` (the answer is right)."""
    if label not in LABELS:
        raise ValueError(f"label must be one of {', '.join(LABELS)}, got {label!r}")
    if strata not in (None, "dataset", "model+dataset"):
        raise ValueError(f"strata must be dataset, model+dataset or None, got {strata!r}")
    check_schedule(schedule)
    if features is None:
        features = [f for f in FEATURES if "tr" in schedule.split("+") or not ("trial" in f)]
    trajs = list(trajs)
    part = np.array([fit_split(t, fit_mod) for t in trajs])
    tab = _table(trajs, schedule, key, correct)
    fit_ids, cal_ids = np.nonzero(part == "fit")[0], np.nonzero(part == "cal")[0]
    if not len(fit_ids) or not len(cal_ids):
        raise ValueError("calibration needs trajectories of several problems (both a fit and a calibration part)")
    model = _fit(tab, fit_ids, features, l2, label, len(trajs))
    scores = model.score(tab.X) if len(tab.X) else np.zeros(0)
    groups = np.array([t.dataset if strata != "model+dataset" else f"{t.model}/{t.dataset}" for t in trajs])
    index, stopped, runs = _certify(tab, scores, cal_ids, groups if strata else None, alpha, delta)
    threshold = THRESHOLDS[index] if index is not None else None
    tok, cor = _replay(tab, runs, cal_ids, threshold)
    full_ok = tab.final_ok[cal_ids]
    full_tok = tab.tokens_used[cal_ids].mean()
    names = sorted(set(groups[cal_ids].tolist()))
    return Calibration(schedule, model, threshold, alpha, delta, len(fit_ids), len(cal_ids),
                       int(((~cor) & full_ok).sum()), float(1 - tok.mean() / full_tok), stopped,
                       {d: int((groups[cal_ids] == d).sum()) for d in names}, label, strata is not None)


def _fit(tab: _Table, fit_ids: np.ndarray, features: Sequence[str], l2: float, label: str, n_trajs: int) -> ScoreModel:
    """The logistic score fitted on the rows of ``fit_ids`` (each trajectory weighing the same)."""
    rows = np.isin(tab.row_traj, fit_ids) & tab.valid
    if rows.sum() < 20:
        raise ValueError(f"only {int(rows.sum())} observations with an answer to fit on; record more trajectories")
    y = (tab.ok | ~tab.final_ok[tab.row_traj]) if label == "noharm" else tab.ok
    per_traj = np.bincount(tab.row_traj[rows], minlength=n_trajs)[tab.row_traj[rows]]
    w = 1.0 / per_traj
    w *= len(w) / w.sum()
    return fit_logistic(tab.X[rows], y[rows], features, l2=l2, weights=w)


def _certify(tab: _Table, scores: np.ndarray, cal_ids: np.ndarray, groups: np.ndarray | None, alpha: float,
             delta: float) -> tuple[int | None, str, list]:
    """The LTT walk over :data:`THRESHOLDS` on ``cal_ids``, with the stratum guard when ``groups``
    (one name per trajectory) is given: (index of the certified threshold or None, why it stopped,
    the per-trajectory runs)."""
    runs = _exits(tab, scores, cal_ids)
    full_ok = tab.final_ok[cal_ids]
    cal_groups = groups[cal_ids] if groups is not None else None
    names = sorted(set(cal_groups.tolist())) if cal_groups is not None else []
    counts, guard_fail = [], None
    for j, lam in enumerate(THRESHOLDS):
        _, cor = _replay(tab, runs, cal_ids, lam)
        harm = (~cor) & full_ok
        counts.append(int(harm.sum()))
        if cal_groups is not None and guard_fail is None:
            for d in names:
                m = cal_groups == d
                if harm[m].mean() > alpha + 1e-12:
                    guard_fail = (j, d)
                    break
    index = ltt_fixed_sequence(counts, len(cal_ids), alpha, delta).index
    stopped = "ltt" if index is None or index + 1 < len(THRESHOLDS) else "end"
    if guard_fail is not None and (index is None or guard_fail[0] <= index):
        index = guard_fail[0] - 1 if guard_fail[0] > 0 else None
        stopped = f"stratum {guard_fail[1]}"
    return index, stopped, runs


def certify_model(trajs: Sequence[Trajectory], schedule: str, model: ScoreModel, key: KeyFn,
                  correct: Callable[[Trajectory, str | None], bool], alpha: float, delta: float,
                  label: str = "noharm") -> Calibration:
    """An already fitted score (a shipped profile's) with its threshold re-certified on ``trajs``, all
    of them calibration (nothing is fitted, so none is spent on fitting): the same Learn-then-Test
    walk as :func:`calibrate`, without the stratum guard (one user's traffic is one stratum)."""
    check_schedule(schedule)
    trajs = list(trajs)
    tab = _table(trajs, schedule, key, correct)
    scores = model.score(tab.X) if len(tab.X) else np.zeros(0)
    ids = np.arange(len(trajs))
    index, stopped, runs = _certify(tab, scores, ids, None, alpha, delta)
    threshold = THRESHOLDS[index] if index is not None else None
    tok, cor = _replay(tab, runs, ids, threshold)
    full_tok = tab.tokens_used.mean() if len(trajs) else 0.0
    return Calibration(schedule, model, threshold, alpha, delta, 0, len(trajs), int(((~cor) & tab.final_ok).sum()),
                       float(1 - tok.mean() / full_tok) if full_tok else 0.0, stopped, {"all": len(trajs)}, label, False)


def threshold_reaching(tab: _Table, scores: np.ndarray, ids: np.ndarray, target_saved: float) -> float | None:
    """The most conservative of :data:`THRESHOLDS` whose exits on ``ids`` save at least
    ``target_saved`` of their reasoning tokens (probe and trial tokens counted); None: none does."""
    runs = _exits(tab, scores, ids)
    full = float(tab.tokens_used[ids].sum())
    for th in THRESHOLDS:
        tok, _ = _replay(tab, runs, ids, th)
        if full and 1 - float(tok.sum()) / full >= target_saved - 1e-12:
            return th
    return None


def certified_alpha(tab: _Table, scores: np.ndarray, ids: np.ndarray, threshold: float, delta: float,
                    alphas: Sequence[float]) -> float | None:
    """The smallest of ``alphas`` at which the Learn-then-Test walk over :data:`THRESHOLDS` on ``ids``
    (no stratum guard) certifies ``threshold``: the certificate a lowered threshold still carries."""
    runs = _exits(tab, scores, ids)
    j = THRESHOLDS.index(threshold)
    full_ok = tab.final_ok[ids]
    counts = [int(((~_replay(tab, runs, ids, lam)[1]) & full_ok).sum()) for lam in THRESHOLDS[:j + 1]]
    for a in sorted(alphas):
        index = ltt_fixed_sequence(counts, len(ids), a, delta).index
        if index is not None and index >= j:
            return a
    return None


@dataclass(frozen=True)
class Reached:
    """What :func:`reach_savings` decided and what it decided on: the observation table of its
    trajectories (in their order) and ``cal``'s scores of its rows, so a caller replaying more on the
    same trajectories (held-aside turns) does not build them again."""

    calibration: Calibration
    table: _Table
    scores: np.ndarray


def reach_savings(trajs: Sequence[Trajectory], cal: Calibration, key: KeyFn,
                  correct: Callable[[Trajectory, str | None], bool], target_saved: float, dataset: str = "math500",
                  alphas: Sequence[float] = tuple(np.round(np.arange(0.01, 0.1001, 0.005), 3))) -> Reached:
    """``cal`` with its threshold lowered, where needed, until the exits on the CAL problems of
    ``dataset`` save ``target_saved`` (a simpler deployed rule's savings there, e.g. DEER at 0.999,
    plus a margin); the alpha is then the smallest at which LTT on CAL still certifies it.

    Why: on the recorded R1 runs the score and DEER lie on about one accuracy/savings frontier, and a
    certificate at a small alpha leaves the score at a more conservative point of it than DEER at
    0.999: it then saves less at about the same accuracy. ``cal`` unchanged when it already saves as
    much, or when nothing on CAL does; returned with the table and scores it was judged on."""
    trajs = list(trajs)
    tab = _table(trajs, cal.schedule, key, correct)
    scores = cal.model.score(tab.X) if len(tab.X) else np.zeros(0)
    part = np.array([fit_split(t) for t in trajs])
    cal_ids = np.nonzero(part == "cal")[0]
    ids = cal_ids[np.array([trajs[i].dataset == dataset for i in cal_ids], dtype=bool)]
    if not len(ids):
        raise ValueError(f"no {dataset} trajectories among the calibration problems")
    th = threshold_reaching(tab, scores, ids, target_saved)
    if th is None or (cal.threshold is not None and th >= cal.threshold):
        return Reached(cal, tab, scores)
    alpha = certified_alpha(tab, scores, cal_ids, th, cal.delta, alphas)
    tok, cor = _replay(tab, _exits(tab, scores, cal_ids), cal_ids, th)
    full_ok = tab.final_ok[cal_ids]
    return Reached(replace(cal, threshold=th, alpha=alpha if alpha is not None else float("nan"),
                           cal_harmful=int(((~cor) & full_ok).sum()),
                           cal_saved=float(1 - tok.mean() / tab.tokens_used[cal_ids].mean()),
                           stopped_by=f"reach {target_saved:.4f} saved on CAL {dataset}", guard=False), tab, scores)


def part_of(t: Trajectory) -> int:
    """Which sixth of the problems ``t`` belongs to (a hash of dataset and problem id): sixths 0
    and 3 are :func:`fit_split`'s FIT part, the other four its CAL part."""
    return zlib.crc32(f"{t.dataset}/{t.problem_id}".encode()) % 6


@dataclass
class HeldOut:
    """One calibration setting replayed on held-aside train problems (pooled over the rotations)."""

    label: str
    alpha: float
    guard: bool
    per_dataset: dict[str, dict[str, float]]  # n, harmful, helped, saved
    thresholds: list[float | None]
    admissible: bool = False

    def saved(self, dataset: str) -> float:
        return self.per_dataset.get(dataset, {}).get("saved", 0.0)


@dataclass
class Rotation:
    """Each CAL trajectory replayed with the threshold certified without its sixth (see
    :func:`held_aside_outcomes`): what a deployment certified on other problems would do on it."""

    ids: np.ndarray  # trajectory indices (the CAL part), in order
    tokens: np.ndarray  # per trajectory of ``ids``: tokens spent (probes and trials counted)
    correct: np.ndarray  # per trajectory of ``ids``: the submitted answer is right
    thresholds: list[float | None]  # the certified threshold of each turn, in :data:`HELD_TURNS` order


HELD_TURNS = (1, 2, 4, 5)  # CAL's sixths (:func:`part_of`), each held aside in turn


def held_aside_outcomes(tab: _Table, scores: np.ndarray, six: np.ndarray, groups: np.ndarray | None,
                        alpha: float, delta: float) -> Rotation:
    """Replay every CAL trajectory at the threshold that the other three CAL sixths certify (the
    same Learn-then-Test walk and guard as :func:`calibrate`; ``groups`` None: no guard)."""
    ids = np.nonzero(np.isin(six, HELD_TURNS))[0]
    tokens = np.zeros(len(ids))
    correct = np.zeros(len(ids), dtype=bool)
    thresholds: list[float | None] = []
    for held in HELD_TURNS:
        cal_ids = np.nonzero(np.isin(six, [s for s in HELD_TURNS if s != held]))[0]
        test_ids = np.nonzero(six == held)[0]
        index, _, _ = _certify(tab, scores, cal_ids, groups, alpha, delta)
        th = THRESHOLDS[index] if index is not None else None
        thresholds.append(th)
        tok, cor = _replay(tab, _exits(tab, scores, test_ids), test_ids, th)
        where = np.searchsorted(ids, test_ids)
        tokens[where], correct[where] = tok, cor
    return Rotation(ids, tokens, correct, thresholds)


def fitted_scores(trajs: Sequence[Trajectory], schedule: str, key: KeyFn,
                  correct: Callable[[Trajectory, str | None], bool], label: str,
                  tab: _Table | None = None) -> tuple[_Table, np.ndarray]:
    """The observation table of ``trajs`` (``tab`` when already built for this schedule) and every
    row's score, the score fitted on the FIT sixths (0 and 3 of :func:`part_of`, which is
    :func:`fit_split`'s FIT part) as :func:`calibrate` fits it."""
    features = [f for f in FEATURES if "tr" in schedule.split("+") or "trial" not in f]
    six = np.array([part_of(t) for t in trajs])
    tab = tab if tab is not None else _table(trajs, schedule, key, correct)
    fit_ids = np.nonzero(np.isin(six, (0, 3)))[0]
    scores = _fit(tab, fit_ids, features, 2.0, label, len(trajs)).score(tab.X)
    return tab, scores


def select_setting(trajs: Sequence[Trajectory], schedule: str, key: KeyFn,
                   correct: Callable[[Trajectory, str | None], bool], alphas: Sequence[float] = (0.01, 0.015, 0.02, 0.025, 0.03),
                   labels: Sequence[str] = tuple(LABELS), guards: Sequence[bool] = (True, False), delta: float = 0.1,
                   target: str = "math500", max_loss: float = 0.005, max_loss_others: int = 1) -> tuple[HeldOut | None, list[HeldOut]]:
    """Choose the label, alpha and stratum guard on held-aside TRAIN problems, never on the problems
    reported on. The score is fitted on FIT as in :func:`calibrate`; CAL's four sixths
    (:func:`part_of`) take turns as the held-aside part while the other three certify the threshold
    by the same Learn-then-Test walk (:func:`held_aside_outcomes`). Pooled over the four turns, a
    setting is admissible when the held-aside ``target`` accuracy drops by at most ``max_loss``
    (harmful minus helped exits, as a share) and every other dataset's by at most
    ``max_loss_others`` trajectories; the admissible one saving most on ``target`` wins (None: none
    admissible)."""
    check_schedule(schedule)
    trajs = list(trajs)
    six = np.array([part_of(t) for t in trajs])
    datasets = np.array([t.dataset for t in trajs])
    out: list[HeldOut] = []
    tab = _table(trajs, schedule, key, correct)  # one observation table, fitted once per label
    for label in labels:
        _, scores = fitted_scores(trajs, schedule, key, correct, label, tab)
        for alpha in alphas:
            for guard in guards:
                rot = held_aside_outcomes(tab, scores, six, datasets if guard else None, alpha, delta)
                full = tab.final_ok[rot.ids]
                per: dict[str, dict[str, float]] = {}
                for d in sorted(set(datasets[rot.ids].tolist())):
                    m = datasets[rot.ids] == d
                    per[d] = {"n": int(m.sum()), "harmful": int(((~rot.correct) & full)[m].sum()),
                              "helped": int((rot.correct & ~full)[m].sum()),
                              "saved": round(1 - float(rot.tokens[m].sum()) / float(tab.tokens_used[rot.ids][m].sum()), 4)}
                h = HeldOut(label, alpha, guard, per, rot.thresholds)
                tgt = per.get(target)
                h.admissible = bool(tgt and (tgt["helped"] - tgt["harmful"]) / tgt["n"] >= -max_loss - 1e-12 and all(
                    v["harmful"] - v["helped"] <= max_loss_others for d, v in per.items() if d != target))
                out.append(h)
    ok = [h for h in out if h.admissible]
    return (max(ok, key=lambda h: h.saved(target)) if ok else None), out


# How each family's recorded DEER trials read their confidence (the records' ``policy`` and
# ``require_think_close``; benchmarks/trial_confidence.py): a profile fitted on one family's trials
# reads live trials the same way. Families not listed: avg1 (DEER's), no think-close rule.
RECORDED_TRIAL_RULES: dict[str, dict[str, Any]] = {
    "qwen3-8b": {"confidence_rule": "avg2", "require_think_close": True},
}


def score_profile_json(name: str, patterns: list[str], models: list[str], cal: Calibration, command: str,
                       data: str = "Governor development traces (seeds 42-44), TRAIN-split problems only (split_manifest.json)",
                       extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A profile JSON object (rule kind ``score``) for a :class:`Calibration`; ``patterns`` are the
    model-name regexes it applies to, ``models`` what it was fitted on."""
    parts = cal.schedule.split("+")
    grid = next((int(p[1:]) for p in parts if p.startswith("g")), None)
    rule = {
        "kind": "score", "schedule": cal.schedule, "threshold": cal.threshold, "model": cal.model.to_dict(),
        "boxed": "bx" in parts, "probe_after_think": "tc" in parts, "probe_every": grid,
        "trials": {"at": "Wait", "suffix": TRIAL_SUFFIX, "max": 30, "tokens": 20,
                   "confidence": "mean token probability of the trial answer after its opening brace (DEER; "
                                 "core.exit_score.trial_confidence)"}
        if "tr" in parts else None,
    }
    recorded = {json.dumps(RECORDED_TRIAL_RULES.get(m, {}), sort_keys=True) for m in models}
    if rule["trials"] is not None and len(recorded) == 1 and recorded != {"{}"}:  # one family's rule, not avg1
        rule["trials"].update(json.loads(recorded.pop()))
        rule["trials"]["confidence"] = "as the family's DEER records (core.exit_score.read_trial)"
    return {
        "format": "certaindex-profile", "version": 1, "name": name, "models": patterns,
        "probe_suffix": PROBE_SUFFIX, "probe_interval": grid or 64, "probe_tokens": 32, "rule": rule,
        "description": (f"Certainty score ({cal.schedule}) fitted on {', '.join(models)}; exit when it reaches "
                        f"the LTT-certified threshold (harmful exits <= {cal.alpha:g} with probability >= {1 - cal.delta:g} "
                        "on the calibration problems)." if name != "conservative" else
                        "Conservative certainty score for models without a calibrated profile: fitted on all four "
                        f"families pooled, no trials, alpha {cal.alpha:g}."),
        "calibration": {
            "data": data,
            "models": models, "datasets": sorted({k.split("/")[-1] for k in cal.strata}),
            "fit": "train problems with crc32('<dataset>/<problem_id>') % 3 == 0",
            "calibrate": "the other train problems",
            "method": "logistic score (L2, standardised, one weight per trajectory); threshold by Learn-then-Test "
                      "fixed-sequence testing over 100 thresholds 0.9999 -> 0.30 with exact binomial p-values"
                      + (", stopping also where one stratum's calibration trajectories (calibration_strata) show more "
                         "than alpha harmful exits" if cal.guard else " (no stratum guard)"),
            "final_answer": "re-extracted from full_text (certaindex evaluate --final-answer extracted)",
            "tokens": "reasoning tokens up to the exit plus every probe / trial output token",
            **cal.summary(),
            "command": command,
            **(extra or {}),
        },
    }
