"""Does a score's calibration transfer between R1 siblings better than between Qwen3 and an R1? (issue 19, items 1-2)

Live, R1-Distill-Qwen-32B and R1-Distill-Llama-8B run ``generic``, whose calibration was learnt mostly
from Qwen3-8B and is too conservative for an R1 distill (leave one family out on dev: 20.2% saved on
R1-7B). The development traces hold no DEER trials for 32B / Llama, so a trial profile cannot be
tested on them; what can be tested is whether the probe and text part of the score transfers between
R1 siblings. If it does, "any R1 distill runs the R1 profile" rests on leave-one-family-out evidence.

Every setting is fixed here, before the run:

* the recipe: the shipped family recipe of ``benchmarks/score_profiles.py`` without trial features:
  schedule ``bx+tc+g512``, label noharm or ok (the one whose certified threshold saves more on the
  calibration problems), alpha 0.02, delta 0.1, the stratum guard per dataset;
  ``transfer_profiles.fit`` with one source family is exactly that recipe;
* two feature sets: every no-trial feature (absolute positions too, as ``r1-distill-qwen.json``) and
  the relative features (``RELATIVE_FEATURES``) without trial features;
* sources: each family alone, fitted on its TRAIN FIT third, certified on its TRAIN CAL part;
* targets: every family. TRAIN cell: a foreign source on all of the target's train problems; its own
  source on its CAL problems held aside in turn (each CAL sixth replayed at the threshold the other
  three certify, ``score_policy.held_aside_outcomes``: CAL itself certified the threshold). DEV cell:
  the fit on the target's dev problems (reported once, never chosen on).
* the rule :data:`RULE`, answered on TRAIN cells only.

Context rows: the shipped ``generic`` and ``r1-distill-qwen`` profiles (with trials) on R1-7B and
Qwen3 (train and dev; their train problems are fitted on, see each profile's ``calibration.models``).

    python benchmarks/sibling_transfer.py [GOVERNOR_DIR] [--grade-cache FILE]

writes benchmarks/results/sibling-transfer/sibling-transfer.{json,md}.
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
from certaindex.evaluation import score_policy
from certaindex.evaluation.profiles import shipped_profiles
from certaindex.evaluation.score_policy import Calibration, held_aside_outcomes, part_of
from certaindex.traces.governor import Trajectory
from _cli_args import pop_value
from transfer_profiles import ALL, LLAMA, QWEN3, R1, R32, admissible, fit, quick_report, read_and_grade, report, rule_of

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "sibling-transfer"
COMMAND = "python benchmarks/sibling_transfer.py ../shared/traces/governor --grade-cache G"
SCHEDULE, ALPHA = "bx+tc+g512", 0.02  # delta 0.1 and the per-dataset guard: transfer_profiles.fit
R1S = (R1, R32, LLAMA)
FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "all, no trials": tuple(f for f in FEATURES if "trial" not in f),
    "relative, no trials": tuple(f for f in RELATIVE_FEATURES if "trial" not in f),
}
SHORT = {R1: "R1-7B", QWEN3: "Qwen3-8B", R32: "R1-32B", LLAMA: "R1-Llama-8B"}
CONTEXT_PROFILES = ("generic", "r1-distill-qwen")
RULE = ("\"R1 siblings transfer\" holds for a feature set if, on TRAIN, for every R1 source S (R1-7B, R1-32B, "
        "R1-Llama) and every other R1 target T, the S-sourced fit is admissible on T (MATH500 accuracy at most 1 point "
        "below full reasoning; AMC23 and AIME24 each lose at most one trajectory net, harmful minus helped) AND saves at "
        "least as much of T's MATH500 tokens as the Qwen3-sourced fit saves on T. Written before the run. Reported for "
        "both feature sets; the one that answers the routing question is \"all, no trials\", the feature set of "
        "r1-distill-qwen.json (absolute positions too).")


def held_aside(cal: Calibration, fam: Sequence[Trajectory], cache) -> dict[str, dict[str, float]]:
    """The source's own TRAIN cell: each CAL sixth replayed at the threshold the other three CAL sixths
    certify (same label, alpha, delta, per-dataset guard), the score as fitted on FIT. ``fam`` is the
    list ``fit`` calibrated on, so the memoised observation table is reused."""
    def correct(t, a):
        return cache.correct(a, t.target)

    tab = score_policy._table(list(fam), cal.schedule, cache.key, correct)
    scores = cal.model.score(tab.X) if len(tab.X) else np.zeros(0)
    six = np.array([part_of(t) for t in fam])
    ds = np.array([t.dataset for t in fam])
    rot = held_aside_outcomes(tab, scores, six, ds, cal.alpha, cal.delta)
    full, dsr = tab.final_ok[rot.ids], ds[rot.ids]
    out: dict[str, dict[str, float]] = {}
    for d in sorted(set(dsr.tolist())):
        m = dsr == d
        out[d] = {"n": int(m.sum()), "full_accuracy": float(full[m].mean()), "accuracy": float(rot.correct[m].mean()),
                  "saved": float(1 - rot.tokens[m].sum() / tab.tokens_used[rot.ids][m].sum()),
                  "harmful": int((full[m] & ~rot.correct[m]).sum()), "helped": int((rot.correct[m] & ~full[m]).sum()),
                  "thresholds": rot.thresholds}
    return out


def matrices(trajs: Sequence[Trajectory], cache, features: Sequence[str]) -> dict[str, Any]:
    """Per source: the fit (threshold, label, what stopped the walk) and per target its TRAIN and DEV cells."""
    out: dict[str, Any] = {}
    for src in ALL:
        t0 = time.perf_counter()
        cal = fit(trajs, [src], SCHEDULE, features, cache, ALPHA)
        fam = [t for t in trajs if t.split == "train" and t.model == src]  # as fit() selects them
        row: dict[str, Any] = {"threshold": cal.threshold, "label": cal.label, "alpha": cal.alpha, "delta": cal.delta,
                               "stopped_by": cal.stopped_by, "cal_harmful": cal.cal_harmful, "n_cal": cal.n_cal,
                               "cal_saved": cal.cal_saved, "train": {}, "dev": {}, "oracle_train": {}}
        for tgt in ALL:
            row["oracle_train"][tgt] = oracle_saved(cal, [t for t in trajs if t.model == tgt and t.split == "train"], cache)
            row["train"][tgt] = (held_aside(cal, fam, cache) if tgt == src else
                                 quick_report(cal, [t for t in trajs if t.model == tgt and t.split == "train"], cache))
            row["dev"][tgt] = quick_report(cal, [t for t in trajs if t.model == tgt and t.split == "dev"], cache)
        out[src] = row
        print(f"  source {SHORT[src]:11s} threshold {cal.threshold} label {cal.label} stopped by {cal.stopped_by} "
              f"({time.perf_counter() - t0:.0f} s)\n" + "\n".join(
                  f"    {split:5s} -> {SHORT[tgt]:11s} {cell(row[split][tgt])}" for split in ("train", "dev") for tgt in ALL),
              flush=True)
    return out


def sibling_rule(mat: dict[str, Any]) -> dict[str, Any]:
    """:data:`RULE` on one feature set's TRAIN cells: each directed R1 pair, and whether all pass."""
    pairs = []
    for s in R1S:
        for t in R1S:
            if t == s:
                continue
            cellv, qwen = mat[s]["train"][t], mat[QWEN3]["train"][t]
            ok = admissible(cellv)
            more = cellv["math500"]["saved"] >= qwen["math500"]["saved"] - 1e-12
            pairs.append({"source": s, "target": t, "admissible": ok, "saved": cellv["math500"]["saved"],
                          "qwen3_sourced_saved": qwen["math500"]["saved"], "qwen3_sourced_admissible": admissible(qwen),
                          "saves_at_least_qwen3": more, "passes": bool(ok and more)})
    return {"holds": all(p["passes"] for p in pairs), "pairs": pairs}


# Added after the first run (the rule held with thin margins): not part of the rule, reported beside it.
DRAWS = (0, 1, 2)  # FIT = sixths {k, k + 3} of score_policy.part_of; draw 0 is fit_split's FIT third (the rule's)


def fit_draw(fam: Sequence[Trajectory], features: Sequence[str], cache, draw: int) -> Calibration:
    """The recipe with FIT = sixths ``draw`` and ``draw + 3`` (another third of the problems), CAL the
    rest: the same fit, walk and guard as ``calibrate`` (draw 0 is its split), the label saving more on CAL."""
    def correct(t, a):
        return cache.correct(a, t.target)

    fam = list(fam)
    tab = score_policy._table(fam, SCHEDULE, cache.key, correct)
    six = np.array([part_of(t) for t in fam])
    fit_ids = np.nonzero(np.isin(six, (draw, draw + 3)))[0]
    cal_ids = np.nonzero(~np.isin(six, (draw, draw + 3)))[0]
    groups = np.array([t.dataset for t in fam])
    best: Calibration | None = None
    for label in score_policy.LABELS:
        model = score_policy._fit(tab, fit_ids, list(features), 2.0, label, len(fam))
        scores = model.score(tab.X)
        index, stopped, runs = score_policy._certify(tab, scores, cal_ids, groups, ALPHA, 0.1)
        th = score_policy.THRESHOLDS[index] if index is not None else None
        tok, cor = score_policy._replay(tab, runs, cal_ids, th)
        cal = Calibration(SCHEDULE, model, th, ALPHA, 0.1, len(fit_ids), len(cal_ids),
                          int(((~cor) & tab.final_ok[cal_ids]).sum()),
                          float(1 - tok.mean() / tab.tokens_used[cal_ids].mean()), stopped, {}, label, True)
        if best is None or (cal.threshold is not None, cal.cal_saved) > (best.threshold is not None, best.cal_saved):
            best = cal
    assert best is not None
    return best


def draws(trajs: Sequence[Trajectory], cache, features: Sequence[str]) -> list[dict[str, Any]]:
    """:data:`RULE` on each FIT third of :data:`DRAWS` (foreign targets' TRAIN cells, all their train problems)."""
    out = []
    for k in DRAWS:
        mat: dict[str, Any] = {}
        for src in ALL:
            cal = fit_draw([t for t in trajs if t.split == "train" and t.model == src], features, cache, k)
            mat[src] = {"threshold": cal.threshold, "label": cal.label, "stopped_by": cal.stopped_by, "train": {
                tgt: quick_report(cal, [t for t in trajs if t.model == tgt and t.split == "train"], cache)
                for tgt in ALL if tgt != src}}
        rule = sibling_rule(mat)
        out.append({"draw": k, "fit_sixths": [k, k + 3], "matrix": mat, "rule": rule})
        print(f"  draw {k}: " + " ".join(f"{SHORT[p['source']]}->{SHORT[p['target']]} {100 * p['saved']:.1f}/"
                                          f"{100 * p['qwen3_sourced_saved']:.1f}{'' if p['admissible'] else 'x'}"
                                          for p in rule["pairs"]) + f" -> {'holds' if rule['holds'] else 'does not hold'}",
              flush=True)
    return out


def oracle_saved(cal: Calibration, ts: Sequence[Trajectory], cache, band: float = 0.01) -> float:
    """The most MATH500 tokens the score saves on ``ts`` at any of :data:`THRESHOLDS` keeping accuracy
    within ``band`` of full reasoning: the threshold picked on the target itself (an oracle, not
    deployable). It tells how well the score RANKS on the target apart from where its threshold sits."""
    ts = list(ts)
    tab = score_policy._table(ts, cal.schedule, cache.key, lambda t, a: cache.correct(a, t.target))
    scores = cal.model.score(tab.X)
    ids = np.array([i for i, t in enumerate(ts) if t.dataset == "math500"])
    runs = score_policy._exits(tab, scores, ids)
    full, best = tab.final_ok[ids].mean(), 0.0
    for th in score_policy.THRESHOLDS:
        tok, cor = score_policy._replay(tab, runs, ids, th)
        if cor.mean() >= full - band - 1e-12:
            best = max(best, float(1 - tok.sum() / tab.tokens_used[ids].sum()))
    return best


def lost(v: dict) -> int:
    return int(v["harmful"] - v["helped"])


def cell(v: dict[str, dict]) -> str:
    """MATH500 change / saved (h harmful, + helped); AMC23 / AIME24 trajectories lost net (negative: gained)."""
    m = v["math500"]
    return (f"{100 * (m['accuracy'] - m['full_accuracy']):+.1f} / {100 * m['saved']:.1f}% (h{m['harmful']} +{m['helped']}); "
            f"lost AMC {lost(v['amc23'])}, AIME {lost(v['aime24'])}" + ("" if admissible(v) else " **x**"))


def context_rows(trajs: Sequence[Trajectory], cache) -> list[dict[str, Any]]:
    """The shipped ``generic`` and ``r1-distill-qwen`` profiles (with trials) on R1-7B and Qwen3, train
    and dev, through the replay the live rule takes (``replay_score``; DEER 0.999 beside)."""
    profiles = {p.name: p for p in shipped_profiles()}
    rows = []
    for name in CONTEXT_PROFILES:
        p = profiles[name]
        for m in (R1, QWEN3):
            for split in ("train", "dev"):
                per = report(p.rule, [t for t in trajs if t.model == m and t.split == split], cache)
                rows.append({"profile": name, "model": m, "split": split, "fitted_on": list(p.calibration.get("models", [])),
                             "per_dataset": per})
                print(f"  context {name:16s} {SHORT[m]:9s} {split:5s} {cell(per)}", flush=True)
    return rows


def check_quick(trajs: Sequence[Trajectory], cache) -> dict[str, Any]:
    """One cell computed both ways (the memoised table of ``quick_report`` and the live rule's replay,
    ``replay_score``): the matrices rest on the first, so they must agree."""
    cal = fit(trajs, [R1], SCHEDULE, FEATURE_SETS["all, no trials"], cache, ALPHA)
    ts = [t for t in trajs if t.model == LLAMA and t.split == "dev"]
    a, b = quick_report(cal, ts, cache), report(rule_of(cal), ts, cache)
    same = all(abs(a[d][k] - b[d][k]) < 1e-9 for d in a for k in ("accuracy", "saved", "harmful", "helped"))
    if not same:
        raise SystemExit(f"quick_report and replay_score disagree on R1-7B -> R1-Llama dev: {a} against {b}")
    return {"cell": "source R1-7B, all no-trial features, target R1-Llama-8B dev", "agree": same}


def markdown(res: dict[str, Any]) -> str:
    """The rule, the 4x4 matrices per feature set and split, the rule's verdict, the context rows."""
    out = [f"# R1 siblings: does the score's calibration transfer? (issue 19, items 1-2)\n\n`{res['command']}`; "
           f"data {res['data']}; machine {res['machine']}; {res['seconds']} s wall-clock.\n",
           f"Recipe: schedule `{SCHEDULE}` (no trials), alpha {ALPHA:g}, delta 0.1, label noharm/ok (whichever certified "
           "threshold saves more on CAL), stratum guard per dataset; each source fitted on its TRAIN FIT third, certified "
           "on its TRAIN CAL part. Cells: MATH500 accuracy change (pt) / tokens saved (probe tokens counted) (h harmful "
           "exits, + helped); AMC23 / AIME24 trajectories lost net (harmful - helped); **x** = not admissible (MATH500 "
           "more than 1 point down, or more than one AMC23 / AIME24 trajectory lost). TRAIN: a foreign source on all the "
           "target's train problems (n = 900 / 96 / 72 trajectories); the diagonal on its own CAL problems held aside in "
           "turn (630 / 45 / 39; each CAL sixth at the threshold the other three certify). DEV: 300 / 24 / 18.\n",
           f"**Rule (fixed before the run).** {RULE}\n"]
    for fname, fs in res["feature_sets"].items():
        for split in ("train", "dev"):
            out += [f"## {fname}: {split.upper()}\n", "| source \\ target | " + " | ".join(SHORT[t] for t in ALL)
                    + " | threshold (label, stopped by) |", "| --- " * (len(ALL) + 2) + "|"]
            for src in ALL:
                r = fs["matrix"][src]
                th = "none certified" if r["threshold"] is None else f"{r['threshold']:.4f}"
                out.append(f"| {SHORT[src]} | " + " | ".join(cell(r[split][t]) for t in ALL)
                           + f" | {th} ({r['label']}, {r['stopped_by']}) |")
            out.append("")
        rule = fs["rule"]
        mat = fs["matrix"]
        out += [f"**{fname}: \"R1 siblings transfer\" {'HOLDS' if rule['holds'] else 'does NOT hold'}** on TRAIN "
                "(DEV beside it, reported, not judged).\n",
                "| source -> target | admissible (train) | MATH500 saved (train) | Qwen3-sourced saved, train (admissible) "
                "| passes | DEV: the source's fit | DEV: the Qwen3-sourced fit |", "| --- | --- | --- | --- | --- | --- | --- |"]
        out += [f"| {SHORT[p['source']]} -> {SHORT[p['target']]} | {'yes' if p['admissible'] else 'no'} | "
                f"{100 * p['saved']:.1f}% | {100 * p['qwen3_sourced_saved']:.1f}% ({'yes' if p['qwen3_sourced_admissible'] else 'no'}) | "
                f"{'yes' if p['passes'] else 'no'} | {cell(mat[p['source']]['dev'][p['target']])} | "
                f"{cell(mat[QWEN3]['dev'][p['target']])} |" for p in rule["pairs"]]
        out.append("")
        out += [f"*Secondary, added after the first run (not part of the rule).* {fname}: the rule on each FIT third "
                "(FIT = sixths k and k+3 of `part_of`, CAL the rest; draw 0 is the rule's): source -> target MATH500 saved "
                "on the target's train problems / the Qwen3-sourced fit's (x: not admissible).\n",
                "| draw | " + " | ".join(f"{SHORT[p['source']]} -> {SHORT[p['target']]}" for p in rule["pairs"]) + " | holds |",
                "| --- " * (len(rule["pairs"]) + 2) + "|"]
        for d in fs["draws"]:
            out.append(f"| {d['draw']} | " + " | ".join(
                f"{100 * p['saved']:.1f}%{'' if p['admissible'] else ' x'} / {100 * p['qwen3_sourced_saved']:.1f}%"
                f"{'' if p['qwen3_sourced_admissible'] else ' x'}" for p in d["rule"]["pairs"])
                + f" | {'yes' if d['rule']['holds'] else 'no'} |")
        out += ["", f"*Secondary (not part of the rule).* {fname}: the most MATH500 tokens each source's score saves on the "
                "target's TRAIN problems (all of them; the diagonal is in-sample for its FIT third) at any threshold keeping "
                "MATH500 within 1 point, the threshold picked on the target (an oracle, not deployable): how well the score "
                "ranks there, apart from where its certified threshold sits.\n",
                "| source \\ target | " + " | ".join(SHORT[t] for t in ALL) + " |", "| --- " * (len(ALL) + 1) + "|"]
        out += [f"| {SHORT[src]} | " + " | ".join(f"{100 * fs['matrix'][src]['oracle_train'][t]:.1f}%" for t in ALL) + " |"
                for src in ALL]
        out.append("")
    out += ["## Context: shipped profiles with trials on the two trial families\n",
            "| profile (fitted on) | model | split | cell | DEER tau 0.999, MATH500 |", "| --- | --- | --- | --- | --- |"]
    for r in res["context"]:
        m = r["per_dataset"]["math500"]
        deer = (f"{100 * (m['deer_0.999_accuracy'] - m['full_accuracy']):+.1f} / {100 * m['deer_0.999_saved']:.1f}%"
                if "deer_0.999_saved" in m else "—")
        out.append(f"| {r['profile']} ({', '.join(SHORT.get(x, x) for x in r['fitted_on'])}) | {SHORT[r['model']]} | "
                   f"{r['split']} (all problems) | {cell(r['per_dataset'])} | {deer} |")
    out.append("\n(Context train rows are in-sample where the model is among the profile's fitted-on families.)")
    return "\n".join(out) + "\n"


def main() -> int:
    args = sys.argv[1:]
    cache_path = pop_value(args, "--grade-cache")
    args = [a for a in args if not a.startswith("--")]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    started = time.perf_counter()
    trajs, cache = read_and_grade(path, cache_path, started)
    res: dict[str, Any] = {"command": COMMAND, "data": f"{path} (Governor development traces, seeds 42-44)",
                           "machine": f"{platform.machine()} {platform.system()}, 2 cores shared (nice 10)",
                           "recipe": {"schedule": SCHEDULE, "alpha": ALPHA, "delta": 0.1, "guard": "per dataset",
                                      "labels": "noharm / ok, the one saving more on CAL"},
                           "rule": RULE, "feature_sets": {}}
    res["check"] = check_quick(trajs, cache)
    for fname, features in FEATURE_SETS.items():
        print(f"feature set {fname}", flush=True)
        mat = matrices(trajs, cache, features)
        rule = sibling_rule(mat)
        print(f"  R1 siblings transfer ({fname}): {'holds' if rule['holds'] else 'does not hold'}", flush=True)
        res["feature_sets"][fname] = {"features": list(features), "matrix": mat, "rule": rule,
                                      "draws": draws(trajs, cache, features)}
    res["context"] = context_rows(trajs, cache)
    res["seconds"] = round(time.perf_counter() - started, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "sibling-transfer.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    (OUT / "sibling-transfer.md").write_text(markdown(res), encoding="utf-8")
    print(f"written {OUT}/sibling-transfer.{{json,md}} in {res['seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
