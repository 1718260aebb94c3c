"""``certaindex replay-server TRACES``: play recorded reasoning trajectories back as an
OpenAI-compatible server, paced by a GPU cost model with continuous batching (docs/replay-server.md)."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

from certaindex.cli.common import check_port, err, run_uvicorn

__all__ = ["add_subcommands", "default_cost_model"]

REPO = Path(__file__).resolve().parents[3]
#: The H100 cost model of each recorded model's shape (benchmarks/results/gpu/, re-measured on an H100).
SHAPES = {"r1-distill-qwen-7b": "qwen2.5-7b", "r1-distill-qwen-32b": "qwen2.5-32b",
          "r1-distill-llama-8b": "llama3-8b", "qwen3-8b": "qwen3-8b"}


def default_cost_model(model: str) -> Path | None:
    """The repository's H100 cost model for a recorded model slug, where the checkout has it."""
    shape = SHAPES.get(model)
    path = REPO / "benchmarks" / "results" / "gpu" / f"cost-model-h100-{shape}.json"
    return path if shape and path.is_file() else None


def add_subcommands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay-server",
        help="an OpenAI-compatible server playing recorded reasoning trajectories, paced like a GPU",
        description="Serve /v1/completions (and chat) from recorded Governor trajectories: the problem is "
        "recognised in the prompt, its trajectory's own text streams token by token, probes and DEER trials "
        "are answered from their recordings; tokens are paced by a GPU cost model with continuous batching.",
    )
    p.add_argument("traces", help="a Governor folder (a <model>__<dataset>__seed_<s> run or a folder of runs)")
    p.add_argument("--model", help="model slug to serve when the folder holds several (e.g. r1-distill-qwen-7b)")
    p.add_argument("--dataset", help="serve only these datasets, comma-separated (default: all)")
    p.add_argument("--split", default="all", choices=["train", "dev", "all"], help="problems to serve (default all)")
    p.add_argument("--seeds", help="serve only these seeds, comma-separated (default: all)")
    p.add_argument("--seed-rule", default="round-robin", choices=["round-robin", "first", "request"],
                   help="which seed a fresh request of a problem recorded under several gets: round-robin "
                   "(default; 'request' is its older name): the request's seed's recording, else the lowest for a "
                   "greedy request, else the next in turn; first: always the lowest")
    p.add_argument("--served-model-name", help="the model id /v1/models reports (default: the recorded model's name, "
                   "e.g. deepseek-ai/DeepSeek-R1-Distill-Qwen-7B, so a proxy picks its profile)")
    p.add_argument("--chat-template", help="template for /v1/chat/completions (default: guessed from the model name)")
    p.add_argument("--probe-suffix", action="append", default=[],
                   help="another probe suffix to recognise (the default and the Governor suffixes always are)")
    p.add_argument("--cost-model", help="cost model JSON (default: the H100 model of the recorded model's shape "
                   "in benchmarks/results/gpu/)")
    p.add_argument("--speed", type=float, default=1.0,
                   help="run this many times faster than the modelled GPU (default 1; e.g. 10 for CPU benchmarks)")
    p.add_argument("--chunked-prefill", action="store_true",
                   help="a joining request costs only its prefill, folded into the running steps (vLLM); default: "
                   "it stalls the batch for request_s plus its prefill, as `simulate` does without the flag")
    p.add_argument("--flush-ms", type=float, default=0.0,
                   help="streams send their new tokens at most every this many wall milliseconds, several tokens "
                   "an event (with their token_ids); default 0: every decode step, one token an event")
    p.add_argument("--max-batch", type=int, help="sequences decoded together (default: the cost model's max_batch)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    p.set_defaults(handler=_serve)


def _csv(text: str | None) -> list[str] | None:
    return [x.strip() for x in text.split(",") if x.strip()] if text else None


def build(args: argparse.Namespace):
    """(app, replay, clock) from the command line; errors are one-line ValueErrors."""
    import dataclasses

    from certaindex.serving.batch_clock import BatchClock
    from certaindex.serving.costmodel import CostModel
    from certaindex.server.replay import create_replay_app
    from certaindex.traces.governor import GovernorFormatError, read_governor
    from certaindex.traces.governor_engine import GovernorReplay

    if not math.isfinite(args.speed) or args.speed <= 0:
        raise ValueError(f"--speed must be a number > 0, got {args.speed}")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    try:
        runs = read_governor(args.traces, args.split)
    except GovernorFormatError as exc:
        raise ValueError(str(exc)) from None
    trajs = [t for r in runs for t in r.trajectories]
    models = sorted({t.model for t in trajs})
    if args.model:
        if args.model not in models:
            raise ValueError(f"--model {args.model!r}: no such trajectories here (models: {', '.join(models)})")
        trajs = [t for t in trajs if t.model == args.model]
    elif len(models) > 1:
        raise ValueError(f"{args.traces} holds several models ({', '.join(models)}): serve one with --model")
    datasets = _csv(args.dataset)
    if datasets:
        trajs = [t for t in trajs if t.dataset in datasets]
    seeds = _csv(args.seeds)
    if seeds:
        try:
            wanted = {int(s) for s in seeds}
        except ValueError:
            raise ValueError(f"--seeds takes comma-separated integers, got {args.seeds!r}") from None
        trajs = [t for t in trajs if t.seed in wanted]
    if not trajs:
        raise ValueError(f"{args.traces}: no trajectories left to serve after --model/--dataset/--seeds/--split")
    model = trajs[0].model
    path = args.cost_model or default_cost_model(model)
    if path is None:
        raise ValueError(f"no cost model for {model} in this checkout: give --cost-model")
    cost = CostModel.load(path)
    if args.max_batch is not None:
        if args.max_batch < 1:
            raise ValueError(f"--max-batch must be at least 1, got {args.max_batch}")
        cost = dataclasses.replace(cost, max_batch=args.max_batch)
    replay = GovernorReplay(trajs, probe_suffixes=args.probe_suffix, seed_rule=args.seed_rule)
    replay.prepare_all()
    clock = BatchClock(cost, speed=args.speed, chunked_prefill=args.chunked_prefill)
    if not math.isfinite(args.flush_ms) or args.flush_ms < 0:
        raise ValueError(f"--flush-ms must be a number >= 0, got {args.flush_ms}")
    app = create_replay_app(replay, clock, model=args.served_model_name, chat_template=args.chat_template,
                            flush_s=args.flush_ms / 1000)
    return app, replay, clock, Path(path)


async def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from certaindex.server.replay import supported_parameters

    app, replay, clock, path = build(args)
    check_port(args.host, args.port)  # before the banner: uvicorn would print its own, then fail to bind
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trials = "" if "logprobs" in supported_parameters(replay) else (
        "; no recorded DEER trials, so /v1/models lists no logprobs (a proxy runs its no-trial profile)")
    err.print(f"replay-server: {replay.trajectories} trajectories of {replay.model_name} "
              f"({len(replay.problems)} problems), cost model {path.name}, speed {clock.speed:g}x, "
              f"http://{args.host}:{args.port}/v1{trials}", highlight=False)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5)
    await run_uvicorn(uvicorn.Server(config), "replay-server")
    return 0
