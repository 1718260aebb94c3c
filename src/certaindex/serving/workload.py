"""Serving fixed request plans (recorded programs) at swept arrival rates, and the two headline
figures of an SLO comparison: the highest rate a policy sustains at 90% SLO attainment, and the
tightest SLO it attains at 90% (its p90 latency) at a given rate.

A :class:`Workload` is one row of the comparison: a serving policy (``full-fcfs``, ...) and one
:class:`~certaindex.serving.simulator.LoggedProgram` per recorded trajectory, listing the requests
that program sends under that row's early-exit policy (see
:mod:`certaindex.evaluation.serving_plans`). Every row of a comparison holds the same trajectories
in the same order, so at each rate one seeded draw of arrival times and of which trajectory
arrives is shared by all rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from certaindex.serving.costmodel import CostModel
from certaindex.serving.loadgen import (
    ProgramRecord,
    Summary,
    poisson_arrivals,
    summarise,
)
from certaindex.serving.loadtest import policy_spec
from certaindex.serving.simulator import LoggedProgram, simulate_logged

__all__ = ["RateResult", "Serving", "Workload", "draw", "max_rate", "programs_for", "run_workload", "sweep_workloads"]


@dataclass(frozen=True)
class Workload:
    label: str  # the row's name, e.g. "exit-fcfs" or "exit-fcfs (dynasor k=3 interval=64)"
    policy: str  # the serving policy: full-fcfs, full-sched, exit-fcfs or exit-sched
    programs: Sequence[LoggedProgram]  # one per trajectory; arrival times are set per run

    def __post_init__(self) -> None:
        policy_spec(self.policy)
        if not self.programs:
            raise ValueError(f"workload {self.label!r} holds no programs")


@dataclass(frozen=True)
class Serving:
    """How the simulated cluster serves: see :func:`certaindex.serving.simulator.simulate_logged`.

    ``deadlines``: tell the ``*-sched`` cores each program's deadline (arrival + the SLO); without,
    they order by remaining work and certaindex alone. ``chunked_prefill``: a joining request costs
    its uncached tokens' prefill only (vLLM, SGLang), instead of stalling the batch for a pass.
    ``probe_timing``: see :mod:`certaindex.serving.simulator`."""

    capacity: int
    replicas: int = 1
    aging_s: float = 30.0
    kv_tokens: int | None = None
    deadline_slack_s: float | None = None
    deadlines: bool = True
    chunked_prefill: bool = False
    probe_timing: str = "side"  # side: one main stream, probes on the side; chunked: reasoning pauses per probe
    side_probes_scheduled: bool = True  # a side probe takes a scheduler slot (as live) or goes straight to the engine


Draw = tuple[list[float], list[int]]  # arrival times, trajectory index of each arrival


def draw(n_templates: int, programs: int, rate: float, seed: int, weights: Sequence[float] | None = None) -> Draw:
    """Arrival times (Poisson at ``rate``) and which trajectory arrives (``weights``: relative chance of
    each trajectory; uniform when None). Common random numbers: the seed alone fixes the draw, so
    every rate serves the same programs in the same order, the gaps scaled by 1 / rate; attainment
    then falls with the rate by load alone, not by which long programs happened to arrive. Gaps and
    choices come from separate streams, so a longer draw extends a shorter one."""
    if programs < 1:
        raise ValueError(f"programs must be at least 1, got {programs}")
    arrivals = poisson_arrivals(programs, rate, np.random.default_rng([seed, 0]))
    rng = np.random.default_rng([seed, 1])
    p = None
    if weights is not None:
        if len(weights) != n_templates or any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError("weights: one value >= 0 per trajectory, not all 0")
        total = float(sum(weights))
        p = [w / total for w in weights]
    order = [int(i) for i in rng.choice(n_templates, size=programs, p=p)]
    return arrivals, order


def programs_for(rate: float, programs: int, duration_s: float | None) -> int:
    """Programs to serve at ``rate``: ``rate * duration_s`` when a duration is given (every rate then
    loads the engine for the same time, so overload has as long to pile up at a high rate as at a
    low one), else ``programs``."""
    if duration_s is None:
        return programs
    return max(1, math.ceil(rate * duration_s))


def run_workload(workload: Workload, cost: CostModel, arrivals: Sequence[float], order: Sequence[int],
                 serving: Serving, slo_s: float | None = None) -> list[ProgramRecord]:
    """Serve the drawn programs of ``workload`` under its policy."""
    programs = [
        dataclasses.replace(workload.programs[j], program_id=f"{workload.label}:{i}:{workload.programs[j].program_id}",
                            arrival=float(t))
        for i, (t, j) in enumerate(zip(arrivals, order))
    ]
    return simulate_logged(programs, cost, workload.policy, capacity=serving.capacity, replicas=serving.replicas,
                           slo_s=slo_s if serving.deadlines else None, aging_s=serving.aging_s,
                           kv_tokens=serving.kv_tokens, deadline_slack_s=serving.deadline_slack_s,
                           chunked_prefill=serving.chunked_prefill, probe_timing=serving.probe_timing,
                           side_probes_scheduled=serving.side_probes_scheduled)


def _same_trajectories(workloads: Sequence[Workload]) -> int:
    n = len(workloads[0].programs)
    for w in workloads:
        if len(w.programs) != n:
            raise ValueError(f"workload {w.label!r} holds {len(w.programs)} programs, {workloads[0].label!r} {n}")
    return n


def sweep_workloads(
    workloads: Sequence[Workload], cost: CostModel, rates: Sequence[float], serving: Serving, *, programs: int,
    slos: Sequence[float] = (), seed: int = 0, weights: Sequence[float] | None = None,
    duration_s: float | None = None, on_done: Callable[[str, float, Summary], None] | None = None,
) -> dict[tuple[str, float], tuple[Summary, list[ProgramRecord]]]:
    """Every workload at every rate, the same draw shared by all workloads at a rate."""
    if not workloads:
        raise ValueError("no workloads to simulate")
    n = _same_trajectories(workloads)
    results: dict[tuple[str, float], tuple[Summary, list[ProgramRecord]]] = {}
    for rate in rates:
        arrivals, order = draw(n, programs_for(rate, programs, duration_s), rate, seed, weights)
        for w in workloads:
            records = run_workload(w, cost, arrivals, order, serving, slos[0] if slos else None)
            summary = summarise(w.label, records, slos)
            results[(w.label, rate)] = (summary, records)
            if on_done is not None:
                on_done(w.label, rate, summary)
    return results


@dataclass(frozen=True)
class RateResult:
    """The highest rate found at which the SLO attainment reaches the target, and its summary."""

    label: str
    rate: float  # 0.0 when even the lowest rate tried misses the target
    summary: Summary | None
    tried: tuple[tuple[float, float], ...]  # (rate, attainment) of every run, in order
    bounded: bool  # False when the target was still met at the highest rate tried


def max_rate(workload: Workload, cost: CostModel, slo_s: float, serving: Serving, *, lo: float, hi: float,
             programs: int, seed: int = 0, weights: Sequence[float] | None = None, target: float = 0.9,
             rel_tol: float = 0.02, max_runs: int = 16, ceiling: float | None = None,
             duration_s: float | None = None) -> RateResult:
    """Bisect the arrival rate between ``lo`` and ``hi`` for the highest at which at least ``target``
    of the programs end within ``slo_s`` (each rate with its own seeded draw, as in the sweep).

    ``hi`` doubles (up to ``max_runs`` runs in all, never beyond ``ceiling``) while the target is still
    met there; a result still meeting it at the top is marked unbounded. With a fixed number of
    programs a rate far above the engine's capacity is a burst drained within the SLO: the ceiling
    keeps the search where the programs span far more time than the SLO."""
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"need 0 < lo < hi, got lo={lo}, hi={hi}")
    n = len(workload.programs)
    tried: list[tuple[float, float]] = []
    best: tuple[float, Summary] | None = None

    def attainment(rate: float) -> float:
        nonlocal best
        arrivals, order = draw(n, programs_for(rate, programs, duration_s), rate, seed, weights)
        records = run_workload(workload, cost, arrivals, order, serving, slo_s)
        summary = summarise(workload.label, records, [slo_s])
        value = summary.slo[float(slo_s)]
        tried.append((rate, value))
        if value >= target and (best is None or rate > best[0]):
            best = (rate, summary)
        return value

    if attainment(lo) < target:
        return RateResult(workload.label, 0.0, None, tuple(tried), True)
    while attainment(hi) >= target:
        if len(tried) >= max_runs or (ceiling is not None and hi >= ceiling):
            assert best is not None
            return RateResult(workload.label, best[0], best[1], tuple(tried), False)
        lo, hi = hi, (hi * 2 if ceiling is None else min(hi * 2, ceiling))
    while hi - lo > rel_tol * lo and len(tried) < max_runs:
        mid = (lo + hi) / 2
        if attainment(mid) >= target:
            lo = mid
        else:
            hi = mid
    assert best is not None
    return RateResult(workload.label, best[0], best[1], tuple(tried), True)
