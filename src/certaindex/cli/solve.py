"""``certaindex solve`` (one question) and ``certaindex bench`` (a program against its baseline on a data set).

User mistakes and engine failures end with one ``error:`` line and a nonzero exit, never a
traceback: 2 for bad input, 1 for an engine that fails, 3 when the model gives no answer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from certaindex.cli import common
from certaindex.cli.common import err, out, progress_bar
from certaindex.core.datasets import dataset_names, load_dataset
from certaindex.evaluation.bench import LOGPROB_PROGRAMS, PROGRAM_NAMES, run_bench
from certaindex.core.prompting import validate_question
from certaindex.programs.cot import CoTConfig, CoTEvent, CoTResult, solve_cot
from certaindex.programs.self_consistency import SCConfig

# -- solve ----------------------------------------------------------------------------------------


async def _solve(args: argparse.Namespace) -> int:
    question = validate_question(args.question)
    common.cot_config(args, early_exit=not args.no_early_exit)  # bad flags fail before the engine loads
    engine = common.engine_from_args(args, logprobs=not args.no_early_exit and common.profile_reads_trials(args))
    try:
        model_name = args.model or await common.served_model_name(engine)
        config = common.cot_config(args, early_exit=not args.no_early_exit, model_name=model_name, engine=engine)
        if args.compare and config.seed is None:  # one seed for both runs: a sampling server (or a replay
            config = dataclasses.replace(config, seed=0)  # choosing among recorded seeds) gives both one trajectory
        rule = common.describe_rule(args, config, model_name, engine)
        result = await _solve_with_progress(engine, question, config, quiet=args.quiet or args.json)
        full: CoTResult | None = None
        if args.compare and config.early_exit:
            full = await _solve_with_progress(
                engine, question, dataclasses.replace(config, early_exit=False), quiet=args.quiet or args.json,
                label="full reasoning (for comparison)",
            )
    finally:
        await engine.aclose()

    if args.json:
        payload: dict[str, Any] = {"engine": engine.name, "rule": rule, "result": result.to_dict()}
        if full is not None:
            payload["full"] = full.to_dict()
        out.print_json(json.dumps(payload))
    else:
        out.print(f"[dim]{escape(rule)}[/dim]", highlight=False)
        _print_solution(engine.name, result, full, show_reasoning=args.show_reasoning, expected=args.expected,
                        scored=config.certainty is not None)
    if result.answer is None:
        err.print(f"[red]error:[/red] the model gave no answer ({_reason_text(result, config.certainty is not None)})")
        return common.EXIT_NO_ANSWER
    return 0


async def _solve_with_progress(engine, question: str, config: CoTConfig, quiet: bool, label: str = "thinking") -> CoTResult:
    if quiet:
        return await solve_cot(engine, question, config)
    with Progress(
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} reasoning tokens"),
        TextColumn("{task.fields[probes]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task("reason", total=config.budget, probes="")
        answers: list[str] = []

        def on_event(event: CoTEvent) -> None:
            if event.probe is not None:
                answers.append("?" if event.probe.answer is None else event.probe.answer[:12])
            progress.update(
                task,
                completed=event.reasoning_tokens,
                probes=("probes: " + " ".join(answers[-config.k :])) if answers else "",
            )

        return await solve_cot(engine, question, config, on_event=on_event)


def _reason_text(result: CoTResult, scored: bool = False) -> str:
    """Why the run stopped, in the words of the rule that decided (``scored``: a profile's certainty score)."""
    if result.stop_reason == "certain" and scored:
        return f"stopped early: the certainty score reached its threshold after {result.reasoning_tokens} reasoning tokens"
    if result.stop_reason == "certain":
        return f"stopped early: the last probes agreed after {result.reasoning_tokens} reasoning tokens"
    if result.stop_reason == "finished":
        return f"the model finished its reasoning after {result.reasoning_tokens} tokens"
    if result.stop_reason == "engine_length":
        return (f"the engine cut the reasoning after {result.reasoning_tokens} tokens, before the budget of "
                f"{result.budget} (its context is full); the answer is the one written so far")
    if result.stop_reason == "answer_length":
        return (f"the reasoning ended after {result.reasoning_tokens} tokens, and the answer after it was cut at "
                f"its limit of {result.answer_tokens} tokens")
    return f"the budget of {result.budget} reasoning tokens ran out; the answer was forced by a final probe"


def _print_solution(
    engine_name: str, result: CoTResult, full: CoTResult | None, show_reasoning: bool, expected: str | None = None,
    scored: bool = False,
) -> None:
    if show_reasoning:
        out.rule("reasoning")
        out.print(result.reasoning, markup=False, highlight=False)
        out.rule()
    out.print(f"[dim]engine:[/dim] {engine_name}")
    out.print(f"[dim]question:[/dim] {escape(result.question)}", highlight=False)
    if result.answer is not None:
        out.print(f"[bold green]answer:[/bold green] {escape(result.answer)}", highlight=False)
    if expected is not None:
        verdict = "[green]right[/green]" if _same(result.answer, expected) else "[red]wrong[/red]"
        out.print(f"[dim]expected:[/dim] {escape(expected)} ({verdict})", highlight=False)
    out.print(f"[dim]stopped:[/dim] {_reason_text(result, scored)}")
    out.print(
        f"[dim]tokens:[/dim] {result.total_tokens} generated = {result.reasoning_tokens} reasoning "
        + (f"+ {result.overrun_tokens} streamed past the deciding probe " if result.overrun_tokens else "")
        + f"+ {result.probe_tokens} in {len(result.probes)} probes"
        + (f" and {len(result.trials)} trials" if result.trials else "") + f" + {result.answer_tokens} answer; "
        f"budget {result.budget} reasoning tokens"
    )
    if full is not None:
        saved = full.total_tokens - result.total_tokens
        pct = 100.0 * saved / full.total_tokens if full.total_tokens else 0.0
        same = "same answer" if _same(result.answer, full.answer) else f"full reasoning answered {escape(repr(full.answer))}"
        out.print(
            f"[dim]saved:[/dim] {saved} tokens ({pct:.0f}%) against full reasoning, which generated "
            f"{full.total_tokens} tokens ({same})"
        )
        if saved <= 0:
            out.print(f"[dim]why:[/dim] {_why_no_saving(result, full)}", highlight=False)


def _why_no_saving(result: CoTResult, full: CoTResult) -> str:
    """Explain a zero or negative saving: probes are real tokens, paid for on top of the reasoning,
    and they only pay off when they stop reasoning that would otherwise have gone on."""
    paid = f"its {len(result.probes)} probes cost {result.probe_tokens} tokens"
    if not result.probes and result.stop_reason == "finished":
        return (f"the model finished by itself after {result.reasoning_tokens} reasoning tokens, before the "
                "first probe point: there was nothing left for early exit to cut")
    if result.stop_reason != "certain":
        ended = {"budget": "ran out of budget", "engine_length": "was cut by the engine"}.get(
            result.stop_reason, "finished by itself")
        return (f"{paid}, but they never agreed before the model {ended} after {result.reasoning_tokens} "
                "reasoning tokens, so they were paid on top of the same reasoning")
    cut = full.reasoning_tokens - result.reasoning_tokens
    return (f"{paid} and stopped the reasoning only {cut} tokens before full reasoning's "
            f"{full.reasoning_tokens}: the reasoning was too short for the probes to pay off")


def _same(a: str | None, b: str | None) -> bool:
    from certaindex.core.answers import answers_equal

    return answers_equal(a, b)


# -- bench ----------------------------------------------------------------------------------------


def _sc_config(args: argparse.Namespace) -> SCConfig:
    common.positive("samples", args.samples, 4096)
    common.positive("first-round", args.first_round)
    common.positive("round-size", args.round_size)
    common.positive("max-tokens", args.max_tokens, common.MAX_BUDGET)
    if not 0 <= args.threshold <= 1:
        raise common.UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not 0 < args.alpha < 1:
        raise common.UsageError(f"--alpha must be in (0, 1), got {args.alpha}")
    if not 0 <= args.sample_temperature <= 5:
        raise common.UsageError(f"--sample-temperature must be between 0 and 5, got {args.sample_temperature}")
    return SCConfig(
        n=args.samples,
        first_round=min(args.first_round, args.samples),
        round_size=args.round_size,
        max_tokens=args.max_tokens,
        temperature=args.sample_temperature,
        threshold=args.threshold,
        alpha=args.alpha,
        seed=args.sampling_seed,
    )


def _deepconf_config(args: argparse.Namespace, sc: SCConfig):
    from certaindex.programs.deepconf import DeepConfConfig

    common.positive("window", args.window)
    if not 0 < args.keep_percentile <= 100:
        raise common.UsageError(f"--keep-percentile must be in (0, 100], got {args.keep_percentile}")
    return DeepConfConfig(
        n=sc.n,
        warmup=min(args.warmup, sc.n),
        keep_percentile=args.keep_percentile,
        window=args.window,
        threshold=sc.threshold,
        max_tokens=sc.max_tokens,
        temperature=sc.temperature,
        seed=sc.seed,
    )


async def _bench(args: argparse.Namespace) -> int:
    from certaindex.evaluation.bench import programs_for

    if args.limit is not None:
        common.positive("limit", args.limit)
    problems = load_dataset(args.dataset, limit=args.limit, offset=args.offset)
    common.cot_config(args)  # bad flags fail before the engine loads
    sc = _sc_config(args)
    engine = common.engine_from_args(args, logprobs=args.program in LOGPROB_PROGRAMS or common.profile_reads_trials(args))
    try:
        model_name = args.model or await common.served_model_name(engine)
        cot = common.cot_config(args, model_name=model_name, engine=engine)
        args.rule_line = common.describe_rule(args, cot, model_name, engine)
        modes = programs_for(args.program, cot, sc, _deepconf_config(args, sc) if args.program == "deepconf" else None)
        with progress_bar("bench") as progress:
            task = progress.add_task(args.dataset, total=len(problems) * len(modes))

            def on_result(mode: str, problem, outcome) -> None:
                progress.update(task, advance=1, description=f"{args.dataset} ({mode}: {problem.id})")

            report = await run_bench(engine, problems, modes, on_result=on_result)
    finally:
        await engine.aclose()
    _print_report(args, engine.name, len(problems), report, cot, sc)
    return 0


def _print_report(args, engine_name: str, n_problems: int, report, cot: CoTConfig, sc: SCConfig) -> None:
    table = Table(title=f"{args.dataset}: {n_problems} problems, program {args.program}, engine {engine_name}")
    columns = ("mode", "accuracy", "answered", "mean samples", "mean tokens (incl. probes)", "saving", "stops")
    for column in columns:
        table.add_column(column, justify="left" if column in ("mode", "stops") else "right")
    for mode, s in report.summaries.items():
        saving = "baseline" if mode == report.baseline else f"{100 * report.saving(mode):.1f}%"
        stops = ", ".join(f"{k} {v}" for k, v in sorted(s.stop_reasons.items()))
        table.add_row(
            mode,
            f"{100 * s.accuracy:.1f}% ({s.correct}/{s.n})",
            f"{s.answered}/{s.n}",
            f"{s.mean_samples:.2f}",
            f"{s.mean_total_tokens:.1f}",
            saving,
            stops,
        )
    out.print(table)
    for mode in list(report.summaries)[1:]:
        out.print(f"{mode} gave the baseline's answer on {100 * report.same_answer_rate(mode):.1f}% of problems")
    if args.program == "cot":
        out.print(getattr(args, "rule_line", ""), highlight=False, markup=False)
        out.print(
            f"settings: budget {cot.budget}, probe interval {cot.probe_interval}, k {cot.k}, "
            f"probe tokens {cot.probe_tokens}, temperature {cot.temperature}"
        )
    else:
        out.print(
            f"settings: N {sc.n}, first round {sc.first_round}, rounds of {sc.round_size}, threshold {sc.threshold}, "
            f"alpha {sc.alpha}, max tokens {sc.max_tokens}, temperature {sc.temperature}, seed {sc.seed}"
        )
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as fh:
            for record in report.records:
                fh.write(json.dumps(record) + "\n")
        out.print(f"per-problem results written to {path}")


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    """``solve`` and ``bench``."""
    solve = sub.add_parser("solve", help="answer one question with early-exit chain of thought")
    solve.add_argument("question", help="the question")
    common.add_engine_args(solve)
    common.add_cot_args(solve)
    solve.add_argument("--no-early-exit", action="store_true", help="reason in full, without probing")
    solve.add_argument("--compare", action="store_true", help="also run full reasoning and report the tokens saved")
    solve.add_argument("--show-reasoning", action="store_true", help="print the reasoning text")
    solve.add_argument("--expected", help="the known right answer: also print whether the answer matches it")
    solve.add_argument("--json", action="store_true", help="print the result as JSON")
    solve.add_argument("--quiet", action="store_true", help="no live progress")
    solve.set_defaults(handler=_solve)

    bench = sub.add_parser("bench", help="a program against its baseline on a data set")
    bench.add_argument(
        "--program",
        default="cot",
        choices=PROGRAM_NAMES,
        help="cot: early exit against full reasoning (default); sc, sc-early, sc-anytime, deepconf, bon, "
        "first-finish: against fixed-N self-consistency",
    )
    bench.add_argument("--dataset", default="gsm8k", help=f"one of {', '.join(dataset_names())} or a JSONL path")
    bench.add_argument("--limit", type=int, default=20, help="number of problems (default 20)")
    bench.add_argument("--offset", type=int, default=0, help="skip this many problems first")
    bench.add_argument("--out", help="write per-problem results to this JSONL file")
    bench.set_defaults(handler=_bench)
    common.add_engine_args(bench)
    common.add_cot_args(bench)
    group = bench.add_argument_group("parallel programs")
    group.add_argument("--samples", "-n", type=int, default=8, help="most samples N (default 8)")
    group.add_argument("--first-round", type=int, default=4, help="samples in the first round (default 4)")
    group.add_argument("--round-size", type=int, default=2, help="samples per later round (default 2)")
    group.add_argument("--threshold", type=float, default=0.8, help="certaindex that stops sampling (default 0.8)")
    group.add_argument("--alpha", type=float, default=0.05, help="error level of sc-anytime (default 0.05)")
    group.add_argument("--max-tokens", type=int, default=512, help="most tokens per sample (default 512)")
    group.add_argument("--sample-temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    group.add_argument("--warmup", type=int, default=4, help="deepconf warm-up traces (default 4)")
    group.add_argument("--keep-percentile", type=float, default=90.0, help="deepconf: keep this %% (default 90)")
    group.add_argument("--window", type=int, default=32, help="deepconf group window in tokens (default 32)")
