"""``certaindex evaluate PATH`` on a Governor folder (recorded trajectories of real reasoning models):
read, grade (cached), replay every policy family, print a table per model x dataset, draw the
Pareto plot, and write ``--json`` for one ``--policy``. :mod:`certaindex.cli.traces` routes here
when PATH is a Governor folder; ``certaindex demo`` replays the shipped sample."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path

from rich.markup import escape

from certaindex.cli.common import err, out, progress_bar
from certaindex.evaluation.governor import (
    GroupResult,
    deployable_points,
    Point,
    PolicySpec,
    evaluate_policy,
    family_points,
    grading_inputs,
    groups,
    parse_policy,
    with_final_answers,
)
from certaindex.evaluation.grading import GradeCache
from certaindex.traces.governor import SPLITS, Trajectory, missing_optional, read_governor

__all__ = ["evaluate_governor", "grade", "load_trajectories", "missing_notes", "read_trajectories", "sample_path"]


def sample_path() -> Path:
    """The folder of the real trajectories shipped inside the package."""
    return Path(str(resources.files("certaindex") / "data" / "governor_sample"))


# What a missing optional file takes out of the results (named on stderr and in --json, never silent).
MISSING_EFFECT = {
    "events.jsonl.gz": "no event-probe results for them, and rules reading event probes (ev) see none there",
    "deer.jsonl.gz": "no DEER results for them; where their model's default profile reads DEER trials (tr), "
                     "--policy default runs the no-trial conservative profile there instead, as the proxy does for an "
                     "engine without logprobs, and other rules reading trials run without trials there",
}


def read_trajectories(path: str | Path, split: str, quiet: bool,
                      final: str = "extracted") -> tuple[list[Trajectory], dict[str, list[str]], int]:
    """The trajectories of ``split`` (final answer from ``final``, see ``--final-answer``), the
    optional files the runs lack (file name -> run folders) and the number of runs read."""
    with progress_bar("read", quiet) as progress:
        task = progress.add_task(str(path), total=None)

        def on_run(done: int, total: int, run) -> None:
            progress.update(task, completed=done, total=total, description=f"read {run.path.name}")

        runs = read_governor(path, split, on_run)
    trajs = with_final_answers([t for r in runs for t in r.trajectories], final)
    if not trajs:
        raise ValueError(f"{path} holds no trajectories of the {split} split")
    return trajs, missing_optional(runs), len(runs)


def missing_notes(missing: dict[str, list[str]], runs: int) -> list[str]:
    """One line per missing optional file: which runs lack it (by model where a model lacks it in
    several runs) and what that takes out of the results."""
    notes = []
    for name, folders in missing.items():
        by_model: dict[str, list[str]] = {}
        for f in folders:
            by_model.setdefault(f.split("__")[0], []).append(f)
        where = "; ".join(fs[0] if len(fs) == 1 else f"{m} ({len(fs)} runs)" for m, fs in by_model.items())
        notes.append(f"{name} is missing in {len(folders)} of {runs} runs ({where}): {MISSING_EFFECT.get(name, 'not used')}")
    return notes


def load_trajectories(path: str | Path, split: str, quiet: bool, final: str = "extracted") -> list[Trajectory]:
    """:func:`read_trajectories`, naming each missing optional file once on stderr."""
    trajs, missing, runs = read_trajectories(path, split, quiet, final)
    for note in missing_notes(missing, runs):
        err.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    return trajs


def grade(trajs: list[Trajectory], cache_path: str | None, quiet: bool, timeout_s: float = 5.0,
          seed: Path | None = None) -> GradeCache:
    """Fill the grade cache for ``trajs`` (from ``seed`` first, a shipped cache file, when given)."""
    cache = GradeCache.load(cache_path)
    if cache.note:
        out.print(f"[dim]note:[/dim] {cache.note}")
    if seed is not None and seed.is_file():
        seeded = GradeCache.load(seed)
        cache.equal.update({k: v for k, v in seeded.equal.items() if k not in cache.equal})
        cache.keys.update({k: v for k, v in seeded.keys.items() if k not in cache.keys})
    pairs, answers = grading_inputs(trajs)
    jobs = cache.missing(pairs, answers)
    if jobs:
        with progress_bar("grade", quiet) as progress:
            task = progress.add_task(f"grading {len(jobs)} new answers", total=len(jobs))
            stats = cache.grade(pairs, answers, timeout_s=timeout_s,
                                on_progress=lambda done, total: progress.update(task, completed=done))
        try:
            where = cache.save()
        except OSError as exc:
            out.print(f"[yellow]grade cache not saved ({exc})[/yellow]")
        else:
            out.print(f"[dim]graded {stats.graded} new answers ({stats.timeouts} timed out); cache {where}[/dim]")
    return cache


def _json_groups(results: list[GroupResult], missing: dict[str, list[str]], notes: list[str],
                 tables: list[tuple[str, str, int, list[Point]]]) -> dict:
    deployable = [{"model": m, "dataset": d, "n": n, **asdict(p)} for m, d, n, points in tables
                  for p in points if p.family.endswith(("-train", "-fixed"))]
    defaults = [{"model": m, "dataset": d, "profile": p.label.removeprefix("default: ")} for m, d, _, points in tables
                for p in points if p.family == "default"]
    return {"groups": [r.to_dict() for r in results], "deployable_peers": deployable,
            "default_profiles": defaults, "missing_files": missing, "notes": notes}


def _train_points(path: Path, split: str, args: argparse.Namespace) -> tuple[dict[tuple[str, str], list[Point]] | None, str]:
    """The peers' points on the TRAIN problems of each model x dataset, to choose their knobs the way a
    user would deploy them; only when the dev split is reported (else None, with why)."""
    if split != "dev":
        return None, "peers chosen on train problems are shown with --split dev"
    trajs, _, _ = read_trajectories(path, "train", args.quiet, args.final_answer)
    cache = grade(trajs, args.grade_cache, args.quiet, args.grade_timeout,
                  sample_path() / "grades.json" if path == sample_path() else None)
    return {g: family_points(ts, cache, with_default=False) for g, ts in groups(trajs).items()}, ""


def evaluate_governor(args: argparse.Namespace, path: Path) -> int:
    """The ``evaluate`` command on a Governor folder (or the shipped sample)."""
    split = args.split if args.split is not None else "all"
    if split not in SPLITS:
        raise ValueError(f"--split on a Governor folder takes {', '.join(SPLITS)}, got {split!r}")
    spec: PolicySpec = parse_policy(args.policy) if args.policy else PolicySpec("default")
    started = time.perf_counter()
    trajs, missing, runs = read_trajectories(path, split, args.quiet, args.final_answer)
    notes = missing_notes(missing, runs)
    for note in notes:
        err.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    by_group = groups(trajs)
    if spec.family == "deer" and all(any(t.trials is None for t in ts) for ts in by_group.values()):
        raise ValueError(f"{path} has no DEER trials (deer.jsonl.gz) for --policy {args.policy}")
    train, why = _train_points(path, split, args)
    cache = grade(trajs, args.grade_cache, args.quiet, args.grade_timeout,
                  sample_path() / "grades.json" if path == sample_path() else None)
    tables: list[tuple[str, str, int, list[Point]]] = []
    with progress_bar("replay", args.quiet) as progress:
        task = progress.add_task("policy families", total=len(by_group))
        for (model, dataset), ts in by_group.items():
            progress.update(task, description=f"replay {model} {dataset}")
            points = family_points(ts, cache, extra=spec)
            peers = deployable_points(points, train.get((model, dataset)) if train is not None else None)
            tables.append((model, dataset, len(ts), points + peers))
            progress.advance(task)
    from certaindex.evaluation.governor_report import plot_groups, render_group

    for model, dataset, n, points in tables:
        out.print(render_group(model, dataset, n, points))
    out.print(f"[dim]{len(trajs)} trajectories ({split} split) in {time.perf_counter() - started:.1f} s; "
              f"tokens count reasoning plus every probe / trial output token; saved = 1 - tokens / full reasoning's; "
              f"harmful = wrong where full reasoning was right{'; ' + why if why else ''}[/dim]")
    if not args.no_png:
        png = Path(args.png) if args.png else Path(f"{path.name}-pareto.png")
        out.print(f"Pareto plot written to {plot_groups(tables, png)}")
    if args.json_out:
        results = evaluate_policy(spec, trajs, cache)
        target = Path(args.json_out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(_json_groups(results, missing, notes, tables), indent=2) + "\n", encoding="utf-8")
        out.print(f"--policy {spec.label}: {len(results)} groups written to {target}")
    return 0
