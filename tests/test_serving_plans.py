"""Serving real reasoning programs: plans built from Governor trajectories, the simulator consuming
them (KV capacity, chunked prefill), the rate search, and `certaindex simulate` on a hand-made
Governor folder. No test reads the shared 43 MB set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from certaindex import cli
from certaindex.evaluation.governor import PolicySpec, parse_policy
from certaindex.evaluation.grading import GradeCache
from certaindex.evaluation.peers import dynasor
from certaindex.evaluation.profiles import parse_profile
from certaindex.evaluation.serving_plans import plan_for
from certaindex.serving.costmodel import CostModel
from certaindex.serving.loadgen import summarise
from certaindex.serving.simulator import LoggedProgram, simulate_logged
from certaindex.serving.workload import (
    Serving,
    Workload,
    draw,
    max_rate,
    run_workload,
    sweep_workloads,
)
from certaindex.traces.governor import Probe, Trajectory
from tests.governor_data import probe_rows, traj, write_run

PROMPT, SUFFIX = 100, 25


def trajectory(answers: list[str | None], tokens: int, final: str = "7", target: str = "7", out: int = 10,
               certain: list[bool] | None = None) -> Trajectory:
    certain = certain or [True] * len(answers)
    probes = [Probe(64 * (i + 1), a, c, out) for i, (a, c) in enumerate(zip(answers, certain))]
    return Trajectory(model="r1-distill-qwen-7b", model_name="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                      dataset="math500", seed=42, problem_id=0, split="dev", target=target, tokens_used=tokens,
                      full_text="", final_answer=final, final_correct=True, finish_reason="stop", probes=probes)


def cache_for(*answers: str, target: str = "7") -> GradeCache:
    """A grade cache filled by hand: an answer is right when it equals the target; keys are the answers."""
    cache = GradeCache()
    for a in answers:
        cache.equal[(a, target)] = a == target
        cache.keys[a] = a
    return cache


def plan(spec: str | PolicySpec, t: Trajectory, cache: GradeCache, **kw):
    spec = parse_policy(spec) if isinstance(spec, str) else spec
    return plan_for(spec, t, cache, prompt_tokens=PROMPT, suffix_tokens=SUFFIX, **kw)


# -- plans ---------------------------------------------------------------------------------------


def test_full_plan_is_one_request_of_the_whole_trajectory():
    t = trajectory(["3", "7", "7"], tokens=1000)
    p = plan("full", t, cache_for("3", "7"))
    assert p.requests == ((0, PROMPT, 1000, 1000),)
    assert (p.tokens, p.correct, p.exit_pos, p.probes) == (1000, True, None, 0)
    assert p.budget == 16_384


def test_dynasor_plan_chunks_probes_and_exits_where_the_rule_fires():
    t = trajectory(["3", "7", "7", "7", "7"], tokens=1000, out=10)
    cache = cache_for("3", "7")
    p = plan("dynasor:k=2", t, cache)
    # chunk 64, probe "3"; chunk 64, probe "7"; chunk 64, probe "7" -> two agree: exit at 192.
    assert p.requests == (
        (0, PROMPT, 64, 64), (1, PROMPT + 64 + SUFFIX, 32, 10, 0.5),
        (0, PROMPT + 64, 64, 64), (1, PROMPT + 128 + SUFFIX, 32, 10, 0.5),
        (0, PROMPT + 128, 64, 64), (1, PROMPT + 192 + SUFFIX, 32, 10, 1.0),
    )
    assert (p.exit_pos, p.answer, p.correct) == (192, "7", True)
    outcome = dynasor(t, 2, cache.key, lambda a: cache.correct(a, t.target))
    assert p.tokens == outcome.tokens == 192 + 30


def test_a_rule_that_never_fires_reasons_to_the_end_after_every_probe():
    t = trajectory(["1", "2", "3"], tokens=230, final="7")
    p = plan("dynasor:k=2", t, cache_for("1", "2", "3", "7"))
    assert [r[:4] for r in p.requests][-2:] == [(1, PROMPT + 192 + SUFFIX, 32, 10), (0, PROMPT + 192, 38, 38)]
    assert (p.exit_pos, p.answer, p.tokens, p.probes) == (None, "7", 230 + 30, 3)


def test_hesitant_probes_reset_the_reported_certaindex():
    t = trajectory(["7", "7", "7", "7"], tokens=600, certain=[True, False, True, True])
    p = plan("dynasor:k=3", t, cache_for("7"))
    assert [r[4] for r in p.requests if r[0]] == pytest.approx([1 / 3, 0.0, 1 / 3, 2 / 3])
    assert p.exit_pos is None


def test_profile_plan_probes_at_its_interval():
    profile = parse_profile({"format": "certaindex-profile", "version": 1, "name": "test", "models": ["r1-distill-qwen"],
                             "probe_suffix": "x", "probe_interval": 128, "rule": {"kind": "dynasor", "k": 2}})
    t = trajectory(["5", "7", "1", "7", "9", "7"], tokens=1000)
    p = plan(PolicySpec("profile", profile=profile), t, cache_for("5", "7", "1", "9"))
    # grid 128: probes "7" (128), "7" (256) agree -> exit at 256.
    assert [(r[0], r[2]) for r in p.requests if not r[0]] == [(0, 128), (0, 128)]
    assert p.exit_pos == 256 and p.probes == 2


def test_aime_budget_and_policies_without_a_plan():
    t = trajectory(["7"], tokens=100)
    t.dataset = "aime24"
    assert plan("full", t, cache_for("7")).budget == 32_768
    with pytest.raises(ValueError, match="cannot be served"):
        plan("deer:0.9", t, cache_for("7"))


# -- the simulator consuming plans ---------------------------------------------------------------


def unit_cost(**changes) -> CostModel:
    fields = dict(a=1.0, b=0.0, c=0.0, prefill_s=0.0, request_s=0.0, max_batch=8, prefix_cache="program",
                  probe_suffix_tokens=SUFFIX)
    fields.update(changes)
    return CostModel(**fields)


def logged(p, arrival: float = 0.0) -> LoggedProgram:
    return LoggedProgram(p.trajectory, arrival, p.requests, p.tokens, p.correct, p.answer, "", p.budget)


def one_stream(p, arrival: float = 0.0) -> LoggedProgram:
    """The plan with its main stream: served in one stream with side probes by default."""
    return LoggedProgram(p.trajectory, arrival, p.requests, p.tokens, p.correct, p.answer, "", p.budget,
                         stream_tokens=p.stream_tokens, exit_pos=p.exit_pos)


def test_exiting_earlier_ends_sooner_and_spends_what_the_plan_counts():
    t = trajectory(["3", "7", "7", "7", "7", "7"], tokens=2000)
    cache = cache_for("3", "7")
    full, early = plan("full", t, cache), plan("dynasor:k=2", t, cache)
    cost = unit_cost()
    [f] = simulate_logged([logged(full)], cost, "full-fcfs", capacity=8)
    [e] = simulate_logged([logged(early)], cost, "exit-fcfs", capacity=8)
    assert (f.tokens, e.tokens) == (2000, 222)
    assert f.latency == pytest.approx(2000)  # one step per token
    assert e.latency == pytest.approx(222)  # chunks and probes, one after another
    assert e.correct and f.correct


def test_kv_capacity_holds_back_what_does_not_fit():
    a = LoggedProgram("a", 0.0, ((0, 100, 400, 400),), 400)
    b = LoggedProgram("b", 0.0, ((0, 100, 400, 400),), 400)
    cost = unit_cost()
    together = simulate_logged([a, b], cost, "full-fcfs", capacity=8)
    assert max(r.end for r in together) == pytest.approx(400)
    alone = {r.program_id: r for r in simulate_logged([a, b], cost, "full-fcfs", capacity=8, kv_tokens=600)}
    assert alone["a"].end == pytest.approx(400) and alone["b"].end == pytest.approx(800)
    assert simulate_logged([a], cost, "full-fcfs", capacity=8, kv_tokens=10)[0].end == pytest.approx(400)
    # an early-exit chunk holds its program's whole final length, as a full-reasoning request does
    c1 = LoggedProgram("c1", 0.0, ((0, 100, 100, 100), (0, 200, 300, 300)), 400)
    c2 = LoggedProgram("c2", 0.0, ((0, 100, 100, 100), (0, 200, 300, 300)), 400)
    chunks = {r.program_id: r for r in simulate_logged([c1, c2], cost, "exit-fcfs", capacity=8, kv_tokens=600)}
    # one program at a time, FCFS between their chunks: c1 0-100, c2 100-200, c1 200-500, c2 500-800
    assert chunks["c1"].end == pytest.approx(500) and chunks["c2"].end == pytest.approx(800)
    apart = simulate_logged([c1, c2], cost, "exit-fcfs", capacity=8)
    assert [r.end for r in apart] == pytest.approx([400, 400])
    with pytest.raises(ValueError, match="kv_tokens"):
        simulate_logged([a], cost, "full-fcfs", capacity=8, kv_tokens=0)


def test_kv_bound_engine_lets_the_scheduler_pick_who_runs_next():
    # After "first" ends, "long" (500 tokens, a large budget) and "sure" (a probe reporting certaindex
    # 1.0, then a 100-token chunk) cannot both fit 560 KV tokens. FCFS admits "long" (it came first);
    # the certaindex core ranks "sure" first (less remaining work), as vLLM's priority queue would.
    first = LoggedProgram("first", 0.0, ((0, 0, 550, 550),), 550)
    long = LoggedProgram("long", 0.0, ((0, 0, 500, 500),), 500, budget=16_000)
    sure = LoggedProgram("sure", 0.0, ((1, 100 + SUFFIX, 32, 1, 1.0), (0, 100, 100, 100)), 101, budget=1_000)
    cost = unit_cost()
    sched = {r.program_id: r for r in simulate_logged([first, long, sure], cost, "exit-sched", capacity=8, kv_tokens=560)}
    fcfs = {r.program_id: r for r in simulate_logged([first, long, sure], cost, "exit-fcfs", capacity=8, kv_tokens=560)}
    assert fcfs["long"].end == pytest.approx(1050) and fcfs["sure"].end == pytest.approx(1151)
    assert sched["sure"].end == pytest.approx(651) and sched["long"].end == pytest.approx(1151)


def test_chunked_prefill_joins_cost_only_their_tokens():
    p = LoggedProgram("p", 0.0, ((0, 100, 10, 10), (1, 110 + SUFFIX, 32, 5)), 15)
    cost = unit_cost(request_s=3.0, prefill_s=0.01)
    [stall] = simulate_logged([p], cost, "exit-fcfs", capacity=8)
    [chunked] = simulate_logged([p], cost, "exit-fcfs", capacity=8, chunked_prefill=True)
    # prompt 100 + probe suffix 25 prefilled either way; the stall adds request_s per join.
    assert chunked.latency == pytest.approx(15 + 1.25)
    assert stall.latency == pytest.approx(15 + 1.25 + 2 * 3.0)


# -- workloads and the rate search ---------------------------------------------------------------


def workloads():
    ts = [trajectory(["3", "7", "7", "7"] + ["7"] * 10, tokens=900 + 50 * i) for i in range(4)]
    cache = cache_for("3", "7")
    full = Workload("full-fcfs", "full-fcfs", [logged(plan("full", t, cache)) for t in ts])
    early = Workload("exit-fcfs", "exit-fcfs", [logged(plan("dynasor:k=2", t, cache)) for t in ts])
    return full, early


def test_sweep_shares_each_rates_draw_and_early_exit_sustains_more():
    full, early = workloads()
    cost = unit_cost(a=0.01, max_batch=2)
    serving = Serving(capacity=2)
    results = sweep_workloads([full, early], cost, [0.05, 0.5], serving, programs=40, slos=[30.0], seed=3)
    for rate in (0.05, 0.5):
        f, e = results[("full-fcfs", rate)][1], results[("exit-fcfs", rate)][1]
        assert [r.arrival for r in f] == [r.arrival for r in e]
        assert sum(r.tokens for r in e) < sum(r.tokens for r in f)
    assert results[("exit-fcfs", 0.5)][0].slo[30.0] > results[("full-fcfs", 0.5)][0].slo[30.0]
    a1, o1 = draw(4, 10, 1.0, 0)
    a2, o2 = draw(4, 10, 2.0, 0)
    assert (a1, o1) == draw(4, 10, 1.0, 0) and o2 == o1 and a2 == pytest.approx([t / 2 for t in a1])
    assert draw(4, 10, 1.0, 1)[1] != o1
    with pytest.raises(ValueError, match="weights"):
        draw(4, 10, 1.0, 0, weights=[1, 2])


def test_max_rate_bisects_to_the_edge_of_the_target():
    full, early = workloads()
    cost = unit_cost(a=0.01, max_batch=2)
    serving = Serving(capacity=2)
    kw = dict(lo=0.01, hi=1.0, programs=60, seed=1, rel_tol=0.05)
    rf = max_rate(full, cost, 30.0, serving, **kw)
    re_ = max_rate(early, cost, 30.0, serving, **kw)
    assert re_.rate > rf.rate > 0
    for r in (rf, re_):
        passed = [rate for rate, a in r.tried if a >= 0.9]
        assert max(passed) == r.rate
        assert any(rate > r.rate and a < 0.9 for rate, a in r.tried)
        arrivals, order = draw(4, 60, r.rate, 1)
        wl = full if r is rf else early
        assert summarise("x", run_workload(wl, cost, arrivals, order, serving, 30.0), [30.0]).slo[30.0] >= 0.9
    capped = max_rate(early, cost, 1e6, serving, lo=0.01, hi=0.02, programs=20, ceiling=0.04)
    assert not capped.bounded and capped.rate <= 0.04


# -- CLI on a hand-made Governor folder ----------------------------------------------------------


@pytest.fixture()
def governor(tmp_path):
    trajs = [traj(pid, "7", 700 + 64 * pid, "7") for pid in range(3)]
    rows = [r for pid in range(3) for r in probe_rows(pid, ["3", "7", "7", "7", "7", "7", "7", "7", "7", "7"])]
    write_run(tmp_path / "gov", trajs, rows, splits={0: "dev", 1: "dev", 2: "train"})
    cost = CostModel(a=0.01, b=0.0, c=0.0, prefill_s=0.0001, max_batch=4, prefix_cache="program",
                     probe_suffix_tokens=SUFFIX, meta={"kv_capacity_tokens": 5000}).save(tmp_path / "cost.json")
    return tmp_path, tmp_path / "gov", cost


def run_cli(tmp_path, folder, cost, *extra):
    return cli.main(["simulate", "--traces", str(folder), "--cost-model", str(cost), "--rates", "0.5,2", "--programs",
                     "12", "--slo", "20", "--capacity", "4", "--grade-cache", str(tmp_path / "grades.json"), "--quiet",
                     *extra])


def test_cli_simulate_serves_governor_trajectories(governor, capsys):
    tmp_path, folder, cost = governor
    code = run_cli(tmp_path, folder, cost, "--policies", "full-fcfs,exit-fcfs,exit-sched", "--exit-policy",
                   "dynasor:k=2,dynasor:k=3,interval=128", "--split", "dev", "--find-rate", "--json",
                   str(tmp_path / "out.json"), "--report", str(tmp_path / "out.txt"), "--png", str(tmp_path / "p"),
                   "--probe-timing", "side")
    assert code == 0
    data = json.loads((tmp_path / "out.json").read_text())
    assert (data["probe_timing"], data["side_probes"]) == ("side", "scheduled")
    # one stream per program: its probes' answers come back while it decodes, past the exit point (here
    # far past: the streams fill the capacity of 4, so a probe waits for a slot; test_simulator_side)
    assert data["rows"][1]["mean_overrun_at_max_rate"] > 0
    rows = {r["label"]: r for r in data["rows"]}
    assert set(rows) == {"full-fcfs", "exit-fcfs", "exit-sched", "exit-fcfs (dynasor k=3 interval=128)",
                         "exit-sched (dynasor k=3 interval=128)"}
    assert data["kv_capacity_tokens"] == 5000
    # two dev trajectories of 700 and 764 tokens; k=2 exits at 192 after three 10-token probes.
    assert rows["full-fcfs"]["mean_tokens"] == pytest.approx(732)
    assert rows["exit-fcfs"]["mean_tokens"] == pytest.approx(222)
    assert rows["exit-fcfs"]["accuracy"] == 1.0
    assert all(r["max_rate"] > 0 for r in rows.values())
    assert "KV capacity: 5,000 tokens" in (tmp_path / "out.txt").read_text()
    assert "probe timing: side" in (tmp_path / "out.txt").read_text()
    assert (tmp_path / "p-slo20.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--model", "qwen3-8b"], "no such trajectories"),
    (["--exit-policy", "deer:0.9"], "exit rows replay"),
    (["--exit-policy", "full"], "exit rows replay"),
    (["--budget", "1000"], "--exit-policy"),
    (["--dataset-mix", "aime24"], "no 'aime24' trajectories"),
    (["--dataset-mix", "math500=0"], "must be a number > 0"),
    (["--kv-capacity", "lots"], "--kv-capacity"),
])
def test_cli_simulate_governor_bad_input_exits_2(governor, capsys, extra, message):
    tmp_path, folder, cost = governor
    assert run_cli(tmp_path, folder, cost, *extra) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_cli_governor_flags_on_a_trace_file_exit_2(governor, capsys):
    tmp_path, _, cost = governor
    traces = Path(__file__).resolve().parents[1] / "benchmarks" / "traces" / "gsm8k-smollm2-135m.jsonl.gz"
    assert cli.main(["simulate", "--traces", str(traces), "--cost-model", str(cost), "--rates", "1",
                     "--find-rate"]) == 2
    assert "apply to Governor folders" in " ".join(capsys.readouterr().err.split())
    # a trace file's programs run solve_cot in chunks: one-stream timing is for Governor folders
    assert cli.main(["simulate", "--traces", str(traces), "--cost-model", str(cost), "--rates", "1",
                     "--probe-timing", "side"]) == 2
    assert "--probe-timing side apply to Governor folders" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["simulate", "--traces", str(tmp_path / "nowhere"), "--cost-model", str(cost), "--rates", "1",
                     "--no-deadlines"]) == 2
    assert "does not exist" in " ".join(capsys.readouterr().err.split())


# -- the 50 real trajectories shipped in the package -----------------------------------------------


def test_plans_of_the_shipped_real_trajectories_serve_what_evaluate_counts():
    from certaindex.cli.governor import load_trajectories, sample_path
    from certaindex.evaluation.governor import grading_inputs, run_policy

    trajs = load_trajectories(sample_path(), "all", quiet=True)
    cache = GradeCache.load(sample_path() / "grades.json")
    pairs, answers = grading_inputs(trajs)
    if cache.missing(pairs, answers):
        pytest.skip("the shipped grade cache does not cover the sample under this answer equivalence")
    specs = {name: parse_policy(name) for name in ("full", "default", "dynasor:k=3")}
    plans = {name: [plan(spec, t, cache) for t in trajs] for name, spec in specs.items()}
    for name, spec in specs.items():
        for t, p in zip(trajs, plans[name]):
            outcome = run_policy(spec, t, cache)
            assert (p.tokens, p.correct, p.exit_pos) == (outcome.tokens, outcome.correct, outcome.exit_pos)
            chunks = [r for r in p.requests if not r[0]]
            assert sum(r[3] for r in chunks) == (outcome.exit_pos or t.tokens_used)
            assert all(r[1] == PROMPT + pos for r, pos in zip(chunks, [0] + [q[1] - PROMPT - SUFFIX
                                                                              for q in p.requests if q[0]]))
    tokens = {name: sum(p.tokens for p in ps) for name, ps in plans.items()}
    assert tokens["dynasor:k=3"] < tokens["default"] < tokens["full"]
    # served one after another on a unit engine, a program's latency is its plan's tokens
    cost = unit_cost(max_batch=1)
    records = simulate_logged([logged(p, 1e6 * i) for i, p in enumerate(plans["default"][:5])], cost, "exit-fcfs",
                              capacity=1)
    assert [r.latency for r in records] == pytest.approx([p.tokens for p in plans["default"][:5]])
    # One main stream with probes on the side (the default timing): every program spends exactly what
    # evaluate counts plus the tokens its stream decoded past the deciding probe before it returned.
    for name in ("default", "dynasor:k=3"):
        ps = plans[name]
        side = simulate_logged([one_stream(p, 1e6 * i) for i, p in enumerate(ps)], unit_cost(), "exit-fcfs",
                               capacity=8, probe_timing="side")
        chunked = simulate_logged([one_stream(p, 1e6 * i) for i, p in enumerate(ps)], unit_cost(), "exit-fcfs",
                                  capacity=8, probe_timing="chunked")
        for p, r, c in zip(ps, side, chunked):
            assert r.tokens == p.tokens + r.overrun_tokens and c.tokens == p.tokens
            if p.exit_pos is None:
                assert r.overrun_tokens == 0
            else:
                assert 0 <= r.overrun_tokens <= p.stream_tokens - p.exit_pos
            assert r.latency <= c.latency + 1  # never waits for a probe (+1: a point is sent once passed)
        assert sum(r.overrun_tokens for r in side) > 0


def test_duration_serves_rate_times_duration_programs_and_longer_draws_extend_shorter_ones():
    from certaindex.serving.workload import programs_for

    assert programs_for(2.5, 7, None) == 7
    assert programs_for(2.5, 7, 100.0) == 250
    short, long = draw(4, 5, 1.0, 0), draw(4, 9, 1.0, 0)
    assert long[0][:5] == short[0] and long[1][:5] == short[1]
    full, _ = workloads()
    cost = unit_cost(a=0.01, max_batch=2)
    results = sweep_workloads([full], cost, [0.01, 0.02], Serving(capacity=2), programs=3, duration_s=500.0)
    assert [results[("full-fcfs", r)][0].n for r in (0.01, 0.02)] == [5, 10]
