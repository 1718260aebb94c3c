"""``certaindex calibrate DIR`` on a folder of trace files (written by ``serve --shadow DIR`` or by
``certaindex record``): three candidates, each certified by Learn-then-Test at delta / 3 so the one
chosen keeps the stated guarantee: Dynasor's rule over a grid of k and probe intervals (multiples
of the recorded one), the starting profile's certainty score (the shipped ``generic`` profile, else
the model's shipped profile) with its threshold re-certified on the traces, and the score refitted
on a third of the traces, its weights pulled toward the start's (a prior, so a hundred traces adjust
the start rather than relearn it), and certified on the rest. The certified one saving most is written as a
profile for ``--calibration FILE``. The score candidates need a recorded probe interval that is a
multiple of 64 tokens; otherwise Dynasor's rule alone is tried (at the full delta). Says how many
more traces Dynasor's rule needs when nothing can be certified yet (exit status 3, nothing written).
:mod:`certaindex.cli.traces` routes here when PATH is a folder that is not a Governor folder."""

from __future__ import annotations

import argparse
import datetime
import json
import re
from pathlib import Path

from typing import Any

from certaindex.cli.common import EXIT_NO_ANSWER, out

__all__ = ["calibrate_folder"]

FOLDER_KS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
FOLDER_ALPHA = 0.05
LABELS = {
    "full": "harmful = the early answer differs from the model's own full-reasoning answer (the traces have no "
            "gold answers; this is the conservative label: an exit that changes the answer counts as harmful even "
            "where full reasoning was wrong)",
    "gold": "harmful = the early answer is wrong where full reasoning's was right (gold answers)",
}


def _trace_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".jsonl.gz")))


def _int_list(option: str, text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option} takes integers >= 1, got {text!r}")
    return values


def _read_folder(args: argparse.Namespace, path: Path) -> tuple[list, str, tuple[int, str, int], list, list[int], str]:
    """The trace sets of ``path`` (one model, one probe protocol), their records and budgets, and
    the reference exits are judged against."""
    from certaindex.traces.format import read_traces

    files = _trace_files(path)
    if not files:
        raise ValueError(f"{path}: no trace files (*.jsonl, *.jsonl.gz) in this folder; record some with "
                         "`certaindex serve --shadow DIR` or `certaindex record`")
    sets = [read_traces(f, allow_truncated=args.allow_truncated) for f in files]  # errors name file:line
    sets = [s for s in sets if s.records]
    if not sets:
        raise ValueError(f"{path}: {len(files)} trace file(s) but no traces in them yet")
    models = sorted({s.header.model for s in sets})
    if len(models) > 1:
        raise ValueError(f"{path} mixes traces of {len(models)} models ({', '.join(models)}): a profile is for one "
                         "model; calibrate each model's files in a folder of their own")
    protocols = {(s.settings.granularity, s.settings.probe_suffix, s.settings.probe_tokens): s.path for s in sets}
    if len(protocols) > 1:
        (a, fa), (b, fb) = list(protocols.items())[:2]
        raise ValueError(f"{path} mixes probe settings: {fa} has interval {a[0]}, {a[2]} probe tokens, suffix {a[1]!r}; "
                         f"{fb} has interval {b[0]}, {b[2]} probe tokens, suffix {b[1]!r}")
    (protocol,) = protocols
    records = [r for s in sets for r in s.records]
    budgets = [s.settings.budget for s in sets for _ in s.records]
    has_gold = all(r.gold.strip() for r in records)
    reference = args.reference if args.reference != "auto" else ("gold" if has_gold else "full")
    if reference == "gold" and not has_gold:
        raise ValueError(f"--reference gold: {sum(not r.gold.strip() for r in records)} of {len(records)} traces in "
                         f"{path} have no gold answer (shadow traffic has none); use --reference full")
    return sets, models[0], protocol, records, budgets, reference


def start_profile(model: str):
    """The score profile calibration starts from: the shipped ``generic`` one, else the model's
    shipped profile (None when that is not a certainty score)."""
    from certaindex.evaluation.profiles import profile_for_model, shipped_profiles

    generic = [p for p in shipped_profiles() if p.name == "generic"]
    start = generic[0] if generic else profile_for_model(model)
    return start if start.kind == "score" else None


def _score_candidates(records: list, budgets: list[int], model: str, dataset: str, g: int, reference: str,
                      alpha: float, delta: float) -> tuple[list, Any, str]:
    """The score candidates (empty with why where they cannot run), the starting profile, and
    the schedule they replay."""
    from certaindex.core.answers import canonical_answer
    from certaindex.evaluation.self_calibration import (
        as_trajectories, calibrate_score, refit_schedules, same_answer, score_schedule,
    )
    from certaindex.core.exit_score import ScoreModel

    start = start_profile(model)
    schedule = score_schedule(start.rule["schedule"], g, has_trials=False) if start is not None else None
    if start is None or schedule is None:
        why = ("no shipped certainty-score profile to start from" if start is None else
               f"the recorded probe interval {g} is not a multiple of 64 tokens")
        return [], start, why
    trajs = as_trajectories(records, model, dataset, budgets, reference)  # type: ignore[arg-type]
    keys: dict[str, Any] = {}
    equal: dict[tuple[str, str], bool] = {}

    def key(answer: str | None) -> Any:
        if answer is None:
            return None
        if answer not in keys:
            keys[answer] = canonical_answer(answer)
        return keys[answer]

    def correct(t, answer: str | None) -> bool:
        if answer is None or not t.target:
            return False
        if (answer, t.target) not in equal:
            equal[(answer, t.target)] = same_answer(answer, t.target)
        return equal[(answer, t.target)]

    model_ = ScoreModel.from_dict(start.rule["model"])
    refits = refit_schedules(schedule, has_trials=False)  # traces record no DEER trials
    return calibrate_score(trajs, schedule, model_, key, correct, alpha, delta, refits), start, schedule


def calibrate_folder(args: argparse.Namespace, path: Path) -> int:
    from certaindex.evaluation.evaluate import probe_grid
    from certaindex.evaluation.self_calibration import calibrate_dynasor, refit_schedules, score_schedule
    from certaindex.traces.format import TraceSettings

    alpha = FOLDER_ALPHA if args.alpha is None else args.alpha
    for option, value in (("--alpha", alpha), ("--delta", args.delta)):
        if not 0 < value < 1:
            raise ValueError(f"{option} must be in (0, 1), got {value}")
    sets, model, (g, suffix, probe_tokens), records, budgets, reference = _read_folder(args, path)
    ks = _int_list("--ks", args.ks) or list(FOLDER_KS)
    grid_settings = TraceSettings(granularity=g, budget=max(budgets), probe_suffix=suffix, probe_tokens=probe_tokens)
    policies = probe_grid(grid_settings, _int_list("--intervals", args.intervals), ks)
    start = start_profile(model)
    scored = start is not None and g % 64 == 0
    # Dynasor's grid, the start re-certified, and one refit per schedule (traces record no trials)
    tried = 1
    if start is not None and scored:
        tried += 1 + len(refit_schedules(str(score_schedule(start.rule["schedule"], g, False)), False))
    delta = args.delta / tried
    cal = calibrate_dynasor(records, budgets, [(p.probe_interval, p.k) for p in policies], reference, alpha, delta)
    dataset = sets[0].header.dataset or "shadow"
    scores, start, schedule = _score_candidates(records, budgets, model, dataset, g, reference, alpha, delta)

    n = cal.n
    full_mean = cal.candidates[0].full_mean_tokens
    out.print(f"{n} traces of {model} from {len(sets)} file(s) in {path}; full reasoning: {full_mean:.0f} tokens on average")
    out.print(f"label: {LABELS[reference]}")
    guarantee = (f"harmful-exit rate <= {alpha:g} with probability >= {1 - args.delta:g} (Learn-then-Test"
                 + (f"; each of the {tried} candidates tested at delta {delta:.3g}, so the one chosen keeps it)" if tried > 1 else ")"))
    _print_scores(scores, start, schedule)
    best_score = max((c for c in scores if c.certified), key=lambda c: c.saved, default=None)
    if cal.chosen is None and best_score is None:
        _not_certified(cal, alpha, guarantee, n)
        out.print("no profile written")
        return EXIT_NO_ANSWER
    name = args.name or re.sub(r"[^A-Za-z0-9._-]+", "-", model).strip("-").lower() or "custom"
    command = (f"certaindex calibrate {path} --alpha {alpha:g} --delta {args.delta:g} --reference {reference}"
               + (f" --ks {args.ks}" if args.ks else "") + (f" --intervals {args.intervals}" if args.intervals else ""))
    common = {"command": command, "traces": str(path), "files": len(sets), "model": model, "n": n,
              "reference": reference, "label": LABELS[reference], "guarantee": guarantee,
              "candidates_tried": tried, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if best_score is not None and (cal.chosen is None or best_score.saved > cal.chosen.saved):
        profile = _score_profile(best_score, start, name, args.models or re.escape(model), suffix, probe_tokens, g, common)
        out.print(f"chosen: the certainty score ({best_score.name}), {guarantee}; saves {100 * best_score.saved:.1f}%"
                  + (f" (Dynasor's best certified: {100 * cal.chosen.saved:.1f}%)" if cal.chosen else ""))
    else:
        profile = _dynasor_profile(cal, args, alpha, delta, guarantee, name, model, suffix, probe_tokens, g, common)
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(profile, indent=1) + "\n", encoding="utf-8")
    out.print(f"profile {name} written to {target} (use it with --calibration {target})")
    return 0


def _print_scores(scores: list, start: Any, schedule: str) -> None:
    if not scores:
        out.print(f"[dim]certainty score not tried: {schedule}[/dim]")
        return
    for c in scores:
        what = (f"{start.name}'s score, threshold re-certified on every trace" if c.name == "start"
                else f"score refitted on a third of the traces toward {start.name}'s weights, certified on the rest")
        if c.calibration is None:
            out.print(f"{what}: not tried ({c.note})")
        elif c.certified:
            cal = c.calibration
            out.print(f"{what} ({schedule}): threshold {cal.threshold:.4f} certified on {cal.n_cal} traces, "
                      f"{cal.cal_harmful} harmful, saves {100 * cal.cal_saved:.1f}%")
        else:
            out.print(f"{what} ({schedule}): no threshold certified on {c.calibration.n_cal} traces")


def _not_certified(cal: Any, alpha: float, guarantee: str, n: int) -> None:
    if cal.next_target is not None and cal.more_needed is not None:
        t = cal.next_target
        out.print(f"[yellow]not certified yet: needs about {cal.more_needed} more traces[/yellow] ({n} now, about "
                  f"{cal.next_target_n} in all) before {t.label} can be certified for {guarantee}, if its "
                  f"harmful rate stays at {t.harmful}/{n} (it saves {100 * t.saved:.1f}% of the tokens here)")
    else:
        best = max(cal.candidates, key=lambda c: c.saved)
        out.print(f"[yellow]no setting that saves tokens can be certified at alpha={alpha:g}[/yellow]: the settings "
                  f"tested first change the answer too often (e.g. {best.label}: {best.harmful}/{n} harmful); "
                  "more traces will not help unless the rate falls; a larger --alpha or a smaller probe interval might")


def _score_profile(c: Any, start: Any, name: str, pattern: str, suffix: str, probe_tokens: int, g: int,
                   common: dict[str, Any]) -> dict[str, Any]:
    from certaindex.evaluation.score_policy import score_profile_json
    from certaindex.evaluation.score_refit import PRIOR_STRENGTH

    cal = c.calibration
    how = (f"{start.name}'s fitted score (not refitted), threshold re-certified on all {cal.n_cal} traces"
           if c.name == "start" else f"score refitted on {cal.n_fit} traces starting from {start.name}'s weights (L2 "
           f"pull toward them, strength {PRIOR_STRENGTH:g}), threshold certified on the other {cal.n_cal}")
    data = score_profile_json(name, [pattern], [common["model"]], cal, common["command"], f"{common['n']} recorded traces in "
                              f"{common['traces']}", extra={**common, "candidate": c.name, "start_profile": start.name,
                                                            "how": how})
    grid = next((int(p[1:]) for p in cal.schedule.split("+") if p.startswith("g")), g)
    data.update(probe_suffix=suffix, probe_tokens=probe_tokens, probe_interval=grid,
                description=f"Certainty score ({cal.schedule}) calibrated on {common['n']} recorded traces of "
                            f"{common['model']}: {how}")
    if c.name == "start":
        data["calibration"].update(fit="none: the starting profile's score as shipped", calibrate="every trace")
    return data


def _dynasor_profile(cal: Any, args: argparse.Namespace, alpha: float, delta: float, guarantee: str, name: str,
                     model: str, suffix: str, probe_tokens: int, g: int, common: dict[str, Any]) -> dict[str, Any]:
    c = cal.chosen
    j = cal.candidates.index(c)
    full_mean = cal.candidates[0].full_mean_tokens
    out.print(f"certified: {c.label}, {guarantee}: {c.harmful} harmful of {c.exits} early exits on {cal.n} traces "
              f"(p={cal.ltt.p_values[j]:.3g} <= delta {delta:.3g}); saves {100 * c.saved:.1f}% of the tokens "
              f"({c.mean_tokens:.0f} against {full_mean:.0f})")
    if cal.next_target is not None and cal.more_needed:
        t = cal.next_target
        out.print(f"a cheaper setting, {t.label} (saves {100 * t.saved:.1f}%), needs about {cal.more_needed} more traces")
    return {
        "format": "certaindex-profile",
        "version": 1,
        "name": name,
        "models": [args.models] if args.models else [re.escape(model)],
        "probe_suffix": suffix,
        "probe_interval": c.interval,
        "probe_tokens": probe_tokens,
        "rule": {"kind": "dynasor", "k": c.k},
        "description": f"Dynasor's rule calibrated on {cal.n} recorded traces of {model}",
        "calibration": {
            **common,
            "alpha": alpha,
            "delta": args.delta,
            "p_value": cal.ltt.p_values[j],
            "harmful_exits": c.harmful,
            "early_exits": c.exits,
            "mean_tokens": round(c.mean_tokens, 3),
            "full_mean_tokens": round(full_mean, 3),
            "saved": round(c.saved, 6),
            "recorded_probe_interval": g,
            "settings_tested": len(cal.candidates),
        },
    }
