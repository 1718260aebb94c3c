"""``certaindex demo``: replay certaindex's default early exit on real reasoning traces shipped in the
package (DeepSeek-R1-Distill-Qwen-7B on MATH500): per problem, full reasoning against early exit,
then the totals. No model runs; it takes a few seconds."""

from __future__ import annotations

import argparse
from typing import Any

from rich.markup import escape
from rich.table import Table

from certaindex.cli.common import out
from certaindex.cli.governor import grade, load_trajectories, sample_path
from certaindex.evaluation.governor import PolicySpec, run_policy
from certaindex.evaluation.profiles import load_profile, profile_for_model

__all__ = ["add_subcommands", "demo_command"]


def add_subcommands(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="replay certaindex's early exit on recorded traces of a real reasoning model (shipped, no model needed)",
        description="Replay the default early-exit profile on 50 recorded DeepSeek-R1-Distill-Qwen-7B trajectories "
        "(MATH500, dev split) shipped with certaindex: per problem full reasoning against early exit, then totals.",
    )
    demo.add_argument("--profile", help="a profile JSON file to replay instead of the default for the model")
    demo.add_argument("--limit", type=int, help="show only the first N problems (totals cover them only)")
    demo.set_defaults(handler=demo_command)


def _short(answer: str | None, width: int = 18) -> str:
    if answer is None:
        return "(none)"
    text = " ".join(answer.split())
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _mark(ok: bool) -> str:
    return "[green]right[/green]" if ok else "[red]wrong[/red]"


async def demo_command(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {args.limit}")
    trajs = load_trajectories(sample_path(), "all", quiet=True)
    if args.limit:
        trajs = trajs[: args.limit]
    cache = grade(trajs, None, quiet=False, seed=sample_path() / "grades.json")
    model = trajs[0].model_name
    profile = load_profile(args.profile) if args.profile else profile_for_model(model)
    spec = PolicySpec("profile", profile=profile)
    out.print(
        f"[bold]Replay of recorded traces of a real reasoning model[/bold]: {model} on {len(trajs)} MATH500 problems "
        "(dev split, sampling seed 42), recorded with vLLM by the Governor project (MIT). No model runs here: "
        "the reasoning and the answer probes (every 64 tokens) were recorded, and certaindex's early exit is "
        "replayed on them exactly.")
    out.print(f"Profile for {model}: [bold]{escape(profile.label)}[/bold]. Tokens count the reasoning plus every "
              "probe's output tokens.")
    table = Table()
    for col in ("problem", "full: tokens", "answer", "", "early exit: tokens", "answer", "", "saved"):
        table.add_column(col, justify="right" if "tokens" in col or col == "saved" else "left")
    totals = {"full_tok": 0, "exit_tok": 0, "full_ok": 0, "exit_ok": 0, "harmful": 0, "helped": 0, "exited": 0}
    full = PolicySpec("full")
    for t in trajs:
        f, e = run_policy(full, t, cache), run_policy(spec, t, cache)
        totals["full_tok"] += f.tokens
        totals["exit_tok"] += e.tokens
        totals["full_ok"] += f.correct
        totals["exit_ok"] += e.correct
        totals["harmful"] += f.correct and not e.correct
        totals["helped"] += e.correct and not f.correct
        totals["exited"] += e.exit_pos is not None
        saved = 1 - e.tokens / f.tokens if f.tokens else 0.0
        table.add_row(str(t.problem_id), f"{f.tokens:,}", _short(f.answer), _mark(f.correct),
                      f"{e.tokens:,}" + ("" if e.exit_pos is not None else " (no exit)"), _short(e.answer), _mark(e.correct),
                      f"{100 * saved:.0f}%")
    out.print(table)
    n = len(trajs)
    out.print(
        f"[bold]Totals over {n} problems[/bold]: full reasoning {totals['full_ok']}/{n} right, "
        f"{totals['full_tok'] / n:,.0f} tokens per problem; early exit {totals['exit_ok']}/{n} right, "
        f"{totals['exit_tok'] / n:,.0f} tokens per problem ([bold]{100 * (1 - totals['exit_tok'] / totals['full_tok']):.1f}% "
        f"saved[/bold]); it stopped early on {totals['exited']}, turned {totals['harmful']} right answers wrong "
        f"and {totals['helped']} wrong ones right.")
    out.print("[dim]Compare every policy on these traces: certaindex evaluate --sample[/dim]")
    return 0
