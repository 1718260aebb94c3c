"""The simulator against the real embedded engine: the same programs (the live run's own request
log), the same arrivals, a cost model fitted on this machine a moment before. Tolerance: simulated
mean latency within 50% of the measured one (docs/loadtest.md says why: shared CPUs change speed by
tens of percent between the calibration and the run, and prefill is modelled as linear where
llama.cpp's grows faster with context).

The log, not recorded traces: llama.cpp's greedy output depends on its KV-cache state and version,
so the same problem can reason differently in a recording and in an interleaved live run."""

import argparse
import importlib.util
from pathlib import Path

import pytest

from certaindex.serving.costmodel import fit_cost_model
from certaindex.core.datasets import load_dataset
from certaindex.serving.loadgen import summarise
from certaindex.serving.loadtest import run_policy
from certaindex.programs.cot import CoTConfig
from certaindex.serving.simulator import LoggedProgram, simulate_logged

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.5


def _engine_cost_script():
    spec = importlib.util.spec_from_file_location("engine_cost", ROOT / "benchmarks" / "engine_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.model
async def test_simulated_latency_matches_the_embedded_engine(embedded_engine):
    args = argparse.Namespace(seed=0, repeats=1, join_words=[10, 50, 100, 150], batches=[1],
                              context_words=[10, 60, 120], decode_tokens=32)
    steps, joins, suffix_tokens = await _engine_cost_script().measure(embedded_engine, args)
    cost = fit_cost_model(steps, joins, max_batch=1, prefix_cache="last", probe_suffix_tokens=suffix_tokens)

    problems = load_dataset("gsm8k")[:6]
    config = CoTConfig(budget=128, probe_interval=16, k=2)
    arrivals = [0.0, 0.3, 0.6, 0.9, 1.2, 1.5]  # faster than the engine serves them: they queue
    for policy in ("exit-fcfs", "exit-sched"):
        log: dict = {}
        live = await run_policy(embedded_engine, problems, arrivals, policy, config, capacity=1, slo_s=20.0,
                                request_log=log)
        programs = [LoggedProgram(r.program_id, r.arrival, tuple(map(tuple, log[r.program_id])), r.tokens) for r in live]
        simulated = simulate_logged(programs, cost, policy, capacity=1, slo_s=20.0)
        assert sum(len(p.requests) for p in programs) > len(programs)  # programs made several requests
        real, sim = summarise(policy, live).mean_latency, summarise(policy, simulated).mean_latency
        assert abs(sim - real) / real <= TOLERANCE, f"{policy}: simulated mean latency {sim:.2f} s, measured {real:.2f} s"
