"""Command-line subcommands for recorded traces: ``record``, ``calibrate`` and ``evaluate``.

``certaindex/cli.py`` adds them with :func:`add_subcommands` and dispatches through
:data:`HANDLERS` (async functions of the parsed arguments returning an exit status). Mistakes raise
``ValueError`` (a one-line ``error:``, exit 2) and engine failures ``EngineError`` (exit 1). For use
before that wiring, ``python -m certaindex.cli.traces record ...`` runs them standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Sequence

from rich.markup import escape

from certaindex.cli import common
from certaindex.cli.common import err, out, progress_bar, run_handler
from certaindex.core.datasets import dataset_names, load_dataset


__all__ = ["HANDLERS", "add_subcommands", "calibrate_command", "evaluate_command", "main", "record_command"]


# ------------------------------------------------------------------------------------ arguments


def _int_list(option: str, text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated integers, e.g. 16,32,64; got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{option} takes integers >= 1, got {text!r}")
    return values


def _at_least(option: str, value: int | float, minimum: int | float) -> None:
    if value < minimum:
        raise ValueError(f"{option} must be at least {minimum}, got {value}")


def _unit(option: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{option} must be in (0, 1), got {value}")


def _add_policy_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("policies")
    group.add_argument(
        "--intervals",
        help="probe intervals to try, in tokens, comma-separated multiples of the traces' granularity g "
        "(default: 1, 2, 4 and 8 times g, up to the budget)",
    )
    group.add_argument("--ks", default=None, help="agreeing probes needed to stop, to try (default 1,2,3,4; for a "
                       "folder of traces 1,2,3,4,6,8,12,16,24,32)")
    group = parser.add_argument_group("calibration")
    group.add_argument(
        "--method",
        choices=("ltt", "target"),
        default="ltt",
        help="ltt: the cheapest setting certified by Learn-then-Test (harmful-exit rate <= alpha with "
        "probability >= 1-delta); target: the cheapest within --max-loss of full accuracy (default ltt)",
    )
    group.add_argument("--alpha", type=float, default=None,
                       help="tolerated rate of harmful exits (default 0.1; 0.05 for a folder of traces; 0.02 for a "
                       "Governor folder's score profile)")
    group.add_argument("--delta", type=float, default=0.1, help="allowed failure probability of the guarantee (default 0.1)")
    group.add_argument("--max-loss", type=float, default=0.0,
                       help="accuracy the target method may lose against full reasoning, as a fraction (default 0)")
    parser.add_argument("--allow-truncated", action="store_true",
                        help="read a trace file whose recording was interrupted (keeps its complete traces)")


def _check_policy_args(args: argparse.Namespace) -> tuple[list[int] | None, list[int]]:
    if args.alpha is None:
        args.alpha = 0.1
    _unit("--alpha", args.alpha)
    _unit("--delta", args.delta)
    if not 0 <= args.max_loss <= 1:
        raise ValueError(f"--max-loss must be in [0, 1], got {args.max_loss}")
    return _int_list("--intervals", args.intervals), _int_list("--ks", args.ks) or [1, 2, 3, 4]


def add_subcommands(subparsers: Any) -> None:
    """Add ``record``, ``calibrate`` and ``evaluate`` to an argparse subparsers object."""

    record = subparsers.add_parser(
        "record",
        help="record reasoning traces (chunks of g tokens, a probe after each) for offline replay",
        description="Record, for each problem, the reasoning in chunks of g tokens and the probe answer at every "
        "chunk boundary, with token entropy statistics, into a gzip JSONL trace file (see docs/traces.md).",
    )
    record.add_argument("--out", "-o", required=True, help="trace file to write, e.g. traces/gsm8k.jsonl.gz")
    record.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    record.add_argument("--dataset", default="gsm8k", help=f"one of {', '.join(dataset_names())} or a JSONL path (default gsm8k)")
    record.add_argument("--limit", type=int, default=60, help="number of problems (default 60)")
    record.add_argument("--offset", type=int, default=0, help="skip this many problems first")
    common.add_engine_args(record)
    group = record.add_argument_group("recording")
    group.add_argument("--granularity", "-g", type=int, default=16,
                       help="reasoning tokens per chunk; replay serves probe intervals that are multiples of it (default 16)")
    group.add_argument("--budget", type=int, default=384, help="most reasoning tokens per trace (default 384)")
    group.add_argument("--probe-tokens", type=int, default=None,
                       help="tokens a probe may write (default: the profile's, else 20)")
    group.add_argument("--profile", default="auto",
                       help="early-exit profile whose probe suffix and probe length the traces are recorded with, so "
                       "they calibrate what live runs send: auto (picked from the model name), a shipped profile's "
                       "name, a profile JSON file, or none (the default suffix)")
    group.add_argument("--answer-tokens", type=int, default=256,
                       help="tokens for the answer after </think> of a reasoning model (default 256)")
    group.add_argument("--temperature", type=float, default=0.0, help="sampling temperature of the reasoning (default 0)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling of the reasoning (default 1)")
    group.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    group.add_argument("--samples", type=int, default=1, help="traces per problem (default 1; more needs --temperature > 0)")
    group.add_argument("--top-logprobs", type=int, default=5,
                       help="top-k logprobs per token for entropy statistics; 0 records none (default 5)")
    group.add_argument("--confidence-window", type=int, default=8,
                       help="tokens per window of a chunk's lowest-window confidence (default 8)")
    record.add_argument("--quiet", action="store_true", help="no progress bar")
    record.set_defaults(handler=record_command)

    calibrate = subparsers.add_parser(
        "calibrate",
        help="choose a probe interval and k from recorded traces and write it as a JSON config",
        description="Replay every probe-agreement setting on the traces and write the one chosen by --method to "
        "a JSON file that solve, bench and the server can read.",
    )
    calibrate.add_argument("traces", help="a trace file written by 'certaindex record', a folder of trace files "
                           "('serve --shadow DIR' or 'record': Dynasor's rule or the certainty score for that model, the "
                           "score learnt starting from the shipped generic profile), or a Governor folder "
                           "(then a certainty-score profile is fitted on its train-split problems)")
    calibrate.add_argument("--out", "-o", default="calibration.json", help="JSON file to write (default calibration.json)")
    _add_policy_args(calibrate)
    group = calibrate.add_argument_group("Governor folders (certainty-score profile)")
    group.add_argument("--schedule", default="auto",
                       help="observations: + joined bx (boxed answers in the text), tc (a probe after </think>), gN (a probe "
                       "every N tokens), ev (event probes), tr (DEER trials); auto: bx+tc+g512, +tr where trials exist")
    group.add_argument("--label", choices=("auto", "noharm", "ok"), default="auto",
                       help="what the score predicts: noharm (exiting is not harmful), ok (the answer is right), or auto: "
                       "the one saving more on the calibration problems (default)")
    group.add_argument("--strata", choices=("dataset", "model+dataset", "none"), default="dataset",
                       help="stop the threshold walk where one stratum's calibration trajectories show more than alpha "
                       "harmful exits (default dataset)")
    group.add_argument("--name", help="profile name (default: the model's)")
    group.add_argument("--models", help="model-name regex the profile applies to (default: the models in PATH)")
    group.add_argument("--grade-cache", help="grade cache file (default ~/.cache/certaindex/grades.json)")
    group.add_argument("--grade-timeout", type=float, default=5.0, help="seconds per math-verify call (default 5)")
    group.add_argument("--final-answer", choices=("recorded", "extracted"), default="extracted",
                       help="full reasoning's answer: the recorded one or re-extracted from the text (default extracted)")
    group = calibrate.add_argument_group("folders of trace files (serve --shadow DIR, record)")
    group.add_argument("--reference", choices=("auto", "full", "gold"), default="auto",
                       help="what an early answer is checked against: full (the model's own full-reasoning answer: "
                       "harmful = it differs), gold (the traces' gold answers), or auto: gold where every trace has "
                       "one, else full (default)")
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(handler=calibrate_command)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="replay a grid of early-exit policies on recorded traces: table, Pareto plot, held-out results",
        description="Replay probe agreement (every interval and k) and entropy stopping on the traces; print a "
        "table, draw accuracy against tokens, and fit settings on one split of the problems to test them on the other.",
    )
    evaluate.add_argument(
        "traces", nargs="?",
        help="a trace file written by 'certaindex record', or a Governor folder of recorded reasoning-model "
        "trajectories (<model>__<dataset>__seed_<s>/ folders, or one of them)")
    evaluate.add_argument("--sample", action="store_true",
                          help="evaluate the real R1-Distill-Qwen-7B trajectories shipped inside the package")
    _add_policy_args(evaluate)
    group = evaluate.add_argument_group("Governor folders")
    group.add_argument("--policy", help="policy for --json: default (the profile the proxy applies to each model), full, "
                       "oracle, dynasor:k=8[,interval=128], events:k=4, deer:0.95, profile:NAME (a shipped profile by name: "
                       "generic, conservative or a family's), or a profile .json file (default: default)")
    group.add_argument("--grade-cache", help="grade cache file (default ~/.cache/certaindex/grades.json)")
    group.add_argument("--grade-timeout", type=float, default=5.0, help="seconds allowed per answer comparison (default 5)")
    group.add_argument("--final-answer", choices=("recorded", "extracted"), default="extracted",
                       help="full reasoning's answer: the recorded final_answer, or re-extracted from full_text with the project's extractor, as a live run would (default extracted)")
    group = evaluate.add_argument_group("output")
    group.add_argument("--png", help="Pareto plot to write (default: for a trace file, <name>-pareto.png next to it; "
                       "for a Governor folder, <folder>-pareto.png in the current folder, as the folder is often "
                       "shared, read-only data)")
    group.add_argument("--no-png", action="store_true", help="draw no plot")
    group.add_argument("--json", dest="json_out", help="also write every figure as JSON to this file")
    group.add_argument("--calibration-out", help="write the setting fitted on the calibration split (by --method) here")
    group = evaluate.add_argument_group("held out")
    group.add_argument("--split", help="trace files: fraction of the problems to fit on (default 0.5); "
                       "Governor folders: train, dev or all problems of split_manifest.json (default all)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the random split (default 0)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    evaluate.set_defaults(handler=evaluate_command)


# ------------------------------------------------------------------------------------ handlers




async def record_command(args: argparse.Namespace) -> int:
    from certaindex.traces import TraceSettings, record_traces

    for option, value, minimum in (("--limit", args.limit, 1), ("--granularity", args.granularity, 1),
                                   ("--budget", args.budget, 1), ("--probe-tokens", args.probe_tokens or 20, 1),
                                   ("--answer-tokens", args.answer_tokens, 1), ("--samples", args.samples, 1),
                                   ("--top-logprobs", args.top_logprobs, 0), ("--confidence-window", args.confidence_window, 1)):
        _at_least(option, value, minimum)
    if args.granularity > args.budget:
        raise ValueError(f"--granularity ({args.granularity}) must not exceed --budget ({args.budget})")
    if not 0 <= args.temperature <= 5:
        raise ValueError(f"--temperature must be between 0 and 5, got {args.temperature}")
    if args.samples > 1 and args.temperature == 0:
        raise ValueError("--samples > 1 records identical traces at temperature 0; set --temperature")
    out_path = Path(args.out)
    if out_path.exists() and not args.force:
        raise ValueError(f"{out_path} exists; pass --force to overwrite it")
    settings = TraceSettings(
        granularity=args.granularity,
        budget=args.budget,
        probe_tokens=args.probe_tokens or 20,
        answer_tokens=args.answer_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        samples=args.samples,
        logprobs=args.top_logprobs or None,
        confidence_window=args.confidence_window,
    )
    problems = load_dataset(args.dataset, limit=args.limit, offset=args.offset)
    common.resolve_profile(args, None)  # a bad --profile fails before the engine loads
    engine = common.engine_from_args(args, logprobs=settings.logprobs is not None)
    try:
        settings = _record_profile(args, settings, args.model or engine.name)
    except BaseException:
        await engine.aclose()
        raise
    started = time.perf_counter()
    tokens = correct = 0
    try:
        with progress_bar("record", args.quiet) as progress:
            task = progress.add_task(args.dataset, total=len(problems) * settings.samples)

            def on_progress(done: int, total: int, record) -> None:
                nonlocal tokens, correct
                tokens += record.reasoning_tokens + sum(p.tokens for p in record.probes()) + (
                    record.final.tokens if record.final.source == "after-think" else 0)
                correct += record.correct
                progress.update(task, completed=done, description=f"{args.dataset} ({record.id}, {correct}/{done} correct)")

            try:
                traces = await record_traces(engine, problems, settings, out_path, on_progress, dataset=args.dataset)
            except KeyboardInterrupt:
                err.print(f"[yellow]interrupted: {out_path} holds the traces recorded so far; read it with --allow-truncated[/yellow]")
                raise
    finally:
        await engine.aclose()
    elapsed = time.perf_counter() - started
    n = len(traces.records)
    out.print(
        f"recorded {n} traces of {traces.header.model} to {out_path} in {elapsed:.0f} s "
        f"({tokens} generated tokens, {tokens / elapsed if elapsed else 0:.0f} tokens/s)"
    )
    finished = sum(1 for r in traces.records if r.stop == "finished")
    out.print(
        f"full reasoning: {correct}/{n} correct ({100 * correct / n:.1f}%), {finished} finished within the budget "
        f"of {settings.budget}, mean {sum(r.full_tokens for r in traces.records) / n:.1f} tokens"
    )
    return 0


def _record_profile(args: argparse.Namespace, settings, model_name: str):
    """The recording settings under the early-exit profile of ``model_name`` (its probe suffix and
    probe length), announced on stderr as solve announces its profile."""
    import dataclasses

    profile, why = common.resolve_profile(args, model_name)
    if profile is None:
        err.print(f"[dim]probes recorded with the default suffix ({why})[/dim]")
        return settings
    settings = dataclasses.replace(settings, probe_suffix=profile.probe_suffix,
                                   probe_tokens=args.probe_tokens or profile.probe_tokens)
    err.print(f"[dim]early-exit profile {escape(profile.label)} ({escape(why)}): probes recorded with its suffix "
              f"{escape(repr(profile.probe_suffix))}, at most {settings.probe_tokens} tokens[/dim]")
    return settings


def _read(args: argparse.Namespace):
    from certaindex.traces import read_traces

    traces = read_traces(args.traces, allow_truncated=args.allow_truncated)
    if not traces.records:
        raise ValueError(f"{args.traces} holds no traces")
    return traces


def _exists(path: str) -> None:
    """A wrong path is named as such, before any option is checked against what it would be."""
    if not Path(path).exists():
        raise ValueError(f"{path}: no such file or folder")


async def calibrate_command(args: argparse.Namespace) -> int:
    from certaindex.evaluation.evaluate import (
        calibration_config,
        choose_setting,
        full_policy,
        probe_grid,
        replay_outcomes,
        write_calibration,
    )

    from certaindex.traces.governor import is_governor_layout

    _exists(args.traces)
    if is_governor_layout(args.traces):
        from certaindex.cli.governor_calibrate import calibrate_governor

        _unit("--delta", args.delta)
        if args.alpha is not None:
            _unit("--alpha", args.alpha)
        return calibrate_governor(args, Path(args.traces))
    if Path(args.traces).is_dir():
        from certaindex.cli.shadow_calibrate import calibrate_folder

        return calibrate_folder(args, Path(args.traces))
    intervals, ks = _check_policy_args(args)
    traces = _read(args)
    full = full_policy(traces.settings)
    probes = probe_grid(traces.settings, intervals, ks)
    with progress_bar("replay", args.quiet) as progress:
        task = progress.add_task(f"{len(probes)} settings", total=(len(probes) + 1) * len(traces.records))
        outcomes = await replay_outcomes(traces, [full, *probes], lambda done, total: progress.update(task, completed=done))
    idx = list(range(len(traces.records)))
    choice = choose_setting(outcomes, probes, full, idx, args.method, args.alpha, args.delta, args.max_loss)
    if choice.policy is None or choice.summary is None:  # nothing certified: one exit status for every input
        if args.method == "ltt":
            from certaindex.core.calibration import min_examples_for_certificate

            why = (f"no setting is certified at alpha={args.alpha}, delta={args.delta} on {len(idx)} traces (a setting "
                   f"needs about {min_examples_for_certificate(args.alpha, args.delta)}+ traces even without harmful "
                   "exits); record more traces, loosen --alpha/--delta, or use --method target")
        else:
            why = f"no setting is within --max-loss {args.max_loss} of full reasoning's accuracy"
        err.print(f"[yellow]{escape(why)}[/yellow]; nothing written", highlight=False)
        return common.EXIT_NO_ANSWER
    config = calibration_config(choice, traces, args.alpha, args.delta, args.max_loss)
    path = write_calibration(args.out, config)
    s, f = choice.summary, choice.full
    out.print(
        f"chosen by {args.method}: {choice.policy.label} — accuracy {100 * s.accuracy:.1f}% "
        f"(full reasoning {100 * f.accuracy:.1f}%), {s.mean_tokens:.1f} tokens per problem "
        f"({100 * s.saving:.1f}% saved), {s.harmful} harmful exits on {s.n} traces"
        + (f", p={choice.p_value:.3g}" if choice.p_value is not None else "")
    )
    out.print(f"written to {path}")
    return 0


async def evaluate_command(args: argparse.Namespace) -> int:
    from certaindex.evaluation.evaluate import calibration_config, plot_pareto, render_tables, run_evaluation, write_calibration

    from certaindex.cli.governor import evaluate_governor, sample_path
    from certaindex.traces.governor import is_governor_layout

    if args.sample:
        if args.traces:
            raise ValueError("give either a PATH or --sample, not both")
        return evaluate_governor(args, sample_path())
    if not args.traces:
        raise ValueError("evaluate needs a PATH (a trace file or a Governor folder) or --sample")
    _exists(args.traces)
    if is_governor_layout(args.traces):
        return evaluate_governor(args, Path(args.traces))
    if args.policy or args.grade_cache:
        raise ValueError(f"--policy and --grade-cache apply to Governor folders; {args.traces} is a trace file")
    intervals, ks = _check_policy_args(args)
    try:
        args.split = 0.5 if args.split is None else float(args.split)
    except ValueError:
        raise ValueError(f"--split on a trace file takes a fraction in (0, 1), got {args.split!r}") from None
    _unit("--split", args.split)
    traces = _read(args)
    with progress_bar("replay", args.quiet) as progress:
        task = progress.add_task("policies", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = await run_evaluation(
            traces, intervals, ks, split=args.split, split_seed=args.split_seed, method=args.method,
            alpha=args.alpha, delta=args.delta, max_loss=args.max_loss, on_progress=on_progress,
        )
    for table in render_tables(report):
        out.print(table)
    for note in report.notes:
        out.print(f"[dim]note:[/dim] {escape(note)}")
    if report.thresholds is not None:
        t = report.thresholds
        out.print(
            f"entropy thresholds (all traces, in-sample): mean {t.mean:.4f}, info {t.info:.4f}, bayes {t.bayes:.4f}, "
            f"universal {t.universal:.4f} (mu_c {t.mu_c:.4f}, sigma_c {t.sigma_c:.4f}, mu_i {t.mu_i:.4f}, "
            f"sigma_i {t.sigma_i:.4f}, d {t.d:.3f}, {t.n_c} correct / {t.n_i} incorrect probe points)"
        )
    if not args.no_png:
        png = Path(args.png) if args.png else _default_png(Path(args.traces))
        out.print(f"Pareto plot written to {plot_pareto(report, png)}")
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        out.print(f"figures written to {path}")
    if args.calibration_out:
        choice = report.choice
        if choice is None or choice.policy is None:
            out.print(f"[yellow]no setting chosen by {args.method} on the calibration split; {args.calibration_out} not written[/yellow]")
        else:
            config = calibration_config(choice, traces, args.alpha, args.delta, args.max_loss)
            out.print(f"calibrated setting ({choice.policy.label}) written to {write_calibration(args.calibration_out, config)}")
    return 0


def _default_png(traces: Path) -> Path:
    name = traces.name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return traces.with_name(f"{name}-pareto.png")


HANDLERS: dict[str, Callable[[argparse.Namespace], Awaitable[int]]] = {
    "record": record_command,
    "calibrate": calibrate_command,
    "evaluate": evaluate_command,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="certaindex", description="Record, calibrate and evaluate on reasoning traces.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry point (``python -m certaindex.cli.traces``), with the CLI's exit statuses."""
    args = build_parser().parse_args(argv)
    return run_handler(HANDLERS[args.command], args)


if __name__ == "__main__":
    sys.exit(main())
