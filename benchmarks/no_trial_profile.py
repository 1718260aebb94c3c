"""The no-trial profile (``conservative``): chosen on held-aside TRAIN problems, reported on DEV.

Where no DEER trials can be taken (live: an engine without token logprobs; replay: a trajectory with
none recorded, as R1-Distill-Qwen-32B's and R1-Distill-Llama-8B's development traces) a default
profile that reads trials gives way to ``conservative`` (``evaluation.profile_choice.without_trials``).
This benchmark fits that profile: the certainty score without trial features, on the TRAIN problems
of all four families pooled, with its schedule reading only what a live program takes without
logprobs (the model's boxes ``bx``, one probe after ``</think>`` ``tc``, a probe every N tokens
``gN``; event probes ``ev`` are not taken by the live score rule).

Choice, on TRAIN problems only (the candidates below are fixed before any run): the score is fitted
on the FIT sixths (0, 3) and CAL's four sixths take turns as held-aside while the other three certify
the threshold by the same Learn-then-Test walk (``score_policy.held_aside_outcomes``). A candidate is
admissible when, pooled over the turns, every family keeps MATH500 within 1 point of full reasoning
and loses at most one AMC23 / AIME24 trajectory. The admissible ones are ranked by their smaller
MATH500 saving over R1-32B and R1-Llama; the first that also passes leave-one-family-out (the
profile is meant for models of no known family: fitted and certified on three families, every
fourth family's held-aside TRAIN problems meet the same bar) wins. The peers (Dynasor, event probes) are chosen on all TRAIN
problems as the contest deploys them and read on the same held-aside trajectories, for comparison.
The same grid fitted on R1-32B or R1-Llama alone says what a family-specific no-trial profile
would do; its best admissible setting is fitted and reported on DEV too. None ships (see
benchmarks/README.md: R1-32B's passed on held-aside train and failed on dev).

Then the chosen setting is fitted as every shipped score profile is (FIT third, Learn-then-Test on the
other two thirds) and reported on DEV for every family.

    python benchmarks/no_trial_profile.py [GOVERNOR_DIR] [--grade-cache FILE] [--write] [--reuse-choice]

writes benchmarks/results/no-trial-profile/no-trial-profile.{json,md}; with --write also
src/certaindex/data/profiles/conservative.json.
``--reuse-choice`` takes the held-aside grids from that JSON (written by an earlier run of this
script) instead of recomputing them (about 40 minutes on the 2-core VM), then fits and reports.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from certaindex.core.exit_score import FEATURES, RELATIVE_FEATURES
from certaindex.evaluation.governor import PolicySpec, best_in_band, family_points, run_policy, with_final_answers
from certaindex.evaluation.grading import GradeCache
from certaindex.evaluation.peers import full_reasoning
from certaindex.evaluation.score_policy import (
    _fit,
    _table,
    calibrate,
    held_aside_outcomes,
    part_of,
    replay_score,
    score_profile_json,
)
from certaindex.evaluation.profiles import parse_profile
from certaindex.traces.governor import Trajectory, read_governor
from _cli_args import pop_value

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "no-trial-profile"
R1, QWEN3, R32, LLAMA = "r1-distill-qwen-7b", "qwen3-8b", "r1-distill-qwen-32b", "r1-distill-llama-8b"
LOFO_TRIES = 8  # ranked admissible pooled candidates checked leave-one-family-out, at most
ALL = [R1, QWEN3, R32, LLAMA]
TARGETS = [R32, LLAMA]  # the families whose development traces hold no trials
DATASETS = ("math500", "amc23", "aime24")
DELTA = 0.1
# Candidates, fixed before any run.
SCHEDULES = ("bx+tc+g512", "bx+tc+g256", "bx+g512")
FEATURE_SETS: dict[str, list[str]] = {
    "all but trials": [f for f in FEATURES if "trial" not in f],
    "relative, no trials": [f for f in RELATIVE_FEATURES if "trial" not in f],
}
LABELS = ("noharm", "ok")
ALPHAS = (0.01, 0.02, 0.03, 0.05)
GUARDS = {"model+dataset": "model+dataset", "dataset": "dataset", "none": None}
COMMAND = "python benchmarks/no_trial_profile.py --write"


def graded(trajs: Sequence[Trajectory], cache_path: str | None) -> GradeCache:
    """The grade cache, filled for everything the schedules and peers read."""
    from certaindex.evaluation.governor import grading_inputs

    cache = GradeCache.load(cache_path)
    pairs, keys = grading_inputs(trajs)
    if cache.grade(pairs, keys).graded:
        cache.save(cache_path)
    return cache


def _groups(trajs: Sequence[Trajectory], strata: str | None) -> np.ndarray | None:
    if strata is None:
        return None
    return np.array([t.dataset if strata == "dataset" else f"{t.model}/{t.dataset}" for t in trajs])


def held_aside(trajs: Sequence[Trajectory], tab, scores: np.ndarray, strata: str | None, alpha: float) -> dict[str, dict]:
    """Per ``model/dataset``: n, harmful, helped, saved on the held-aside turns (see module doc)."""
    six = np.array([part_of(t) for t in trajs])
    rot = held_aside_outcomes(tab, scores, six, _groups(trajs, strata), alpha, DELTA)
    full = tab.final_ok[rot.ids]
    names = np.array([f"{trajs[i].model}/{trajs[i].dataset}" for i in rot.ids])
    per = {}
    for name in sorted(set(names.tolist())):
        m = names == name
        per[name] = {"n": int(m.sum()), "harmful": int(((~rot.correct) & full)[m].sum()),
                     "helped": int((rot.correct & ~full)[m].sum()),
                     "saved": round(1 - float(rot.tokens[m].sum()) / float(tab.tokens_used[rot.ids][m].sum()), 4)}
    return per


def admissible(per: dict[str, dict], models: Sequence[str]) -> bool:
    """Every family of ``models``: MATH500 within 1 point, AMC23 / AIME24 at most one trajectory lost."""
    for m in models:
        for d in DATASETS:
            v = per.get(f"{m}/{d}")
            if v is None:
                continue
            lost = v["harmful"] - v["helped"]
            if (lost > 0.01 * v["n"] + 1e-9) if d == "math500" else lost > 1:
                return False
    return True


def worst_target(per: dict[str, dict], models: Sequence[str]) -> float:
    return min(per[f"{m}/math500"]["saved"] for m in models if f"{m}/math500" in per)


def grid(trajs: Sequence[Trajectory], cache, models: Sequence[str], guards: dict[str, str | None]) -> list[dict]:
    """Every candidate fitted on ``models`` (FIT sixths) and replayed held-aside (CAL's turns)."""
    fam = [t for t in trajs if t.model in models]

    def correct(t, a):
        return cache.correct(a, t.target)

    six = np.array([part_of(t) for t in fam])
    fit_ids = np.nonzero(np.isin(six, (0, 3)))[0]
    rows = []
    for schedule in SCHEDULES:
        tab = _table(fam, schedule, cache.key, correct)
        for fname, feats in FEATURE_SETS.items():
            for label in LABELS:
                scores = _fit(tab, fit_ids, feats, 2.0, label, len(fam)).score(tab.X)
                for alpha in ALPHAS:
                    for gname, strata in guards.items():
                        per = held_aside(fam, tab, scores, strata, alpha)
                        row = {"schedule": schedule, "features": fname, "label": label, "alpha": alpha, "guard": gname,
                               "per": per, "admissible": admissible(per, models)}
                        rows.append(row)
                        print(f"  {'+'.join(m.split('-')[-1] for m in models):12s} {schedule:11s} {fname:20s} {label:6s} "
                              f"a{alpha:<5g} {gname:13s} {'ADM' if row['admissible'] else '   '} " + summary(per), flush=True)
    return rows


def summary(per: dict[str, dict]) -> str:
    return " ".join(f"{k.split('-')[-1].replace('/', ' ')} -{v['harmful']}+{v['helped']}/{100 * v['saved']:.1f}%"
                    for k, v in per.items())


def peers_held_aside(trajs: Sequence[Trajectory], cache) -> dict[str, dict]:
    """Dynasor and event probes as the contest deploys them (the setting saving most within 1 point of
    full reasoning on all TRAIN problems of the model x dataset), read on the held-aside sixths."""
    out: dict[str, dict] = {}
    for m in TARGETS + [R1, QWEN3]:
        for d in DATASETS:
            ts = [t for t in trajs if t.model == m and t.dataset == d]
            pts = family_points(ts, cache, with_default=False)
            full = next(p for p in pts if p.family == "full")
            held = [t for t in ts if part_of(t) in (1, 2, 4, 5)]
            fulls = [full_reasoning(t, lambda a, t=t: cache.correct(a, t.target)) for t in held]
            for fam in ("dynasor", "events"):
                b = best_in_band(pts, fam, full.accuracy)
                if b is None:
                    continue
                k = int(b.label.split("k=")[1].split()[0])
                spec = PolicySpec(fam, k=k, interval=b.interval or 64)
                outs = [run_policy(spec, t, cache) for t in held]
                out.setdefault(f"{m}/{d}", {})[fam] = {
                    "setting": b.label, "n": len(held),
                    "harmful": sum(f.correct and not o.correct for f, o in zip(fulls, outs)),
                    "helped": sum(o.correct and not f.correct for f, o in zip(fulls, outs)),
                    "saved": round(1 - sum(o.tokens for o in outs) / sum(f.tokens for f in fulls), 4)}
    return out


def lofo(trajs: Sequence[Trajectory], cache, row: dict) -> dict[str, dict]:
    """The setting ``row`` fitted and certified on three families (calibrate: FIT third, LTT on the
    rest), replayed on the fourth family's held-aside TRAIN sixths."""
    out = {}
    for held in ALL:
        cal = fit_profile([t for t in trajs if t.model != held], row, cache)
        ts = [t for t in trajs if t.model == held and part_of(t) in (1, 2, 4, 5)]
        out[held] = {"threshold": cal.threshold, **report({"kind": "score", "schedule": cal.schedule,
                                                           "threshold": cal.threshold, "model": cal.model.to_dict()}, ts, cache)}
        print(f"  LOFO -> {held:20s} threshold {cal.threshold} " + " ".join(
            f"{d} -{v['harmful']}+{v['helped']}/{100 * v['saved']:.1f}%" for d, v in out[held].items() if d != "threshold"), flush=True)
    return out


def fit_profile(trajs: Sequence[Trajectory], row: dict, cache):
    """``row``'s setting fitted on the FIT third of ``trajs`` and certified on the rest."""
    return calibrate(trajs, row["schedule"], cache.key, lambda t, a: cache.correct(a, t.target), row["alpha"], DELTA,
                     features=FEATURE_SETS[row["features"]], strata=GUARDS[row["guard"]], label=row["label"])


def report(rule: dict[str, Any], trajs: Sequence[Trajectory], cache) -> dict[str, dict]:
    """Per dataset: n, accuracy change, saved (probe tokens counted), harmful and helped exits."""
    out = {}
    for d in DATASETS:
        ts = [t for t in trajs if t.dataset == d]
        if not ts:
            continue
        cs = [(lambda a, t=t: cache.correct(a, t.target)) for t in ts]
        fulls = [full_reasoning(t, c) for t, c in zip(ts, cs)]
        outs = [replay_score(rule, t, cache.key, c) for t, c in zip(ts, cs)]
        out[d] = {"n": len(ts), "accuracy_change": (sum(o.correct for o in outs) - sum(f.correct for f in fulls)) / len(ts),
                  "saved": round(1 - sum(o.tokens for o in outs) / sum(f.tokens for f in fulls), 4),
                  "harmful": sum(f.correct and not o.correct for f, o in zip(fulls, outs)),
                  "helped": sum(o.correct and not f.correct for f, o in zip(fulls, outs))}
    return out


def choose(rows: list[dict]) -> dict | None:
    ok = [r for r in rows if r["admissible"]]
    return max(ok, key=lambda r: worst_target(r["per"], TARGETS)) if ok else None


def main() -> int:
    args = sys.argv[1:]
    cache_path = pop_value(args, "--grade-cache")
    write = "--write" in args
    args = [a for a in args if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    started = time.perf_counter()
    trajs = with_final_answers([t for r in read_governor(path, "all") for t in r.trajectories])
    cache = graded(trajs, cache_path)
    train = [t for t in trajs if t.split == "train"]
    dev = [t for t in trajs if t.split == "dev"]
    results_file = OUT / "no-trial-profile.json"
    if "--reuse-choice" in sys.argv:
        saved = json.loads(results_file.read_text(encoding="utf-8"))
        peers, pooled, own = saved["peers_held_aside"], saved["pooled"], saved["family_alone"]
    else:
        peers, pooled, own = held_aside_grids(train, cache)
    chosen, tried = choose_with_lofo(train, cache, pooled)
    print(f"chosen: {chosen['schedule']} {chosen['features']} {chosen['label']} alpha {chosen['alpha']} guard {chosen['guard']}",
          flush=True)
    families = family_choice(pooled=chosen, own=own, peers=peers)
    profiles = {"conservative": fitted("conservative", [], ALL, train, chosen, cache)}
    for m, f in families.items():  # reported, not shipped
        if f["best"] is not None:
            profiles[f"{m} alone (not shipped)"] = fitted(f"{m}-alone", [], [m], train, f["best"], cache)
    dev_rows: dict[str, dict] = {}
    for m in ALL:
        ts = [t for t in dev if t.model == m]
        for name, (prof, _) in profiles.items():
            if name == "conservative" or name.startswith(m):
                dev_rows.setdefault(name, {})[m] = report(prof.rule, ts, cache)
                print(f"  DEV {name:34s} {m:20s} " + " ".join(
                    f"{d} {100 * v['accuracy_change']:+.1f}pp/{100 * v['saved']:.1f}%/h{v['harmful']}+{v['helped']}"
                    for d, v in dev_rows[name][m].items()), flush=True)
    result = {"command": COMMAND, "data": str(path), "machine": f"{platform.machine()} {platform.system()}, 2 cores shared",
              "seconds": round(time.perf_counter() - started, 1), "peers_held_aside": peers,
              "pooled": pooled, "family_alone": own, "chosen": chosen, "family_stand_ins": families,
              "lofo_held_aside_train": tried,
              "profiles": {n: {"threshold": p.rule["threshold"], **p.calibration} for n, (p, _) in profiles.items()},
              "dev": dev_rows}
    OUT.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (OUT / "no-trial-profile.md").write_text(markdown(result), encoding="utf-8")
    if write:
        target = ROOT / "src" / "certaindex" / "data" / "profiles" / "conservative.json"
        target.write_text(json.dumps(profiles["conservative"][1], indent=1) + "\n", encoding="utf-8")
    print(f"written {OUT} in {result['seconds']} s")
    return 0


def held_aside_grids(train: Sequence[Trajectory], cache) -> tuple[dict, list[dict], dict[str, list[dict]]]:
    """The peers, the pooled grid and each target family's own grid, all on held-aside train."""
    print("peers chosen on train, read held-aside:", flush=True)
    peers = peers_held_aside(train, cache)
    for g, v in peers.items():
        print(f"  {g:30s} " + "  ".join(f"{f} {p['setting']}: -{p['harmful']}+{p['helped']}/{100 * p['saved']:.1f}%"
                                        for f, p in v.items()), flush=True)
    print("pooled (all four families):", flush=True)
    pooled = grid(train, cache, ALL, GUARDS)
    own = {}
    for m in TARGETS:
        print(f"{m} alone:", flush=True)
        own[m] = grid(train, cache, [m], {"dataset": "dataset", "none": None})
    return peers, pooled, own


def choose_with_lofo(train: Sequence[Trajectory], cache, pooled: list[dict]) -> tuple[dict, list[dict]]:
    """The first of the ranked admissible pooled candidates (see :func:`choose`) whose
    leave-one-family-out replay is admissible on every family; (it, every candidate tried with its
    LOFO figures). None passing within :data:`LOFO_TRIES`: the first, and the report says so."""
    ranked = sorted((r for r in pooled if r["admissible"]), key=lambda r: -worst_target(r["per"], TARGETS))
    if not ranked:
        raise SystemExit("no pooled candidate is admissible on held-aside train problems")
    tried = []
    for row in ranked[:LOFO_TRIES]:
        print(f"LOFO of {row['schedule']} {row['features']} {row['label']} alpha {row['alpha']} guard {row['guard']}:", flush=True)
        left_out = lofo(train, cache, row)
        ok = all(admissible({f"{m}/{d}": v for d, v in per.items() if d != "threshold"}, [m]) for m, per in left_out.items())
        tried.append({"setting": {k: row[k] for k in ("schedule", "features", "label", "alpha", "guard")},
                      "lofo": left_out, "lofo_admissible": ok})
        if ok:
            return row, tried
    print("no candidate passed leave-one-family-out: the first is kept", flush=True)
    return ranked[0], tried


def family_choice(*, pooled: dict, own: dict[str, list[dict]], peers: dict) -> dict[str, dict]:
    """Per target family: its own best admissible setting, and what it, the peers and the pooled
    choice save on its held-aside MATH500 (a family-specific stand-in would need to reach both peers
    where the pooled profile does not)."""
    out = {}
    for m in TARGETS:
        best = choose(own[m])
        bar = max((p["saved"] for p in peers.get(f"{m}/math500", {}).values()), default=0.0)
        mine = best["per"][f"{m}/math500"]["saved"] if best else None
        pooled_saved = pooled["per"][f"{m}/math500"]["saved"]
        ships = mine is not None and mine >= bar and pooled_saved < bar
        out[m] = {"best": best, "best_saved": mine, "peers_best_saved": bar, "pooled_saved": pooled_saved,
                  "reaches_peers_where_pooled_does_not": ships}
        print(f"{m}: pooled {100 * pooled_saved:.1f}%, own best {'none' if mine is None else f'{100 * mine:.1f}%'}"
              f"{'' if best is None else ' (' + ' '.join(str(best[k]) for k in ('schedule', 'features', 'label', 'alpha', 'guard')) + ')'}, "
              f"peers best {100 * bar:.1f}%{': own reaches the peers, pooled does not' if ships else ''}", flush=True)
    return out


def fitted(name: str, patterns: list[str], models: list[str], train: Sequence[Trajectory], row: dict, cache):
    """``row``'s setting fitted (FIT third) and certified (LTT on the rest) on ``models``' train
    problems: (the profile, its JSON)."""
    cal = fit_profile([t for t in train if t.model in models], row, cache)
    extra = {"setting_choice": (
        "schedule, features, label, alpha and stratum guard chosen on held-aside TRAIN problems (benchmarks/no_trial_profile.py): "
        "fitted on the FIT sixths, CAL's four sixths take turns as held-aside while the other three certify; admissible: "
        "MATH500 within 1 point and AMC23/AIME24 at most one trajectory lost, on every family fitted on; the admissible one "
        "whose smaller MATH500 saving over R1-32B and R1-Llama is highest among those whose leave-one-family-out replay "
        "(fitted and certified on three families, read on the fourth's held-aside train problems) meets the same bar"),
        "features_used": row["features"],
        "used_for": ("engines without token logprobs, and in replay trajectories without recorded trials, wherever the model's "
                     "own profile reads DEER trials (evaluation.profile_choice.without_trials)"
                     + ("; --profile conservative" if name == "conservative" else ""))}
    data = score_profile_json(name, patterns, models, cal, COMMAND, extra=extra)
    data["description"] = (f"No-trial certainty score ({cal.schedule}, {row['features']}), the stand-in where no DEER trials "
                           f"can be taken (engine without token logprobs, trajectory without recorded trials): fitted on "
                           f"{'all four families pooled' if len(models) > 1 else models[0]} (TRAIN problems), alpha "
                           f"{cal.alpha:g}, stratum guard {row['guard']}; setting chosen on held-aside train problems.")
    print(f"fitted {name}: threshold {cal.threshold} label {cal.label} cal harmful {cal.cal_harmful}/{cal.n_cal} "
          f"saved {100 * cal.cal_saved:.1f}% stopped by {cal.stopped_by}", flush=True)
    return parse_profile(data, name), data


def markdown(result: dict) -> str:
    """The held-aside tables (pooled candidates, the targets alone, peers) and the DEV rows."""
    def cell(v: dict | None) -> str:
        return "—" if v is None else f"-{v['harmful']}+{v['helped']} / {100 * v['saved']:.1f}%"

    lines = [f"# No-trial profile (`{result['command']}`, {result['seconds']} s, {result['machine']})", "",
             "Held-aside TRAIN (CAL sixths in turn; harmful-helped exits / tokens saved), MATH500:", "",
             "| fitted on | schedule | features | label | alpha | guard | admissible | " + " | ".join(ALL) + " |",
             "| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in ALL) + " |"]
    for who, rows in [("all four", result["pooled"])] + [(m, r) for m, r in result["family_alone"].items()]:
        for r in rows:
            lines.append(f"| {who} | {r['schedule']} | {r['features']} | {r['label']} | {r['alpha']:g} | {r['guard']} | "
                         f"{'yes' if r['admissible'] else 'no'} | " + " | ".join(cell(r["per"].get(f"{m}/math500")) for m in ALL) + " |")
    lines += ["", "Peers chosen on all TRAIN problems, read on the same held-aside trajectories:", "",
              "| model x dataset | " + " | ".join(("dynasor", "events")) + " |", "| --- | --- | --- |"]
    for g, v in result["peers_held_aside"].items():
        lines.append(f"| {g} | " + " | ".join(f"{v[f]['setting']}: {cell(v[f])}" if f in v else "none in band"
                                              for f in ("dynasor", "events")) + " |")
    lines += ["", "DEV, the fitted profiles:", "", "| profile | model | " + " | ".join(DATASETS) + " |",
              "| --- | --- | --- | --- | --- |"]
    for name, m, per in [(n, m, per) for n, rows in result["dev"].items() for m, per in rows.items()]:
        lines.append(f"| {name} | {m} | " + " | ".join(f"{100 * per[d]['accuracy_change']:+.1f} pt / {100 * per[d]['saved']:.1f}% "
                                              f"(h {per[d]['harmful']}, +{per[d]['helped']})" for d in DATASETS if d in per) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
