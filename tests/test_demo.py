"""The real-trace sample shipped in the package, `certaindex demo` and `evaluate --sample`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from certaindex import cli
from certaindex.cli.governor import sample_path
from certaindex.traces.governor import read_governor

QUICKSTART = Path(__file__).resolve().parents[1] / "scripts" / "quickstart.sh"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from certaindex.cli import common

    monkeypatch.setattr(common.out, "width", 200)


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_the_sample_is_real_dev_split_r1_traces_with_licence_and_provenance():
    root = sample_path()
    (run,) = read_governor(root, "dev")
    assert run.model_name == "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B" and run.dataset == "math500"
    assert len(run.trajectories) == 50 and run.has_deer and run.has_events
    assert all(t.probes for t in run.trajectories)
    assert "MIT License" in (root / "LICENSE").read_text()
    readme = (root / "README.md").read_text()
    assert "6a22a59cd704c498c04ffa47229decca56d6a5a2" in readme and "dev" in readme
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert 100_000 < size < 2_000_000


def test_demo_replays_the_default_profile_per_problem_then_totals(capsys, tmp_path):
    assert cli.main(["demo"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "Replay of recorded traces of a real reasoning model" in text
    assert "No model runs here" in text
    assert "Profile for deepseek-ai/DeepSeek-R1-Distill-Qwen-7B: r1-distill-qwen" in text
    totals = re.search(r"Totals over 50 problems: full reasoning (\d+)/50 right, ([\d,]+) tokens per problem; "
                       r"early exit (\d+)/50 right, ([\d,]+) tokens per problem", text)
    assert totals, text[-800:]
    # the same figures as evaluate --sample --policy default --json
    out = tmp_path / "sample.json"
    assert cli.main(["evaluate", "--sample", "--json", str(out), "--no-png", "--quiet"]) == 0
    (g,) = json.loads(out.read_text())["groups"]
    assert round(g["full_accuracy"] * 50) == int(totals[1]) and round(g["accuracy"] * 50) == int(totals[3])
    assert f"{g['tokens']:,.0f}" == totals[4] and f"{g['full_tokens']:,.0f}" == totals[2]


def test_demo_limit_and_bad_limit(capsys):
    assert cli.main(["demo", "--limit", "3"]) == 0
    assert "Totals over 3 problems" in " ".join(capsys.readouterr().out.split())
    assert cli.main(["demo", "--limit", "0"]) == 2
    assert "--limit must be at least 1" in capsys.readouterr().err


def test_quickstart_shows_the_replay_before_the_live_mechanism_demo():
    text = QUICKSTART.read_text()
    demo, live = text.index(".venv/bin/certaindex demo"), text.index(".venv/bin/certaindex solve")
    assert demo < live
    assert "mechanism demo" in text[demo:live].lower()
