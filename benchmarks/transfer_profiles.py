"""A profile that transfers across model families: leave-one-family-out evidence and the shipped defaults.

The ``generic`` profile (issue 19) is the certainty score over features relative to the run's own
scale (``core.exit_score.RELATIVE_FEATURES``: no absolute token counts) with DEER trials, fitted and
certified on TRAIN-split problems with the stratum guard per model x dataset. Its trials are taken and
read the same way on every model: stopped at the box's end, confidence by DEER's avg1
(:data:`GENERIC_TRIALS`). Every family's recorded trials are read that way for fitting and reporting
(``evaluation.trial_reading``): Qwen3-8B's records (avg2 over a trial run on to ``</think>``) would
otherwise promise a reading the live generic profile does not make.

Evidence, leave one family out (fitting and certifying on TRAIN problems only):

* the held-out trial family (Qwen3-8B, then R1-Distill-Qwen-7B) left out of the fit;
* the whole fit reported on R1-Distill-Qwen-32B and R1-Distill-Llama-8B with the features they have
  (their traces hold no DEER trials, so the replay sees probes and boxes only).

Each row is reported on the held-out family's TRAIN problems (what the setting is CHOSEN on: none of
those problems is fitted on or certified on) and on its DEV problems (what is reported, never chosen
on). The candidates (schedule x feature set x alpha x what is fitted on) are fixed below before the
run; the rule that picks one is :func:`choose_setting`'s.

    python benchmarks/transfer_profiles.py [GOVERNOR_DIR] [--grade-cache FILE] [--write]

writes benchmarks/results/transfer/transfer-profiles.{json,md}; with --write also
src/certaindex/data/profiles/generic.json.

    python benchmarks/transfer_profiles.py [GOVERNOR_DIR] [--grade-cache FILE] --reach-deer

the family profiles' DEER anchor (score_policy.reach_savings; score_profiles.py --reach-deer) applied
to the shipped generic setting, leave one family out on TRAIN problems only: writes
results/transfer/transfer-profiles-reach-deer.{json,md}; it says whether the anchor is admissible in
both directions, and never writes the profile.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from typing import Any, Sequence

from certaindex.core.exit_score import FEATURES, RELATIVE_FEATURES, answer_parts
from certaindex.evaluation.governor import with_final_answers
from certaindex.evaluation.grading import GradeCache
from certaindex.evaluation.peers import deer, full_reasoning
from certaindex.evaluation.profiles import Profile, parse_profile, profile_for_model, shipped_profiles
from certaindex.evaluation import score_policy
from certaindex.evaluation.score_policy import LABELS, Calibration, calibrate, fit_split, observations, score_profile_json
from certaindex.evaluation.trial_reading import trials_as_read
from certaindex.traces.governor import Trajectory, read_governor
from _cli_args import pop_value

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "transfer"
R1, QWEN3, R32, LLAMA = "r1-distill-qwen-7b", "qwen3-8b", "r1-distill-qwen-32b", "r1-distill-llama-8b"
ALL = [R1, QWEN3, R32, LLAMA]
WITH_TRIALS = [R1, QWEN3]
ALPHA, DELTA = 0.02, 0.1
# How the generic profile takes and reads its trials live, on any model: stopped at the box's end, the
# confidence by DEER's avg1 (no family's think-close rule). Every family's recorded trials are read
# this way (evaluation.trial_reading) for fitting and reporting: Qwen3-8B's records (avg2 over a trial
# run on to </think>) would otherwise promise a reading the live generic profile does not make.
GENERIC_TRIALS: dict[str, Any] = {"at": "Wait", "confidence_rule": "avg1", "require_think_close": False}
# Candidates, fixed before any run: schedule x feature set x alpha.
SCHEDULES = ("bx+tc+g512+tr", "bx+tc+g256+tr", "bx+tc+tr", "bx+tr")
ALPHAS = (0.02, 0.01)
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "relative": RELATIVE_FEATURES,
    "relative, no fewer_parts": tuple(f for f in RELATIVE_FEATURES if f != "fewer_parts"),
    "all (absolute positions too)": FEATURES,
}
# Leave one family out: fitted on -> reported on.
# What the score is fitted on (a candidate dimension): the two families with recorded trials, or all
# four (R1-32B and R1-Llama add their probes and boxes; trials where recorded). Left out in turn:
# the held-out trial family, from a fit on the rest of the pool.
POOLS: dict[str, list[str]] = {"trial families": WITH_TRIALS, "all four": ALL}


def lofo_pairs(pool: str, held: Sequence[str] = (QWEN3, R1)) -> list[tuple[list[str], list[str]]]:
    """Fitted on -> reported on: each trial family of ``held`` left out of ``pool``; then the whole pool
    reported on R1-32B and R1-Llama (with the trial families only, neither is fitted on)."""
    fam = POOLS[pool]
    pairs = [([m for m in fam if m != h], [h]) for h in held]
    return pairs + [(list(fam), [R32, LLAMA])]
COMMAND = "python benchmarks/transfer_profiles.py --write"
# The family profiles' anchor (benchmarks/score_profiles.py --reach-deer), fixed before any run, not
# tuned here: DEER at its paper's threshold, as deployed on each source family, plus 2 points.
REACH_TAU, REACH_MARGIN = 0.999, 0.02


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


def read_and_grade(path: Path, cache_path: str | None, started: float) -> tuple[list[Trajectory], GradeCache]:
    """Every trajectory of the Governor folder (final answers re-extracted) and the grade cache
    filled for them, saying how long that took since ``started``."""
    trajs = with_final_answers([t for r in read_governor(path, "all") for t in r.trajectories])
    cache = graded(trajs, cache_path)
    print(f"read and graded {len(trajs)} trajectories ({time.perf_counter() - started:.0f} s)", flush=True)
    return trajs, cache


_TABLES: dict[tuple, Any] = {}


def _memo_table(trajs, schedule, key, correct):
    """``score_policy._table`` built once per (trajectories, schedule): the candidates refit the same
    trajectories (two labels, two alphas, three feature sets), and building the feature rows is most
    of a fit's time. The trajectories are the same objects throughout a run."""
    k = (tuple(id(t) for t in trajs), schedule)
    if k not in _TABLES:
        _TABLES[k] = _BUILD_TABLE(trajs, schedule, key, correct)
    return _TABLES[k]


_BUILD_TABLE = score_policy._table
score_policy._table = _memo_table  # calibrate() looks it up at call time


def fit(trajs: Sequence[Trajectory], models: Sequence[str], schedule: str, features: Sequence[str], cache,
        alpha: float = ALPHA) -> Calibration:
    """The score fitted and certified on the TRAIN problems of ``models`` (trials read as the generic
    profile reads them: ``trajs`` come through :data:`GENERIC_TRIALS`); of the two labels the one
    whose certified threshold saves more on the calibration problems (as score_profiles.py does)."""
    fam = [t for t in trajs if t.split == "train" and t.model in models]
    strata = "model+dataset" if len(models) > 1 else "dataset"

    def correct(t, a):
        return cache.correct(a, t.target)

    cands = [calibrate(fam, schedule, cache.key, correct, alpha, DELTA, features=list(features), label=lab, strata=strata)
             for lab in LABELS]
    return max(cands, key=lambda c: (c.threshold is not None, c.cal_saved))


def deer_saved(trajs: Sequence[Trajectory], cache, tau: float = REACH_TAU) -> float:
    """DEER at ``tau``'s share of reasoning tokens saved on ``trajs`` (trial tokens counted), each
    family's trials read as DEER reads them deployed (the recorded trajectories, not re-read)."""
    tok = sum(deer(t, tau, lambda a, t=t: cache.correct(a, t.target)).tokens for t in trajs)
    return 1 - tok / sum(t.tokens_used for t in trajs)


def anchor(cal: Calibration, read, raw, models: Sequence[str], cache) -> tuple[Calibration, dict[str, Any]]:
    """``cal`` with the family profiles' anchor (score_policy.reach_savings): its certified threshold
    lowered until the exits on the CAL MATH500 problems of the trial families among ``models`` (pooled)
    save DEER 0.999's savings there plus REACH_MARGIN. Why: certified at a small alpha, the score sits
    at a more conservative point of about DEER's accuracy/savings frontier and saves less than DEER."""
    src = [m for m in models if m in WITH_TRIALS]
    if not src:
        raise ValueError(f"no family with recorded trials among {list(models)}: nothing to anchor on")
    fam = [t for t in read if t.split == "train" and t.model in src]
    math = [t for t in raw if t.split == "train" and t.model in src and t.dataset == "math500" and fit_split(t) == "cal"]
    target = deer_saved(math, cache) + REACH_MARGIN
    out = score_policy.reach_savings(fam, cal, cache.key, lambda t, a: cache.correct(a, t.target), target).calibration
    info = {"rule": (f"the certified threshold, lowered where needed until the CAL MATH500 exits of the trial families "
                     f"fitted on (pooled) save DEER {REACH_TAU}'s savings there (as deployed) plus {REACH_MARGIN:g} "
                     "(score_policy.reach_savings); alpha is then the smallest LTT certifies it at on their CAL problems"),
            "anchored_on": src, "target_saved": round(target, 4), "certified_threshold": cal.threshold,
            "certified_alpha": cal.alpha, "threshold": out.threshold, "alpha": float(out.alpha)}
    return out, info


def rule_of(cal: Calibration) -> dict[str, Any]:
    """The rule as the generic profile ships it: its trials read by :data:`GENERIC_TRIALS`."""
    return {"kind": "score", "schedule": cal.schedule, "threshold": cal.threshold, "model": cal.model.to_dict(),
            "trials": dict(GENERIC_TRIALS) if "tr" in cal.schedule.split("+") else None}


def quick_report(cal: Calibration, trajs: Sequence[Trajectory], cache) -> dict[str, dict[str, float]]:
    """:func:`report`'s figures (no DEER column, no list-cut-short count) from the memoised feature
    table: what the candidates are compared by. ``trajs`` read through :data:`GENERIC_TRIALS`."""
    tab = _memo_table(list(trajs), cal.schedule, cache.key, lambda t, a: cache.correct(a, t.target))
    scores = cal.model.score(tab.X) if len(tab.X) else np.zeros(0)
    out: dict[str, dict[str, float]] = {}
    for d in sorted({t.dataset for t in trajs}):
        ids = np.array([i for i, t in enumerate(trajs) if t.dataset == d])
        tok, cor = score_policy._replay(tab, score_policy._exits(tab, scores, ids), ids, cal.threshold)
        full = tab.final_ok[ids]
        out[d] = {"n": len(ids), "full_accuracy": float(full.mean()), "accuracy": float(cor.mean()),
                  "saved": float(1 - tok.sum() / tab.tokens_used[ids].sum()),
                  "harmful": int((full & ~cor).sum()), "helped": int((cor & ~full).sum())}
    return out


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


def lofo(read, raw, cache, schedule: str, features: Sequence[str], alpha: float, split: str,
         pairs: Sequence[tuple[list[str], list[str]]], quick: bool = False, reach: bool = False) -> list[dict]:
    """Each leave-one-family-out pair of ``pairs`` for one candidate, reported on ``split`` problems:
    fitted on ``read`` (trials read as the generic profile reads them), reported by :func:`report`
    on the recorded ``raw`` trajectories (the replay reads their trials as the rule does; DEER keeps
    each family's own reading), or with ``quick`` by :func:`quick_report` (the candidates); with
    ``reach`` the fit is anchored on its trial families' CAL MATH500 (:func:`anchor`)."""
    rows = []
    for fitted, held in pairs:
        cal = fit(read, fitted, schedule, features, cache, alpha)
        anchored = None
        if reach:
            cal, anchored = anchor(cal, read, raw, fitted, cache)
        for m in held:
            per = (quick_report(cal, [t for t in read if t.model == m and t.split == split], cache) if quick
                   else report(rule_of(cal), [t for t in raw if t.model == m and t.split == split], cache))
            rows.append({"fitted_on": fitted, "reported_on": m, "split": split, "threshold": cal.threshold,
                         "label": cal.label, "alpha": alpha, "stopped_by": cal.stopped_by, "per_dataset": per,
                         **({"anchor": anchored} if anchored else {})})
    return rows


def choose_setting(read, raw, cache) -> tuple[tuple[str, str, float, str], list[dict]]:
    """The candidate whose worst held-out TRAIN MATH500 saving (R1-7B <-> Qwen3) is highest among the
    eligible admissible ones; admissible none: the eligible one losing the fewest trajectories net
    (harmful - helped, both directions, every dataset), ties by the worst saving. Eligible: features
    relative to the run's scale (the absolute set is tried for comparison only)."""
    table = []
    for schedule in SCHEDULES:
        for name, feats in FEATURE_SETS.items():
            for alpha in ALPHAS:
                for pool in POOLS:
                    t0 = time.perf_counter()
                    rows = lofo(read, raw, cache, schedule, feats, alpha, "train", lofo_pairs(pool)[:2], quick=True)
                    ok = all(admissible(r["per_dataset"]) for r in rows)
                    worst = min(r["per_dataset"]["math500"]["saved"] for r in rows)
                    lost = sum(v["harmful"] - v["helped"] for r in rows for v in r["per_dataset"].values())
                    table.append({"schedule": schedule, "features": name, "alpha": alpha, "pool": pool, "admissible": ok,
                                  "worst_math500_saved": worst, "lost": lost, "rows": rows})
                    print(f"  candidate {schedule:15s} {name:30s} alpha {alpha:g} {pool:14s} " + " | ".join(line(r) for r in rows)
                          + f" {'admissible' if ok else ''} ({time.perf_counter() - t0:.0f} s)", flush=True)
    eligible = [c for c in table if c["features"] != "all (absolute positions too)"]
    ok = [c for c in eligible if c["admissible"]]
    best = max(ok, key=lambda c: c["worst_math500_saved"]) if ok else min(
        eligible, key=lambda c: (c["lost"], -c["worst_math500_saved"]))
    return (best["schedule"], best["features"], best["alpha"], best["pool"]), table


def line(r: dict) -> str:
    return f"{'+'.join(r['fitted_on'])} -> {r['reported_on']} " + " ".join(
        f"{d} {v['accuracy'] - v['full_accuracy']:+.3f}/{100 * v['saved']:.1f}%/h{v['harmful']}"
        + (f"(p{v['harmful_partial']})" if v.get("harmful_partial") else "")
        for d, v in sorted(r["per_dataset"].items()))


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
           f"*{result['chosen']['features']}*, alpha {result['chosen']['alpha']:g}, fitted on {result['chosen']['pool']} "
           f"({', '.join(result['chosen']['models'])}); trials read at the box's end by avg1 on every family "
           "(Qwen3-8B's recorded run-on avg2 trials re-read so, as the live profile reads them). R1-32B and R1-Llama "
           "default to `generic`.\n",
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
            "| schedule | features | alpha | fitted on | admissible | worst MATH500 saved | lost net | rows |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in result["candidates"]:
        out.append(f"| `{c['schedule']}` | {c['features']} | {c['alpha']:g} | {c['pool']} | {'yes' if c['admissible'] else 'no'} | "
                   f"{100 * c['worst_math500_saved']:.1f}% | {c['lost']} | {'; '.join(line(r) for r in c['rows'])} |")
    out += ["\n## Shipped defaults on DEV (profile picked by model name)\n",
            "| model | profile | MATH500 | AMC23 | AIME24 | DEER tau 0.999 on MATH500 |", "| --- | --- | --- | --- | --- | --- |"]
    for r in result["defaults_dev"] + result["generic_in_family_dev"]:
        p = r["per_dataset"]
        out.append(f"| {r['model']} | {r['profile']} | " + " | ".join(cell(p[d]) for d in ("math500", "amc23", "aime24"))
                   + f" | {deer_cell(p['math500'])} |")
    out.append("\n(The last two rows: `generic` on the families it was fitted on, their DEV problems: a reference, "
               "not a default.)")
    return "\n".join(out) + "\n"


REACH_COMMAND = "python benchmarks/transfer_profiles.py --reach-deer"
REACH_STEM = "transfer-profiles-reach-deer"


def reach_study(read, raw, cache, path: Path, started: float) -> dict[str, Any]:
    """The shipped ``generic`` setting (schedule, features, alpha, pool: its profile's record) with the
    family profiles' DEER anchor (:func:`anchor`), leave one family out on TRAIN problems only. It
    would ship only if admissible in both directions (R1-7B <-> Qwen3); this never writes the profile."""
    gen = next(p for p in shipped_profiles() if p.name == "generic")
    schedule, features = gen.rule["schedule"], tuple(gen.rule["model"]["features"])
    alpha, models = float(gen.calibration["alpha"]), list(gen.calibration["models"])
    pool = next(name for name, fam in POOLS.items() if fam == models)
    rows = lofo(read, raw, cache, schedule, features, alpha, "train", lofo_pairs(pool), reach=True)
    for r in rows:
        print(f"  anchored lofo train {line(r)} (threshold {r['anchor']['certified_threshold']:.4f} -> "
              f"{r['anchor']['threshold']:.4f}, target {100 * r['anchor']['target_saved']:.1f}%)", flush=True)
    ok = all(admissible(r["per_dataset"]) for r in rows[:2])
    whole = anchor(fit(read, models, schedule, features, cache, alpha), read, raw, models, cache)[1]
    return {"command": REACH_COMMAND, "data": f"{path} (Governor development traces, seeds 42-44), TRAIN problems only",
            "machine": f"{platform.machine()} {platform.system()}, 2 cores shared",
            "setting": {"schedule": schedule, "features": list(features), "alpha": alpha, "pool": pool, "models": models},
            "trial_reading": GENERIC_TRIALS, "lofo_train": rows, "admissible_both_directions": ok,
            "anchored_fit_on_all": whole, "shipped": False,
            "seconds": round(time.perf_counter() - started, 1)}


def reach_markdown(result: dict) -> str:
    """The anchored leave-one-family-out table on TRAIN problems and the decision it leads to."""
    st = result["setting"]
    out = [f"# The generic profile with the DEER anchor (issue 19): leave one family out, TRAIN problems\n\n"
           f"`{result['command']}`; data {result['data']}; machine {result['machine']}; {result['seconds']} s.\n",
           f"Setting: the shipped `generic`'s (schedule `{st['schedule']}`, alpha {st['alpha']:g}, fitted on {st['pool']}), "
           f"each fit's certified threshold lowered by the family profiles' anchor: {result['lofo_train'][0]['anchor']['rule']}.\n",
           "| fitted + certified on (train) | anchored on | threshold certified -> anchored (alpha) | target | reported on (train) "
           "| MATH500 | AMC23 | AIME24 | DEER tau 0.999 on MATH500 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["lofo_train"]:
        a, p = r["anchor"], r["per_dataset"]
        out.append(f"| {' + '.join(r['fitted_on'])} | {' + '.join(a['anchored_on'])} | {a['certified_threshold']:.4f} -> "
                   f"{a['threshold']:.4f} ({a['alpha']:g}) | {100 * a['target_saved']:.1f}% | {r['reported_on']} | "
                   + " | ".join(cell(p[d]) if d in p else "—" for d in ("math500", "amc23", "aime24"))
                   + f" | {deer_cell(p['math500'])} |")
    w = result["anchored_fit_on_all"]
    out.append(f"\nAdmissible in both directions (held-out family within 1 point on MATH500 train, at most one AMC23 / "
               f"AIME24 trajectory lost): **{'yes' if result['admissible_both_directions'] else 'no'}**; "
               f"{'shipped' if result['shipped'] else 'not shipped'}. The R1-32B and R1-Llama rows are not held out: "
               "their train problems are fitted on, and their traces hold no trials (the replay sees boxes and probes "
               "only). The same anchor on the fit over all of "
               f"{', '.join(st['models'])} (anchored on {' + '.join(w['anchored_on'])}): threshold "
               f"{w['certified_threshold']:.4f} -> {w['threshold']:.4f} (alpha {w['alpha']:g}), target {100 * w['target_saved']:.1f}%.")
    return "\n".join(out) + "\n"


def main() -> int:
    args = sys.argv[1:]
    cache_path = pop_value(args, "--grade-cache")
    write = "--write" in args
    reach = "--reach-deer" in args  # the study of the DEER anchor on train (never writes the profile)
    if write and reach:
        raise SystemExit("--reach-deer is a train-only study and never writes generic.json: run it without --write")
    args = [a for a in args if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    started = time.perf_counter()
    trajs, cache = read_and_grade(path, cache_path, started)
    read = [trials_as_read(t, GENERIC_TRIALS) for t in trajs]
    if reach:
        study = reach_study(read, trajs, cache, path, started)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{REACH_STEM}.json").write_text(json.dumps(study, indent=1) + "\n", encoding="utf-8")
        (OUT / f"{REACH_STEM}.md").write_text(reach_markdown(study), encoding="utf-8")
        print(f"admissible both directions: {study['admissible_both_directions']}; written {OUT / REACH_STEM}.{{json,md}}")
        return 0
    (schedule, fname, alpha, pool), candidates = choose_setting(read, trajs, cache)
    features, models = FEATURE_SETS[fname], POOLS[pool]
    lofo_train = lofo(read, trajs, cache, schedule, features, alpha, "train", lofo_pairs(pool))
    lofo_dev = lofo(read, trajs, cache, schedule, features, alpha, "dev", lofo_pairs(pool))
    for r in lofo_train + lofo_dev:
        print(f"  lofo {r['split']:5s} {line(r)}", flush=True)
    cal = fit(read, models, schedule, features, cache, alpha)
    patterns = ["r1-distill-qwen-32b", "r1-distill-llama"]
    extra = {"features_choice": f"{fname}, alpha {alpha:g}, fitted on {pool}: chosen with the schedule on held-out TRAIN problems "
                                "(benchmarks/transfer_profiles.py; results/transfer/)",
             "label_choice": "of the labels noharm and ok, the one whose certified threshold saves more on the calibration problems"}
    data = score_profile_json("generic", patterns, models, cal, COMMAND, extra=extra)
    data["rule"]["trials"].update(GENERIC_TRIALS, at="Wait", confidence=(
        "DEER's avg1 (mean token probability after the box's opening brace), the trial stopped at the box's end, "
        "on every model (core.exit_score.read_trial); the recorded trials of both families read so for fitting "
        "(evaluation.trial_reading)"))
    data["description"] = (f"Generic certainty score ({schedule}) for reasoning models of no calibrated family: features "
                           "relative to the run's own scale (no absolute token counts), fitted and certified on "
                           f"{', '.join(models)} (train problems; trials where recorded), harmful exits <= {cal.alpha:g} with probability "
                           f">= {1 - cal.delta:g} per model x dataset; reads DEER trials (needs token logprobs).")
    profiles = {p.name: p for p in shipped_profiles()}
    profiles["generic"] = parse_profile(data, "generic")
    for name in ("r1-distill-qwen-32b", "r1-distill-llama"):  # superseded as defaults: kept by name only
        if name in profiles:
            profiles[name] = parse_profile(dict(json.loads((ROOT / "src/certaindex/data/profiles" / f"{name}.json").read_text()), models=[]), name)
    profiles = dict(sorted(profiles.items(), key=lambda kv: (kv[0] == "conservative", kv[0])))
    defaults_dev = dev_table(profiles, trajs, cache)
    # For reference: generic itself on the trial families' DEV problems (their train problems fitted on).
    # R1-7B is the nearest stand-in these traces hold for R1-32B / R1-Llama live, with trials.
    in_family = [{"model": m, "profile": "generic", "per_dataset": report(profiles["generic"].rule,
                  [t for t in trajs if t.model == m and t.split == "dev"], cache)} for m in WITH_TRIALS]
    result = {"command": COMMAND, "data": f"{path} (Governor development traces, seeds 42-44)",
              "machine": f"{platform.machine()} {platform.system()}, 2 cores shared", "seconds": 0.0,
              "chosen": {"schedule": schedule, "features": fname, "alpha": alpha, "pool": pool, "models": models,
                         "feature_list": list(features)},
              "trial_reading": GENERIC_TRIALS, "candidates": candidates,
              "lofo_train": lofo_train, "lofo_dev": lofo_dev, "defaults_dev": defaults_dev,
              "generic_in_family_dev": in_family,
              "generic": profiles["generic"].calibration, "generic_threshold": cal.threshold}
    result["seconds"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "transfer-profiles.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (OUT / "transfer-profiles.md").write_text(markdown(result), encoding="utf-8")
    if write:
        folder = ROOT / "src" / "certaindex" / "data" / "profiles"
        (folder / "generic.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    print(f"written {OUT} in {result['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
