"""A profile that transfers across model families: leave-one-family-out evidence and the shipped defaults.

The ``generic`` profile (issue 19) is the certainty score over features relative to the run's own
scale (``core.exit_score.RELATIVE_FEATURES``: no absolute token counts), fitted and certified on
TRAIN-split problems of the families that have DEER trials (R1-Distill-Qwen-7B, Qwen3-8B) with the
stratum guard per model x dataset.

Evidence, leave one family out (fitting and certifying on TRAIN problems only):

* fit + certify on R1-7B, report on Qwen3; fit + certify on Qwen3, report on R1-7B;
* fit + certify on both, report on R1-Distill-Qwen-32B and R1-Distill-Llama-8B with the features
  they have (their traces hold no DEER trials, so the replay sees probes and text only).

Each row is reported on the held-out family's TRAIN problems (what the setting and the 32B / Llama
defaults are CHOSEN on: none of those problems is fitted on or certified on) and on its DEV problems
(what is reported, never chosen on). The candidates (schedule x feature set) are fixed below before
any run; the one chosen is the one whose worst held-out MATH500 saving on train is highest among
those within 1 point of full reasoning on held-out train MATH500 in both directions and losing at
most one AMC23 / AIME24 trajectory each.

    python benchmarks/transfer_profiles.py [GOVERNOR_DIR] [--grade-cache FILE] [--write]

writes benchmarks/results/transfer/transfer-profiles.{json,md}; with --write also
src/certaindex/data/profiles/generic.json.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from certaindex.core.exit_score import FEATURES, RELATIVE_FEATURES, answer_parts
from certaindex.evaluation.governor import with_final_answers
from certaindex.evaluation.grading import GradeCache
from certaindex.evaluation.peers import deer, full_reasoning
from certaindex.evaluation.profiles import Profile, parse_profile, profile_for_model, shipped_profiles
from certaindex.evaluation.score_policy import LABELS, Calibration, calibrate, observations, score_profile_json
from certaindex.traces.governor import Trajectory, read_governor

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "transfer"
R1, QWEN3, R32, LLAMA = "r1-distill-qwen-7b", "qwen3-8b", "r1-distill-qwen-32b", "r1-distill-llama-8b"
ALL = [R1, QWEN3, R32, LLAMA]
WITH_TRIALS = [R1, QWEN3]
ALPHA, DELTA = 0.02, 0.1
# Candidates, fixed before any run: schedule x feature set.
SCHEDULES = ("bx+tc+g512+tr", "bx+tc+g256+tr", "bx+tc+tr")
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "relative": RELATIVE_FEATURES,
    "relative, no fewer_parts": tuple(f for f in RELATIVE_FEATURES if f != "fewer_parts"),
    "all (absolute positions too)": FEATURES,
}
# Leave one family out: fitted on -> reported on.
LOFO = [([R1], [QWEN3]), ([QWEN3], [R1]), (WITH_TRIALS, [R32, LLAMA])]
# What the 32B and Llama defaults are chosen between, by their held-out evidence (see choose_default).
POOLED = ALL  # "transfer": the relative score fitted on all four families (trials where recorded)
GENERIC_PATTERNS: list[str] = []  # set by choose_default: the families that default to generic
COMMAND = "python benchmarks/transfer_profiles.py --write"


def graded(trajs: Sequence[Trajectory], cache_path: str | None) -> GradeCache:
    """The grade cache filled for what these schedules read (boxes, the probes of the 256-token grid
    and after ``</think>``, every trial, the final answers): event probes and the 64-token grid are
    never read here, so they are not graded (a cold cache takes minutes, not an hour)."""
    pairs: dict[tuple[str, str], None] = {}
    keys: dict[str, None] = {}
    for t in trajs:
        for a in [o.answer for o in observations(t, "bx+tc+g256+tr")] + [t.final_answer]:
            if a is not None:
                pairs[(a, t.target)] = None
                keys[a] = None
    cache = GradeCache.load(cache_path)
    if cache.grade(list(pairs), list(keys)).graded:
        cache.save(cache_path)
    return cache


def fit(trajs: Sequence[Trajectory], models: Sequence[str], schedule: str, features: Sequence[str], cache) -> Calibration:
    """The score fitted and certified on the TRAIN problems of ``models``; of the two labels the one
    whose certified threshold saves more on the calibration problems (as score_profiles.py does)."""
    fam = [t for t in trajs if t.split == "train" and t.model in models]
    strata = "model+dataset" if len(models) > 1 else "dataset"

    def correct(t, a):
        return cache.correct(a, t.target)

    cands = [calibrate(fam, schedule, cache.key, correct, ALPHA, DELTA, features=list(features), label=lab, strata=strata)
             for lab in LABELS]
    return max(cands, key=lambda c: (c.threshold is not None, c.cal_saved))


def rule_of(cal: Calibration) -> dict[str, Any]:
    return {"kind": "score", "schedule": cal.schedule, "threshold": cal.threshold, "model": cal.model.to_dict()}


def report(rule: dict[str, Any], trajs: Sequence[Trajectory], cache) -> dict[str, dict[str, float]]:
    """Per dataset: n, full reasoning's accuracy, the rule's accuracy, tokens saved (probe and trial
    tokens counted), harmful and helped exits; DEER at the fixed tau 0.999 where trials exist."""
    from certaindex.evaluation.score_policy import replay_score

    out: dict[str, dict[str, float]] = {}
    for d in sorted({t.dataset for t in trajs}):
        ts = [t for t in trajs if t.dataset == d]
        cs = [(lambda a, t=t: cache.correct(a, t.target)) for t in ts]
        fulls = [full_reasoning(t, c) for t, c in zip(ts, cs)]
        outs = [replay_score(rule, t, cache.key, c) for t, c in zip(ts, cs)]
        full_tok = sum(f.tokens for f in fulls)
        row = {"n": len(ts), "full_accuracy": sum(f.correct for f in fulls) / len(ts),
               "accuracy": sum(o.correct for o in outs) / len(ts), "saved": 1 - sum(o.tokens for o in outs) / full_tok,
               "harmful": sum(f.correct and not o.correct for f, o in zip(fulls, outs)),
               "helped": sum(o.correct and not f.correct for f, o in zip(fulls, outs)),
               # item 6: harmful exits answering a list cut short (fewer parts than full reasoning's answer)
               "harmful_partial": sum(f.correct and not o.correct and 0 < answer_parts(o.answer) < answer_parts(f.answer)
                                      for f, o in zip(fulls, outs))}
        if all(t.trials is not None for t in ts):
            dd = [deer(t, 0.999, c) for t, c in zip(ts, cs)]
            row["deer_0.999_accuracy"] = sum(o.correct for o in dd) / len(ts)
            row["deer_0.999_saved"] = 1 - sum(o.tokens for o in dd) / full_tok
        out[d] = row
    return out


def admissible(per: dict[str, dict[str, float]]) -> bool:
    """Within 1 point of full reasoning on MATH500 and at most one AMC23 / AIME24 trajectory lost each."""
    m = per.get("math500")
    ok = m is None or m["accuracy"] >= m["full_accuracy"] - 0.01 - 1e-12
    return ok and all(v["harmful"] - v["helped"] <= 1 for d, v in per.items() if d != "math500")


def lofo(trajs, cache, schedule: str, features: Sequence[str], split: str, pairs=LOFO) -> list[dict]:
    """Each leave-one-family-out pair of ``pairs`` for one candidate, reported on ``split`` problems."""
    rows = []
    for fitted, held in pairs:
        cal = fit(trajs, fitted, schedule, features, cache)
        for m in held:
            per = report(rule_of(cal), [t for t in trajs if t.model == m and t.split == split], cache)
            rows.append({"fitted_on": fitted, "reported_on": m, "split": split, "threshold": cal.threshold,
                         "label": cal.label, "stopped_by": cal.stopped_by, "per_dataset": per})
    return rows


def choose_setting(trajs, cache) -> tuple[tuple[str, str], list[dict]]:
    """The candidate whose worst held-out TRAIN MATH500 saving (R1-7B <-> Qwen3) is highest among the
    admissible ones (all admissible none: the least harmful)."""
    table = []
    for schedule in SCHEDULES:
        for name, feats in FEATURE_SETS.items():
            t0 = time.perf_counter()
            rows = lofo(trajs, cache, schedule, feats, "train", LOFO[:2])
            ok = all(admissible(r["per_dataset"]) for r in rows)
            worst = min(r["per_dataset"]["math500"]["saved"] for r in rows)
            table.append({"schedule": schedule, "features": name, "admissible": ok, "worst_math500_saved": worst, "rows": rows})
            print(f"  candidate {schedule:15s} {name:30s} " + " | ".join(line(r) for r in rows)
                  + f" {'admissible' if ok else ''} ({time.perf_counter() - t0:.0f} s)", flush=True)
    ok = [c for c in table if c["admissible"] and c["features"] != "all (absolute positions too)"]
    best = max(ok, key=lambda c: c["worst_math500_saved"]) if ok else min(
        table, key=lambda c: sum(v["harmful"] - v["helped"] for r in c["rows"] for v in r["per_dataset"].values()))
    return (best["schedule"], best["features"]), table


def line(r: dict) -> str:
    return f"{'+'.join(r['fitted_on'])} -> {r['reported_on']} " + " ".join(
        f"{d} {v['accuracy'] - v['full_accuracy']:+.3f}/{100 * v['saved']:.1f}%/h{v['harmful']}"
        + (f"(p{v['harmful_partial']})" if v.get("harmful_partial") else "")
        for d, v in sorted(r["per_dataset"].items()))


def choose_default(trajs, cache, schedule: str, features: Sequence[str], generic_rows: list[dict]) -> tuple[str, list[dict]]:
    """What R1-32B and R1-Llama default to, chosen by leave-one-family-out evidence on TRAIN problems
    only: ``generic`` (fitted on the two families with trials) or ``transfer`` (the same score fitted
    on all four families pooled, each with the evidence it has). The transfer's evidence is the same
    pair of held-out trial families, each left out of a fit on the other three; the one whose worst
    held-out MATH500 saving is higher among the admissible ones wins (ties: generic)."""
    pairs = [([R1, R32, LLAMA], [QWEN3]), ([QWEN3, R32, LLAMA], [R1])]
    rows = lofo(trajs, cache, schedule, features, "train", pairs)
    for r in rows:
        print("  transfer " + line(r), flush=True)

    def worst(rs):
        return min(r["per_dataset"]["math500"]["saved"] for r in rs) if all(admissible(r["per_dataset"]) for r in rs) else -1.0

    return ("transfer" if worst(rows) > worst(generic_rows) else "generic"), rows


def dev_table(profiles: dict[str, Profile], trajs, cache) -> list[dict]:
    """The shipped defaults on DEV (every model x dataset): the profile picked by model name."""
    rows = []
    for m in ALL:
        ts = [t for t in trajs if t.model == m and t.split == "dev"]
        profile = profile_for_model(ts[0].model_name, list(profiles.values()))
        per = report(profile.rule, ts, cache)
        rows.append({"model": m, "profile": profile.name, "per_dataset": per})
        print(f"  default {m:20s} {profile.name:18s} " + " ".join(
            f"{d} {v['accuracy'] - v['full_accuracy']:+.3f}/{100 * v['saved']:.1f}%/h{v['harmful']}"
            + (f" (deer .999 {v['deer_0.999_accuracy'] - v['full_accuracy']:+.3f}/{100 * v['deer_0.999_saved']:.1f}%)"
               if "deer_0.999_saved" in v else "") for d, v in sorted(per.items())), flush=True)
    return rows


def cell(v: dict) -> str:
    return (f"{100 * (v['accuracy'] - v['full_accuracy']):+.1f} pt / {100 * v['saved']:.1f}% (h {v['harmful']}, +{v['helped']}"
            + (f"; {v['harmful_partial']} a list cut short" if v.get("harmful_partial") else "") + ")")


def deer_cell(v: dict) -> str:
    if "deer_0.999_saved" not in v:
        return "no trials recorded"
    return f"{100 * (v['deer_0.999_accuracy'] - v['full_accuracy']):+.1f} pt / {100 * v['deer_0.999_saved']:.1f}%"


def markdown(result: dict) -> str:
    """The LOFO table, the candidates tried on train, and the shipped defaults on dev."""
    out = [f"# Transfer across model families (issue 19)\n\n`{result['command']}`; data {result['data']}; "
           f"machine {result['machine']}; {result['seconds']} s.\n",
           f"Chosen on held-out TRAIN problems: schedule `{result['chosen']['schedule']}`, features "
           f"*{result['chosen']['features']}*; R1-32B and R1-Llama default to `{result['default_32b_llama']}`.\n",
           "## Leave one family out (accuracy change against full reasoning / tokens saved, probes and trials "
           "counted; h harmful exits, of which \"a list cut short\" answer fewer parts than full reasoning's "
           "answer (item 6); + helped)\n",
           "| fitted + certified on (train) | reported on | split | MATH500 | AMC23 | AIME24 | DEER tau 0.999 on MATH500 |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["lofo_train"] + result["lofo_dev"]:
        p = r["per_dataset"]
        out.append(f"| {' + '.join(r['fitted_on'])} | {r['reported_on']} | {r['split']} | "
                   + " | ".join(cell(p[d]) if d in p else "—" for d in ("math500", "amc23", "aime24"))
                   + f" | {deer_cell(p['math500'])} |")
    out += ["\n## Candidates (held-out TRAIN problems only: R1-7B <-> Qwen3)\n",
            "| schedule | features | admissible | worst MATH500 saved | rows |", "| --- | --- | --- | --- | --- |"]
    for c in result["candidates"]:
        out.append(f"| `{c['schedule']}` | {c['features']} | {'yes' if c['admissible'] else 'no'} | "
                   f"{100 * c['worst_math500_saved']:.1f}% | {'; '.join(line(r) for r in c['rows'])} |")
    out += ["\n## 32B / Llama default: transfer (fitted on three families) on the held-out one, TRAIN problems\n"]
    out += [f"- {line(r)}" for r in result["transfer_rows"]]
    out += ["\n## Shipped defaults on DEV (profile picked by model name)\n",
            "| model | profile | MATH500 | AMC23 | AIME24 | DEER tau 0.999 on MATH500 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in result["defaults_dev"]:
        p = r["per_dataset"]
        out.append(f"| {r['model']} | {r['profile']} | " + " | ".join(cell(p[d]) for d in ("math500", "amc23", "aime24"))
                   + f" | {deer_cell(p['math500'])} |")
    return "\n".join(out) + "\n"


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
    started = time.perf_counter()
    trajs = with_final_answers([t for r in read_governor(path, "all") for t in r.trajectories])
    cache = graded(trajs, cache_path)
    print(f"read and graded {len(trajs)} trajectories ({time.perf_counter() - started:.0f} s)", flush=True)
    (schedule, fname), candidates = choose_setting(trajs, cache)
    features = FEATURE_SETS[fname]
    generic_rows = next(c["rows"] for c in candidates if (c["schedule"], c["features"]) == (schedule, fname))
    default, transfer_rows = choose_default(trajs, cache, schedule, features, generic_rows)
    lofo_train = generic_rows + lofo(trajs, cache, schedule, features, "train", LOFO[2:])
    lofo_dev = lofo(trajs, cache, schedule, features, "dev")
    for r in lofo_train + lofo_dev:
        print(f"  lofo {r['split']:5s} {line(r)}", flush=True)
    cal = fit(trajs, WITH_TRIALS, schedule, features, cache)
    patterns = ["r1-distill-qwen-32b", "r1-distill-llama"] if default == "generic" else []
    extra = {"features_choice": f"{fname}: chosen with the schedule on held-out TRAIN problems "
                                "(benchmarks/transfer_profiles.py; results/transfer/)",
             "label_choice": "of the labels noharm and ok, the one whose certified threshold saves more on the calibration problems"}
    data = score_profile_json("generic", patterns, WITH_TRIALS, cal, COMMAND, extra=extra)
    data["description"] = (f"Generic certainty score ({schedule}) for reasoning models of no calibrated family: features "
                           "relative to the run's own scale (no absolute token counts), fitted and certified on "
                           f"{' and '.join(WITH_TRIALS)} (train problems), harmful exits <= {cal.alpha:g} with probability "
                           f">= {1 - cal.delta:g} per model x dataset; reads DEER trials (needs token logprobs).")
    profiles = {p.name: p for p in shipped_profiles()}
    profiles["generic"] = parse_profile(data, "generic")
    if default == "transfer":
        tcal = fit(trajs, ALL, schedule, features, cache)
        tdata = score_profile_json("transfer", ["r1-distill-qwen-32b", "r1-distill-llama"], ALL, tcal, COMMAND, extra=extra)
        profiles["transfer"] = parse_profile(tdata, "transfer")
    for name in ("r1-distill-qwen-32b", "r1-distill-llama"):  # superseded as defaults: kept by name only
        if name in profiles:
            profiles[name] = parse_profile(dict(json.loads((ROOT / "src/certaindex/data/profiles" / f"{name}.json").read_text()), models=[]), name)
    profiles = dict(sorted(profiles.items(), key=lambda kv: (kv[0] == "conservative", kv[0])))
    defaults_dev = dev_table(profiles, trajs, cache)
    result = {"command": COMMAND, "data": f"{path} (Governor development traces, seeds 42-44)",
              "machine": f"{platform.machine()} {platform.system()}, 2 cores shared", "seconds": 0.0,
              "chosen": {"schedule": schedule, "features": fname, "feature_list": list(features)},
              "default_32b_llama": default, "candidates": candidates, "transfer_rows": transfer_rows,
              "lofo_train": lofo_train, "lofo_dev": lofo_dev, "defaults_dev": defaults_dev,
              "generic": profiles["generic"].calibration, "generic_threshold": cal.threshold}
    result["seconds"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "transfer-profiles.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (OUT / "transfer-profiles.md").write_text(markdown(result), encoding="utf-8")
    if write:
        folder = ROOT / "src" / "certaindex" / "data" / "profiles"
        (folder / "generic.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        if default == "transfer":
            (folder / "transfer.json").write_text(json.dumps(tdata, indent=1) + "\n", encoding="utf-8")
    print(f"written {OUT} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
