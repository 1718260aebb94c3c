"""Command-line subcommand ``evaluate-sc``: certaindex's sampling programs replayed on recorded
rollouts (several samples a problem, each probed on a token grid), e.g. Governor's ``rollouts8``.

It reads the rollouts, puts each problem's answers in classes of equivalent answers, replays the
grid of programs over many seeded orders of the rollouts, chooses settings on half of the problems
and reports them on the other half (text on stdout, optional JSON and PNG).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.markup import escape

from certaindex.cli.common import UsageError, err, out, positive
from certaindex.evaluation.sc_replay import ReplayProblem
from certaindex.evaluation.sc_report import data_facts, plot_study, render_study, run_study, study_json
from certaindex.traces.rollouts import AnswerBook, Grader, group_problems, probe_token_counter, read_rollouts

__all__ = ["add_subcommands", "evaluate_sc_command"]


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate-sc`` to the ``certaindex`` parser."""
    parser = sub.add_parser(
        "evaluate-sc",
        help="replay self-consistency programs (sc-early, sc-anytime, combined) on recorded rollouts",
        description="Replay certaindex's sampling programs on recorded rollouts (a trajectories.jsonl[.gz] "
        "with several rollouts a problem, e.g. Governor's rollouts8) against majority of k.",
    )
    parser.add_argument("path", help="rollouts file, e.g. ../shared/traces/governor/rollouts8/trajectories.jsonl.gz")
    parser.add_argument("--orders", type=int, default=200, help="random orders of the rollouts per problem (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the orders (default 0)")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the half split into choose and report problems (default 0)")
    parser.add_argument("--tolerances", default="0,0.01",
                        help="accuracy a chosen setting may lose against majority of n on the choose half, "
                        "comma-separated fractions; each gives its own choice (default 0,0.01)")
    parser.add_argument("--splits", type=int, default=10,
                        help="other seeded half splits to repeat the choice on, to show its spread (default 10; 0: none)")
    parser.add_argument("--grade-timeout", type=float, default=10.0,
                        help="seconds one answer comparison may take before it counts as different (default 10)")
    parser.add_argument("--json", dest="json_out", help="write the full result (every grid setting) here")
    parser.add_argument("--png", help="write the accuracy-vs-tokens figure here")
    parser.set_defaults(handler=evaluate_sc_command)


async def evaluate_sc_command(args: argparse.Namespace) -> int:
    positive("orders", args.orders, 100_000)
    if not args.grade_timeout > 0:
        raise UsageError(f"--grade-timeout must be positive, got {args.grade_timeout}")
    for option, value in (("--json", args.json_out), ("--png", args.png)):
        if value and not Path(value).parent.is_dir():
            raise UsageError(f"{option}: folder {Path(value).parent} does not exist")
    if args.splits < 0:
        raise UsageError(f"--splits must be >= 0, got {args.splits}")
    try:
        tolerances = [float(t) for t in args.tolerances.split(",") if t.strip()]
    except ValueError:
        raise UsageError(f"--tolerances takes comma-separated fractions, e.g. 0,0.01; got {args.tolerances!r}") from None
    if not tolerances or any(not 0 <= t < 1 for t in tolerances):
        raise UsageError(f"--tolerances takes fractions in [0, 1), got {args.tolerances!r}")
    started = time.perf_counter()
    counter, how = probe_token_counter()
    problems = group_problems(read_rollouts(args.path, probe_cost=counter))
    grader = Grader(timeout_s=args.grade_timeout)
    prepared = [ReplayProblem(p, AnswerBook.for_problem(p, grader)) for p in problems]
    facts = [f"data: {args.path}", *data_facts(prepared), f"probe cost: {how}; plus 8 suffix tokens prefilled a probe",
             f"grading: {grader.calls:,} answer comparisons, {grader.timeouts} timed out (> {args.grade_timeout:g} s)"]
    sweep = [args.split_seed + i for i in range(1, args.splits + 1)]
    study = run_study(prepared, orders=args.orders, seed=args.seed, split_seed=args.split_seed,
                      tolerances=tolerances, sweep_seeds=sweep)
    out.print(escape(render_study(study, facts)), highlight=False, soft_wrap=True, end="")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(study_json(study, facts), indent=1) + "\n", encoding="utf-8")
    if args.png:
        plot_study(study, args.png)
    err.print(f"evaluate-sc: {time.perf_counter() - started:.0f} s", highlight=False)
    return 0
