"""Benchmark: partial answers (a list answered with one element; issue 19 item 6).

Part 1 (the earlier study). For R1-Distill-Qwen-7B and Qwen3-8B under their shipped family profiles,
on TRAIN and DEV: how many exits there are, how many are harmful (wrong where full reasoning was
right), and how many exit at an observation whose answer has fewer parts than an earlier answer of
the run (feature ``fewer_parts``, ``core.exit_score.answer_parts``), the signal a veto would read.

Part 2 (``--guards``; TRAIN only unless ``--split`` says otherwise). The problem text shows what the
answers cannot: ``benchmarks/list_questions.py``'s ``asks_for_several`` (fixed before any outcome
was looked at). For all four families under the profile ``evaluate --policy default`` replays
(R1-32B / R1-Llama: ``conservative``, their traces hold no trials), per dataset: exits on list-asking
problems, harmful ones, and harmful ones at a one-part answer where the gold answer has several
parts; then each candidate guard (fixed before the run, :data:`GUARDS`), replayed exactly as the
rule decides (same observations, features, scores, threshold), against no guard: harmful exits
removed, harmful exits added, helpful exits (right where full reasoning is wrong) lost, accuracy and
savings.

    python benchmarks/partial_answers.py [GOVERNOR_DIR] [--grade-cache FILE]
    python benchmarks/partial_answers.py [GOVERNOR_DIR] --guards [--split train|dev] [--grade-cache FILE]

Writes benchmarks/results/partial-answers/partial-answers.txt (part 1) or
partial-answers-guards-<split>.txt (part 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.cli.governor import grade, read_trajectories  # noqa: E402
from certaindex.core.exit_score import FEATURES, ScoreModel, answer_parts, stream_features  # noqa: E402
from certaindex.evaluation import score_policy as sp  # noqa: E402
from certaindex.evaluation.governor import default_profile, run_profile  # noqa: E402
from certaindex.evaluation.profiles import shipped_profiles  # noqa: E402
from certaindex.evaluation.trial_reading import trials_as_read  # noqa: E402
from _cli_args import pop_value  # noqa: E402
from list_questions import asks_for_several  # noqa: E402

FAMILIES = (("r1-distill-qwen-7b", "r1-distill-qwen"), ("qwen3-8b", "qwen3"))


def exit_counts(trajs, rule: dict, cache) -> dict[str, int]:
    """Exits, harmful exits, and exits (harmful ones) at an answer with fewer parts than an earlier one."""
    def correct(t, a):
        return cache.correct(a, t.target)

    tab = sp._table(trajs, rule["schedule"], cache.key, correct)
    scores = ScoreModel.from_dict(rule["model"]).score(tab.X)
    fewer = FEATURES.index("fewer_parts")
    out = {"exits": 0, "harmful": 0, "fewer_parts": 0, "fewer_parts_harmful": 0}
    for j, (cm, rows) in enumerate(sp._exits(tab, scores, np.arange(len(trajs)))):
        if not len(cm) or cm[-1] < rule["threshold"]:
            continue
        r = rows[int(np.searchsorted(cm, rule["threshold"], side="left"))]
        harm = bool(tab.final_ok[j] and not tab.ok[r])
        out["exits"] += 1
        out["harmful"] += harm
        if tab.X[r, fewer] > 0:
            out["fewer_parts"] += 1
            out["fewer_parts_harmful"] += harm
    return out


# Candidate guards, fixed before the run. Each applies only on a list-asking problem and only to an
# observation whose answer has one part; there it may not exit unless ...
GUARDS = {
    "think": "</think> has been written",
    "stable2": "the 2 observations before it gave the same answer and reached the threshold too",
    "think|stable2": "either of the two above",
}
_CLOSED = FEATURES.index("think_closed")


def exit_row(scores: np.ndarray, valid: np.ndarray, threshold: float | None) -> int | None:
    """The first valid observation whose score reaches ``threshold`` (None: never)."""
    if threshold is None:
        return None
    hit = np.nonzero(valid & (scores >= threshold))[0]
    return int(hit[0]) if len(hit) else None


def guarded_valid(guard: str, asks: bool, parts: np.ndarray, closed: np.ndarray, keys: list,
                  scores: np.ndarray, threshold: float, valid: np.ndarray) -> np.ndarray:
    """Which observations may exit under ``guard`` (``valid``: those with an answer)."""
    if not asks:
        return valid
    held = valid & (parts == 1)
    think = closed > 0
    n = 2
    stable = np.array([i >= n and keys[i] is not None and all(keys[j] == keys[i] and scores[j] >= threshold
                                                               for j in range(i - n, i)) for i in range(len(keys))],
                      dtype=bool)
    free = {"think": think, "stable2": stable, "think|stable2": think | stable}[guard]
    return valid & ~(held & ~free)


def guard_outcomes(traj, rule: dict, cache) -> dict[str, tuple[int, bool]]:
    """Per guard (and "none"): (tokens spent, correct) of the rule on ``traj``, replayed as it decides."""
    t = trials_as_read(traj, rule.get("trials"))
    obs = sp.observations(t, rule["schedule"])
    final = (t.tokens_used + sum(o.out_tokens for o in obs), cache.correct(t.final_answer, t.target))
    if not obs:
        return {g: final for g in ("none", *GUARDS)}
    X = stream_features(obs, sp.markers(t), cache.key)
    scores = ScoreModel.from_dict(rule["model"]).score(X)
    valid = np.array([o.answer is not None for o in obs])
    spent = np.cumsum([o.out_tokens for o in obs])
    th = rule.get("threshold")
    asks = asks_for_several(t.problem)
    parts = np.array([answer_parts(o.answer) for o in obs])
    keys = [cache.key(o.answer) for o in obs]
    out = {}
    for g in ("none", *GUARDS):
        v = valid if g == "none" else guarded_valid(g, asks, parts, X[:, _CLOSED], keys, scores, th, valid)
        r = exit_row(scores, v, th)
        out[g] = final if r is None else (int(obs[r].pos + spent[r]), cache.correct(obs[r].answer, t.target))
        if g == "none":
            out["_exit_answer"] = None if r is None else obs[r].answer  # type: ignore[assignment]
    return out


def guard_table(trajs, cache) -> list[str]:
    """Part 2's lines for ``trajs`` (one split): per model x dataset, then per model over its datasets."""
    lines: list[str] = []
    groups: dict[tuple[str, str], list] = {}
    for t in trajs:
        groups.setdefault((t.model, t.dataset), []).append(t)
    per_model: dict[str, dict] = {}
    problems = {(t.dataset, t.problem_id): t for t in trajs}
    several = [t for t in problems.values() if answer_parts(t.target) > 1]
    flagged = [t for t in problems.values() if asks_for_several(t.problem)]
    lines.append(f"detector: {len(flagged)} of {len(problems)} problems ask for several; {len(several)} have a gold "
                 f"answer of several parts, {sum(asks_for_several(t.problem) for t in several)} of them flagged")
    for t in sorted(flagged + [t for t in several if t not in flagged], key=lambda t: (t.dataset, t.problem_id)):
        text = " ".join(t.problem.split())
        lines.append(f"    {'flagged' if asks_for_several(t.problem) else 'missed '} {t.dataset} {t.problem_id:3d} "
                     f"gold {t.target!r}: ...{text[-90:]}")
    for (model, dataset), ts in sorted(groups.items()):
        prof = {default_profile(t).name for t in ts}
        full_tok = sum(t.tokens_used for t in ts)
        full_ok = [cache.correct(t.final_answer, t.target) for t in ts]
        res = [guard_outcomes(t, default_profile(t).rule, cache) for t in ts]
        for t, r in zip(ts, res):  # no guard: exactly what `evaluate --policy default` replays
            o = run_profile(default_profile(t), t, cache.key, lambda a, tg=t.target: cache.correct(a, tg))
            if (o.tokens, o.correct) != r["none"]:
                raise AssertionError(f"{model} {dataset} {t.problem_id} seed {t.seed}: the replay here differs "
                                     f"from evaluate's ({r['none']} against {(o.tokens, o.correct)})")
        asks = [asks_for_several(t.problem) for t in ts]
        ex = [r["_exit_answer"] is not None for r in res]
        harm = [f and not r["none"][1] for f, r in zip(full_ok, res)]
        short = [h and answer_parts(r["_exit_answer"]) == 1 and answer_parts(t.target) > 1
                 for h, r, t in zip(harm, res, ts)]
        fewer = [h and answer_parts(r["_exit_answer"]) < answer_parts(t.target) for h, r, t in zip(harm, res, ts)]
        lines.append(f"{model} {dataset} ({'/'.join(sorted(prof))}): {len(ts)} trajectories, "
                     f"{sum(asks)} on list-asking problems ({len({t.problem_id for t, a in zip(ts, asks) if a})} problems); "
                     f"exits {sum(ex)}, on list-asking {sum(e and a for e, a in zip(ex, asks))}, harmful {sum(harm)}, "
                     f"harmful on list-asking {sum(h and a for h, a in zip(harm, asks))}, "
                     f"of which one part where the gold has several {sum(s and a for s, a in zip(short, asks))} "
                     f"(anywhere: {sum(short)}; harmful at fewer parts than the gold anywhere: {sum(fewer)})")
        acc0 = sum(r["none"][1] for r in res)
        tok0 = sum(r["none"][0] for r in res)
        for g in GUARDS:
            removed = sum(f and not r["none"][1] and r[g][1] for f, r in zip(full_ok, res))
            added = sum(f and r["none"][1] and not r[g][1] for f, r in zip(full_ok, res))
            lost = sum(not f and r["none"][1] and not r[g][1] for f, r in zip(full_ok, res))
            gained = sum(not f and not r["none"][1] and r[g][1] for f, r in zip(full_ok, res))
            acc = sum(r[g][1] for r in res)
            tok = sum(r[g][0] for r in res)
            lines.append(f"    guard {g:14s} harmful removed {removed:2d} added {added:2d}, helpful lost {lost:2d} "
                         f"gained {gained:2d}; accuracy {100 * acc0 / len(ts):5.1f} -> {100 * acc / len(ts):5.1f} "
                         f"({100 * (acc - acc0) / len(ts):+.2f} pt); saved {100 * (1 - tok0 / full_tok):5.1f}% -> "
                         f"{100 * (1 - tok / full_tok):5.1f}% ({100 * (tok0 - tok) / full_tok:+.2f} pt)")
            by_problem: dict[int, int] = {}
            for t, r in zip(ts, res):
                if r[g][0] != r["none"][0]:
                    by_problem[t.problem_id] = by_problem.get(t.problem_id, 0) + r[g][0] - r["none"][0]
            if by_problem:
                lines[-1] += "; savings lost by problem: " + ", ".join(
                    f"{pid} {100 * v / full_tok:.2f}" for pid, v in sorted(by_problem.items()))
            m = per_model.setdefault(model, {}).setdefault(g, [0, 0, 0, 0, 0, 0, 0, 0])
            for i, v in enumerate((removed, added, lost, gained, acc - acc0, tok - tok0, full_tok, len(ts))):
                m[i] += v
        for line in lines[-1 - len(GUARDS):]:
            print(line, flush=True)
    lines.append("per model, all datasets (trajectory-weighted accuracy, token-weighted savings):")
    for model, gs in per_model.items():
        for g, (removed, added, lost, gained, dacc, dtok, full_tok, n) in gs.items():
            lines.append(f"    {model:20s} guard {g:14s} harmful removed {removed:2d} added {added:2d}, helpful lost "
                         f"{lost:2d} gained {gained:2d}; net right {dacc:+d} ({100 * dacc / n:+.2f} pt), "
                         f"savings {-100 * dtok / full_tok:+.2f} pt")
    return lines


def main() -> int:
    args = sys.argv[1:]
    cache_path = pop_value(args, "--grade-cache")
    split_arg = pop_value(args, "--split")
    guards = "--guards" in args
    args = [a for a in args if a != "--guards"]
    path = Path(args[0]) if args else ROOT.parent / "shared" / "traces" / "governor"
    if guards:
        split = split_arg or "train"
        trajs, _, _ = read_trajectories(path, split, quiet=True)
        cache = grade(trajs, cache_path, quiet=True)
        lines = [f"# python benchmarks/partial_answers.py {path} --guards --split {split}",
                 "# profiles as `evaluate --policy default` replays them (checked: with no guard, equal to its"
                 " run_profile on every trajectory); guards: "
                 + "; ".join(f"{g}: one-part answer on a list-asking problem exits only if {d}" for g, d in GUARDS.items()),
                 *guard_table(trajs, cache)]
        out = ROOT / "benchmarks" / "results" / "partial-answers" / f"partial-answers-guards-{split}.txt"
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"written {out}")
        return 0
    profiles = {p.name: p for p in shipped_profiles()}
    lines = [f"# python benchmarks/partial_answers.py {path}",
             "# shipped family profiles; exits at an answer with fewer parts than an earlier answer of the run"]
    for split in ("train", "dev"):
        trajs, _, _ = read_trajectories(path, split, quiet=True)
        cache = grade(trajs, cache_path, quiet=True)
        for model, name in FAMILIES:
            c = exit_counts([t for t in trajs if t.model == model], profiles[name].rule, cache)
            lines.append(f"{split:5s} {model:20s} exits {c['exits']:4d} harmful {c['harmful']:3d} "
                         f"at fewer parts {c['fewer_parts']:3d} (harmful {c['fewer_parts_harmful']})")
            print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "partial-answers" / "partial-answers.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
