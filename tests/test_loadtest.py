"""The live load test, run on the replay engine (instant, exact), and its CLI."""

import json
from pathlib import Path

import pytest

from certaindex import cli
from certaindex.cli import serving as cli_loadtest
from certaindex.core.datasets import Problem
from certaindex.traces.replay import ReplayEngine
from certaindex.serving.loadtest import POLICIES, program_budget, run_loadtest, run_policy
from certaindex.programs.cot import CoTConfig, solve_cot
from certaindex.traces import read_traces

TRACES = Path(__file__).resolve().parents[1] / "benchmarks" / "traces" / "gsm8k-smollm2-135m.jsonl.gz"


@pytest.fixture(scope="module")
def traces():
    return read_traces(TRACES)


def problems(traces, n):
    return [Problem(id=r.id, question=r.question, answer=r.gold) for r in traces.records[:n]]


def config(traces, **changes):
    return traces.settings.cot_config(probe_interval=16, k=2, **changes)


async def test_every_policy_runs_every_program_on_the_same_arrivals(traces):
    arrivals = [0.0, 0.01, 0.02, 0.05]
    results = await run_loadtest(ReplayEngine(traces), problems(traces, 4), arrivals, config(traces),
                                 capacity=1, slo_s=10.0, warmup=False)
    assert list(results) == list(POLICIES)
    for policy, records in results.items():
        assert [r.arrival for r in records] == arrivals
        assert all(r.policy == policy and r.arrival <= r.start <= r.end for r in records)


async def test_fcfs_programs_match_unscheduled_runs(traces):
    """Under FCFS a program never meets its budget: scheduled results equal plain solve_cot."""
    engine = ReplayEngine(traces)
    cfg = config(traces)
    for policy, early in (("full-fcfs", False), ("exit-fcfs", True)):
        records = await run_policy(engine, problems(traces, 3), [0.0, 0.0, 0.0], policy, cfg, capacity=2)
        for record, trace in zip(records, traces.records):
            direct = await solve_cot(engine, trace.question, CoTConfig(**{**cfg.__dict__, "early_exit": early}))
            assert (record.tokens, record.answer, record.stop_reason) == (direct.total_tokens, direct.answer, direct.stop_reason)


async def test_programs_wait_for_their_arrival(traces):
    records = await run_policy(ReplayEngine(traces), problems(traces, 2), [0.0, 0.3], "exit-sched", config(traces),
                               capacity=1, slo_s=5.0)
    assert records[1].start >= 0.3  # times are seconds from the run's start


async def test_bad_input(traces):
    with pytest.raises(ValueError, match="arrival times"):
        await run_policy(ReplayEngine(traces), problems(traces, 2), [0.0], "exit-fcfs", config(traces), capacity=1)
    with pytest.raises(ValueError, match="unknown policy"):
        await run_policy(ReplayEngine(traces), problems(traces, 1), [0.0], "sjf", config(traces), capacity=1)


def test_program_budget_covers_every_probe():
    cfg = CoTConfig(budget=384, probe_interval=16, probe_tokens=20, answer_tokens=256)
    assert program_budget(cfg) == 384 + 25 * 20 + 256
    assert program_budget(CoTConfig(budget=384, early_exit=False, answer_tokens=256, probe_tokens=20)) == 384 + 20 + 256


def test_cli_loadtest_writes_table_records_and_report(traces, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli_loadtest, "_make_engine", lambda args: ReplayEngine(traces))
    out, report = tmp_path / "lt.jsonl", tmp_path / "lt.txt"
    code = cli.main(["loadtest", "--limit", "3", "--rate", "50", "--slo", "5", "--slo", "30", "--budget", "384",
                     "--probe-interval", "16", "--k", "2", "--quiet", "--out", str(out), "--report", str(report)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 9 and {r["policy"] for r in rows} == set(POLICIES)
    text = report.read_text()
    assert text.startswith("$ certaindex ") and "exit-sched" in text and "SLO 30s" in text


@pytest.mark.parametrize("argv, message", [
    (["--policies", "full-fcfs,lifo"], "unknown policy"),
    (["--slo", "0"], "--slo"),
    (["--rate", "0"], "--rate"),
    (["--capacity", "0"], "--capacity"),
])
def test_cli_loadtest_bad_input_exits_2(argv, message, traces, monkeypatch, capsys):
    monkeypatch.setattr(cli_loadtest, "_make_engine", lambda args: ReplayEngine(traces))
    assert cli.main(["loadtest", "--limit", "1", "--quiet", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_simulate_table_and_plots(tmp_path, capsys):
    from certaindex.serving.costmodel import CostModel

    cost = CostModel(a=0.01, b=0.0, c=0.0, prefill_s=0.001).save(tmp_path / "cost.json")
    code = cli.main(["simulate", "--traces", str(TRACES), "--cost-model", str(cost), "--rates", "0.5,1",
                     "--programs", "8", "--slo", "10", "--png", str(tmp_path / "sim"), "--report", str(tmp_path / "sim.txt")])
    assert code == 0
    assert (tmp_path / "sim-slo10.png").is_file() and (tmp_path / "sim-throughput.png").is_file()
    assert "1/s exit-sched" in (tmp_path / "sim.txt").read_text()
    assert cli.main(["simulate", "--cost-model", str(tmp_path / "none.json"), "--rates", "1"]) == 2
