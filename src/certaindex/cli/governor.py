"""``certaindex evaluate PATH`` on a Governor folder (recorded trajectories of real reasoning models):
read, grade (cached), replay every policy family, print a table per model x dataset, draw the
Pareto plot, and write ``--json`` for one ``--policy``. :mod:`certaindex.cli.traces` routes here
when PATH is a Governor folder; ``certaindex demo`` replays the shipped sample."""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources
from pathlib import Path

from certaindex.cli.common import out, progress_bar
from certaindex.evaluation.governor import (
    GroupResult,
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
from certaindex.traces.governor import SPLITS, Trajectory, read_governor

__all__ = ["evaluate_governor", "grade", "load_trajectories", "sample_path"]


def sample_path() -> Path:
    """The folder of the real trajectories shipped inside the package."""
    return Path(str(resources.files("certaindex") / "data" / "governor_sample"))


def load_trajectories(path: str | Path, split: str, quiet: bool, final: str = "extracted") -> list[Trajectory]:
    """The trajectories of ``split``, their final answer taken from ``final`` (see ``--final-answer``)."""
    with progress_bar("read", quiet) as progress:
        task = progress.add_task(str(path), total=None)

        def on_run(done: int, total: int, run) -> None:
            progress.update(task, completed=done, total=total, description=f"read {run.path.name}")

        runs = read_governor(path, split, on_run)
    trajs = with_final_answers([t for r in runs for t in r.trajectories], final)
    if not trajs:
        raise ValueError(f"{path} holds no trajectories of the {split} split")
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


def _json_groups(results: list[GroupResult]) -> dict:
    return {"groups": [r.to_dict() for r in results]}


def evaluate_governor(args: argparse.Namespace, path: Path) -> int:
    """The ``evaluate`` command on a Governor folder (or the shipped sample)."""
    split = args.split if args.split is not None else "all"
    if split not in SPLITS:
        raise ValueError(f"--split on a Governor folder takes {', '.join(SPLITS)}, got {split!r}")
    spec: PolicySpec = parse_policy(args.policy) if args.policy else PolicySpec("default")
    started = time.perf_counter()
    trajs = load_trajectories(path, split, args.quiet, args.final_answer)
    cache = grade(trajs, args.grade_cache, args.quiet, args.grade_timeout,
                  sample_path() / "grades.json" if path == sample_path() else None)
    by_group = groups(trajs)
    if spec.family == "deer" and all(any(t.trials is None for t in ts) for ts in by_group.values()):
        raise ValueError(f"{path} has no DEER trials (deer.jsonl.gz) for --policy {args.policy}")
    tables: list[tuple[str, str, int, list[Point]]] = []
    with progress_bar("replay", args.quiet) as progress:
        task = progress.add_task("policy families", total=len(by_group))
        for (model, dataset), ts in by_group.items():
            progress.update(task, description=f"replay {model} {dataset}")
            tables.append((model, dataset, len(ts), family_points(ts, cache, extra=spec)))
            progress.advance(task)
    from certaindex.evaluation.governor_report import plot_groups, render_group

    for model, dataset, n, points in tables:
        out.print(render_group(model, dataset, n, points))
    out.print(f"[dim]{len(trajs)} trajectories ({split} split) in {time.perf_counter() - started:.1f} s; "
              f"tokens count reasoning plus every probe / trial output token; saved = 1 - tokens / full reasoning's; "
              f"harmful = wrong where full reasoning was right[/dim]")
    if not args.no_png:
        png = Path(args.png) if args.png else Path(f"{path.name}-pareto.png")
        out.print(f"Pareto plot written to {plot_groups(tables, png)}")
    if args.json_out:
        results = evaluate_policy(spec, trajs, cache)
        target = Path(args.json_out)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(_json_groups(results), indent=2) + "\n", encoding="utf-8")
        out.print(f"--policy {spec.label}: {len(results)} groups written to {target}")
    return 0
