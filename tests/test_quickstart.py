"""The README's first quick-start command: its question must get an answer from the pinned engine.

A 135M model's greedy output moves with the llama.cpp build (0.3.16 answers the old quick-start
question with "The answer to this question is:" and stops), so this runs the script's own question
in a fresh process, as a user would."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "quickstart.sh"


def _script_value(name: str) -> str:
    match = re.search(rf'^{name}="?(.*?)"?$', SCRIPT.read_text(), re.MULTILINE)
    assert match, f"{name} not found in {SCRIPT}"
    return match.group(1)


@pytest.mark.model
def test_the_quick_start_question_gets_an_early_exit_answer(model_path) -> None:
    question, expected = _script_value("QUESTION"), _script_value("EXPECTED")
    run = subprocess.run(
        [sys.executable, "-m", "certaindex.cli", "solve", question, "--expected", expected, "--compare", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout)
    result, full = payload["result"], payload["full"]
    assert result["answer"] is not None
    # What the quick start shows: the reasoning stopped early, and it saved tokens.
    assert result["stop_reason"] == "certain"
    assert result["total_tokens"] < full["total_tokens"]
