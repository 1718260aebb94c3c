"""Where ``evaluate`` draws its Pareto plot by default is where its ``--help`` says: a trace file's
next to it, a Governor folder's in the current folder (the folder is often shared, read-only data)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from certaindex import cli

TRACES = Path(__file__).resolve().parents[1] / "benchmarks" / "traces" / "gsm8k-smollm2-135m.jsonl.gz"


def _png_help() -> str:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["evaluate"]._actions if "--png" in a.option_strings)
    return " ".join(action.help.split())


def test_a_governor_folders_plot_lands_in_the_current_folder_as_the_help_says(tmp_path, monkeypatch, capsys) -> None:
    assert "for a Governor folder, <folder>-pareto.png in the current folder" in _png_help()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["evaluate", "--sample", "--quiet"]) == 0
    assert (tmp_path / "governor_sample-pareto.png").stat().st_size > 0
    assert "Pareto plot written to governor_sample-pareto.png" in capsys.readouterr().out


def test_a_trace_files_plot_lands_next_to_it_as_the_help_says(tmp_path, monkeypatch) -> None:
    assert "for a trace file, <name>-pareto.png next to it" in _png_help()
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copy(TRACES, runs / TRACES.name)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["evaluate", str(runs / TRACES.name), "--quiet"]) == 0
    assert (runs / "gsm8k-smollm2-135m-pareto.png").stat().st_size > 0
    assert not list(tmp_path.glob("*.png"))
