"""The README's command line is what the parser takes: every command, flag and listed choice in its
command list exists, every flag its prose names exists, and its real-trajectory `simulate --find-rate`
command finds a rate (it once printed 0.000/s for every policy)."""

from __future__ import annotations

import argparse
import json
import re
import shlex
from pathlib import Path

import pytest

from certaindex import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])\b")
#: Flags the README names for other programs than certaindex (benchmarks/score_profiles.py).
OTHER_PROGRAMS = {"--select"}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _command_list() -> list[str]:
    """The commands of the README's "Command line" block, continuation lines joined, comments cut."""
    section = README[README.index("## Command line"):]
    block = section[section.index("```bash") + len("```bash"):]
    block = block[: block.index("```")]
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.split("  #")[0].strip() for line in joined.splitlines() if line.startswith("certaindex ")]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {flag: action for action in parser._actions for flag in action.option_strings}


COMMANDS = _command_list()


def test_the_command_list_shows_every_command() -> None:
    assert {line.split()[1] for line in COMMANDS} == set(_subparsers())


@pytest.mark.parametrize("line", COMMANDS, ids=lambda line: " ".join(line.split()[:2]))
def test_every_flag_and_choice_in_the_command_list_exists(line: str) -> None:
    options = _options(_subparsers()[line.split()[1]])
    missing = [flag for flag in FLAG.findall(line) if flag not in options]
    assert missing == [], f"{line!r}: no such flags"
    for flag, values in re.findall(r"(--[a-z][a-z0-9-]*) ([a-z0-9][\w-]*(?:\|[\w-]+)+)\]?", line):
        choices = options[flag].choices
        if choices is not None:
            assert set(values.split("|")) <= set(choices), f"{flag} {values}: choices are {sorted(choices)}"


def test_every_flag_the_prose_names_exists() -> None:
    known = {flag for parser in _subparsers().values() for flag in _options(parser)}
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", README)) - OTHER_PROGRAMS
    assert sorted(named - known) == []


def test_the_command_list_names_what_the_first_hour_missed() -> None:
    """Found missing by a new user: bench's bon program, serve's model and budget."""
    bench = next(line for line in COMMANDS if line.startswith("certaindex bench"))
    serve = next(line for line in COMMANDS if line.startswith("certaindex serve "))
    assert "bon" in bench and "--model" in serve and "--budget" in serve


def test_the_readme_simulate_find_rate_command_finds_a_rate(tmp_path, capsys) -> None:
    """The README's command on the shipped R1-Distill-Qwen-7B trajectories instead of the full set,
    bounded: fewer seconds of arrivals per rate. Every row must find a rate above 0."""
    line = next(line for line in COMMANDS if line.startswith("certaindex simulate --traces") and "--find-rate" in line)
    line = re.sub(r"\[[^\]]*\]", "", line)  # optional flags
    argv = shlex.split(line)[1:]
    argv[argv.index("--traces") + 1] = str(SAMPLE)
    if "--duration" in argv:
        argv[argv.index("--duration") + 1] = "60"
    argv[argv.index("--cost-model") + 1] = str(ROOT / argv[argv.index("--cost-model") + 1])
    out = tmp_path / "rates.json"
    code = cli.main([*argv, "--quiet", "--json", str(out), "--grade-cache", str(tmp_path / "grades.json")])
    assert code == 0, capsys.readouterr().err
    rows = json.loads(out.read_text())["rows"]
    assert {row["label"] for row in rows} >= {"full-fcfs", "exit-fcfs"}
    assert all(row["max_rate"] > 0 for row in rows), [(row["label"], row["max_rate_tried"]) for row in rows]
