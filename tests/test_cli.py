"""The command line: clear one-line errors, exit codes, and the real embedded engine end to end."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from certaindex import cli
from certaindex.engines.base import EngineError
from tests.conftest import UTF8_SLACK, free_port
from tests.fakes import ScriptedFakeEngine


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "certaindex.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
    )


def assert_clean_error(proc: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert fragment in lines[0]
    assert "answer:" not in proc.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["solve", ""], "empty"),
        (["solve", "   "], "empty"),
        (["solve", "?!"], "no letters or digits"),
        (["solve", "What is 2+2?", "--budget", "0"], "--budget must be at least 1"),
        (["solve", "What is 2+2?", "--probe-interval", "-5"], "--probe-interval"),
        (["solve", "What is 2+2?", "--temperature", "-1"], "--temperature"),
        (["solve", "What is 2+2?", "--engine", "ftp://nowhere"], "unknown engine"),
        (["solve", "What is 2+2?", "--engine", "embedded:/no/such/model.gguf"], "model file not found"),
        (["solve", "What is 2+2?", "--chat-template", "nonsense", "--engine", "http://127.0.0.1:9"], "unknown chat template"),
        (["bench", "--dataset", "no-such-set"], "unknown data set"),
        (["bench", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_user_mistakes_get_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    assert_clean_error(run_cli(*args, timeout=60), 2, fragment)


def test_unreachable_engine_gets_one_line_and_exit_1() -> None:
    proc = run_cli("solve", "What is 2+2?", "--engine", f"http://127.0.0.1:{free_port()}/v1", timeout=60)
    assert_clean_error(proc, 1, "cannot reach the engine")


def test_a_model_that_never_answers_exits_3_without_presenting_an_answer(monkeypatch, capsys) -> None:
    fake = ScriptedFakeEngine(reasoning=["I ", "am ", "not ", "sure."], probe_reply=lambda n: ["hmm"])
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is the answer?", "--quiet", "--probe-interval", "2"])
    captured = capsys.readouterr()
    assert code == 3
    assert "answer:" not in captured.out
    assert "error: the model gave no answer" in captured.err


def test_an_engine_failing_mid_run_exits_1(monkeypatch, capsys) -> None:
    fake = ScriptedFakeEngine(reasoning=["a "] * 50, fail_after_calls=1)
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is 1+1?", "--quiet", "--probe-interval", "4"])
    assert code == 1
    assert "error: scripted failure" in capsys.readouterr().err


@pytest.mark.model
def test_solve_on_the_embedded_engine_reports_answer_and_saving(model_path) -> None:
    proc = run_cli(
        "solve", "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
        "to her friends in May. How many clips did Natalia sell altogether in April and May?",
        "--budget", "256", "--compare", "--json",
    )
    assert proc.returncode in (0, 3), proc.stderr
    assert "llama_context" not in proc.stderr and "llama_model_loader" not in proc.stderr  # quiet by default
    payload = json.loads(proc.stdout)
    result, full = payload["result"], payload["full"]
    assert payload["engine"].startswith("embedded:SmolLM2-135M")
    # Only what holds for any text the model writes (its text moves with the CPU and cache state):
    # the accounting, the stop reasons, the budget. Which reasoning is a prefix of which is checked
    # on the scripted engine below.
    for run in (result, full):
        assert run["total_tokens"] == (run["reasoning_tokens"] + run["overrun_tokens"] + run["probe_tokens"]
                                       + run["answer_tokens"])  # overrun: a score exit inside a chunk
        assert run["stop_reason"] in ("certain", "finished", "budget") and run["reasoning_tokens"] <= 256 + UTF8_SLACK
        assert isinstance(run["reasoning"], str)
    assert full["stop_reason"] != "certain"
    assert full["probe_tokens"] == 0 or full["stop_reason"] == "budget"
    assert (result["answer"] is None) == (proc.returncode == 3)


def test_solve_compare_json_reports_an_early_exit_that_is_a_prefix_of_full_reasoning(monkeypatch, capsys) -> None:
    """The logic the embedded-model test cannot assert: on a script whose probes agree, early exit
    stops ``certain`` with a prefix of full reasoning's text and fewer tokens."""
    fake = ScriptedFakeEngine(reasoning=[f"step{i} " for i in range(120)], probe_reply=lambda n: ["7", "}"])
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is 3+4?", "--budget", "96", "--probe-interval", "16", "--k", "2",
                     "--compare", "--json"])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    result, full = payload["result"], payload["full"]
    assert result["stop_reason"] == "certain" and result["answer"] == "7"
    assert full["stop_reason"] == "budget"  # the script runs past the budget: one forced probe at the end
    assert full["reasoning"].startswith(result["reasoning"]) and len(result["reasoning"]) < len(full["reasoning"])
    assert result["total_tokens"] < full["total_tokens"]


def test_solve_compare_sends_both_runs_the_same_seed(monkeypatch, capsys) -> None:
    """A sampling server, or a replay server choosing among recorded seeds, then reasons along one
    trajectory for both runs: the saving compares like with like."""
    fake = ScriptedFakeEngine(reasoning=[f"step{i} " for i in range(120)], probe_reply=lambda n: ["7", "}"])
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    assert cli.main(["solve", "What is 3+4?", "--budget", "96", "--probe-interval", "16", "--k", "2",
                     "--compare", "--json", "--seed", "5"]) == 0
    fresh = [c for c in fake.calls if c.prompt == fake._base]  # each run's first reasoning request
    assert len(fresh) == 2 and [c.seed for c in fresh] == [5, 5]
    capsys.readouterr()


@pytest.mark.model
def test_verbose_lets_llama_cpp_log_through(model_path) -> None:
    proc = run_cli("solve", "What is 2+2?", "--budget", "4", "--probe-interval", "2", "--verbose")
    assert proc.returncode in (0, 3), proc.stderr
    assert "llama_context" in proc.stderr


@pytest.mark.parametrize("argv", [["solve", "q"], ["bench"], ["record", "--out", "x"], ["serve"], ["loadtest"]])
def test_every_command_that_makes_an_engine_takes_verbose(argv: list[str]) -> None:
    assert cli.build_parser().parse_args([*argv, "--verbose"]).verbose is True


def test_http_client_request_lines_are_quiet_unless_verbose() -> None:
    import logging

    for verbose, level in ((False, logging.WARNING), (True, logging.INFO)):
        args = argparse.Namespace(engine="http://127.0.0.1:9/v1", model="m", chat_template="auto", api_key=None,
                                  extra_body=None, verbose=verbose)
        cli.common.engine_from_args(args)
        assert logging.getLogger("httpx").getEffectiveLevel() == level
    cli.common.quiet_http_logs(False)


@pytest.mark.model
def test_bench_prints_its_table_on_the_embedded_engine(model_path, tmp_path) -> None:
    out = tmp_path / "records.jsonl"
    proc = run_cli("bench", "--dataset", "gsm8k", "--limit", "2", "--budget", "128", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "full reasoning" in proc.stdout and "early exit" in proc.stdout
    assert "mean tokens" in proc.stdout
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        full, early = record["modes"]["full reasoning"], record["modes"]["early exit"]
        assert full["probe_tokens"] == 0 or full["stop_reason"] == "budget"
        assert early["total_tokens"] > 0 and full["total_tokens"] > 0
        assert early["samples"] == full["samples"] == 1


def test_engine_errors_are_not_swallowed_as_usage_errors() -> None:
    assert not issubclass(EngineError, ValueError)


@pytest.mark.model
@pytest.mark.parametrize("program", ["sc-early", "sc-anytime", "bon", "first-finish"])
def test_bench_parallel_programs_on_the_embedded_engine(model_path, tmp_path, program: str) -> None:
    out = tmp_path / "records.jsonl"
    proc = run_cli(
        "bench", "--program", program, "--limit", "1", "-n", "3", "--first-round", "2", "--round-size", "1",
        "--max-tokens", "48", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert "sc (fixed N)" in proc.stdout and "mean samples" in proc.stdout
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    fixed = record["modes"]["sc (fixed N)"]
    assert fixed["samples"] == 3 and fixed["total_tokens"] > 0
    other = next(v for k, v in record["modes"].items() if k != "sc (fixed N)")
    # best-of-n counts finished candidates, which a 135M model may leave at none within 48 tokens.
    assert 0 <= other["samples"] <= 3 and other["total_tokens"] > 0


def test_solve_reads_a_calibration_file(monkeypatch, capsys, tmp_path) -> None:
    calibration = tmp_path / "cal.json"
    calibration.write_text(
        json.dumps({"format": "certaindex-calibration", "version": 1, "policy": "cot-early", "probe_interval": 4, "k": 1})
    )
    fake = ScriptedFakeEngine(reasoning=["a "] * 40)
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is 6*7?", "--json", "--calibration", str(calibration), "--probe-interval", "32"])
    result = json.loads(capsys.readouterr().out)["result"]
    assert code == 0
    assert result["stop_reason"] == "certain" and result["reasoning_tokens"] == 4  # interval 4, k 1 from the file
    calibration.write_text("{broken")
    assert cli.main(["solve", "What is 6*7?", "--calibration", str(calibration)]) == 2
