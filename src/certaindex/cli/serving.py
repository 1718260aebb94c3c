"""Command-line subcommands for online serving: ``loadtest`` (live, on an engine) and ``simulate``
(the same programs and scheduler core against a fitted engine cost model).

``certaindex/cli.py`` adds them with :func:`add_subcommands`; handlers are async functions of the
parsed arguments returning an exit status. Mistakes raise ``ValueError`` (exit 2), engine
failures ``EngineError`` (exit 1), as everywhere in the CLI.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.console import Console

from certaindex.cli import common
from certaindex.cli.common import (
    emit_table,
    parse_floats,
    parse_policies,
    parse_slos,
    progress_bar,
    summary_table,
    write_records,
)
from certaindex.cli.simulate_governor import add_governor_args, simulate_governor
from certaindex.serving.loadgen import ProgramRecord, Summary, poisson_arrivals, summarise, trace_arrivals

__all__ = ["add_subcommands", "loadtest_command", "simulate_command", "summary_table"]

DEFAULT_TRACES = "benchmarks/traces/gsm8k-smollm2-135m.jsonl.gz"
DEFAULT_COST_MODEL = "benchmarks/results/online-serving/cost-model-embedded.json"
BASELINE = "full-fcfs"


# ------------------------------------------------------------------------------------ arguments


def _add_serving_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("serving")
    group.add_argument("--capacity", type=int, default=1,
                       help="most requests in flight at once, the engine's useful batch size (default 1: llama.cpp "
                       "in process runs one generation at a time)")
    group.add_argument("--policies", default="full-fcfs,exit-fcfs,exit-sched",
                       help="policies to compare, comma-separated, from full-fcfs, full-sched, exit-fcfs, exit-sched "
                       "(default full-fcfs,exit-fcfs,exit-sched; full-fcfs is the baseline)")
    group.add_argument("--slo", type=float, action="append",
                       help="latency SLO in seconds; repeat for several (default 30). The first is the deadline "
                       "exit-sched is told (arrival + SLO)")
    group.add_argument("--seed", type=int, default=0, help="seed of the Poisson arrivals (default 0)")
    group.add_argument("--aging", type=float, default=30.0,
                       help="*-sched: seconds after its arrival from which a program goes before all later ones (default 30)")
    group.add_argument("--out", help="write per-program records to this JSONL file")
    group.add_argument("--report", help="also write the command and the table to this text file")


def _add_reasoning_args(parser: argparse.ArgumentParser, budget: int | None, interval: int | None) -> None:
    group = parser.add_argument_group("reasoning")
    group.add_argument("--budget", type=int, default=budget,
                       help="most reasoning tokens" + (f" (default {budget})" if budget else " (default: the traces')"))
    group.add_argument("--probe-interval", type=int, default=interval,
                       help="reasoning tokens between probes" + (f" (default {interval})" if interval else " (default: g)"))
    group.add_argument("--k", type=int, default=3, help="agreeing probes in a row needed to stop (default 3)")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Add ``loadtest`` and ``simulate`` to the ``certaindex`` parser."""

    load = sub.add_parser(
        "loadtest",
        help="replay a data set as Poisson arrivals against an engine; compare full-fcfs, exit-fcfs, exit-sched",
    )
    load.add_argument("--dataset", default="gsm8k", help="a data set name or a JSONL path (default gsm8k)")
    load.add_argument("--limit", type=int, default=12, help="programs (problems) to send (default 12)")
    load.add_argument("--offset", type=int, default=0, help="skip this many problems first")
    load.add_argument("--rate", type=float, default=0.5, help="arrival rate in programs per second (default 0.5)")
    load.add_argument("--arrivals", help="file of arrival times in seconds, one per line (replaces --rate)")
    _add_serving_args(load)
    common.add_engine_args(load)
    common.add_cot_args(load, budget=384, interval=16, k=2, seed_flag="--sample-seed", profile="none")
    load.add_argument("--quiet", action="store_true", help="no progress bar")
    load.set_defaults(handler=loadtest_command)

    sim = sub.add_parser(
        "simulate",
        help="simulate serving recorded traces under each policy against a fitted engine cost model",
    )
    sim.add_argument("--traces", default=DEFAULT_TRACES,
                     help=f"trace file (default {DEFAULT_TRACES}), or a Governor folder of real reasoning "
                     "trajectories (a <model>__<dataset>__seed_<s> run or a folder of runs)")
    sim.add_argument("--cost-model", default=DEFAULT_COST_MODEL,
                     help=f"cost model JSON from benchmarks/engine_cost.py (default {DEFAULT_COST_MODEL})")
    sim.add_argument("--rates", required=True, help="arrival rates to sweep, programs/s, comma-separated")
    sim.add_argument("--programs", type=int, default=200, help="programs per rate (default 200)")
    sim.add_argument("--replicas", type=int, default=1,
                     help="engine replicas, each with its own scheduler core (default 1)")
    _add_serving_args(sim)
    _add_reasoning_args(sim, None, None)
    sim.set_defaults(k=2)
    sim.add_argument("--png", help="plot prefix: writes PREFIX-slo<S>.png per SLO and PREFIX-throughput.png")
    add_governor_args(sim)
    sim.set_defaults(handler=simulate_command)


# ------------------------------------------------------------------------------------ output


# ------------------------------------------------------------------------------------ loadtest


def _read_arrivals(path: str) -> list[float]:
    try:
        lines = Path(path).read_text(encoding="utf-8").split()
    except OSError as exc:
        raise ValueError(f"cannot read --arrivals {path}: {exc.strerror or exc}") from None
    try:
        return trace_arrivals([float(x) for x in lines], start=0.0)
    except ValueError as exc:
        raise ValueError(f"--arrivals {path}: {exc}") from None


def _make_engine(args: argparse.Namespace):

    return common.engine_from_args(args)


async def loadtest_command(args: argparse.Namespace) -> int:
    from certaindex.core.datasets import load_dataset
    from certaindex.serving.loadtest import run_loadtest

    policies = parse_policies(args.policies)
    slos = parse_slos(args.slo)
    common.positive("limit", args.limit)
    common.positive("capacity", args.capacity)
    if args.offset < 0:
        raise ValueError(f"--offset must be >= 0, got {args.offset}")
    if not math.isfinite(args.rate) or args.rate <= 0:
        raise ValueError(f"--rate must be a number of programs per second > 0, got {args.rate}")
    config = common.cot_config(args)
    problems = load_dataset(args.dataset)[args.offset : args.offset + args.limit]
    if not problems:
        raise ValueError(f"--offset {args.offset} leaves no problems in {args.dataset}")
    if args.arrivals:
        arrivals = _read_arrivals(args.arrivals)[: len(problems)]
        if len(arrivals) < len(problems):
            raise ValueError(f"--arrivals has {len(arrivals)} times for {len(problems)} programs")
    else:
        arrivals = poisson_arrivals(len(problems), args.rate, args.seed)
    engine = _make_engine(args)
    try:
        with progress_bar("loadtest", quiet=args.quiet) as progress:
            task = progress.add_task("programs", total=len(problems) * len(policies))

            def done(record: ProgramRecord) -> None:
                progress.update(task, advance=1, description=f"{record.policy}")

            log: dict[str, list[list[int]]] = {}
            results = await run_loadtest(
                engine, problems, arrivals, config, capacity=args.capacity, slo_s=slos[0], policies=policies,
                aging_s=args.aging, on_done=done, request_log=log,
            )
    finally:
        await engine.aclose()
    summaries = {name: summarise(name, records, slos) for name, records in results.items()}
    base = summaries.get(BASELINE)
    rows = [(name, s, base) for name, s in summaries.items()]
    load = f"--arrivals {args.arrivals}" if args.arrivals else f"Poisson {args.rate:g}/s, seed {args.seed}"
    title = (f"loadtest: {len(problems)} {args.dataset} programs, {load}, capacity {args.capacity}, "
             f"engine {engine.name}")
    notes = [
        f"budget {config.budget}, probe interval {config.probe_interval}, k {config.k}; exit-sched deadline = "
        f"arrival + {slos[0]:g} s; ratios (×) against {BASELINE}" if base else "",
        "policies ran one after another on the same engine and the same arrival times",
    ]
    emit_table(summary_table(rows, slos, title), [n for n in notes if n], args.report)
    if args.out:
        write_records(args.out, [({"problem_index": int(r.program_id.split(":")[1]), "requests": log.get(r.program_id, [])}, r)
                                  for records in results.values() for r in records])
    return 0


# ------------------------------------------------------------------------------------ simulate


async def simulate_command(args: argparse.Namespace) -> int:
    from certaindex.serving.costmodel import CostModel
    from certaindex.serving.simulator import plot_sweep, sweep
    from certaindex.traces import read_traces
    from certaindex.traces.governor import is_governor_layout

    if not Path(args.traces).exists():
        raise ValueError(f"--traces {args.traces} does not exist (no such file or folder)")
    if Path(args.traces).is_dir() and is_governor_layout(args.traces):
        return await simulate_governor(args)
    governor_only = [flag for flag, value in (("--dataset-mix", args.dataset_mix), ("--model", args.model),
                                              ("--find-rate", args.find_rate), ("--json", args.json),
                                              ("--no-deadlines", args.no_deadlines), ("--chunked-prefill", args.chunked_prefill),
                                              ("--duration", args.duration),
                                              ("--probe-timing side", args.probe_timing == "side"))
                     if value]
    if args.exit_policy != "default" or args.split != "all":
        governor_only.append("--exit-policy/--split")
    if governor_only:
        raise ValueError(f"{', '.join(governor_only)} apply to Governor folders; {args.traces} is a trace file")
    policies = parse_policies(args.policies)
    slos = parse_slos(args.slo)
    rates = parse_floats("--rates", args.rates)
    for name in ("programs", "replicas", "capacity", "k"):
        common.positive(name, getattr(args, name))
    cost = CostModel.load(args.cost_model)
    traces = read_traces(args.traces)
    settings = traces.settings
    budget = args.budget or settings.budget
    interval = args.probe_interval or settings.granularity
    config = settings.cot_config(probe_interval=interval, k=args.k, budget=budget)
    rows: list[tuple[str, Summary, Summary | None]] = []

    def done(policy: str, rate: float, summary: Summary) -> None:
        Console(stderr=True).print(f"rate {rate:g}/s {policy}: mean latency {summary.mean_latency:.1f} s", highlight=False)

    results = sweep(
        traces, cost, policies, rates, config, programs=args.programs, capacity=args.capacity,
        replicas=args.replicas, slos=slos, seed=args.seed, aging_s=args.aging, on_done=done,
    )
    for rate in rates:
        base = results.get((BASELINE, rate))
        for policy in policies:
            rows.append((f"{rate:g}/s {policy}", results[(policy, rate)][0], base[0] if base else None))
    title = (f"simulate: {args.programs} programs per rate from {Path(args.traces).name}, {args.replicas} replica(s), "
             f"capacity {args.capacity}, cost model {Path(args.cost_model).name}")
    notes = [
        f"cost model: step_s = {cost.a:.3g} + {cost.b:.3g}*batch + {cost.c:.3g}*context; prefill {cost.prefill_s:.3g} s/token, "
        f"request {cost.request_s:.3g} s, max batch {cost.max_batch}, prefix cache {cost.prefix_cache}",
        f"budget {budget}, probe interval {interval}, k {args.k}; exit-sched deadline = arrival + {slos[0]:g} s; "
        f"ratios (×) against {BASELINE} at the same rate",
    ]
    if args.png:
        Path(args.png).parent.mkdir(parents=True, exist_ok=True)
        paths = plot_sweep(results, slos, args.png, title=f"{Path(args.traces).name}, {args.replicas} replica(s)")
        notes.append("plots: " + ", ".join(paths))
    emit_table(summary_table(rows, slos, title), notes, args.report)
    if args.out:
        write_records(args.out, [({"rate": rate}, r) for (_, rate), (_, records) in results.items() for r in records])
    return 0
