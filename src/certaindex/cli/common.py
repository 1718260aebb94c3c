"""What every command shares: exit statuses, consoles, the engine and reasoning flags, validation
of numbers, the progress bar and the mapping of errors to exit statuses; the serving commands'
(loadtest, simulate) option parsers, table and records; the start of a server (a taken port, uvicorn's
exit). Command modules import this one; it imports none of them."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import errno
import shlex
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from certaindex.core.datasets import DatasetError
from certaindex.core.prompting import NoQuestionError
from certaindex.core.validation import parse_json_object
from certaindex.engines import EngineError, make_engine
from certaindex.programs.cot import CoTConfig
from certaindex.programs.self_consistency import NoAnswerError

if TYPE_CHECKING:
    from certaindex.serving.loadgen import ProgramRecord, Summary

EXIT_ENGINE, EXIT_USAGE, EXIT_NO_ANSWER = 1, 2, 3
MAX_BUDGET = 1_000_000

out = Console()
err = Console(stderr=True)


class UsageError(ValueError):
    """A mistake in the command line."""


def positive(name: str, value: int, upper: int | None = None) -> int:
    if value < 1:
        raise UsageError(f"--{name} must be at least 1, got {value}")
    if upper is not None and value > upper:
        raise UsageError(f"--{name} must be at most {upper}, got {value}")
    return value


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine",
        default="embedded",
        help="'embedded' (llama.cpp in process, default model), 'embedded:/path/model.gguf', "
        "or the URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1",
    )
    group.add_argument("--model", help="model name on the server (default: its first), or a GGUF path for embedded")
    group.add_argument(
        "--chat-template",
        default="auto",
        help="chat template: auto (from the model or server), chatml, deepseek-r1, qwen3-thinking, llama3, gemma, raw",
    )
    group.add_argument("--api-key", help="bearer token for the server")
    group.add_argument(
        "--extra-body",
        help='JSON object of engine-specific fields sent with every HTTP request, e.g. \'{"repeat_penalty": 1.0}\'',
    )
    add_verbose_arg(group)


def add_verbose_arg(parser) -> None:
    """``--verbose``: the engines' own logs (llama.cpp's, one line per HTTP request), quiet by default."""
    parser.add_argument("--verbose", action="store_true",
                        help="show the engine's own log: llama.cpp's lines, one line per HTTP request")


def quiet_http_logs(verbose: bool) -> None:
    """httpx logs every request at INFO: one line per upstream request drowns a proxy's log."""
    import logging

    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def add_cot_args(
    parser: argparse.ArgumentParser, budget: int = 1024, interval: int = 32, k: int = 3, seed_flag: str = "--seed",
    profile: str = "auto",
) -> None:
    """The chain-of-thought flags; ``seed_flag`` renames the sampling seed where ``--seed`` means
    something else (the load test's arrivals); ``cot_config`` reads it as ``seed``."""
    group = parser.add_argument_group("reasoning")
    group.add_argument("--budget", type=int, default=budget, help=f"most reasoning tokens (default {budget})")
    group.add_argument("--probe-interval", type=int, default=None,
                       help=f"reasoning tokens between probes (default {interval}; giving it or --k uses Dynasor's "
                       "rule with them instead of the model's profile)")
    group.add_argument("--k", type=int, default=None, help=f"agreeing probes in a row needed to stop (default {k})")
    group.add_argument("--profile", default=profile,
                       help=f"early-exit profile (default {profile}): auto (picked from the model name), a shipped profile's name "
                       "(generic, r1-distill-qwen, r1-distill-qwen-32b, qwen3, r1-distill-llama, conservative), a profile "
                       "JSON file, or none (Dynasor's rule with --probe-interval and --k)")
    parser.set_defaults(default_probe_interval=interval, default_k=k)
    group.add_argument("--probe-tokens", type=int, default=20, help="tokens a probe may write (default 20)")
    group.add_argument("--temperature", type=float, default=0.0, help="sampling temperature (default 0: greedy)")
    group.add_argument(seed_flag, dest="sampling_seed", type=int, default=0, help="sampling seed (default 0)")
    group.add_argument(
        "--calibration",
        help="JSON written by `certaindex calibrate`: a profile (from a Governor folder) replaces --profile; "
        "a probe-agreement config replaces the probe interval and k",
    )


def resolve_profile(args: argparse.Namespace, model_name: str | None, engine=None):
    """The early-exit profile for this run (None: Dynasor's rule with the flags), and why.

    A profile picked from the model name whose score reads DEER trials needs token logprobs: on an
    ``engine`` that returns none (``Engine.returns_logprobs``) the conservative profile stands in, and
    the reason says so."""
    from certaindex.evaluation.profile_choice import choose_profile
    from certaindex.evaluation.profiles import load_profile, shipped_profiles

    calibration = getattr(args, "calibration", None)
    if calibration:
        try:
            data = json.loads(open(calibration, encoding="utf-8").read())
        except (OSError, ValueError):
            data = None  # load_calibration reports it
        if isinstance(data, dict) and data.get("format") == "certaindex-profile":
            return load_profile(calibration), f"from {calibration}"
        return None, "calibration file"
    choice = getattr(args, "profile", "auto") or "auto"
    if choice == "none":
        return None, "--profile none"
    if choice != "auto":
        named = {p.name: p for p in shipped_profiles()}
        if choice in named:
            return named[choice], "--profile"
        if choice.endswith(".json"):
            return load_profile(choice), f"from {choice}"
        raise UsageError(f"--profile {choice!r} is not a shipped profile ({', '.join(sorted(named))}), a .json file, auto or none")
    if getattr(args, "probe_interval", None) is not None or getattr(args, "k", None) is not None:
        return None, "--probe-interval/--k given"
    flag_model = getattr(args, "model", None)
    choice = choose_profile(flag_model=flag_model if flag_model and flag_model == model_name else None,
                            served_models=[model_name] if model_name else [],
                            returns_logprobs=engine is None or bool(getattr(engine, "returns_logprobs", False)),
                            engine_name=getattr(engine, "name", "the engine"))
    return choice.profile, choice.reason


async def served_model_name(engine) -> str:
    """The model ``engine`` serves, to pick its profile by: a server's (an HTTP engine reads
    ``GET /v1/models`` as it prepares), else the engine's own name (an embedded GGUF file)."""
    await engine.prepare()
    model = getattr(engine, "model", None)
    return model if isinstance(model, str) and model else engine.name


def describe_rule(args: argparse.Namespace, config: CoTConfig, model_name: str | None, engine=None) -> str:
    """One line saying which early-exit rule a run uses and why (printed by solve, bench and serve)."""
    profile, why = resolve_profile(args, model_name, engine)
    if profile is not None:
        return f"early-exit profile {profile.label} ({why})"
    return f"early-exit rule: Dynasor k={config.k}, probe interval {config.probe_interval} ({why})"


def cot_config(args: argparse.Namespace, early_exit: bool = True, model_name: str | None = None,
               announce: bool = False, engine=None) -> CoTConfig:
    """The chain-of-thought settings of a run: the flags, then the early-exit profile (picked from
    ``model_name`` unless ``--profile``/``--calibration``/``--probe-interval``/``--k`` say otherwise),
    announced on stderr. ``engine``: the engine the run uses, where its capabilities matter (see
    :func:`resolve_profile`)."""
    interval = args.probe_interval if args.probe_interval is not None else getattr(args, "default_probe_interval", 32)
    k = args.k if args.k is not None else getattr(args, "default_k", 3)
    positive("budget", args.budget, MAX_BUDGET)
    positive("probe-interval", interval)
    positive("k", k, 100)
    positive("probe-tokens", args.probe_tokens, 1000)
    if not 0 <= args.temperature <= 5:
        raise UsageError(f"--temperature must be between 0 and 5, got {args.temperature}")
    config = CoTConfig(
        budget=args.budget,
        probe_interval=interval,
        k=k,
        probe_tokens=args.probe_tokens,
        temperature=args.temperature,
        seed=args.sampling_seed,
        early_exit=early_exit,
    )
    profile, why = resolve_profile(args, model_name, engine)
    if profile is not None:
        from certaindex.evaluation.profile_choice import apply_profile

        config = apply_profile(config, profile)
        if announce:
            err.print(f"[dim]early-exit profile {profile.label} ({why})[/dim]")
    elif getattr(args, "calibration", None):
        from certaindex.evaluation.evaluate import apply_calibration, load_calibration

        config = dataclasses.replace(apply_calibration(config, load_calibration(args.calibration)), early_exit=early_exit)
    return config


def profile_reads_trials(args: argparse.Namespace) -> bool:
    """Whether the profile these flags pick for the named model (``--model``, else the ``--engine``
    spec, e.g. an embedded GGUF path) reads DEER trials: the embedded engine must then keep the
    logits their logprobs need, which it does only when created so."""
    profile, _ = resolve_profile(args, getattr(args, "model", None) or getattr(args, "engine", None))
    return profile is not None and profile.kind == "score" and "tr" in profile.rule["schedule"].split("+")


def engine_from_args(args: argparse.Namespace, logprobs: bool = False):
    extra_body = parse_json_object(args.extra_body, "--extra-body")
    verbose = bool(getattr(args, "verbose", False))
    quiet_http_logs(verbose)
    return make_engine(
        args.engine,
        model=args.model,
        chat_template=None if args.chat_template == "auto" else args.chat_template,
        api_key=args.api_key,
        logprobs=logprobs,
        extra_body=extra_body,
        verbose=verbose,
    )


def write_report(path: str, items: Sequence[object], width: int) -> Path:
    """Write a results file that names the command it came from: the command line, then each item
    (a rich renderable, or a plain line printed without highlighting)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as fh:
        fh.write("$ certaindex " + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "\n\n")
        console = Console(file=fh, width=width, no_color=True, force_terminal=False)
        for item in items:
            console.print(item, highlight=False)
    return target


def parse_floats(option: str, text: str) -> list[float]:
    """``0.1,0.2`` -> [0.1, 0.2]: comma-separated numbers > 0 (``--rates``)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{option} takes comma-separated numbers, e.g. 0.1,0.2; got {text!r}") from None
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"{option} takes numbers > 0, got {text!r}")
    return values


def parse_policies(text: str) -> list[str]:
    """``--policies``: serving policy names, each known, none twice."""
    from certaindex.serving.loadtest import policy_spec

    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ValueError("--policies names no policy")
    for name in names:
        policy_spec(name)
    if len(set(names)) != len(names):
        raise ValueError(f"--policies names a policy twice: {text!r}")
    return names


def parse_slos(values: Sequence[float] | None) -> list[float]:
    """The repeated ``--slo`` seconds (default 30), each > 0, duplicates dropped in order."""
    slos = list(values or [30.0])
    for s in slos:
        if not math.isfinite(s) or s <= 0:
            raise ValueError(f"--slo takes seconds > 0, got {s}")
    return list(dict.fromkeys(slos))


def summary_table(rows: Sequence[tuple[str, Summary, Summary | None]], slos: Sequence[float], title: str) -> Table:
    """One row per (label, summary, baseline): the figures, and ratios against the baseline
    (loadtest's and simulate's table)."""
    table = Table(title=title)
    for column in ("run", "prog/s", "tok/s", "p50 s", "p90 s", "p99 s", "mean s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for slo in slos:
        table.add_column(f"SLO {slo:g}s", justify="right")
    for column in ("accuracy", "mean tokens", "prog/s ×", "tok/s ×", "latency ×"):
        table.add_column(column, justify="right")
    for label, s, base in rows:
        ratio = s.ratio(base) if base is not None else None
        table.add_row(
            label,
            f"{s.programs_per_s:.4f}",
            f"{s.tokens_per_s:.1f}",
            *(f"{s.latency[p]:.1f}" for p in (50, 90, 99)),
            f"{s.mean_latency:.1f}",
            *(f"{s.slo[float(slo)]:.0%}" for slo in slos),
            f"{s.accuracy:.1%}",
            f"{s.mean_tokens:.1f}",
            *((f"{ratio['programs_per_s']:.2f}", f"{ratio['tokens_per_s']:.2f}", f"{ratio['mean_latency']:.2f}")
              if ratio else ("", "", "")),
        )
    return table


def emit_table(table: Table, notes: Sequence[str], report: str | None) -> None:
    """Print a results table and its notes on stdout, and write them to ``report`` when given."""
    console = Console(width=200)
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
    if report:
        console.print(f"report written to {write_report(report, [table, *notes], 200)}")


def write_records(path: str, records: Sequence[tuple[dict, ProgramRecord]]) -> None:
    """``--out``: one JSON line per served program, its record after the given extra fields."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", encoding="utf-8") as fh:
        for extra, record in records:
            fh.write(json.dumps({**extra, **record.to_dict()}) + "\n")


def check_port(host: str, port: int) -> None:
    """Refuse a server's address before the server starts: uvicorn binds only after the app's startup
    (the embedded model loaded, "Application startup complete" printed) and then exits on a taken port.
    Each address ``host`` resolves to is bound and released here, as uvicorn would bind it."""
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {port}")
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    unavailable = 0
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a closed socket's TIME_WAIT is no conflict
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:  # asyncio skips an address family the machine lacks
                    unavailable += 1
                    continue
                if exc.errno == errno.EADDRINUSE:
                    raise UsageError(f"port {port} on {host} is in use (another server listens there): "
                                     "stop it or choose another --port") from None
                if exc.errno == errno.EACCES:
                    raise UsageError(f"port {port} on {host} needs privileges to listen on: choose a --port "
                                     "above 1023") from None
                raise UsageError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from None
    if unavailable == len(addresses):
        raise UsageError(f"--host {host}: not an address of this machine")


async def run_uvicorn(server, what: str) -> None:
    """Serve until stopped. uvicorn exits 3 when the app's startup fails (the embedded model cannot
    load) or it cannot listen, and 3 is this command line's "the model gave no answer": such a start
    is an engine failure here, one ``error:`` line and exit 1, under uvicorn's own log of the cause."""
    try:
        await server.serve()
    except SystemExit as exc:
        if exc.code == 3:
            raise EngineError(f"{what} did not start (the cause is logged above)") from None
        raise


def progress_bar(label: str, quiet: bool = False) -> Progress:
    """The progress bar of every long command (bench, record, replay), on stderr."""
    return Progress(
        TextColumn(f"[bold]{label}[/bold] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=quiet,
    )


def run_handler(handler: Callable[[argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    """Run a command's handler; user mistakes and engine failures end in one ``error:`` line and an
    exit status, never a traceback."""
    try:
        return asyncio.run(handler(args))
    except (UsageError, NoQuestionError, DatasetError, ValueError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE
    except EngineError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_ENGINE
    except NoAnswerError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        return EXIT_NO_ANSWER
    except KeyboardInterrupt:
        err.print("[red]interrupted[/red]")
        return 130
