"""Fit and certify the shipped certainty-score profiles on TRAIN-split problems; report on DEV.

For each family the score (core/exit_score.py) is fitted on a third of the train problems and its
threshold certified by Learn-then-Test on the other two thirds (evaluation/score_policy.py). The
schedule of each family is the one the research prototype chose on its FIT part (train problems
only): R1-Distill-Qwen-7B ``bx+tc+g512+tr``, Qwen3-8B ``bx+tc+tr``, R1-Distill-Qwen-32B
``bx+tc+g256``, R1-Distill-Llama-8B ``bx+tc+g512``, pooled ``bx+g512``.

    python benchmarks/score_profiles.py [GOVERNOR_DIR] [--write] [--grade-cache FILE]

prints the DEV table (per model x dataset: full reasoning, the default profile, the best Dynasor,
event-probe and DEER setting within 1 point of full reasoning, tuned on DEV itself, and the 95%
interval of the accuracy change by a bootstrap over problems) and writes
benchmarks/results/score-profiles-dev.json; with --write the profile JSON files in
src/certaindex/data/profiles/.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from certaindex.cli.governor import grade
from certaindex.evaluation.governor import best_in_band, family_points, run_profile, with_final_answers
from certaindex.evaluation.peers import full_reasoning
from certaindex.evaluation.profiles import parse_profile
from certaindex.evaluation.score_policy import LABELS, calibrate, score_profile_json
from certaindex.traces.governor import read_governor

ROOT = Path(__file__).resolve().parents[1]
ALL = ["r1-distill-qwen-7b", "qwen3-8b", "r1-distill-qwen-32b", "r1-distill-llama-8b"]
# name, model-name patterns, fitted on, schedule, alpha
FAMILIES = [
    ("r1-distill-qwen-32b", ["r1-distill-qwen-32b"], ["r1-distill-qwen-32b"], "bx+tc+g256", 0.02),
    ("r1-distill-qwen", ["r1-distill-qwen"], ["r1-distill-qwen-7b"], "bx+tc+g512+tr", 0.02),
    ("qwen3", ["qwen3"], ["qwen3-8b"], "bx+tc+tr", 0.02),
    ("r1-distill-llama", ["r1-distill-llama"], ["r1-distill-llama-8b"], "bx+tc+g512", 0.02),
    ("conservative", [], ALL, "bx+g512", 0.01),
]
DELTA = 0.1


def cluster_ci(rows: list[tuple[int, float]], seed: int = 0, n: int = 10000) -> tuple[float, float]:
    """95% bootstrap interval of the mean of per-trajectory differences, resampling problems."""
    by: dict[int, list[float]] = {}
    for pid, d in rows:
        by.setdefault(pid, []).append(d)
    sums = np.array([sum(v) for v in by.values()])
    cnts = np.array([len(v) for v in by.values()])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(sums), size=(n, len(sums)))
    means = sums[idx].sum(1) / cnts[idx].sum(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> int:
    args = sys.argv[1:]
    cache_path = None
    if "--grade-cache" in args:
        i = args.index("--grade-cache")
        cache_path = args[i + 1]
        del args[i:i + 2]
    write = "--write" in args
    args = [a for a in args if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    if not path.is_dir():
        path = Path("/work/shared/traces/governor")
    started = time.perf_counter()
    runs = read_governor(path, "all")
    trajs = with_final_answers([t for r in runs for t in r.trajectories])
    cache = grade(trajs, cache_path, quiet=True)
    train = [t for t in trajs if t.split == "train"]
    dev = [t for t in trajs if t.split == "dev"]

    def correct(t, a):
        return cache.correct(a, t.target)

    profiles = {}
    command = "python benchmarks/score_profiles.py --write"
    for name, patterns, models, schedule, alpha in FAMILIES:
        t0 = time.perf_counter()
        fam = [t for t in train if t.model in models]
        strata = "model+dataset" if name == "conservative" else "dataset"
        cands = [calibrate(fam, schedule, cache.key, correct, alpha, DELTA, label=lab, strata=strata) for lab in LABELS]
        cal = max(cands, key=lambda c: (c.threshold is not None, c.cal_saved))
        data = score_profile_json(name, patterns, models, cal, command, extra={
            "label_choice": "of the labels noharm and ok, the one whose certified threshold saves more on the calibration problems"})
        profiles[name] = parse_profile(data, name)
        print(f"{name:22s} {schedule:14s} label {cal.label:6s} alpha {alpha:<6g} threshold {cal.threshold} cal harmful {cal.cal_harmful}/{cal.n_cal} "
              f"saved {100 * cal.cal_saved:.1f}% stopped by {cal.stopped_by} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if write:
            target = ROOT / "src" / "certaindex" / "data" / "profiles" / f"{name}.json"
            target.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    def profile_for(model_name: str):
        from certaindex.evaluation.profiles import profile_for_model

        return profile_for_model(model_name, list(profiles.values()))

    rows = []
    by_group: dict[tuple[str, str], list] = {}
    for t in dev:
        by_group.setdefault((t.model, t.dataset), []).append(t)
    for (model, dataset), ts in sorted(by_group.items(), key=lambda kv: (ALL.index(kv[0][0]), kv[0][1])):
        pts = family_points(ts, cache, profile_for=profile_for, ks=tuple(range(2, 33)))
        full = next(p for p in pts if p.family == "full")
        default = next(p for p in pts if p.family == "default")
        fulls = [full_reasoning(t, lambda a, t=t: correct(t, a)) for t in ts]
        outs = [run_profile(profile_for(t.model_name), t, cache.key, lambda a, t=t: correct(t, a)) for t in ts]
        lo, hi = cluster_ci([(t.problem_id, float(o.correct) - float(f.correct)) for t, o, f in zip(ts, outs, fulls)])
        extra = {}
        for other in ("conservative", "r1-distill-qwen") if model == "r1-distill-qwen-32b" else ("conservative",):
            oo = [run_profile(profiles[other], t, cache.key, lambda a, t=t: correct(t, a)) for t in ts]
            extra[other] = {"accuracy": sum(o.correct for o in oo) / len(ts),
                            "saved": 1 - sum(o.tokens for o in oo) / sum(f.tokens for f in fulls),
                            "harmful_exits": sum(1 for o, f in zip(oo, fulls) if f.correct and not o.correct)}
        row = {"model": model, "dataset": dataset, "n": len(ts), "profile": profile_for(ts[0].model_name).name,
               "full_accuracy": full.accuracy, "full_tokens": full.tokens,
               "accuracy": default.accuracy, "tokens": default.tokens, "saved": default.saved,
               "harmful_exits": default.harmful_exits, "accuracy_change_ci95": [lo, hi],
               "in_band": default.accuracy >= full.accuracy - 0.01 - 1e-12, "other_profiles": extra}
        for fam in ("dynasor", "events", "deer"):
            b = best_in_band(pts, fam, full.accuracy)
            row[f"best_{fam}"] = None if b is None else {"label": b.label, "accuracy": b.accuracy, "saved": b.saved}
        peers = [row[f"best_{f}"] for f in ("dynasor", "events", "deer") if row[f"best_{f}"]]
        row["beats_best_peer_in_band"] = bool(row["in_band"] and all(row["saved"] > p["saved"] for p in peers))
        rows.append(row)
        bp = max(peers, key=lambda p: p["saved"]) if peers else None
        print(f"{model:20s} {dataset:8s} n={len(ts):3d} full {full.accuracy:.3f}/{full.tokens:6.0f} | default "
              f"{default.accuracy:.3f}/{default.tokens:6.0f} saved {100 * default.saved:5.1f}% harm {default.harmful_exits} "
              f"dacc CI [{100 * lo:+.1f}, {100 * hi:+.1f}] | best peer in band: "
              f"{'-' if bp is None else bp['label'] + ' ' + format(100 * bp['saved'], '.1f') + '%'} | "
              + " ".join(f"{k}: {v['accuracy']:.3f}/{100 * v['saved']:.1f}%/h{v['harmful_exits']}" for k, v in extra.items()),
              flush=True)
    result = {"command": command, "data": str(path), "split": "dev", "machine": f"{platform.machine()} {platform.system()}, 2 cores shared",
              "seconds": round(time.perf_counter() - started, 1), "groups": rows,
              "profiles": {n: p.calibration for n, p in profiles.items()}}
    out = ROOT / "benchmarks" / "results" / "score-profiles-dev.json"
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"written {out} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
