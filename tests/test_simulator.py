"""The cost model and the discrete-event simulator, on the shipped trace set (no model needed)."""

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from certaindex.serving.costmodel import CostModel, fit_cost_model, fit_linear
from certaindex.traces.replay import ReplayEngine
from certaindex.serving.loadgen import summarise
from certaindex.programs.cot import solve_cot
from certaindex.serving.simulator import plot_sweep, simulate, sweep
from certaindex.traces import read_traces

TRACES = Path(__file__).resolve().parents[1] / "benchmarks" / "traces" / "gsm8k-smollm2-135m.jsonl.gz"


@pytest.fixture(scope="module")
def traces():
    return read_traces(TRACES)


@pytest.fixture(scope="module")
def config(traces):
    return traces.settings.cot_config(probe_interval=16, k=2)


def unit_cost(**changes) -> CostModel:
    """Every decode step 1 s, nothing else costs: latencies count tokens."""
    fields = dict(a=1.0, b=0.0, c=0.0, prefill_s=0.0, request_s=0.0, max_batch=1, prefix_cache="last")
    fields.update(changes)
    return CostModel(**fields)


# -- cost model -----------------------------------------------------------------------------------


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    steps = [(b, ctx, 0.004 + 0.001 * b + 2e-6 * ctx) for b in (1, 2, 4, 8) for ctx in rng.uniform(100, 5000, 3)]
    joins = [(n, 0.02 + 0.0005 * n) for n in (10, 100, 500, 1000)]
    model = fit_cost_model(steps, joins, max_batch=8, prefix_cache="program")
    assert (model.a, model.b, model.c) == pytest.approx((0.004, 0.001, 2e-6), rel=1e-6)
    assert (model.request_s, model.prefill_s) == pytest.approx((0.02, 0.0005), rel=1e-6)


def test_fit_constant_batch_puts_nothing_on_b_and_clips_negatives():
    steps = [(1, 100.0, 0.010), (1, 500.0, 0.012), (1, 900.0, 0.014)]
    model = fit_cost_model(steps, [(10, 0.01), (100, 0.1)], max_batch=1, prefix_cache="last")
    assert model.b == 0.0
    assert model.a + model.b == pytest.approx(0.0095)
    assert fit_linear([[1, 1, 1], [1, 2, 3]], [3.0, 2.0, 1.0]) == [pytest.approx(2.0), 0.0]  # slope < 0 dropped


def test_steps_closed_form_matches_step_by_step():
    model = CostModel(a=0.01, b=0.002, c=1e-5, max_batch=4)
    total = sum(model.step_s(3, 900 + 3 * i) for i in range(17))
    assert model.steps_s(17, 3, 900) == pytest.approx(total)


def test_cost_model_round_trip_and_errors(tmp_path):
    model = CostModel(a=0.01, b=0.0, c=1e-6, prefill_s=0.001, meta={"machine": "x"})
    path = model.save(tmp_path / "m.json")
    assert CostModel.load(path) == model
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a certaindex-cost-model"):
        CostModel.load(bad)
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        CostModel.load(bad)
    with pytest.raises(ValueError, match="max_batch"):
        CostModel(a=1.0, b=0.0, c=0.0, max_batch=0)
    with pytest.raises(ValueError, match="prefill_s"):
        CostModel(a=1.0, b=0.0, c=0.0, prefill_s=-1.0)


# -- simulator ------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["full-fcfs", "exit-fcfs", "exit-sched"])
def test_programs_replay_exactly_what_solve_cot_does(traces, config, policy):
    """Tokens, answers and stop reasons of simulated programs are those of solve_cot on the replay."""
    arrivals = [100.0 * i for i in range(8)]  # far apart: no contention, so no allowance cuts either
    records = simulate(traces, unit_cost(), policy, arrivals, config, capacity=1, slo_s=60)
    early = policy != "full-fcfs"
    engine = ReplayEngine(traces)
    for i, record in enumerate(records):
        trace = traces.records[i]
        cfg = config.__class__(**{**config.__dict__, "early_exit": early, "seed": trace.seed})
        direct = asyncio.run(solve_cot(engine, trace.question, cfg))
        assert (record.tokens, record.answer, record.stop_reason) == (direct.total_tokens, direct.answer, direct.stop_reason)


def test_alone_on_the_engine_latency_is_tokens_times_step(traces, config):
    records = simulate(traces, unit_cost(), "exit-fcfs", [0.0, 1000.0, 2000.0], config, capacity=1)
    for record in records:
        assert record.start == record.arrival
        assert record.latency == pytest.approx(record.tokens)  # 1 s per token, nothing else costs


def test_prefill_is_paid_again_when_programs_interleave(traces, config):
    """llama.cpp's single-sequence cache: two programs taking turns re-evaluate their contexts."""
    cost = unit_cost(a=0.001, prefill_s=1.0)
    alone = simulate(traces, cost, "exit-fcfs", [0.0, 10_000.0], config, capacity=1)
    together = simulate(traces, cost, "exit-fcfs", [0.0, 0.0], config, capacity=1)
    span_alone = sum(r.latency for r in alone)
    span_together = max(r.end for r in together)
    assert span_together > 1.5 * span_alone
    shared = simulate(traces, unit_cost(a=0.001, prefill_s=1.0, prefix_cache="program"), "exit-fcfs", [0.0, 0.0], config, capacity=1)
    assert max(r.end for r in shared) == pytest.approx(span_alone, rel=0.05)


def test_capacity_one_runs_one_request_at_a_time(traces, config):
    cost = unit_cost(max_batch=8)
    one = simulate(traces, cost, "exit-fcfs", [0.0] * 4, config, capacity=1)
    four = simulate(traces, cost, "exit-fcfs", [0.0] * 4, config, capacity=4)
    total = sum(r.tokens for r in one)
    assert max(r.end for r in one) == pytest.approx(total)  # serial: every token a step of its own
    assert max(r.end for r in four) < 0.6 * total  # batched: steps shared


def test_replicas_share_the_load(traces, config):
    arrivals = [0.5 * i for i in range(20)]
    cost = unit_cost(a=0.01)
    one = summarise("x", simulate(traces, cost, "exit-fcfs", arrivals, config, capacity=1, replicas=1))
    two = summarise("x", simulate(traces, cost, "exit-fcfs", arrivals, config, capacity=1, replicas=2))
    assert two.mean_latency < 0.7 * one.mean_latency


def test_a_program_resubmits_before_its_freed_slot_is_dispatched(traces, config):
    """Like the runtime, the finishing program resubmits first, so shortest-remaining-work keeps
    one program on the engine to its end; FCFS takes turns between the two."""
    cost = unit_cost(a=0.01)
    sched = simulate(traces, cost, "exit-sched", [0.0, 0.0], config, capacity=1)
    fcfs = simulate(traces, cost, "exit-fcfs", [0.0, 0.0], config, capacity=1)
    assert sched[1].start >= sched[0].end or sched[0].start >= sched[1].end
    assert fcfs[1].start < fcfs[0].end


def test_certaindex_scheduling_beats_fcfs_under_load(traces, config):
    cost = CostModel(a=0.011, b=0.0, c=5e-6, prefill_s=0.0013, max_batch=1, prefix_cache="last")
    rng = np.random.default_rng(3)
    arrivals = list(np.cumsum(rng.exponential(1 / 0.3, size=40)))
    fcfs = summarise("fcfs", simulate(traces, cost, "exit-fcfs", arrivals, config, capacity=1, slo_s=20), [20])
    sched = summarise("sched", simulate(traces, cost, "exit-sched", arrivals, config, capacity=1, slo_s=20), [20])
    assert sched.mean_latency < fcfs.mean_latency
    assert sched.slo[20.0] >= fcfs.slo[20.0]


def test_full_sched_runs_the_same_full_reasoning_in_a_better_order(traces, config):
    """full-sched isolates scheduling: the same programs and tokens as full-fcfs, no probes, but
    one program keeps the engine (no context re-read per switch), so latency falls under load."""
    cost = CostModel(a=0.011, b=0.0, c=5e-6, prefill_s=0.0013, max_batch=1, prefix_cache="last")
    arrivals = [2.0 * i for i in range(30)]
    fcfs = simulate(traces, cost, "full-fcfs", arrivals, config, capacity=1, slo_s=20)
    sched = simulate(traces, cost, "full-sched", arrivals, config, capacity=1, slo_s=20)
    assert [r.tokens for r in sched] == [r.tokens for r in fcfs]
    assert summarise("s", sched).mean_latency < summarise("f", fcfs).mean_latency


def test_bad_settings_are_rejected(traces, config):
    with pytest.raises(ValueError, match="multiples of g"):
        simulate(traces, unit_cost(), "exit-fcfs", [0.0], config.__class__(**{**config.__dict__, "probe_interval": 24}), capacity=1)
    with pytest.raises(ValueError, match="unknown policy"):
        simulate(traces, unit_cost(), "lifo", [0.0], config, capacity=1)
    with pytest.raises(ValueError, match="replicas"):
        simulate(traces, unit_cost(), "exit-fcfs", [0.0], config, capacity=1, replicas=0)


def test_sweep_and_plots(traces, config, tmp_path):
    results = sweep(traces, unit_cost(a=0.01), ["full-fcfs", "exit-sched"], [0.5, 1.0], config,
                    programs=10, capacity=1, slos=[5.0, 20.0])
    assert set(results) == {(p, r) for p in ("full-fcfs", "exit-sched") for r in (0.5, 1.0)}
    # Both policies at a rate see the same arrivals and the same traces.
    a = results[("full-fcfs", 0.5)][1]
    b = results[("exit-sched", 0.5)][1]
    assert [r.arrival for r in a] == [r.arrival for r in b]
    assert [r.program_id.split(":")[2] for r in a] == [r.program_id.split(":")[2] for r in b]
    paths = plot_sweep(results, [5.0, 20.0], str(tmp_path / "sweep"))
    assert [Path(p).name for p in paths] == ["sweep-slo5.png", "sweep-slo20.png", "sweep-throughput.png"]
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_logged_programs_cost_what_their_requests_cost():
    from certaindex.serving.simulator import LoggedProgram, simulate_logged

    # Two programs of two requests each; 1 s per token, 0.01 s per prefilled token.
    cost = unit_cost(prefill_s=0.01, probe_suffix_tokens=0)
    a = LoggedProgram("a", 0.0, ((0, 100, 16, 16), (1, 116, 20, 4)), tokens=20)
    b = LoggedProgram("b", 0.0, ((0, 50, 16, 10),), tokens=10)
    records = {r.program_id: r for r in simulate_logged([a, b], cost, "exit-fcfs", capacity=1)}
    # FCFS: a's chunk (prefill 100, 16 steps), b's chunk (prefill 50, 10 steps), a's probe (context
    # switched away: prefill 116 again, 4 steps).
    assert records["b"].end == pytest.approx(1.0 + 16 + 0.5 + 10)
    assert records["a"].end == pytest.approx(1.0 + 16 + 0.5 + 10 + 1.16 + 4)
    assert records["a"].tokens == 20
