"""``certaindex calibrate PATH`` on a Governor folder: fit the certainty score on the train-split
problems of the recorded trajectories, certify its threshold by Learn-then-Test, and write a
profile (rule kind ``score``) that ``evaluate --policy FILE`` and ``--calibration FILE`` read.
:mod:`certaindex.cli.traces` routes here when PATH is a Governor folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from certaindex.cli.common import EXIT_NO_ANSWER, out
from certaindex.cli.governor import grade, load_trajectories

__all__ = ["calibrate_governor"]


def calibrate_governor(args: argparse.Namespace, path: Path) -> int:
    from certaindex.evaluation.score_policy import LABELS, calibrate, check_schedule, score_profile_json
    from certaindex.traces.governor import read_split_manifest  # noqa: F401 - the reader resolves the manifest

    alpha = 0.02 if args.alpha is None else args.alpha
    try:
        trajs = load_trajectories(path, "train", args.quiet, args.final_answer)
        split_note = "TRAIN-split problems (split_manifest.json)"
    except ValueError as exc:
        if "split_manifest" not in str(exc):
            raise
        trajs = load_trajectories(path, "all", args.quiet, args.final_answer)
        split_note = "all problems (no split_manifest.json: hold some problems out yourself to test the profile)"
    schedule = args.schedule
    if schedule == "auto":
        schedule = "bx+tc+g512" + ("+tr" if all(t.trials is not None for t in trajs) else "")
    check_schedule(schedule)
    if "tr" in schedule.split("+") and any(t.trials is None for t in trajs):
        raise ValueError(f"--schedule {schedule} reads DEER trials, but some runs in {path} have no deer.jsonl.gz")
    cache = grade(trajs, args.grade_cache, args.quiet, args.grade_timeout)
    labels = list(LABELS) if args.label == "auto" else [args.label]
    cands = [calibrate(trajs, schedule, cache.key, lambda t, a: cache.correct(a, t.target), alpha, args.delta,
                       label=label, strata=args.strata if args.strata != "none" else None) for label in labels]
    cal = max(cands, key=lambda c: (c.threshold is not None, c.cal_saved))
    models = sorted({t.model for t in trajs})
    name = args.name or (models[0] if len(models) == 1 else "custom")
    patterns = [args.models] if args.models else [m for m in models]
    command = f"certaindex calibrate {path} --schedule {schedule} --alpha {alpha:g} --delta {args.delta:g} --label {args.label}"
    data = score_profile_json(name, patterns, models, cal, command, f"{path}: {split_note}",
                              extra={"label_choice": "of the labels tried, the one whose certified threshold saves more "
                                     "on the calibration problems"} if len(labels) > 1 else None)
    if cal.threshold is None:
        out.print(f"[yellow]no threshold certified at alpha={alpha:g}, delta={args.delta:g} on {cal.n_cal} calibration "
                  "trajectories[/yellow]: record more trajectories or loosen --alpha; no profile written")
        return EXIT_NO_ANSWER
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    out.print(f"score {schedule} (label {cal.label}): threshold {cal.threshold:.4f} certified on {cal.n_cal} calibration "
              f"trajectories ({cal.cal_harmful} harmful exits, {100 * cal.cal_saved:.1f}% saved; fitted on {cal.n_fit}; "
              f"walk stopped by {cal.stopped_by})")
    out.print(f"profile {name} written to {target}")
    return 0
