"""The quick start's live run: its question on the pinned embedded model, as a user would run it.

A 135M model's text moves with the CPU, the llama.cpp build and the cache state, so the live run is
checked only for what holds for any text (exit code, accounting, well-formed JSON); the quick start
labels it a mechanism demo. What it must show when early exit does not pay (an explanation, not a
bare negative saving) is checked on the scripted engine."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from certaindex import cli
from tests.fakes import ScriptedFakeEngine

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "quickstart.sh"


def _script_value(name: str) -> str:
    match = re.search(rf'^{name}="?(.*?)"?$', SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{name} not found in {SCRIPT}"
    return match.group(1)


@pytest.mark.model
def test_the_quick_start_question_runs_live_and_accounts_for_every_token(model_path) -> None:
    question, expected = _script_value("QUESTION"), _script_value("EXPECTED")
    flags = _script_value("PROBE_FLAGS").split()
    interval = int(flags[flags.index("--probe-interval") + 1])
    run = subprocess.run(
        [sys.executable, "-m", "certaindex.cli", "solve", question, "--expected", expected, "--compare", *flags,
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode in (0, 3), run.stderr[-2000:]  # 3: the model gave no answer
    assert "llama_context" not in run.stderr  # llama.cpp's own log is quiet without --verbose
    payload = json.loads(run.stdout)
    result, full = payload["result"], payload["full"]
    assert (result["answer"] is None) == (run.returncode == 3)
    for one in (result, full):
        assert one["total_tokens"] == (one["reasoning_tokens"] + one["overrun_tokens"] + one["probe_tokens"]
                                       + one["answer_tokens"])  # overrun: a score exit inside a chunk
        assert one["stop_reason"] in ("certain", "finished", "budget")
    # The demo probes at the grain it announces: a probe at every chunk end the reasoning passed, each
    # paid for in probe_tokens; full reasoning takes none.
    assert f"probe interval {interval}" in payload["rule"]
    positions = [p["at_tokens"] for p in result["probes"]]
    assert positions == [interval * (i + 1) for i in range(len(positions))]
    if result["reasoning_tokens"] > interval:
        assert positions, "the reasoning passed a probe point but was never probed"
    assert sum(p["tokens"] for p in result["probes"]) == result["probe_tokens"]
    assert full["probes"] == []


def test_the_live_run_is_labelled_a_demo_on_a_tiny_model() -> None:
    text = SCRIPT.read_text()
    live = text[text.index("QUESTION="):]
    assert "mechanism demo" in live and "135M" in live


def test_the_live_demo_probes_at_a_grain_that_fits_the_tiny_model_and_says_so() -> None:
    """The profile an unknown model gets probes every 512 tokens; the tiny model reasons about 100,
    so the demo must give its own probe interval, pass it to solve, and say so."""
    from certaindex.evaluation.profiles import profile_for_model

    flags = _script_value("PROBE_FLAGS").split()
    interval = int(flags[flags.index("--probe-interval") + 1])
    assert interval * 4 <= 100 < profile_for_model("SmolLM2-135M-Instruct").probe_interval
    live = SCRIPT.read_text()[SCRIPT.read_text().index("QUESTION="):]
    assert "$PROBE_FLAGS" in live.split("exec ", 1)[1]
    assert f"probes every {interval} reasoning tokens" in live


@pytest.mark.parametrize("finishes_at", [20, 34])
def test_a_negative_saving_comes_with_its_reason(monkeypatch, capsys, finishes_at: int) -> None:
    """A model that ends its reasoning by itself soon: the probes cost more than they saved, and
    the output says why instead of showing a bare loss. At 20 tokens the probes never agree (one
    probe before the end); at 34 they agree at 32, only 2 tokens before the end."""
    fake = ScriptedFakeEngine(reasoning=[f"w{i} " for i in range(finishes_at)],
                              probe_reply=lambda n: ["5", "}", " and more words to pay for"])
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is 2+3?", "--probe-interval", "16", "--k", "2", "--probe-tokens", "8",
                     "--compare"])
    out = capsys.readouterr().out
    assert code == 0
    saved = int(re.search(r"saved: (-?\d+) tokens", out).group(1))
    assert saved < 0
    assert "why:" in out and "probes cost" in out


def test_no_saving_before_the_first_probe_point_says_so(monkeypatch, capsys) -> None:
    """The model ends its reasoning before the first probe point: nothing was probed, nothing saved,
    and the reason names that instead of probes that never agreed."""
    fake = ScriptedFakeEngine(reasoning=[f"w{i} " for i in range(10)], probe_reply=lambda n: ["5", "}"])
    monkeypatch.setattr(cli.common, "make_engine", lambda *a, **k: fake)
    code = cli.main(["solve", "What is 2+3?", "--probe-interval", "16", "--k", "2", "--compare"])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert code == 0
    assert re.search(r"saved: 0 tokens", out)
    assert "before the first probe point" in out and "never agreed" not in out
