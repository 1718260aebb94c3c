"""Replay figures stay identical (issue 21): `certaindex evaluate ../shared/traces/governor --split dev
--policy default --json OUT` must reproduce the committed
benchmarks/results/governor-replay/evaluate-governor-default.json number for number, so a refactor
of the programs, the exit decision or the replay cannot move a published figure unnoticed.

Skipped where the shared Governor traces are not next to the repository. The grades come from the
committed cache `benchmarks/results/governor-replay/grades-dev.json.gz` (every answer the command
grades, under the current answer rules), so the run is the same on any machine: no math-verify call
that times out under load can move a figure, and it takes ~20-40 s. A change of the answer rules
makes the cache stale (evaluate then regrades, minutes): regenerate it with the change, on an idle
machine, from an empty cache: `certaindex evaluate ../shared/traces/governor --split dev --policy
default --no-png --grade-cache /tmp/g.json --json /tmp/d.json && gzip -9c /tmp/g.json > ...gz`.
A change that is meant to move the figures regenerates the JSON with the same command and says why."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "traces" / "governor"
COMMITTED = ROOT / "benchmarks" / "results" / "governor-replay" / "evaluate-governor-default.json"
GRADES = ROOT / "benchmarks" / "results" / "governor-replay" / "grades-dev.json.gz"


def _differences(old: dict, new: dict) -> list[str]:
    """Groups (model x dataset) whose figures differ, named, for a readable failure."""
    index = lambda doc: {(g["model"], g["dataset"]): g for g in doc["groups"]}  # noqa: E731
    before, after = index(old), index(new)
    lines = [f"{key}: only in the committed file" for key in before.keys() - after.keys()]
    lines += [f"{key}: only in the new run" for key in after.keys() - before.keys()]
    for key in sorted(before.keys() & after.keys()):
        changed = {f: (before[key][f], after[key].get(f)) for f in before[key] if before[key][f] != after[key].get(f)}
        if changed:
            lines.append(f"{key}: {changed}")
    return lines


def test_differences_name_the_group_and_field():
    old = {"groups": [{"model": "m", "dataset": "d", "saved": 0.1}, {"model": "m", "dataset": "e", "saved": 0.2}]}
    new = {"groups": [{"model": "m", "dataset": "d", "saved": 0.3}]}
    assert _differences(old, new) == ["('m', 'e'): only in the committed file", "('m', 'd'): {'saved': (0.1, 0.3)}"]
    assert _differences(old, old) == []


@pytest.mark.skipif(not SHARED.is_dir(), reason="the shared Governor traces are not next to the repository")
def test_evaluate_default_on_dev_reproduces_the_committed_figures(tmp_path):
    out = tmp_path / "default.json"
    cache = tmp_path / "grades.json"
    cache.write_bytes(gzip.decompress(GRADES.read_bytes()))
    run = subprocess.run(
        [sys.executable, "-m", "certaindex.cli", "evaluate", str(SHARED), "--split", "dev", "--policy", "default",
         "--json", str(out), "--quiet", "--no-png", "--grade-cache", str(cache)],
        capture_output=True, text=True, timeout=1800,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "regrading" not in run.stdout + run.stderr, "the committed grade cache is stale: regenerate it"
    new = json.loads(out.read_text(encoding="utf-8"))
    old = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert _differences(old, new) == []
    assert new == old
