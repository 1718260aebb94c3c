"""``certaindex simulate --traces <Governor folder>``: serve real reasoning programs (recorded
trajectories of R1-Distill and Qwen3 models, probed every 64 tokens) on a cost model.

Each trajectory's plan under each policy comes from the pure policy functions
(:mod:`certaindex.evaluation.serving_plans`): full reasoning is one request of the whole
trajectory; early exit is reasoning chunks and probes up to the probe where the policy exits. The
simulator schedules those requests with the real scheduler core on the cost model. Rows:
``full-fcfs`` (baseline), ``full-sched``, ``exit-fcfs`` and ``exit-sched``, each ``exit-*`` row
once per ``--exit-policy`` (the first is the main one; others are labelled with their policy).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from certaindex.cli import common
from certaindex.cli.common import (
    emit_table,
    err,
    parse_floats,
    parse_policies,
    parse_slos,
    summary_table,
    write_records,
    write_report,
)
from certaindex.cli.governor import grade, load_trajectories
from certaindex.evaluation.governor import PolicySpec, parse_policy
from certaindex.evaluation.serving_plans import PLAN_FAMILIES, ProgramPlan, plan_for
from certaindex.serving.costmodel import CostModel
from certaindex.serving.loadgen import Summary
from certaindex.serving.simulator import LoggedProgram
from certaindex.serving.workload import (
    RateResult,
    Serving,
    Workload,
    max_rate,
    sweep_workloads,
)
from certaindex.traces.governor import SPLITS, Trajectory

__all__ = ["add_governor_args", "exit_policies", "parse_mix", "simulate_governor", "workloads_for"]

BASELINE = "full-fcfs"
TARGET = 0.9


def add_governor_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Governor folders (real reasoning trajectories as the workload)")
    group.add_argument("--dataset-mix",
                       help="datasets whose trajectories arrive, comma-separated, optionally weighted: "
                       "math500,aime24 (every trajectory equally likely) or math500=3,aime24=1 (datasets drawn 3:1); "
                       "default: every dataset in the folder")
    group.add_argument("--model", help="model slug to serve when the folder holds several (e.g. r1-distill-qwen-7b)")
    group.add_argument("--split", choices=SPLITS, default="all",
                       help="problems of split_manifest.json to serve (default all)")
    group.add_argument("--exit-policy", default="default",
                       help="early-exit policies of the exit-* rows, comma-separated: default (the shipped profile), "
                       "dynasor:k=3[,interval=64], oracle, or a profile .json (default: default)")
    group.add_argument("--prompt-tokens", type=int, default=100,
                       help="tokens of each problem's prompt (default 100; the traces record reasoning tokens only)")
    group.add_argument("--kv-capacity", default="auto",
                       help="KV cache tokens per replica that bound admission: auto (the cost model's "
                       "meta.kv_capacity_tokens, none if absent), none, or a number (default auto)")
    group.add_argument("--no-deadlines", action="store_true",
                       help="*-sched: do not tell the scheduler core deadlines (it orders by remaining work and "
                       "certaindex alone); by default each program's deadline is arrival + the first --slo")
    group.add_argument("--chunked-prefill", action="store_true",
                       help="a request joining the batch costs only its uncached tokens' prefill, folded into the "
                       "running decode steps as vLLM and SGLang do; default: it stalls the batch for a forward pass "
                       "of its own (the cost model's request_s plus its tokens)")
    group.add_argument("--probe-timing", choices=("side", "chunked"),
                       help="side (default, as the proxy runs on HTTP engines): each program reasons in one main "
                       "stream and its probes run beside it in the batch; on exit the stream is closed and the "
                       "tokens it decoded past the deciding probe (overrun) count as cost. chunked: the earlier "
                       "design, the reasoning pausing for each probe. Governor folders only: a trace file's "
                       "programs run solve_cot's chunked path")
    group.add_argument("--side-probes", choices=("scheduled", "engine"), default="engine",
                       help="with --probe-timing side: engine (default, as the live runtime): a probe of an admitted "
                       "program takes no scheduler slot and goes straight to the engine beside its stream, ahead "
                       "of its queue, charged to the program's budget; scheduled (the earlier runtime): it takes "
                       "a slot from the scheduler core like any request, waiting behind other programs when the "
                       "capacity is used")
    group.add_argument("--duration", type=float,
                       help="seconds of arrivals per rate: serve rate x DURATION programs (replaces --programs), so "
                       "every rate loads the engine equally long; use several times the SLO, or a rate the engine "
                       "cannot sustain passes as a short burst")
    group.add_argument("--find-rate", action="store_true",
                       help="bisect each row's highest arrival rate with >= 90%% of programs within the first --slo")
    group.add_argument("--grade-cache", help="grade cache file (default ~/.cache/certaindex/grades.json)")
    group.add_argument("--json", help="write every figure (sweep, rates found, accuracies) to this JSON file")
    group.add_argument("--quiet", action="store_true", help="no progress output")


def parse_mix(text: str | None, present: Sequence[str]) -> dict[str, float | None]:
    """``math500,aime24`` -> {dataset: None} (pooled), ``math500=3,aime24=1`` -> weights per dataset."""
    if not text:
        return {d: None for d in present}
    mix: dict[str, float | None] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        weight: float | None = None
        if eq:
            try:
                weight = float(value)
            except ValueError:
                weight = math.nan
            if not math.isfinite(weight) or weight <= 0:
                raise ValueError(f"--dataset-mix {text!r}: weight of {name} must be a number > 0")
        if name not in present:
            raise ValueError(f"--dataset-mix {text!r}: no {name!r} trajectories here (datasets: {', '.join(present)})")
        mix[name] = weight
    if not mix:
        raise ValueError("--dataset-mix names no dataset")
    if len({w is None for w in mix.values()}) > 1:
        raise ValueError(f"--dataset-mix {text!r}: weight every dataset or none")
    return mix


def exit_policies(text: str) -> list[PolicySpec]:
    specs = _split_specs(text)
    if not specs:
        raise ValueError("--exit-policy names no policy")
    for spec in specs:
        if spec.family not in PLAN_FAMILIES or spec.family == "full":
            raise ValueError(f"--exit-policy {spec.label!r}: the exit rows replay default, dynasor:k=N[,interval=M], "
                             "oracle or a profile file")
    return specs


def _split_specs(text: str) -> list[PolicySpec]:
    """Policies separated by commas where a dynasor spec's own ``,interval=`` stays attached."""
    parts: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if part.startswith("interval=") and parts:
            parts[-1] += "," + part
        elif part:
            parts.append(part)
    return [parse_policy(p) for p in parts]


def _kv(text: str, cost: CostModel) -> int | None:
    if text == "none":
        return None
    if text == "auto":
        value = cost.meta.get("kv_capacity_tokens") if isinstance(cost.meta, dict) else None
        return int(value) if value else None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"--kv-capacity takes auto, none or a number of tokens >= 1, got {text!r}")
    return value


def _logged(plan: ProgramPlan) -> LoggedProgram:
    return LoggedProgram(plan.trajectory, 0.0, plan.requests, plan.tokens, plan.correct, plan.answer,
                         "exit" if plan.exit_pos is not None else "end", plan.budget,
                         stream_tokens=plan.stream_tokens, exit_pos=plan.exit_pos)


def workloads_for(trajs: Sequence[Trajectory], policies: Sequence[str], exits: Sequence[PolicySpec], cache, *,
                  prompt_tokens: int, suffix_tokens: int) -> tuple[list[Workload], dict[str, list[ProgramPlan]]]:
    """One workload per row: full-* rows serve full plans, exit-* rows each exit policy's plans."""
    plans: dict[str, list[ProgramPlan]] = {}

    def plans_of(spec: PolicySpec) -> list[ProgramPlan]:
        if spec.label not in plans:
            plans[spec.label] = [plan_for(spec, t, cache, prompt_tokens=prompt_tokens, suffix_tokens=suffix_tokens)
                                 for t in trajs]
        return plans[spec.label]

    rows: list[Workload] = []
    for policy in policies:
        if policy.startswith("full"):
            rows.append(Workload(policy, policy, [_logged(p) for p in plans_of(PolicySpec("full"))]))
            continue
        for i, spec in enumerate(exits):
            label = policy if i == 0 else f"{policy} ({spec.label})"
            rows.append(Workload(label, policy, [_logged(p) for p in plans_of(spec)]))
    return rows, plans


def _weights(trajs: Sequence[Trajectory], mix: dict[str, float | None]) -> list[float] | None:
    if all(w is None for w in mix.values()):
        return None
    count: dict[str, int] = {}
    for t in trajs:
        count[t.dataset] = count.get(t.dataset, 0) + 1
    return [float(mix[t.dataset]) / count[t.dataset] for t in trajs]  # type: ignore[arg-type]


def _pool(plans: Sequence[ProgramPlan], weights: Sequence[float] | None) -> tuple[float, float, float]:
    """(accuracy, mean tokens, mean probes) over the trajectory pool, as arrivals draw it."""
    w = list(weights) if weights is not None else [1.0] * len(plans)
    total = sum(w)
    return (sum(x * p.correct for x, p in zip(w, plans)) / total,
            sum(x * p.tokens for x, p in zip(w, plans)) / total,
            sum(x * p.probes for x, p in zip(w, plans)) / total)


def _headline(rows: Sequence[Workload], pool: dict[str, tuple[float, float, float]], found: dict[str, RateResult],
              p90_at: dict[str, Summary], ref_rate: float | None, slo: float, title: str) -> Table:
    table = Table(title=title)
    for column in ("policy", "accuracy", "Δ acc (points)", "mean tokens", "tokens ×", "probes", "overrun",
                   f"max rate @90% ≤{slo:g}s", "rate ×", f"p90 s @{ref_rate:g}/s" if ref_rate else "p90 s", "SLO tighter ×"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    base_acc, base_tok, _ = pool[BASELINE] if BASELINE in pool else next(iter(pool.values()))
    base_rate = found[BASELINE].rate if BASELINE in found else None
    base_p90 = p90_at[BASELINE].latency[90] if BASELINE in p90_at else None
    for w in rows:
        acc, tok, probes = pool[w.label]
        r = found.get(w.label)
        s = p90_at.get(w.label)
        rate = "" if r is None else (f"{r.rate:.3f}" + ("" if r.bounded else "+") if r.rate > 0
                                     else f"< {r.tried[0][0]:g}")  # even the lowest rate missed the target
        rate_x = f"{r.rate / base_rate:.2f}" if r is not None and base_rate else ""
        p90 = s.latency[90] if s is not None else None
        overrun = f"{r.summary.mean_overrun:.1f}" if r is not None and r.summary is not None else ""
        table.add_row(w.label, f"{acc:.3f}", f"{100 * (acc - base_acc):+.1f}", f"{tok:.0f}", f"{tok / base_tok:.3f}",
                      f"{probes:.1f}", overrun, rate, rate_x, f"{p90:.1f}" if p90 is not None else "",
                      f"{base_p90 / p90:.2f}" if p90 and base_p90 else "")
    return table


def _trajectories(args: argparse.Namespace) -> tuple[list[Trajectory], dict[str, float | None], str]:
    """The trajectories to serve (one model, the datasets of ``--dataset-mix``), the mix, and the model."""
    trajs = load_trajectories(args.traces, args.split, args.quiet)
    models = sorted({t.model for t in trajs})
    if args.model:
        if args.model not in models:
            raise ValueError(f"--model {args.model!r}: no such trajectories here (models: {', '.join(models)})")
        trajs = [t for t in trajs if t.model == args.model]
    elif len(models) > 1:
        raise ValueError(f"{args.traces} holds several models ({', '.join(models)}): serve one with --model "
                         "(a cost model is for one model shape)")
    mix = parse_mix(args.dataset_mix, sorted({t.dataset for t in trajs}))
    trajs = [t for t in trajs if t.dataset in mix]
    return trajs, mix, args.model or models[0]


def _serving(args: argparse.Namespace, kv_tokens: int | None) -> Serving:
    if args.duration is not None and (not math.isfinite(args.duration) or args.duration <= 0):
        raise ValueError(f"--duration must be seconds > 0, got {args.duration}")
    return Serving(capacity=args.capacity, replicas=args.replicas, aging_s=args.aging, kv_tokens=kv_tokens,
                   deadlines=not args.no_deadlines, chunked_prefill=args.chunked_prefill,
                   probe_timing=args.probe_timing or "side",
                   side_probes_scheduled=args.side_probes == "scheduled")


def _notes(args: argparse.Namespace, serving: Serving, cost: CostModel, kv_tokens: int | None,
           exits: Sequence[PolicySpec], slos: Sequence[float]) -> list[str]:
    """The lines under the sweep table saying how the programs were served."""
    return [
        ("probe timing: side (one main stream per program, each probe or trial a separate request beside it in "
         "the batch, at most one in flight; on exit the stream is closed and its tokens past the deciding probe, "
         "the overrun, count as cost; side probes "
         + ("take a scheduler slot" if serving.side_probes_scheduled else "go straight to the engine, as live")
         + "); mean tokens and tokens × are the plans' (what evaluate counts), overrun comes on top"
         if serving.probe_timing == "side" else
         "probe timing: chunked (the reasoning pauses for each probe: a chunk up to each probe, then the probe)"),
        f"cost model: step_s = {cost.a:.3g} + {cost.b:.3g}*batch + {cost.c:.3g}*context; prefill {cost.prefill_s:.3g} "
        f"s/token (a probe computes only its {cost.probe_suffix_tokens}-token suffix: the prompt and reasoning are "
        f"prefix-cached), request {cost.request_s:.3g} s"
        + (" (not charged: --chunked-prefill folds joins into decode steps)" if args.chunked_prefill else
           " (a join stalls the batch)") + f", max batch {cost.max_batch}, prefix cache {cost.prefix_cache}",
        "KV capacity: " + (f"{kv_tokens:,} tokens per replica; a request is admitted only while every running "
                           "request fits to its end (no preemption), the scheduler choosing who goes next"
                           if kv_tokens else "not modelled"),
        "exit policies: " + "; ".join(f"{s.label}" + (" (main)" if i == 0 else "") for i, s in enumerate(exits))
        + f"; prompt {args.prompt_tokens} tokens; aging {args.aging:g} s; *-sched deadline = "
        + ("none (--no-deadlines)" if args.no_deadlines else f"arrival + {slos[0]:g} s") + "; "
        f"ratios (×) against {BASELINE} at the same rate",
    ]


def _find_rates(args: argparse.Namespace, rows: Sequence[Workload], cost: CostModel, serving: Serving,
                rates: Sequence[float], slos: Sequence[float], weights: Sequence[float] | None,
                console: Console) -> tuple[dict[str, RateResult], dict[str, Summary], float | None]:
    """``--find-rate``: each row's highest rate with 90% within the first SLO (bisected), and every
    row's summary at full-fcfs's highest rate (for the tightest SLO met there)."""
    found: dict[str, RateResult] = {}
    for w in rows:
        found[w.label] = max_rate(w, cost, slos[0], serving, lo=min(rates), hi=max(rates), programs=args.programs,
                                  seed=args.seed, weights=weights, target=TARGET, ceiling=2 * max(rates),
                                  duration_s=args.duration)
        r = found[w.label]
        shown = f"{r.rate:.3f}/s" if r.rate > 0 else f"none (at {r.tried[0][0]:g}/s only {r.tried[0][1]:.0%})"
        console.print(f"{w.label}: highest rate with >= 90% within {slos[0]:g} s: {shown}", highlight=False)
    missed = [label for label, r in found.items() if r.rate == 0]
    if missed:
        err.print(f"[yellow]note:[/yellow] {', '.join(missed)}: fewer than 90% of programs end within {slos[0]:g} s "
                  f"even at {min(rates):g}/s, the lowest --rates: give a larger --slo (a program's own reasoning can "
                  "take longer than it) or lower rates", highlight=False)
    ref_rate = found[BASELINE].rate if BASELINE in found and found[BASELINE].rate > 0 else None
    p90_at: dict[str, Summary] = {}
    if ref_rate:
        sweep_ref = sweep_workloads(rows, cost, [ref_rate], serving, programs=args.programs, slos=slos,
                                    seed=args.seed, weights=weights, duration_s=args.duration)
        p90_at = {label: s for (label, _), (s, _) in sweep_ref.items()}
    return found, p90_at, ref_rate


async def simulate_governor(args: argparse.Namespace) -> int:
    """The Governor branch of ``certaindex simulate``."""
    from certaindex.serving.simulator import plot_sweep

    if args.budget is not None or args.probe_interval is not None:
        raise ValueError("--budget and --probe-interval apply to trace files; with a Governor folder choose the "
                         "early-exit rule with --exit-policy (e.g. dynasor:k=8,interval=128)")
    policies = parse_policies(args.policies)
    slos = parse_slos(args.slo)
    rates = parse_floats("--rates", args.rates)
    for name in ("programs", "replicas", "capacity"):
        common.positive(name, getattr(args, name))
    if args.prompt_tokens < 0:
        raise ValueError(f"--prompt-tokens must be >= 0, got {args.prompt_tokens}")
    exits = exit_policies(args.exit_policy)
    cost = CostModel.load(args.cost_model)
    kv_tokens = _kv(args.kv_capacity, cost)
    trajs, mix, model = _trajectories(args)
    cache = grade(trajs, args.grade_cache, args.quiet)
    rows, plans = workloads_for(trajs, policies, exits, cache, prompt_tokens=args.prompt_tokens,
                                suffix_tokens=cost.probe_suffix_tokens)
    weights = _weights(trajs, mix)
    console = Console(stderr=True, quiet=args.quiet)

    def done(label: str, rate: float, summary: Summary) -> None:
        console.print(f"rate {rate:g}/s {label}: mean latency {summary.mean_latency:.1f} s, "
                      f"within {slos[0]:g} s {summary.slo[slos[0]]:.0%}", highlight=False)

    serving = _serving(args, kv_tokens)
    results = sweep_workloads(rows, cost, rates, serving, programs=args.programs, slos=slos, seed=args.seed,
                              weights=weights, duration_s=args.duration, on_done=done)
    table_rows: list[tuple[str, Summary, Summary | None]] = []
    for rate in rates:
        base = results.get((BASELINE, rate))
        for w in rows:
            table_rows.append((f"{rate:g}/s {w.label}", results[(w.label, rate)][0], base[0] if base else None))
    datasets = ",".join(f"{d}" + (f"={w:g}" if w is not None else "") for d, w in mix.items())
    what = f"{len(trajs)} {model} trajectories ({datasets}, split {args.split})"
    per_rate = f"{args.duration:g} s of arrivals" if args.duration else f"{args.programs} programs"
    title = (f"simulate: {per_rate} per rate drawn from {what}, {args.replicas} replica(s), "
             f"capacity {args.capacity}, cost model {Path(args.cost_model).name}")
    pool = {w.label: _pool(plans["full" if w.policy.startswith("full") else _exit_label(w, exits)], weights)
            for w in rows}
    notes = _notes(args, serving, cost, kv_tokens, exits, slos)
    found: dict[str, RateResult] = {}
    p90_at: dict[str, Summary] = {}
    ref_rate: float | None = None
    if args.find_rate:
        found, p90_at, ref_rate = _find_rates(args, rows, cost, serving, rates, slos, weights, console)
    emit_table(summary_table(table_rows, slos, title), notes, None)
    extra_tables = []
    if found:
        extra_tables.append(_headline(
            rows, pool, found, p90_at, ref_rate, slos[0],
            f"headline: {what}; highest rate with >= 90% of programs within {slos[0]:g} s (bisected), "
            f"and the tightest SLO met by 90% (p90 latency) at full-fcfs's highest rate; "
            f"overrun: mean tokens per program streamed past the deciding probe, at the highest rate "
            f"(probe timing {serving.probe_timing})"))
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        paths = plot_sweep(results, slos, args.png, title=f"{what}, {args.replicas} replica(s)")
        notes.append("plots: " + ", ".join(paths))
    if args.report:
        _report(args.report, summary_table(table_rows, slos, title), extra_tables, notes, found)
    for t in extra_tables:
        Console(width=220).print(t)
    if args.json:
        _write_json(args.json, rows, rates, results, found, p90_at, ref_rate, pool, slos, what, kv_tokens, serving)
    if args.out:
        write_records(args.out, [({"rate": rate}, r) for (_, rate), (_, records) in results.items() for r in records])
    return 0


def _exit_label(w: Workload, exits: Sequence[PolicySpec]) -> str:
    for i, spec in enumerate(exits):
        if w.label == (w.policy if i == 0 else f"{w.policy} ({spec.label})"):
            return spec.label
    raise KeyError(w.label)


def _report(path: str, sweep_table: Table, tables: Sequence[Table], notes: Sequence[str],
            found: dict[str, RateResult]) -> None:
    bisections = [f"bisection {label}: " + ", ".join(f"{rate:.3f}/s: {a:.0%}" for rate, a in r.tried)
                  for label, r in found.items()]
    target = write_report(path, [sweep_table, *tables, *notes, *bisections], 220)
    Console().print(f"report written to {target}")


def _write_json(path: str, rows, rates, results, found, p90_at, ref_rate, pool, slos, what, kv_tokens,
                serving: Serving) -> None:
    data = {
        "workload": what, "slos": slos, "kv_capacity_tokens": kv_tokens, "reference_rate": ref_rate,
        "probe_timing": serving.probe_timing,
        "side_probes": "scheduled" if serving.side_probes_scheduled else "engine",
        "rows": [
            {"label": w.label, "policy": w.policy, "accuracy": pool[w.label][0], "mean_tokens": pool[w.label][1],
             "mean_probes": pool[w.label][2],
             "max_rate": found[w.label].rate if w.label in found else None,
             "max_rate_tried": found[w.label].tried if w.label in found else None,
             "p90_at_reference": p90_at[w.label].latency[90] if w.label in p90_at else None,
             "mean_overrun_at_max_rate": (found[w.label].summary.mean_overrun
                                          if w.label in found and found[w.label].summary is not None else None),
             "sweep": {f"{rate:g}": results[(w.label, rate)][0].to_dict() for rate in rates}}
            for w in rows
        ],
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
