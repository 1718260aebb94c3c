"""``certaindex serve``: the OpenAI-compatible proxy on the command line."""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

from certaindex.cli.common import UsageError, check_port, quiet_http_logs, run_uvicorn
from certaindex.core.validation import parse_json_object
from certaindex.programs.cot import CoTConfig


def add_serve_subcommand(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible proxy with early exit, in front of an engine",
        description="Serve /v1/chat/completions (early-exit chain of thought for reasoning models), "
        "/v1/completions and every other path (passed through), /v1/models, /health and /metrics.",
    )
    serve.add_argument("--upstream", help="the engine URL, e.g. http://localhost:8000/v1, or several replicas "
                       "separated by commas "
                       "(default: the embedded engine in process)")
    serve.add_argument("--model", help="the upstream model name (default: its first), which then also picks the "
                       "early-exit profile for every request, or an embedded GGUF path")
    serve.add_argument("--chat-template", help="chat template name (default: read from the engine or guessed)")
    serve.add_argument("--upstream-api-key", default=os.environ.get("CERTAINDEX_UPSTREAM_API_KEY"),
                       help="API key for the upstream (env CERTAINDEX_UPSTREAM_API_KEY)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8100, help="port (default 8100)")
    serve.add_argument("--api-key", default=os.environ.get("CERTAINDEX_API_KEY"),
                       help="require clients to send this key as a Bearer token (env CERTAINDEX_API_KEY)")
    serve.add_argument("--policy", default="auto", choices=["auto", "cot", "full", "sc", "off"],
                       help="default for chat requests: auto = early exit for reasoning models, passthrough "
                       "otherwise (default); requests choose their own with {\"certaindex\": {\"policy\": ...}}")
    serve.add_argument("--calibration", help="calibration JSON from `certaindex calibrate`: default probe "
                       "interval, k (and budget)")
    serve.add_argument("--budget", type=int, default=None,
                       help="default most reasoning tokens (default: 32768 with --upstream, the longest budget "
                       "the recorded runs were collected with, so a reasoning model finishes its own reasoning; "
                       "4096, its context, on the embedded engine); a request's certaindex.budget replaces it, its "
                       "max_tokens bounds it. The engine's context (vLLM --max-model-len) must hold the prompt, the "
                       "budget and the answer (4096): e.g. --budget 24576 for --max-model-len 32768")
    serve.add_argument("--probe-interval", type=int, default=None,
                       help="default tokens between probes (default 64; giving it or --k uses Dynasor's rule instead "
                       "of the model's profile)")
    serve.add_argument("--k", type=int, default=None, help="default agreeing probes needed to stop (default 3)")
    serve.add_argument("--profile", default="auto",
                       help="early-exit profile: auto (picked from the model name: --model, else each request's "
                       "model, else the upstream's served model; default), a shipped profile's name, "
                       "a profile JSON file, or none (Dynasor's rule with --probe-interval and --k)")
    serve.add_argument("--plain-max-tokens", type=int, default=1024,
                       help="policy off on the embedded engine: most tokens when a request gives no max_tokens "
                       "(default 1024)")
    serve.add_argument("--probe-trigger", default="interval", choices=["interval", "events", "both"],
                       help="probe every --probe-interval tokens, at events in the reasoning (a conclusion, "
                            "'Wait'), or both (default interval)")
    serve.add_argument("--token-ids", action="store_true",
                       help="the upstream reports streamed token ids and takes token-id prompts (vLLM's "
                            "return_token_ids): probes then continue the model's own tokens, not re-tokenized text")
    serve.add_argument("--no-side-probes", action="store_true",
                       help="reason in chunks with probes between them instead of one upstream stream with "
                            "probes beside it (for servers that run one request at a time, e.g. llama-cpp-python)")
    serve.add_argument("--workers", type=int, default=1,
                       help="proxy processes serving the one port (SO_REUSEPORT; needs --upstream); each gets "
                       "--capacity / N of the scheduler's capacity, and its own --max-concurrency and --max-queue "
                       "(default 1; docs/deployment.md section 5)")
    serve.add_argument("--max-concurrency", type=int, default=64, help="requests served at once (default 64)")
    serve.add_argument("--max-queue", type=int, default=256,
                       help="requests waiting for a slot before 429 is answered (default 256)")
    serve.add_argument("--upstream-timeout", type=float, default=300.0,
                       help="seconds one upstream read may take (default 300)")
    serve.add_argument("--request-timeout", type=float, default=900.0,
                       help="seconds a whole request may take from its arrival, retries included; then 504 "
                       "(default 900)")
    serve.add_argument("--upstream-headers-timeout", type=float, default=60.0,
                       help="seconds a streamed upstream request's response headers may take; then 504 (default 60)")
    group = serve.add_argument_group("scheduling (docs/scheduler.md)")
    group.add_argument("--scheduler", default="certaindex", choices=["certaindex", "fcfs", "off"],
                       help="order the chat programs' upstream requests: certaindex (settled and urgent programs "
                       "first, budget to unsure ones; default), fcfs, or off (send everything at once)")
    group.add_argument("--capacity", type=int,
                       help="upstream requests in flight at once (default: 1 for the embedded engine, which runs "
                       "one at a time; else --max-concurrency). Give the engine's batch size, e.g. vLLM's "
                       "--max-num-seqs times the replicas")
    group.add_argument("--aging", type=float, default=30.0,
                       help="seconds after its arrival from which a program goes before all later ones (default 30)")
    group.add_argument("--engine-priorities", action="store_true",
                       help="send each request's scheduling priority upstream (vLLM --scheduling-policy priority; "
                       "SGLang --enable-priority-scheduling)")
    shadow = serve.add_argument_group("shadow mode (docs/server.md)")
    shadow.add_argument("--shadow", metavar="DIR",
                        help="answer every chat request with full reasoning (as policy full), probe beside it every "
                        "probe interval, and write each program as a trace in DIR for `certaindex calibrate DIR`. "
                        "The traces hold the prompts and answers. The probes cost extra upstream tokens "
                        "(usage.certaindex.shadow_probe_tokens); the answers are unaffected")
    shadow.add_argument("--shadow-max-file-mb", type=float, default=256.0,
                        help="start a new trace file when one reaches this size (default 256)")
    serve.add_argument("--extra-body", help="JSON object sent with every upstream request, e.g. '{\"top_k\": 20}'")
    serve.add_argument("--log-content", action="store_true",
                       help="log prompts and answers (off by default: only sizes and timings are logged)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--verbose", action="store_true",
                       help="also log one line per upstream request (httpx) and llama.cpp's own lines")
    serve.set_defaults(handler=_serve)


def settings_from_args(args: argparse.Namespace):
    from certaindex.evaluation.evaluate import apply_calibration, load_calibration
    from certaindex.evaluation.profile_choice import ProfileChoice
    from certaindex.server.settings import EMBEDDED_DEFAULT_BUDGET, UPSTREAM_DEFAULT_BUDGET, ServerSettings

    from certaindex.cli.common import profile_reads_trials, resolve_profile

    budget = args.budget
    if budget is None:
        budget = UPSTREAM_DEFAULT_BUDGET if args.upstream else EMBEDDED_DEFAULT_BUDGET
    cot = CoTConfig(budget=budget, probe_interval=args.probe_interval or 64, k=args.k or 3,
                    probe_trigger=args.probe_trigger, side_probes=not args.no_side_probes)
    # DEER trials need token logprobs. HTTP upstreams return them; the embedded engine the proxy
    # creates keeps the logits they need (memory) only when asked, so ask only when the profile reads trials.
    embedded_logprobs = not args.upstream and profile_reads_trials(args)
    upstream = SimpleNamespace(returns_logprobs=bool(args.upstream) or embedded_logprobs,
                               name=args.upstream or "the embedded engine")
    # With an upstream and no --model or rule flags, the proxy chooses per request (its model, else
    # the upstream's served model); else the profile is chosen here, once.
    per_model = (bool(args.upstream) and not args.model and (args.profile or "auto") == "auto"
                 and not args.calibration and args.probe_interval is None and args.k is None)
    profile, why = (None, "") if per_model else resolve_profile(args, args.model, upstream)
    from certaindex.cli.common import err

    if per_model:
        err.print("early-exit profile: chosen per request, from its model, else the upstream's served model "
                  "(GET /v1/models); each choice is logged once", highlight=False, soft_wrap=True)
    elif profile is not None:
        from certaindex.evaluation.profile_choice import apply_profile

        cot = apply_profile(cot, profile)
        logprobs_note = "; the embedded engine keeps token logprobs for its DEER trials" if embedded_logprobs else ""
        err.print(f"early-exit profile {profile.label} ({why}){logprobs_note}; requests may still ask for k / "
                  "probe_interval", highlight=False, soft_wrap=True)
    elif args.calibration:
        cot = apply_calibration(cot, load_calibration(args.calibration), budget=True)
    extra = parse_json_object(args.extra_body, "--extra-body") or {}
    policy = args.policy
    if getattr(args, "shadow", None):
        from certaindex.traces.tracelog import check_writable_dir

        if policy not in ("auto", "full", "cot"):
            raise ValueError(f"--shadow answers chat requests with full reasoning; it cannot run with --policy {policy}")
        if args.shadow_max_file_mb <= 0:
            raise ValueError(f"--shadow-max-file-mb must be positive, got {args.shadow_max_file_mb}")
        check_writable_dir(args.shadow)
        policy = "full"
        every = "each model's profile interval" if per_model else f"{cot.probe_interval} tokens"
        err.print(f"shadow mode: chat requests get full reasoning; probes every {every} beside it "
                  f"(extra upstream tokens); each program, prompt included, is written to {args.shadow}", highlight=False)
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    return replace(
        ServerSettings(
            upstream=args.upstream, model=args.model, chat_template=args.chat_template,
            upstream_api_key=args.upstream_api_key, api_key=args.api_key or None, policy=policy,
            max_concurrency=args.max_concurrency, max_queue=args.max_queue,
            upstream_timeout_s=args.upstream_timeout, request_timeout_s=args.request_timeout,
            upstream_headers_timeout_s=args.upstream_headers_timeout,
            log_content=args.log_content, engine_extra_body=extra, scheduler=args.scheduler,
            capacity=args.capacity, aging_s=args.aging, engine_priorities=args.engine_priorities,
            verbose=args.verbose, plain_max_tokens=args.plain_max_tokens, token_ids=args.token_ids,
            embedded_logprobs=embedded_logprobs,
            shadow_dir=getattr(args, "shadow", None) or None,
            shadow_max_file_bytes=max(1, int(getattr(args, "shadow_max_file_mb", 256.0) * 1024 * 1024)),
            profile_per_model=per_model, check_model=bool(args.upstream),
            profile=None if per_model else ProfileChoice(profile, why, args.model),
        ),
        cot=cot,
    )


async def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from certaindex.server.app import create_app
    except ImportError as exc:  # a broken install: FastAPI, uvicorn and prometheus-client are core dependencies
        raise ValueError(f"`certaindex serve` cannot start, an install is broken: pip install certaindex ({exc})") from None
    check_port(args.host, args.port)  # before the app starts: uvicorn binds only after its startup
    if not args.upstream and args.model and not Path(args.model).expanduser().is_file():
        raise UsageError(f"--model {args.model}: no such file (without --upstream, --model is the GGUF file of the "
                         "embedded engine)")
    settings = settings_from_args(args)  # an upstream that does not answer is named by the server's first read
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_http_logs(args.verbose)
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        logging.getLogger("certaindex.server").warning(
            "listening on %s without --api-key: anyone who can reach this address can use the engine", args.host)
    if args.workers != 1:
        from certaindex.server.workers import Supervisor

        supervisor = Supervisor(settings, args.host, args.port, args.workers, log_level=args.log_level)
        return await supervisor.run()
    app = create_app(settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.log_level == "debug", timeout_graceful_shutdown=5)
    await run_uvicorn(uvicorn.Server(config), "certaindex serve")
    return 0
