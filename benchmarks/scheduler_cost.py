"""Decision cost of the scheduler core with many live programs.

Steady state: ``programs`` live programs each with one gang waiting, the capacity full. One cycle
finishes a running gang, submits a new gang for a random program and dispatches (one gang starts):
the work the runtime asks of the core per request. A report is one ``report()`` of a random
program's certaindex. Times are wall-clock per call on this machine, so compare rows of one run.

    .venv/bin/python benchmarks/scheduler_cost.py [--cycles 20000] [--out benchmarks/results/scheduler-cost/scheduler-cost.txt]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from certaindex.scheduler.core import SchedulerCore  # noqa: E402

CAPACITY = 64


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(policy: str, programs: int, cycles: int, seed: int = 0) -> dict[str, float]:
    rng = random.Random(seed)
    core = SchedulerCore(policy, capacity=CAPACITY, aging_s=1e9)  # type: ignore[arg-type]
    ids = [f"p{i}" for i in range(programs)]
    now = 0.0
    for i, pid in enumerate(ids):
        core.add_program(pid, now=now, budget=10**9, deadline=1e12 if i % 10 == 0 else None, priority=i % 3)
        core.report(pid, certaindex=rng.random())
        core.submit(pid, width=rng.choice((1, 1, 1, 4)), max_tokens=64, now=now)
    running = core.dispatch(now=now)
    cycle_us: list[float] = []
    report_us: list[float] = []
    clock = time.perf_counter_ns
    for i in range(cycles):
        now += 0.001
        gang = running.pop(rng.randrange(len(running)))
        pid = ids[rng.randrange(programs)]
        width = rng.choice((1, 1, 1, 4))
        t0 = clock()
        core.finish(gang, tokens=gang.width * 32)
        core.submit(pid, width=width, max_tokens=64, now=now)
        started = core.dispatch(now=now)
        t1 = clock()
        running.extend(started)
        target, value = ids[rng.randrange(programs)], rng.random()
        t2 = clock()
        core.report(target, certaindex=value)
        t3 = clock()
        if i >= cycles // 10:  # the first tenth warms caches and heaps up
            cycle_us.append((t1 - t0) / 1000)
            report_us.append((t3 - t2) / 1000)
    assert core.pending_gangs >= programs - CAPACITY and core.running <= CAPACITY
    return {
        "cycle_mean": statistics.fmean(cycle_us),
        "cycle_p99": percentile(cycle_us, 0.99),
        "report_mean": statistics.fmean(report_us),
        "report_p99": percentile(report_us, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20_000)
    parser.add_argument("--programs", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    lines = [
        f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}",
        "machine: 2-core CPU VM, shared, noisy"
        f" ({platform.processor() or platform.machine()}, Python {platform.python_version()})",
        f"setup: capacity {CAPACITY}, one waiting gang per live program, {args.cycles} cycles (first 10% not timed)",
        "cycle = finish + submit + dispatch (one gang starts); times in microseconds per call",
        "",
        "| policy | live programs | cycle mean | cycle p99 | report mean | report p99 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for policy in ("certaindex", "fcfs"):
        for programs in args.programs:
            r = measure(policy, programs, args.cycles)
            lines.append(
                f"| {policy} | {programs:,} | {r['cycle_mean']:.1f} | {r['cycle_p99']:.1f} |"
                f" {r['report_mean']:.1f} | {r['report_p99']:.1f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
