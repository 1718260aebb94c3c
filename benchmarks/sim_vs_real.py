"""Simulate a finished load test and compare: same programs, same arrival times, same policies.

    python benchmarks/sim_vs_real.py benchmarks/results/online-serving/loadtest-embedded.jsonl \
        --cost-model benchmarks/results/online-serving/cost-model-embedded.json --slo 20

Each program of the load test (its ``--out`` JSONL, which logs every request: probe or not, prompt
tokens, max_tokens, tokens generated) is replayed request by request through the same scheduler
core, arriving when it arrived live (``simulate_logged``). So the comparison checks the cost model
and the event loop on exactly the work that ran: llama.cpp's greedy output depends on its cache
state and version, so the same problem can reason differently in another run, and comparing with
recorded traces would mix that in.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections import defaultdict

from certaindex.serving.costmodel import CostModel
from certaindex.serving.loadgen import ProgramRecord, summarise
from certaindex.serving.simulator import LoggedProgram, simulate_logged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("loadtest", help="per-program JSONL written by `certaindex loadtest --out`")
    parser.add_argument("--cost-model", required=True)
    parser.add_argument("--capacity", type=int, default=1)
    parser.add_argument("--slo", type=float, default=20.0, help="the first SLO of the load test (exit-sched deadline)")
    args = parser.parse_args(argv)

    cost = CostModel.load(args.cost_model)
    live: dict[str, list[dict]] = defaultdict(list)
    with open(args.loadtest, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            live[row["policy"]].append(row)

    print("$ python " + " ".join(shlex.quote(a) for a in sys.argv))
    print(f"cost model: {args.cost_model} (fitted on: {cost.meta.get('machine', '?')})\n")
    print(f"{'policy':<11} {'real mean s':>11} {'sim mean s':>10} {'error':>7} {'real p50':>8} {'sim p50':>8} "
          f"{'real p90':>8} {'sim p90':>8} {'real prog/s':>11} {'sim prog/s':>10}")
    errors = []
    for policy, rows in live.items():
        rows.sort(key=lambda r: r["arrival"])
        logged = [LoggedProgram(r["program_id"], r["arrival"], tuple(tuple(q) for q in r["requests"]), r["tokens"],
                                r["correct"], r.get("answer"), r.get("stop_reason", "")) for r in rows]
        sim = simulate_logged(logged, cost, policy, capacity=args.capacity, slo_s=args.slo)
        real = [ProgramRecord(r["program_id"], r["arrival"], r["start"], r["end"], r["tokens"], r["correct"]) for r in rows]
        s_real, s_sim = summarise(policy, real), summarise(policy, sim)
        error = (s_sim.mean_latency - s_real.mean_latency) / s_real.mean_latency
        errors.append(abs(error))
        print(f"{policy:<11} {s_real.mean_latency:>11.2f} {s_sim.mean_latency:>10.2f} {error:>+7.0%} "
              f"{s_real.latency[50]:>8.1f} {s_sim.latency[50]:>8.1f} {s_real.latency[90]:>8.1f} {s_sim.latency[90]:>8.1f} "
              f"{s_real.programs_per_s:>11.4f} {s_sim.programs_per_s:>10.4f}")
    print(f"\nlargest relative error of the mean latency: {max(errors):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
