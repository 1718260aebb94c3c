"""Benchmark: the learning curve of `certaindex calibrate DIR` (issue 19 item 5).

Stand-in shadow traffic: N trajectories drawn at random from the TRAIN-split problems of one model
(R1-Distill-Qwen-7B, Qwen3-8B; every dataset and seed of the Governor development traces), with no
gold answers used: an exit is harmful when its answer differs from the model's own full-reasoning
answer, as on shadow traffic. Calibration is what the command does on a folder of traces, on the
same pure functions, each candidate certified by Learn-then-Test at delta / (number of candidates)
(alpha 0.05, delta 0.1, the folder defaults):

* Dynasor's rule over k x probe interval (64..512 tokens), tested conservative first;
* the starting profile's certainty score, its threshold re-certified on all N traces (start: the
  shipped ``generic`` profile if there is one, else ``conservative``; NOT the model's own family
  profile, which was fitted on these very problems. ``generic`` was fitted on the TRAIN problems of
  both models here, never on DEV; ``--start lofo`` starts instead from the generic recipe fitted on
  the other model alone, a start that never saw the model's family);
* the score refitted on a third of the N traces toward the start's weights
  (``evaluation.score_refit``, pull ``--strength``, default ``PRIOR_STRENGTH``) and certified on the
  rest, on the start's schedule and, where the traces have DEER trials, on bx+tc+tr too.

The certified candidate saving most is applied to every DEV trajectory of the model and judged with
gold answers (as `certaindex evaluate`): tokens saved and harmful exits per dataset, next to the
shipped family profile (the default) on the same trajectories, read at run time (whatever profile
ships). Several random draws per N. ``--train-check`` draws from half the TRAIN problems and judges
on the other half instead of DEV (to choose the pull's strength without looking at DEV).

    python benchmarks/calibration_curve.py [GOVERNOR_DIR] [--draws 3] [--sizes 50,100,200,400] [--alpha 0.05]
        [--strength S] [--start generic|lofo] [--train-check]
    # GRADE_CACHE=path to reuse a grade cache

Writes benchmarks/results/calibration-curve/curve.txt and curve.json (curve-alpha<A>, -strength<S>, -lofo,
train-check- for the other options).
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.cli.governor import grade, read_trajectories  # noqa: E402
from certaindex.core.calibration import ltt_fixed_sequence  # noqa: E402
from certaindex.core.exit_score import ScoreModel  # noqa: E402
from certaindex.evaluation.governor import run_profile  # noqa: E402
from certaindex.evaluation.peers import dynasor, dynasor_all_k  # noqa: E402
from certaindex.evaluation.profiles import profile_for_model, shipped_profiles  # noqa: E402
from certaindex.core.exit_score import RELATIVE_FEATURES  # noqa: E402
from certaindex.evaluation.score_policy import LABELS, calibrate, part_of, replay_score  # noqa: E402
from certaindex.evaluation.score_refit import PRIOR_STRENGTH  # noqa: E402
from certaindex.evaluation.self_calibration import calibrate_score, refit_schedules, score_schedule  # noqa: E402

MODELS = ("r1-distill-qwen-7b", "qwen3-8b")
SIZES = (50, 100, 200, 400)
KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # calibrate DIR's grid
INTERVALS = (64, 128, 256, 512)
ALPHA, DELTA = 0.05, 0.1


def dynasor_candidate(trajs, key, same, delta):
    """calibrate DIR's Dynasor candidate on Governor trajectories: LTT over the grid in its fixed
    order (latest possible exit first), harmful = an early exit whose answer differs from full's."""
    grid = sorted(((i, k) for i in INTERVALS for k in KS), key=lambda p: (-(p[0] * p[1]), -p[0], -p[1]))
    full_mean = sum(t.tokens_used for t in trajs) / len(trajs)
    runs = {i: [dynasor_all_k(t, KS, key, lambda a: False, i) for t in trajs] for i in INTERVALS}
    harm, saved = [], []
    for i, k in grid:
        outs = [r[KS.index(k)] for r in runs[i]]
        harm.append(sum(o.exit_pos is not None and not same(t, o.answer) for o, t in zip(outs, trajs)))
        saved.append(1 - sum(o.tokens for o in outs) / len(outs) / full_mean)
    ltt = ltt_fixed_sequence(harm, len(trajs), ALPHA, delta)
    if not ltt.certified:
        return None
    j = max(ltt.certified, key=lambda j: saved[j])
    return {"kind": "dynasor", "interval": grid[j][0], "k": grid[j][1], "cal_saved": saved[j]}


def judge(rule, trajs, cache) -> dict[str, dict[str, float]]:
    """The rule on every trajectory, gold-graded, per dataset: n, saved, harmful exits."""
    per: dict[str, list] = {}
    for t in trajs:
        def correct(a, t=t):
            return cache.correct(a, t.target)

        if rule is None:
            o = None
        elif rule["kind"] == "dynasor":
            o = dynasor(t, rule["k"], cache.key, correct, rule["interval"])
        elif rule["kind"] == "profile":
            o = run_profile(rule["profile"], t, cache.key, correct)
        else:
            o = replay_score(rule, t, cache.key, correct)
        full_ok = cache.correct(t.final_answer, t.target)
        tokens = o.tokens if o is not None else t.tokens_used
        ok = o.correct if o is not None else full_ok
        per.setdefault(t.dataset, []).append((t.tokens_used, tokens, full_ok and not ok))
    return {d: {"n": len(v), "saved": 1 - sum(x[1] for x in v) / sum(x[0] for x in v), "harmful": sum(x[2] for x in v)}
            for d, v in sorted(per.items())}


def calibrate_like_the_command(sample, start, cache, has_trials, strength, fit_mod=3):
    keys = cache.key

    def same(t, a):  # the shadow label: the exit answer equals full reasoning's own answer
        ka, kf = keys(a), _final_key(cache, t)
        return a is not None and ka is not None and ka == kf

    sched = score_schedule(start.rule["schedule"], 64, has_trials)
    refits = refit_schedules(sched, has_trials)
    delta = DELTA / (2 + len(refits))  # Dynasor, the start re-certified, each refit
    cands, tried = [], []
    dyn = dynasor_candidate(sample, keys, same, delta)
    if dyn is not None:
        cands.append(dyn)
    tried.append(f"dynasor {100 * dyn['cal_saved']:.1f}%" if dyn else "dynasor -")
    for c in calibrate_score(sample, sched, ScoreModel.from_dict(start.rule["model"]), keys, same, ALPHA, delta,
                             refits, strength, fit_mod):
        if c.calibration is not None:
            tried.append(f"{c.name} {c.calibration.schedule} {100 * c.saved:.1f}%" if c.certified else
                         f"{c.name} {c.calibration.schedule} -")
        if c.certified:
            cal = c.calibration
            cands.append({"kind": "score", "candidate": c.name, "schedule": cal.schedule, "threshold": cal.threshold,
                          "model": cal.model.to_dict(), "cal_saved": cal.cal_saved})
    return (max(cands, key=lambda c: c["cal_saved"]) if cands else None), "; ".join(tried)


def _final_key(cache, t):
    from certaindex.core.answers import canonical_answer

    if t.final_answer is None:
        return None
    if t.final_answer not in cache.keys:
        cache.keys[t.final_answer] = canonical_answer(t.final_answer)
    return cache.keys[t.final_answer]


def lofo_start(other: list, cache) -> SimpleNamespace:
    """A start that never saw the model's family (``--start lofo``): the generic recipe (schedule
    bx+tc+g512+tr, relative features without fewer_parts, alpha 0.02, of the two labels the one
    saving more on calibration; benchmarks/transfer_profiles.py) fitted on the OTHER model's TRAIN
    trajectories alone."""
    features = [f for f in RELATIVE_FEATURES if f != "fewer_parts"]
    cands = [calibrate(other, "bx+tc+g512+tr", cache.key, lambda t, a: cache.correct(a, t.target), 0.02, 0.1,
                       features=features, label=lab, strata="dataset") for lab in LABELS]
    cal = max(cands, key=lambda c: (c.threshold is not None, c.cal_saved))
    return SimpleNamespace(name=f"generic fitted on {other[0].model} alone",
                           rule={"schedule": cal.schedule, "model": cal.model.to_dict()})


def option(name: str, default: str | None) -> str | None:
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


def main() -> int:
    global ALPHA
    draws = int(option("--draws", "3"))
    ALPHA = float(option("--alpha", str(ALPHA)))
    sizes = tuple(int(x) for x in option("--sizes", ",".join(map(str, SIZES))).split(","))
    strength = float(option("--strength", str(PRIOR_STRENGTH)))
    fit_mod = int(option("--fit-mod", "3"))  # the refit fits on 1/fit_mod of the traces
    # --train-check: draw from half the TRAIN problems, judge on the other half (choosing the
    # prior's strength without looking at dev)
    train_check = "--train-check" in sys.argv
    lofo = option("--start", "generic") == "lofo"  # start from a profile that never saw the model's family
    values = {option(o, None) for o in ("--draws", "--alpha", "--sizes", "--strength", "--start", "--fit-mod")}
    args = [a for a in sys.argv[1:] if not a.startswith("--") and a not in values]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    started = time.perf_counter()
    train, _, _ = read_trajectories(path, "train", quiet=True)
    train = [t for t in train if t.model in MODELS]
    every_train = train
    if train_check:
        dev = [t for t in train if part_of(t) >= 3]
        train = [t for t in train if part_of(t) < 3]
    else:
        dev, _, _ = read_trajectories(path, "dev", quiet=True)
        dev = [t for t in dev if t.model in MODELS]
    cache = grade(train + dev, os.environ.get("GRADE_CACHE"), quiet=True)
    named = {p.name: p for p in shipped_profiles()}
    shipped_start = named.get("generic") or named["conservative"]
    judged_on = "held-aside TRAIN problems (--train-check)" if train_check else "DEV"
    result: dict = {"start_profile": "lofo" if lofo else shipped_start.name, "strength": strength, "judged_on": judged_on, "models": {}}
    lines = []
    for model in MODELS:
        tr = [t for t in train if t.model == model]
        dv = [t for t in dev if t.model == model]
        if not tr or not dv:
            continue
        has_trials = all(t.trials is not None for t in tr)
        start = lofo_start([t for t in every_train if t.model != model], cache) if lofo else shipped_start
        family = profile_for_model(dv[0].model_name)
        shipped = judge({"kind": "profile", "profile": family}, dv, cache)  # read now: whatever profile ships
        rows = {}
        lines.append(f"\n## {model}: {len(tr)} train trajectories to draw from, {len(dv)} {judged_on} trajectories "
                     f"judged; start: {start.name}; shipped family profile {family.name}: " + ", ".join(
                         f"{d} {100 * v['saved']:.1f}% saved / {v['harmful']} harmful" for d, v in shipped.items()))
        for n in sizes:
            per_draw = []
            for d in range(draws):
                sample = random.Random(1000 * n + d).sample(tr, min(n, len(tr)))
                rule, tried = calibrate_like_the_command(sample, start, cache, has_trials, strength, fit_mod)
                judged = judge(rule, dv, cache)
                label = ("nothing certified" if rule is None else
                         f"dynasor k={rule['k']} interval={rule['interval']}" if rule["kind"] == "dynasor" else
                         f"score ({rule['candidate']}) {rule['schedule']} threshold {rule['threshold']:.4f}")
                per_draw.append({"draw": d, "chosen": label, "dev": judged, "candidates_saved_on_calibration": tried})
                lines.append(f"N={n:4d} draw {d}: {label:55s} " + "  ".join(
                    f"{ds} {100 * v['saved']:5.1f}% harm {v['harmful']:2d}" for ds, v in judged.items())
                    + f"   [certified, saved on calibration: {tried}]")
            mean = {ds: {"saved": sum(p["dev"][ds]["saved"] for p in per_draw) / draws,
                         "harmful": sum(p["dev"][ds]["harmful"] for p in per_draw) / draws} for ds in shipped}
            reach = mean["math500"]["saved"] / shipped["math500"]["saved"] if shipped["math500"]["saved"] > 0 else float("nan")
            lines.append(f"N={n:4d} mean of {draws}: " + "  ".join(
                f"{ds} {100 * v['saved']:5.1f}% harm {v['harmful']:.1f}" for ds, v in mean.items())
                + f"   (shipped math500: {100 * shipped['math500']['saved']:.1f}%; reached {100 * reach:.0f}% of it)")
            rows[n] = {"draws": per_draw, "mean": mean, "reached_shipped_math500": reach}
        result["models"][model] = {"shipped_profile": family.name, "shipped_dev": shipped, "sizes": rows}
    flags = (f" --draws {draws} --sizes {','.join(map(str, sizes))} --alpha {ALPHA:g} --strength {strength:g}"
             + (" --train-check" if train_check else "") + (" --start lofo" if lofo else "")
             + (f" --fit-mod {fit_mod}" if fit_mod != 3 else ""))
    head = [
        f"# python benchmarks/calibration_curve.py {path}{flags}",
        f"# machine: {platform.node()}, {os.cpu_count()} cores ({platform.machine()}), python {platform.python_version()}; "
        f"shared by other jobs; {time.perf_counter() - started:.0f} s wall-clock",
        "# stand-in shadow traces: N random TRAIN-split trajectories of the model (no gold used: harmful = differs from full "
        f"reasoning's own answer); candidates at delta/(2 + refits) each (alpha {ALPHA:g}, delta {DELTA:g}): Dynasor's grid, "
        f"the start's score re-certified, the score refitted on a third toward the start (pull "
        f"{strength:g}) on its schedule and, with trials, on bx+tc+tr; the certified one saving most on its calibration "
        f"traces is judged on every {judged_on} trajectory with gold answers",
        "# saved = 1 - tokens / full reasoning's tokens (probe/trial tokens counted); harm = wrong where full was right",
    ]
    text = "\n".join(head + lines) + "\n"
    print(text)
    out = ROOT / "benchmarks" / "results" / "calibration-curve"
    out.mkdir(parents=True, exist_ok=True)
    stem = ("train-check-" if train_check else "") + ("curve" if ALPHA == 0.05 else f"curve-alpha{ALPHA:g}")
    stem += ("" if strength == PRIOR_STRENGTH else f"-strength{strength:g}") + ("-lofo" if lofo else "")
    stem += "" if fit_mod == 3 else f"-fitmod{fit_mod}"
    (out / f"{stem}.txt").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=lambda o: None) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
