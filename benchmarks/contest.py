"""Benchmark: the deployable contest (issue 19 item 3) on the Governor development traces.

Every peer's knob is chosen the way a user would deploy it: on the TRAIN-split problems of the same
model x dataset, the setting saving most within 1 point of full reasoning's accuracy there (none in
band: the user keeps full reasoning). DEER at a fixed threshold of 0.999 is reported too. All are
read on the DEV-split problems, next to the shipped default profile (fitted on train problems only).

Goals checked (issue 19): on DEV MATH500 the default is within 1 point of full reasoning and saves
at least as much as each deployed peer, for every family; on AMC23 and AIME24 the default loses at
most one trajectory (correct answers of full reasoning minus the default's, seeds pooled).

    python benchmarks/contest.py [GOVERNOR_DIR]      # GRADE_CACHE=path to reuse a grade cache

Writes benchmarks/results/contest/contest.txt and contest.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.cli.governor import grade, missing_notes, read_trajectories  # noqa: E402
from certaindex.evaluation.governor import Point, deployable_points, family_points, groups  # noqa: E402

PEERS = ("dynasor-train", "events-train", "deer-train", "deer-fixed")
BAND = 0.01


def verdict(dataset: str, n: int, full: Point, default: Point, peers: dict[str, Point]) -> tuple[bool, str]:
    """Whether the default meets the issue's goal on this cell, and why not."""
    lost = round((full.accuracy - default.accuracy) * n)
    if dataset == "math500":
        behind = [f"{f} ({100 * p.saved:.1f}%)" for f, p in peers.items() if p.saved > default.saved + 1e-12]
        within = default.accuracy >= full.accuracy - BAND - 1e-12
        ok = within and not behind
        why = ([] if within else [f"{100 * (default.accuracy - full.accuracy):+.1f} pp"]) + (
            [f"saves less than {', '.join(behind)}"] if behind else [])
        return ok, "; ".join(why)
    return lost <= 1, "" if lost <= 1 else f"loses {lost} trajectories"


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    cache_path = os.environ.get("GRADE_CACHE")
    started = time.perf_counter()
    train, _, _ = read_trajectories(path, "train", quiet=True)
    dev, missing, runs = read_trajectories(path, "dev", quiet=True)
    cache = grade(train + dev, cache_path, quiet=True)
    train_points = {g: family_points(ts, cache, with_default=False) for g, ts in groups(train).items()}
    rows, cells = [], []
    for (model, dataset), ts in sorted(groups(dev).items()):
        points = family_points(ts, cache)
        peers = {p.family: p for p in deployable_points(points, train_points.get((model, dataset)), BAND)}
        full = next(p for p in points if p.family == "full")
        default = next(p for p in points if p.family == "default")
        ok, why = verdict(dataset, len(ts), full, default, peers)
        cells.append({"model": model, "dataset": dataset, "n": len(ts), "full": full.__dict__, "default": default.__dict__,
                      "peers": {f: p.__dict__ for f, p in peers.items()}, "goal_met": ok, "why_not": why,
                      "default_lost_trajectories": round((full.accuracy - default.accuracy) * len(ts))})
        peer_text = "  ".join(
            f"{f}: {p.label.replace('dynasor ', '').replace('events ', '').replace('deer ', 'tau ')} "
            f"{100 * (p.accuracy - full.accuracy):+.1f}pp {100 * p.saved:5.1f}%" for f, p in peers.items())
        rows.append(f"{model:20s} {dataset:8s} {len(ts):4d} {full.accuracy:6.3f}  default {100 * (default.accuracy - full.accuracy):+5.1f}pp "
                    f"{100 * default.saved:5.1f}% harm {default.harmful_exits:3d} lost {cells[-1]['default_lost_trajectories']:3d}  "
                    f"{'MET ' if ok else 'MISS'} {why}\n      {default.label}\n      {peer_text}")
    elapsed = time.perf_counter() - started
    head = [
        f"# python benchmarks/contest.py {path}",
        f"# machine: {platform.node()}, {os.cpu_count()} cores ({platform.machine()}), python {platform.python_version()}; "
        f"shared by other jobs; {elapsed:.0f} s wall-clock with a warm grade cache",
        f"# data: Governor development traces, seeds 42-44 pooled; {len(train)} TRAIN trajectories choose the peers' knobs, "
        f"{len(dev)} DEV trajectories report; tokens = reasoning + every probe / trial output token",
        "# default = the shipped profile for the model (fitted on train only; where it reads DEER trials and none are "
        "recorded, the no-trial conservative profile, as live without logprobs), named under each row; peers: <family>-train = the setting saving most "
        "within 1 point of full reasoning on TRAIN (same model x dataset), deer-fixed = DEER at tau 0.999",
        "# goal (issue 19): MATH500 default within 1 point and saving >= every peer; AMC23/AIME24 default loses <= 1 trajectory",
        *(f"# note: {n}" for n in missing_notes(missing, runs)),
        "",
        f"{'model':20s} {'dataset':8s} {'n':>4s} {'full':>6s}  default: acc change, saved, harmful exits, net lost; goal",
        *rows,
        "",
        f"goal met on {sum(c['goal_met'] for c in cells)} of {len(cells)} cells "
        f"(MATH500: {sum(c['goal_met'] for c in cells if c['dataset'] == 'math500')} of "
        f"{sum(c['dataset'] == 'math500' for c in cells)})",
    ]
    text = "\n".join(head) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "contest"
    out.mkdir(parents=True, exist_ok=True)
    (out / "contest.txt").write_text(text)
    (out / "contest.json").write_text(json.dumps({"command": f"python benchmarks/contest.py {path}", "cells": cells},
                                                 indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
