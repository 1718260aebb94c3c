"""Offline evaluation of early-exit policies on recorded traces, and calibrated settings.

Every probe-agreement policy (Dynasor-CoT: probe every ``m * g`` tokens, stop once ``k`` probes
agree) is replayed by running :func:`certaindex.programs.cot.solve_cot` itself on a
:class:`~certaindex.traces.replay.ReplayEngine`, so its answers and token counts are those of a
live run. Entropy stopping (stop at the first probe boundary where the mean token entropy of the
reasoning so far is at most a threshold, answering with the probe taken there) is simulated from the
recorded per-chunk entropies; it needs traces recorded with logprobs.

Held-out evaluation splits the problems in two: settings are fitted on one half (target-accuracy
profiling, Learn-then-Test, the four entropy thresholds) and judged on the other. The chosen
probe-agreement setting is written as a small JSON file that :func:`load_calibration` reads back::

    {"format": "certaindex-calibration", "version": 1, "policy": "cot-early",
     "probe_interval": 32, "k": 3, "budget": 384, "probe_tokens": 20, "method": "ltt", ...}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from certaindex.core.answers import answers_equal
from certaindex.core.calibration import (
    THRESHOLD_METHODS,
    EntropyThresholds,
    LTTResult,
    PolicyPoint,
    cheapest_within,
    entropy_thresholds,
    ltt_fixed_sequence,
)
from certaindex.traces.replay import ReplayEngine
from certaindex.programs.cot import CoTConfig, solve_cot
from certaindex.traces import TraceRecord, TraceSet, TraceSettings

__all__ = [
    "CALIBRATION_FORMAT",
    "EvaluationReport",
    "Outcome",
    "Policy",
    "Summary",
    "apply_calibration",
    "calibration_config",
    "choose_setting",
    "load_calibration",
    "plot_pareto",
    "probe_grid",
    "render_tables",
    "replay_outcomes",
    "run_evaluation",
    "simulate_entropy",
    "split_indices",
    "write_calibration",
]

CALIBRATION_FORMAT = "certaindex-calibration"
CALIBRATION_VERSION = 1
DEFAULT_KS = (1, 2, 3, 4)
DEFAULT_MULTIPLES = (1, 2, 4, 8)


# ------------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class Policy:
    """One way to run the traces: ``full`` reasoning, ``probe`` agreement, or ``entropy`` stopping."""

    family: str
    probe_interval: int
    k: int = 0
    threshold: float | None = None
    method: str | None = None  # which entropy-threshold formula

    @property
    def label(self) -> str:
        if self.family == "full":
            return "full reasoning"
        if self.family == "probe":
            return f"probe {self.probe_interval} k={self.k}"
        return f"entropy {self.method} tau={self.threshold:.3f}"


@dataclass(frozen=True)
class Outcome:
    answer: str | None
    correct: bool
    tokens: int  # every generated token: reasoning, probes, answer
    reasoning_tokens: int
    probe_tokens: int
    stop_reason: str


def default_intervals(settings: TraceSettings) -> list[int]:
    g = settings.granularity
    return [m * g for m in DEFAULT_MULTIPLES if m * g <= max(g, settings.budget)]


def probe_grid(settings: TraceSettings, intervals: Sequence[int] | None = None, ks: Sequence[int] = DEFAULT_KS) -> list[Policy]:
    """Probe-agreement policies, ordered from conservative to aggressive *before* seeing any data:
    by the earliest possible exit ``k * interval`` (later first), then by interval (longer first).
    Learn-then-Test tests them in this order."""
    g = settings.granularity
    intervals = list(intervals) if intervals else default_intervals(settings)
    for interval in intervals:
        if interval < 1 or interval % g:
            raise ValueError(f"probe interval {interval} is not a multiple of the traces' granularity g={g}")
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
    policies = [Policy("probe", interval, k) for interval in sorted(set(intervals)) for k in sorted(set(ks))]
    return sorted(policies, key=lambda p: (-(p.k * p.probe_interval), -p.probe_interval, -p.k))


def full_policy(settings: TraceSettings) -> Policy:
    return Policy("full", settings.granularity)


# ------------------------------------------------------------------------------------- replaying


class _Correctness:
    def __init__(self) -> None:
        self._cache: dict[tuple[str | None, str], bool] = {}

    def __call__(self, answer: str | None, gold: str) -> bool:
        key = (answer, gold)
        if key not in self._cache:
            self._cache[key] = answer is not None and answers_equal(answer, gold)
        return self._cache[key]


def cumulative_entropies(record: TraceRecord) -> list[tuple[int, float | None]]:
    """(boundary tokens, token-weighted mean entropy of the reasoning so far) after every chunk."""
    out, weighted, tokens = [], 0.0, 0
    known = True
    for chunk in record.chunks:
        if chunk.tokens > 0:
            if chunk.entropy is None:
                known = False
            else:
                weighted += chunk.entropy * chunk.tokens
        tokens += chunk.tokens
        out.append((tokens, weighted / tokens if known and tokens else None))
    return out


def simulate_entropy(record: TraceRecord, interval: int, threshold: float, budget: int, correct: Callable[[str | None, str], bool]) -> Outcome:
    """Entropy stopping on one trace: at every ``interval`` boundary below the budget where the mean
    token entropy so far is at most ``threshold``, take the probe (its tokens count); stop when it
    answers without hesitating. Otherwise the trace runs to its end, as full reasoning."""
    probe_tokens = 0
    for chunk, (at, entropy) in zip(record.chunks, cumulative_entropies(record)):
        if chunk.probe is None or at % interval or at >= budget:
            continue
        if entropy is None:
            raise ValueError(f"trace {record.id!r} has no entropy statistics (record it with logprobs)")
        if entropy <= threshold:
            probe_tokens += chunk.probe.tokens
            if chunk.probe.answer is not None and chunk.probe.answer.strip() and not chunk.probe.hesitant:
                answer = chunk.probe.answer
                return Outcome(answer, correct(answer, record.gold), at + probe_tokens, at, probe_tokens, "certain")
    final = record.final
    extra_probe = final.tokens if final.source == "budget-probe" else 0
    return Outcome(final.answer, correct(final.answer, record.gold), record.full_tokens + probe_tokens,
                   record.reasoning_tokens, probe_tokens + extra_probe, record.stop)


def entropy_pairs(records: Sequence[TraceRecord], interval: int, correct: Callable[[str | None, str], bool]) -> tuple[list[float], list[bool]]:
    """Labelled entropies for threshold fitting: at every ``interval`` boundary with a probe, the mean
    token entropy so far and whether the probe's answer there is correct (what stopping there gives)."""
    entropies, labels = [], []
    for record in records:
        for chunk, (at, entropy) in zip(record.chunks, cumulative_entropies(record)):
            if chunk.probe is None or at % interval or entropy is None:
                continue
            entropies.append(entropy)
            labels.append(correct(chunk.probe.answer, record.gold) and not chunk.probe.hesitant)
    return entropies, labels


ProgressFn = Callable[[int, int], None]


async def replay_outcomes(
    traces: TraceSet,
    policies: Sequence[Policy],
    on_progress: ProgressFn | None = None,
    correct: Callable[[str | None, str], bool] | None = None,
) -> dict[Policy, list[Outcome]]:
    """Replay every full/probe policy on every trace with solve_cot, and simulate entropy policies."""
    engine = ReplayEngine(traces)
    settings = traces.settings
    correct = correct or _Correctness()
    total = len(policies) * len(traces.records)
    done = 0
    results: dict[Policy, list[Outcome]] = {}
    for policy in policies:
        rows = []
        for record in traces.records:
            if policy.family == "entropy":
                assert policy.threshold is not None
                rows.append(simulate_entropy(record, policy.probe_interval, policy.threshold, settings.budget, correct))
            else:
                config = settings.cot_config(
                    probe_interval=policy.probe_interval,
                    k=max(1, policy.k),
                    early_exit=policy.family == "probe",
                    seed=record.seed,
                )
                r = await solve_cot(engine, record.question, config)
                rows.append(Outcome(r.answer, correct(r.answer, record.gold), r.total_tokens, r.reasoning_tokens,
                                    r.probe_tokens, r.stop_reason))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
        results[policy] = rows
    return results


# ------------------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class Summary:
    policy: Policy
    n: int
    correct: int
    mean_tokens: float
    mean_reasoning_tokens: float
    mean_probe_tokens: float
    harmful: int  # wrong where full reasoning was right
    helpful: int  # right where full reasoning was wrong
    saving: float  # fraction of full reasoning's mean tokens not spent
    stops: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.label,
            "family": self.policy.family,
            "probe_interval": self.policy.probe_interval,
            "k": self.policy.k or None,
            "threshold": self.policy.threshold,
            "method": self.policy.method,
            "n": self.n,
            "accuracy": self.accuracy,
            "mean_tokens": self.mean_tokens,
            "mean_reasoning_tokens": self.mean_reasoning_tokens,
            "mean_probe_tokens": self.mean_probe_tokens,
            "saving": self.saving,
            "harmful_exits": self.harmful,
            "helpful_exits": self.helpful,
            "stops": self.stops,
        }


def summarise(policy: Policy, outcomes: Sequence[Outcome], full: Sequence[Outcome], idx: Sequence[int] | None = None) -> Summary:
    idx = list(range(len(outcomes))) if idx is None else list(idx)
    rows = [outcomes[i] for i in idx]
    base = [full[i] for i in idx]
    n = len(rows)

    def mean(values: list[float]) -> float:
        return math.fsum(values) / len(values) if values else 0.0

    full_mean = mean([o.tokens for o in base])
    stops: dict[str, int] = {}
    for o in rows:
        stops[o.stop_reason] = stops.get(o.stop_reason, 0) + 1
    mean_tokens = mean([o.tokens for o in rows])
    return Summary(
        policy=policy,
        n=n,
        correct=sum(o.correct for o in rows),
        mean_tokens=mean_tokens,
        mean_reasoning_tokens=mean([o.reasoning_tokens for o in rows]),
        mean_probe_tokens=mean([o.probe_tokens for o in rows]),
        harmful=sum(1 for o, f in zip(rows, base) if f.correct and not o.correct),
        helpful=sum(1 for o, f in zip(rows, base) if o.correct and not f.correct),
        saving=1.0 - mean_tokens / full_mean if full_mean else 0.0,
        stops=dict(sorted(stops.items())),
    )


def split_indices(records: Sequence[TraceRecord], fraction: float = 0.5, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split the traces by problem (all samples of a problem on one side): ``fraction`` of the
    problems, drawn with ``seed``, calibrate; the rest test."""
    if not 0 < fraction < 1:
        raise ValueError(f"the split fraction must be in (0, 1), got {fraction}")
    ids = sorted({r.id for r in records})
    if len(ids) < 2:
        raise ValueError("a held-out split needs traces of at least 2 problems")
    random.Random(seed).shuffle(ids)
    n_cal = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    cal_ids = set(ids[:n_cal])
    cal = [i for i, r in enumerate(records) if r.id in cal_ids]
    test = [i for i, r in enumerate(records) if r.id not in cal_ids]
    return cal, test


# ------------------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Selection:
    """A setting chosen on calibration data, with why."""

    method: str  # "ltt" or "target"
    policy: Policy | None
    summary: Summary | None  # on the calibration examples
    full: Summary
    ltt: LTTResult | None = None
    p_value: float | None = None


def choose_setting(
    outcomes: dict[Policy, list[Outcome]],
    probe_policies: Sequence[Policy],
    full: Policy,
    idx: Sequence[int],
    method: str = "ltt",
    alpha: float = 0.1,
    delta: float = 0.1,
    max_loss: float = 0.0,
) -> Selection:
    """Pick a probe-agreement setting on the calibration examples ``idx``.

    ``ltt``: the cheapest of the settings that Learn-then-Test certifies (harmful-exit rate <= alpha
    with probability >= 1 - delta; every certified setting carries the guarantee, so choosing among
    them by cost keeps it). ``target``: the cheapest whose accuracy is within ``max_loss`` of full
    reasoning's (no guarantee). ``policy`` is None when nothing qualifies.
    """
    base = outcomes[full]
    full_summary = summarise(full, base, base, idx)
    summaries = [summarise(p, outcomes[p], base, idx) for p in probe_policies]
    if method == "target":
        points = [PolicyPoint(s, s.accuracy, s.mean_tokens) for s in summaries]
        best = cheapest_within(points, full_summary.accuracy, max_loss)
        return Selection("target", best.policy.policy if best else None, best.policy if best else None, full_summary)
    if method != "ltt":
        raise ValueError(f"unknown calibration method {method!r}: use 'ltt' or 'target'")
    result = ltt_fixed_sequence([s.harmful for s in summaries], len(list(idx)), alpha, delta)
    if not result.certified:
        return Selection("ltt", None, None, full_summary, result)
    best = min(result.certified, key=lambda j: (summaries[j].mean_tokens, -j))
    return Selection("ltt", summaries[best].policy, summaries[best], full_summary, result, result.p_values[best])


def calibration_config(choice: Selection, traces: TraceSet, alpha: float, delta: float, max_loss: float) -> dict[str, Any]:
    """The JSON config of a chosen setting (see :func:`load_calibration`)."""
    if choice.policy is None or choice.summary is None:
        raise ValueError("no setting was chosen, so there is nothing to write")
    s = traces.settings
    config: dict[str, Any] = {
        "format": CALIBRATION_FORMAT,
        "version": CALIBRATION_VERSION,
        "policy": "cot-early",
        "probe_interval": choice.policy.probe_interval,
        "k": choice.policy.k,
        "budget": s.budget,
        "probe_tokens": s.probe_tokens,
        "temperature": s.temperature,
        "method": choice.method,
    }
    if choice.method == "ltt":
        config.update(alpha=alpha, delta=delta, p_value=choice.p_value,
                      guarantee=f"harmful-exit rate <= {alpha} with probability >= {1 - delta:g}")
    else:
        config.update(max_loss=max_loss)
    config["calibration"] = {
        "traces": traces.path,
        "model": traces.header.model,
        "engine": traces.header.engine,
        "granularity": s.granularity,
        "examples": choice.summary.n,
        "accuracy": round(choice.summary.accuracy, 6),
        "full_accuracy": round(choice.full.accuracy, 6),
        "mean_tokens": round(choice.summary.mean_tokens, 3),
        "full_mean_tokens": round(choice.full.mean_tokens, 3),
        "harmful_exits": choice.summary.harmful,
    }
    config["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return config


def write_calibration(path: str | os.PathLike[str], config: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def load_calibration(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a calibrated setting written by ``certaindex calibrate``; ValueError (naming the file)
    when it is missing or malformed. The dict holds at least ``policy``, ``probe_interval`` and ``k``."""
    label = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{label}: no such calibration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{label}: cannot read the calibration file: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
        raise ValueError(f"{label}: not a certaindex calibration file (format {CALIBRATION_FORMAT!r} expected)")
    if data.get("version") != CALIBRATION_VERSION:
        raise ValueError(f"{label}: calibration version {data.get('version')!r} is not supported (this certaindex reads {CALIBRATION_VERSION})")
    if data.get("policy") != "cot-early":
        raise ValueError(f"{label}: unknown policy {data.get('policy')!r} (expected 'cot-early')")
    for key in ("probe_interval", "k"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}: {key!r} must be an int >= 1, got {value!r}")
    for key in ("budget", "probe_tokens"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{label}: {key!r} must be an int >= 1, got {value!r}")
    return data


def apply_calibration(config: CoTConfig, calibration: dict[str, Any], budget: bool = False) -> CoTConfig:
    """``config`` with the calibrated probe interval and k (and the calibrated budget if ``budget``,
    and the probe trigger where the profile names one)."""
    changes: dict[str, Any] = {"probe_interval": calibration["probe_interval"], "k": calibration["k"], "early_exit": True}
    if budget and calibration.get("budget"):
        changes["budget"] = calibration["budget"]
    if calibration.get("probe_trigger"):
        changes["probe_trigger"] = calibration["probe_trigger"]
    return dataclasses.replace(config, **changes)


# ------------------------------------------------------------------------------------- the whole run


@dataclass(frozen=True)
class HeldOut:
    """A setting fitted on the calibration split and judged on the test split."""

    name: str
    policy: Policy | None
    note: str
    calib: Summary | None
    test: Summary | None
    test_full: Summary


@dataclass
class EvaluationReport:
    traces: TraceSet
    summaries: list[Summary]  # every policy on every trace; full reasoning first
    thresholds: EntropyThresholds | None  # fitted on all traces (in-sample; for the table and plot)
    heldout: list[HeldOut]
    calib_size: int
    test_size: int
    choice: Selection | None  # the setting fitted on the calibration split by ``method``
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "traces": self.traces.path,
            "model": self.traces.header.model,
            "settings": dataclasses.asdict(self.traces.settings),
            "policies": [s.to_dict() for s in self.summaries],
            "thresholds": dataclasses.asdict(self.thresholds) if self.thresholds else None,
            "heldout": {
                "calibration_problems": self.calib_size,
                "test_problems": self.test_size,
                "rows": [
                    {
                        "name": h.name,
                        "setting": h.policy.label if h.policy else None,
                        "note": h.note,
                        "calibration": h.calib.to_dict() if h.calib else None,
                        "test": h.test.to_dict() if h.test else None,
                        "test_full": h.test_full.to_dict(),
                    }
                    for h in self.heldout
                ],
            },
            "notes": self.notes,
        }


def _entropy_policies(thresholds: EntropyThresholds, interval: int) -> list[Policy]:
    return [Policy("entropy", interval, threshold=getattr(thresholds, m), method=m) for m in THRESHOLD_METHODS]


async def run_evaluation(
    traces: TraceSet,
    intervals: Sequence[int] | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    split: float = 0.5,
    split_seed: int = 0,
    method: str = "ltt",
    alpha: float = 0.1,
    delta: float = 0.1,
    max_loss: float = 0.0,
    entropy_interval: int | None = None,
    on_progress: ProgressFn | None = None,
) -> EvaluationReport:
    """Replay the policy grid on all traces, then fit on one split and judge on the other."""
    if not traces.records:
        raise ValueError(f"{traces.path}: the trace set holds no traces")
    settings = traces.settings
    correct = _Correctness()
    full = full_policy(settings)
    probes = probe_grid(settings, intervals, ks)
    entropy_interval = entropy_interval or settings.granularity
    if entropy_interval % settings.granularity:
        raise ValueError(f"the entropy check interval {entropy_interval} is not a multiple of g={settings.granularity}")
    outcomes = await replay_outcomes(traces, [full, *probes], on_progress, correct)
    records = traces.records
    notes: list[str] = []
    has_entropy = all(r.has_entropy() for r in records)
    thresholds: EntropyThresholds | None = None
    if has_entropy:
        try:
            thresholds = entropy_thresholds(*entropy_pairs(records, entropy_interval, correct))
        except ValueError as exc:
            notes.append(f"entropy stopping skipped: {exc}")
    else:
        notes.append("entropy stopping skipped: the traces were recorded without logprobs")
    if thresholds is not None and thresholds.mu_c >= thresholds.mu_i:
        notes.append(
            f"correct probe answers do not come with lower entropy here (mu_c {thresholds.mu_c:.3f} >= mu_i "
            f"{thresholds.mu_i:.3f}, d = {thresholds.d:.2f}, {thresholds.n_c} correct / {thresholds.n_i} incorrect): "
            "the entropy thresholds carry no signal on these traces"
        )
    if thresholds is not None:
        outcomes.update(await replay_outcomes(traces, _entropy_policies(thresholds, entropy_interval), None, correct))
    base = outcomes[full]
    summaries = [summarise(p, rows, base) for p, rows in outcomes.items()]

    # Held out: fit on the calibration problems, judge on the others.
    cal, test = split_indices(records, split, split_seed)
    test_full = summarise(full, base, base, test)
    heldout: list[HeldOut] = []
    chosen: Selection | None = None
    for name in ("target", "ltt"):
        choice = choose_setting(outcomes, probes, full, cal, name, alpha, delta, max_loss)
        if name == method:
            chosen = choice
        if choice.policy is None:
            why = (f"no setting certified (needs harmful exits near 0 on {len(cal)} examples at alpha={alpha}, delta={delta})"
                   if name == "ltt" else f"no setting within {max_loss:.1%} of full accuracy")
            heldout.append(HeldOut(_method_title(name, alpha, delta, max_loss), None, why, None, None, test_full))
            continue
        note = f"p={choice.p_value:.3g}" if name == "ltt" else ""
        heldout.append(HeldOut(_method_title(name, alpha, delta, max_loss), choice.policy, note, choice.summary,
                               summarise(choice.policy, outcomes[choice.policy], base, test), test_full))
    if has_entropy:
        cal_records = [records[i] for i in cal]
        try:
            fitted = entropy_thresholds(*entropy_pairs(cal_records, entropy_interval, correct))
        except ValueError as exc:
            notes.append(f"held-out entropy thresholds skipped: {exc}")
        else:
            for policy in _entropy_policies(fitted, entropy_interval):
                rows = [simulate_entropy(r, policy.probe_interval, policy.threshold or 0.0, settings.budget, correct) for r in records]
                heldout.append(HeldOut(f"entropy {policy.method}", policy, "",
                                       summarise(policy, rows, base, cal), summarise(policy, rows, base, test), test_full))
    return EvaluationReport(traces, summaries, thresholds, heldout, len({records[i].id for i in cal}),
                            len({records[i].id for i in test}), chosen, notes)


def _method_title(name: str, alpha: float, delta: float, max_loss: float) -> str:
    if name == "ltt":
        return f"LTT alpha={alpha:g} delta={delta:g}"
    return f"target loss<={max_loss:.1%}"


# ------------------------------------------------------------------------------------- output


def render_tables(report: EvaluationReport) -> list[Any]:
    """Rich tables: every policy on all traces, then the held-out results."""
    from rich.table import Table

    traces = report.traces
    s = traces.settings
    n = len(traces.records)
    table = Table(title=f"{n} traces of {traces.header.model} (g={s.granularity}, budget {s.budget}): every policy, all traces")
    for column in ("policy", "accuracy", "mean tokens (incl. probes)", "saving", "harmful", "helpful", "stops"):
        table.add_column(column, justify="left" if column in ("policy", "stops") else "right", no_wrap=column != "stops")
    for summary in report.summaries:
        table.add_row(
            summary.policy.label,
            f"{100 * summary.accuracy:.1f}% ({summary.correct}/{summary.n})",
            f"{summary.mean_tokens:.1f}",
            "baseline" if summary.policy.family == "full" else f"{100 * summary.saving:.1f}%",
            str(summary.harmful),
            str(summary.helpful),
            ", ".join(f"{k} {v}" for k, v in summary.stops.items()),
        )
    held = Table(
        title=f"held out: fitted on {report.calib_size} problems, tested on {report.test_size} "
        f"(full reasoning on the test split: {100 * report.heldout[0].test_full.accuracy:.1f}%, "
        f"{report.heldout[0].test_full.mean_tokens:.1f} tokens)" if report.heldout else "held out"
    )
    for column in ("fitted by", "setting", "calib acc", "test acc", "vs full", "test tokens", "saving", "harmful", "note"):
        held.add_column(column, justify="left" if column in ("fitted by", "setting", "note") else "right",
                        no_wrap=column != "note")
    for h in report.heldout:
        if h.test is None:
            held.add_row(h.name, "none", "", "", "", "", "", "", h.note)
            continue
        assert h.calib is not None and h.policy is not None
        change = h.test.accuracy - h.test_full.accuracy
        held.add_row(
            h.name,
            h.policy.label,
            f"{100 * h.calib.accuracy:.1f}%",
            f"{100 * h.test.accuracy:.1f}%",
            f"{100 * change:+.1f} pp",
            f"{h.test.mean_tokens:.1f}",
            f"{100 * h.test.saving:.1f}%",
            str(h.test.harmful),
            h.note,
        )
    return [table, held]


def plot_pareto(report: EvaluationReport, path: str | os.PathLike[str]) -> Path:
    """Accuracy against mean tokens (probes included): a curve per k over the probe intervals, the
    entropy thresholds, and full reasoning marked."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("the Pareto plot needs matplotlib: pip install matplotlib") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7.5, 5.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    probes = [s for s in report.summaries if s.policy.family == "probe"]
    for k in sorted({s.policy.k for s in probes}):
        pts = sorted((s for s in probes if s.policy.k == k), key=lambda s: s.mean_tokens)
        ax.plot([s.mean_tokens for s in pts], [100 * s.accuracy for s in pts], marker="o", label=f"probe agreement, k={k}")
        for s in pts:
            ax.annotate(str(s.policy.probe_interval), (s.mean_tokens, 100 * s.accuracy), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")
    entropy = sorted((s for s in report.summaries if s.policy.family == "entropy"), key=lambda s: s.mean_tokens)
    if entropy:
        ax.plot([s.mean_tokens for s in entropy], [100 * s.accuracy for s in entropy], marker="s", linestyle="--",
                label="entropy stopping")
        for s in entropy:
            ax.annotate(s.policy.method or "", (s.mean_tokens, 100 * s.accuracy), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
    full = next(s for s in report.summaries if s.policy.family == "full")
    ax.scatter([full.mean_tokens], [100 * full.accuracy], marker="*", s=220, color="black", zorder=5, label="full reasoning")
    frontier, best = [], -1.0
    for s in sorted(report.summaries, key=lambda s: (s.mean_tokens, -s.accuracy)):
        if s.accuracy > best:
            frontier.append(s)
            best = s.accuracy
    ax.step([s.mean_tokens for s in frontier], [100 * s.accuracy for s in frontier], where="post", color="grey",
            alpha=0.5, linewidth=1, label="Pareto frontier")
    st = report.traces.settings
    ax.set_title(f"{report.traces.header.model}: {len(report.traces.records)} traces, g={st.granularity}, budget {st.budget}",
                 fontsize=10)
    ax.set_xlabel("mean generated tokens per problem (reasoning + probes + answer)")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return path
