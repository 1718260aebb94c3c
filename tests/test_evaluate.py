"""Offline evaluation on a small synthetic trace set: policies, held-out fitting, plot, table, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest
from rich.console import Console

from certaindex.cli import traces as cli_traces
from certaindex.core.datasets import Problem
from certaindex.evaluation.evaluate import (
    Policy,
    apply_calibration,
    calibration_config,
    choose_setting,
    full_policy,
    load_calibration,
    plot_pareto,
    probe_grid,
    render_tables,
    replay_outcomes,
    run_evaluation,
    simulate_entropy,
    split_indices,
    write_calibration,
)
from certaindex.programs.cot import CoTConfig
from certaindex.traces import (
    Chunk,
    FinalAnswer,
    ProbeRecord,
    TraceHeader,
    TraceRecord,
    TraceSet,
    TraceSettings,
    record_one,
    write_traces,
)
from tests.test_traces import LogprobFakeEngine, script

SETTINGS = TraceSettings(granularity=5, budget=40, probe_tokens=4, logprobs=2)


def cases():
    """Easy problems (settled and confident from the start), late ones (a wrong early answer), wrong
    ones (unsure and wrong throughout), and one that runs out of budget."""
    for i in range(5):
        gold = str(10 + i)
        yield Problem(f"easy{i}", f"Easy question {i}?", gold), dict(
            reasoning=script(22 + i, f"so \\boxed{{{gold}}}"), probe_reply=lambda n, g=gold: [g, "}"], p=0.97)
    for i in range(4):
        gold = str(20 + i)
        yield Problem(f"late{i}", f"Late question {i}?", gold), dict(
            reasoning=script(30, f"so \\boxed{{{gold}}}"), probe_reply=lambda n, g=gold: ["0" if n < 20 else g, "}"], p=0.75)
    for i in range(3):
        yield Problem(f"wrong{i}", f"Wrong question {i}?", "5"), dict(
            reasoning=script(18, "so \\boxed{1}"), probe_reply=lambda n: ["1", "}"], p=0.6)
    yield Problem("budget", "A long question?", "7"), dict(
        reasoning=[], ends_naturally=False, probe_reply=lambda n: [str(n), "}"], p=0.6)


@pytest.fixture(scope="module")
async def traces(tmp_path_factory) -> TraceSet:
    records = [await record_one(LogprobFakeEngine(**spec), problem, SETTINGS) for problem, spec in cases()]
    header = TraceHeader(model="fake-model", engine="fake:logprobs", settings=SETTINGS, dataset="synthetic")
    path = tmp_path_factory.mktemp("traces") / "synthetic.jsonl.gz"
    write_traces(path, header, records)
    return TraceSet(header, records, str(path))


async def test_full_reasoning_replays_as_recorded(traces) -> None:
    full = full_policy(SETTINGS)
    outcomes = (await replay_outcomes(traces, [full]))[full]
    assert [o.tokens for o in outcomes] == [r.full_tokens for r in traces.records]
    assert [o.correct for o in outcomes] == [r.correct for r in traces.records]
    assert sum(o.correct for o in outcomes) == 9  # easy and late are right, wrong and budget are not


def test_probe_grid_is_ordered_conservative_first() -> None:
    grid = probe_grid(SETTINGS, ks=(1, 2))
    # Earliest possible exit k * interval: 80, then 40 twice (the longer interval first), ...
    assert [(p.probe_interval, p.k) for p in grid[:3]] == [(40, 2), (40, 1), (20, 2)]
    assert grid[-1] == Policy("probe", 5, 1)
    earliest = [p.k * p.probe_interval for p in grid]
    assert earliest == sorted(earliest, reverse=True)
    with pytest.raises(ValueError, match="not a multiple of the traces' granularity g=5"):
        probe_grid(SETTINGS, intervals=[7])


def _record(entropies, probes, final_tokens=0) -> TraceRecord:
    chunks, at = [], 0
    for i, (h, probe) in enumerate(zip(entropies, probes)):
        at += 5
        last = i == len(entropies) - 1
        p = None if last else ProbeRecord(at, probe[0], probe[1], "stop", probe[0], probe[2])
        chunks.append(Chunk("x" * 5, 5, "stop" if last else "length", h, 1.0, 1.0, p))
    return TraceRecord("r", 0, 0, "q?", "42", "prompt", 3, False, tuple(chunks), "stop", "finished",
                       FinalAnswer("reasoning", "42", "", final_tokens), True)


def test_entropy_stopping_by_hand() -> None:
    # Chunk entropies 1.0, 0.2, 0.2, 0.2: the mean so far is 1.0, 0.6, 0.4667 at 5, 10, 15 tokens.
    record = _record([1.0, 0.2, 0.2, 0.2], [("7", 2, False), ("42", 3, False), ("42", 3, False), None])
    eq = lambda a, gold: a == gold  # noqa: E731
    # tau 0.6: stop at 10 tokens with the probe there: 10 reasoning + 3 probe tokens.
    stop = simulate_entropy(record, 5, 0.6, 40, eq)
    assert (stop.answer, stop.tokens, stop.probe_tokens, stop.stop_reason, stop.correct) == ("42", 13, 3, "certain", True)
    # tau 1.0: stop at once, at 5 tokens, with the wrong early answer.
    assert simulate_entropy(record, 5, 1.0, 40, eq).tokens == 7
    # tau 0.3: never low enough: full reasoning, 20 tokens, no probes.
    never = simulate_entropy(record, 5, 0.3, 40, eq)
    assert (never.answer, never.tokens, never.stop_reason) == ("42", 20, "finished")
    # Checking every 10 tokens only, with a hesitant probe at 10: its tokens count, then no later check passes.
    hesitant = _record([1.0, 0.2, 0.2, 0.2, 0.2], [("7", 2, False), ("42", 3, True), ("42", 3, False), ("42", 3, False), None])
    out = simulate_entropy(hesitant, 10, 0.6, 40, eq)
    # At 10 tokens (mean 0.6) the probe hesitates: its 3 tokens count and reasoning goes on; at 20
    # (mean 0.4) the probe answers: 20 reasoning + 3 + 3 probe tokens.
    assert (out.answer, out.reasoning_tokens, out.probe_tokens, out.tokens, out.stop_reason) == ("42", 20, 6, 26, "certain")


async def test_evaluation_writes_a_table_and_a_pareto_png(traces, tmp_path) -> None:
    report = await run_evaluation(traces, split=0.5, split_seed=1, alpha=0.3, delta=0.3)
    families = [s.policy.family for s in report.summaries]
    assert families[0] == "full" and families.count("probe") == 16 and families.count("entropy") == 4
    full = report.summaries[0]
    assert full.accuracy == pytest.approx(9 / 13) and full.harmful == 0
    k1 = next(s for s in report.summaries if s.policy == Policy("probe", 5, 1))
    assert k1.harmful == 4  # every late problem exits on its wrong early answer
    assert k1.mean_tokens < full.mean_tokens and k1.saving > 0
    assert report.thresholds is not None and report.thresholds.mu_c < report.thresholds.mu_i
    assert report.calib_size + report.test_size == 13
    names = [h.name for h in report.heldout]
    assert names[0].startswith("target") and names[1].startswith("LTT")
    assert sum(n.startswith("entropy") for n in names) == 4

    console = Console(record=True, width=220)
    for table in render_tables(report):
        console.print(table)
    text = console.export_text()
    assert "full reasoning" in text and "probe 5 k=1" in text and "held out" in text and "entropy bayes" in text
    png = plot_pareto(report, tmp_path / "plot.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    json.dumps(report.to_dict())  # every figure is JSON-serialisable


async def test_choosing_and_writing_a_calibrated_setting(traces, tmp_path) -> None:
    full = full_policy(SETTINGS)
    probes = probe_grid(SETTINGS)
    outcomes = await replay_outcomes(traces, [full, *probes])
    everything = list(range(len(traces.records)))
    # 13 traces cannot certify anything at alpha = delta = 0.1 (that needs 22 without a harmful exit)...
    assert choose_setting(outcomes, probes, full, everything, "ltt", 0.1, 0.1).policy is None
    # ...but can at alpha = delta = 0.3; the choice has no more harmful exits than its certificate allows.
    chosen = choose_setting(outcomes, probes, full, everything, "ltt", 0.3, 0.3)
    assert chosen.policy is not None and chosen.p_value <= 0.3
    target = choose_setting(outcomes, probes, full, everything, "target", max_loss=0.0)
    assert target.summary.accuracy >= target.full.accuracy and target.summary.mean_tokens < target.full.mean_tokens

    config = calibration_config(target, traces, 0.1, 0.1, 0.0)
    path = write_calibration(tmp_path / "cal" / "calibration.json", config)
    loaded = load_calibration(path)
    assert loaded["policy"] == "cot-early" and loaded["probe_interval"] == target.policy.probe_interval
    assert loaded["k"] == target.policy.k and loaded["budget"] == 40 and loaded["method"] == "target"
    cot = apply_calibration(CoTConfig(budget=999, probe_interval=64, k=3), loaded)
    assert (cot.probe_interval, cot.k, cot.budget) == (target.policy.probe_interval, target.policy.k, 999)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", r":1: not valid JSON"),
        ('{"format": "other"}', "not a certaindex calibration file"),
        ('{"format": "certaindex-calibration", "version": 9}', "calibration version 9 is not supported"),
        ('{"format": "certaindex-calibration", "version": 1, "policy": "cot-early", "probe_interval": 32}', "'k' must be an int >= 1"),
    ],
)
def test_load_calibration_errors(tmp_path, content, message) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_calibration(path)
    with pytest.raises(ValueError, match="no such calibration file"):
        load_calibration(tmp_path / "missing.json")


def test_split_keeps_problems_together() -> None:
    base = _record([0.1, 0.1], [("1", 1, False), None])
    records = [dataclasses.replace(base, id=f"p{i // 2}", sample=i % 2) for i in range(10)]
    cal, test = split_indices(records, 0.6, seed=3)
    assert len(cal) == 6 and len(test) == 4 and not set(cal) & set(test)
    assert {records[i].id for i in cal}.isdisjoint({records[i].id for i in test})
    assert split_indices(records, 0.6, seed=3) == (cal, test)


async def test_cli_evaluate_and_calibrate(traces, tmp_path, capsys) -> None:
    png, cal, figures = tmp_path / "p.png", tmp_path / "cal.json", tmp_path / "fig.json"
    argv = ["evaluate", traces.path, "--png", str(png), "--json", str(figures), "--calibration-out", str(cal),
            "--method", "target", "--quiet"]
    assert await cli_traces.HANDLERS["evaluate"](cli_traces.build_parser().parse_args(argv)) == 0
    printed = capsys.readouterr().out
    assert "held out" in printed and "Pareto plot written" in printed
    assert png.is_file() and load_calibration(cal)["method"] == "target"
    assert json.loads(figures.read_text())["policies"][0]["family"] == "full"

    argv = ["calibrate", traces.path, "-o", str(tmp_path / "c2.json"), "--alpha", "0.3", "--delta", "0.3", "--quiet"]
    assert await cli_traces.HANDLERS["calibrate"](cli_traces.build_parser().parse_args(argv)) == 0
    assert load_calibration(tmp_path / "c2.json")["method"] == "ltt"


def test_cli_errors_are_one_line(tmp_path, traces, capsys) -> None:
    assert cli_traces.main(["evaluate", str(tmp_path / "missing.jsonl.gz"), "--quiet"]) == 2
    assert "error:" in capsys.readouterr().err
    assert cli_traces.main(["evaluate", traces.path, "--intervals", "7", "--no-png", "--quiet"]) == 2
    assert "not a multiple of the traces' granularity" in capsys.readouterr().err
    assert cli_traces.main(["calibrate", traces.path, "-o", str(tmp_path / "x.json"), "--quiet"]) == 3  # as for folders
    assert "no setting is certified" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    assert cli_traces.main(["record", "--out", str(tmp_path / "t.jsonl.gz"), "--budget", "0"]) == 2
    assert "--budget must be at least 1" in capsys.readouterr().err
