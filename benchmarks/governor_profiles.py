"""Choose the shipped default profiles (safe Dynasor settings) on the TRAIN-split problems only.

For each family (r1-distill-qwen: the 7B and 32B runs; qwen3; r1-distill-llama) the chosen setting is
the one saving most tokens among the Dynasor (k, interval) settings whose accuracy stays within
1 point of full reasoning on EVERY model of the family (train problems of MATH500, AMC23 and AIME24,
seeds 42-44, pooled per model) and, on every model x dataset, within 1 point or one trajectory,
whichever is more (on the 54 AIME24 train trajectories 1 point is less than one problem; a strict
1 point there leaves only settings that never exit). The conservative profile (any other model)
must meet this on all four models. k < 4 is never considered (Dynasor's k=3 loses 38 points on R1-7B).

    python benchmarks/governor_profiles.py [GOVERNOR_DIR] [--write]

writes benchmarks/results/governor-replay/governor-profiles.txt, and with --write the profile JSON files in
src/certaindex/data/profiles/.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from certaindex.cli.governor import grade
from certaindex.evaluation.governor import (
    DYNASOR_INTERVALS,
    PolicySpec,
    evaluate_policy,
    groups,
    with_final_answers,
)
from certaindex.traces.governor import read_governor

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {
    "r1-distill-qwen": (["r1-distill-qwen"], ["r1-distill-qwen-7b", "r1-distill-qwen-32b"]),
    "qwen3": (["qwen3"], ["qwen3-8b"]),
    "r1-distill-llama": (["r1-distill-llama"], ["r1-distill-llama-8b"]),
    "conservative": ([], None),
}
KS = tuple(range(4, 33))
BAND = 0.01
SUFFIX = "**Final Answer**\n\n\\[ \\boxed{"


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    if not path.is_dir():
        raise SystemExit(f"{path}: not a folder of Governor traces (give GOVERNOR_DIR, e.g. ../shared/traces/governor)")
    started = time.perf_counter()
    trajs = with_final_answers([t for r in read_governor(path, "train") for t in r.trajectories])
    cache = grade(trajs, None, quiet=True)
    from dataclasses import replace

    pooled = [replace(t, dataset="all") for t in trajs]
    by_group = groups(pooled)
    # (k, interval) -> list of GroupResult (one per model, datasets pooled)
    table: dict[tuple[int, int], dict[tuple[str, str], object]] = {}
    table_ds: dict[tuple[int, int], dict[tuple[str, str], object]] = {}  # per model x dataset
    for interval in DYNASOR_INTERVALS:
        for k in KS:
            res = evaluate_policy(PolicySpec("dynasor", k=k, interval=interval), pooled, cache)
            table[(k, interval)] = {(r.model, r.dataset): r for r in res}
            res = evaluate_policy(PolicySpec("dynasor", k=k, interval=interval), trajs, cache)
            table_ds[(k, interval)] = {(r.model, r.dataset): r for r in res}
    lines = [f"# python benchmarks/governor_profiles.py {path} --write",
             f"# machine: {platform.node()} ({platform.machine()}, python {platform.python_version()}); "
             f"{len(trajs)} TRAIN-split trajectories; {time.perf_counter() - started:.0f} s",
             f"# rule: Dynasor k in {KS[0]}..{KS[-1]}, interval in {DYNASOR_INTERVALS}; keep settings within "
             f"{100 * BAND:g} point of full reasoning on every model of the family (datasets pooled) and within "
             f"{100 * BAND:g} point or one trajectory, whichever is more, on every model x dataset; pick the one saving most "
             "tokens (pooled over the family's groups)"]
    chosen = {}
    for family, (patterns, models) in FAMILIES.items():
        keys = [g for g in by_group if models is None or g[0] in models]
        best = None
        for (k, interval), res in table.items():
            rows = [res[g] for g in keys]
            per_ds = [r for g, r in table_ds[(k, interval)].items() if models is None or g[0] in models]
            if all(r.accuracy >= r.full_accuracy - BAND - 1e-12 for r in rows) and all(
                    r.accuracy >= r.full_accuracy - max(BAND, 1 / r.n) - 1e-12 for r in per_ds):
                full = sum(r.full_tokens * r.n for r in rows)
                used = sum(r.tokens * r.n for r in rows)
                saved = 1 - used / full
                if best is None or saved > best[0]:
                    best = (saved, k, interval, rows)
        if best is None:
            k, interval = KS[-1], max(DYNASOR_INTERVALS)
            rows = [table[(k, interval)][g] for g in keys]
            saved = 1 - sum(r.tokens * r.n for r in rows) / sum(r.full_tokens * r.n for r in rows)
            best = (saved, k, interval, rows)
            lines.append(f"{family}: no setting within the band; falling back to the most conservative")
        saved, k, interval, rows = best
        chosen[family] = (patterns, k, interval, saved, rows)
        lines.append(f"{family}: dynasor k={k} interval={interval}, saves {100 * saved:.1f}% on train")
        per_dataset = evaluate_policy(PolicySpec("dynasor", k=k, interval=interval),
                                      [t for t in trajs if models is None or t.model in models], cache)
        for r in [*rows, *per_dataset]:
            lines.append(f"    {r.model:20s} {r.dataset:8s} n={r.n:4d} full {r.full_accuracy:.3f} -> {r.accuracy:.3f}, "
                         f"tokens {r.full_tokens:7.0f} -> {r.tokens:7.0f} ({100 * r.saved:5.1f}% saved), harmful {r.harmful_exits}")
    text = "\n".join(lines) + "\n"
    print(text)
    (ROOT / "benchmarks" / "results" / "governor-replay").mkdir(parents=True, exist_ok=True)
    (ROOT / "benchmarks" / "results" / "governor-replay" / "governor-profiles.txt").write_text(text)
    if "--write" in sys.argv:
        for family, (patterns, k, interval, saved, rows) in chosen.items():
            profile = {
                "format": "certaindex-profile", "version": 1, "name": family, "models": patterns,
                "probe_suffix": SUFFIX, "probe_interval": interval, "probe_tokens": 32,
                "rule": {"kind": "dynasor", "k": k},
                "description": ("Safe Dynasor setting for " + (f"{family} models" if patterns else "models without a calibrated profile")
                                + f": the cheapest within {100 * BAND:g} point of full reasoning on the train problems."),
                "calibration": {
                    "data": "Governor development traces (seeds 42-44), TRAIN-split problems only",
                    "models": sorted({r.model for r in rows}), "datasets": sorted({t.dataset for t in trajs}),
                    "method": f"cheapest Dynasor (k >= {KS[0]}, interval multiple of 64) within {100 * BAND:g} point of full "
                              "accuracy on every model of the family (train problems of the three datasets pooled), and within "
                              "1 point or one trajectory on every model x dataset",
                    "train_saved": round(saved, 4), "command": "python benchmarks/governor_profiles.py --write",
                },
            }
            out = ROOT / "src" / "certaindex" / "data" / "profiles" / f"{family}.json"
            out.write_text(json.dumps(profile, indent=2) + "\n")
            print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
