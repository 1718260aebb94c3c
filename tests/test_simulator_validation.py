"""The simulator replays exactly the work a live run did on the real embedded engine.

The live run's own request log is simulated (not recorded traces: llama.cpp's greedy output depends
on its KV-cache state and version, so the same problem can reason differently in a recording and in
an interleaved live run), on the cost model shipped for this engine. Only what holds whatever the
model writes and however fast the machine is: the same programs, arrivals and tokens, causal times.

How close the simulated latencies come to the measured ones is a speed figure, measured by
``benchmarks/sim_vs_real.py`` (results and tolerance in benchmarks/README.md and docs/loadtest.md),
not asserted here: on a shared 2-core machine a timed assertion fails when the load changes between
the calibration and the run (seen: 69% off under a load average of 10)."""

from pathlib import Path

import pytest

from certaindex.core.datasets import load_dataset
from certaindex.programs.cot import CoTConfig
from certaindex.serving.costmodel import CostModel
from certaindex.serving.loadtest import run_policy
from certaindex.serving.simulator import LoggedProgram, simulate_logged

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.model
async def test_the_simulator_replays_the_live_run_of_the_embedded_engine(embedded_engine):
    cost = CostModel.load(ROOT / "benchmarks" / "results" / "online-serving" / "cost-model-embedded.json")
    problems = load_dataset("gsm8k")[:4]
    config = CoTConfig(budget=64, probe_interval=16, k=2)
    arrivals = [0.0, 0.3, 0.6, 0.9]  # faster than the engine serves them: they queue
    for policy in ("exit-fcfs", "exit-sched"):
        log: dict = {}
        live = await run_policy(embedded_engine, problems, arrivals, policy, config, capacity=1, slo_s=20.0,
                                request_log=log)
        programs = [LoggedProgram(r.program_id, r.arrival, tuple(map(tuple, log[r.program_id])), r.tokens) for r in live]
        assert len(programs) == len(problems) and all(p.program_id.endswith(q.id) for p, q in zip(
            sorted(programs, key=lambda p: p.arrival), problems))
        assert all(len(p.requests) >= 1 for p in programs)
        # Every generated token was logged as a request's tokens.
        assert all(sum(request[3] for request in p.requests) == p.tokens for p in programs)
        simulated = simulate_logged(programs, cost, policy, capacity=1, slo_s=20.0)
        by_id = {r.program_id: r for r in simulated}
        assert set(by_id) == {r.program_id for r in live}
        for record in live:
            twin = by_id[record.program_id]
            assert twin.arrival == record.arrival and twin.tokens == record.tokens
            assert twin.arrival <= twin.start <= twin.end
