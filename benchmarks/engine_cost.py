"""Calibrate the simulator's engine cost model: time an engine, fit, write JSON.

    python benchmarks/engine_cost.py                       # embedded engine -> results/online-serving/cost-model-embedded.json
    python benchmarks/engine_cost.py --engine http://127.0.0.1:8000/v1 --batches 1,2,4,8 \
        --max-batch 8 --prefix-cache program --out benchmarks/results/online-serving/cost-model-server.json

Two kinds of measurement, each on fresh prompts (a random first line defeats prefix caches):

* join: ``max_tokens=1`` on prompts of several lengths -> request_s + prefill_s * prompt tokens;
* decode: ``batch`` concurrent requests of ``max_tokens=T`` against ``max_tokens=1`` on the same
  prompts, already prefilled (cached) -> (t_T - t_1) / (T - 1) seconds per step at that batch and
  context. (A server that caches only some prompts mixes prefill in: give it --max-batch slots.)

Each point is the median of ``--repeats`` runs. The fit is least squares with non-negative
coefficients (certaindex.serving.costmodel). The embedded engine serialises generations, so it is
measured at batch 1 only and written with max_batch 1 and a last-sequence prefix cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone

from certaindex.serving.costmodel import fit_cost_model
from certaindex.engines import make_engine
from certaindex.engines.base import Engine, GenerationRequest
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX


def _prompt(words: int, rng: random.Random) -> str:
    # Counting keeps a small model writing (no early end of text) and makes lengths easy to set.
    head = f"Run {rng.randrange(10**9)}. Keep counting:\n"
    return head + " ".join(str(i) for i in range(1, words + 1))


async def _timed(engine: Engine, prompt: str, max_tokens: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    completion = await engine.generate(GenerationRequest(prompt=prompt, max_tokens=max_tokens))
    return time.perf_counter() - started, completion.prompt_tokens, completion.first.completion_tokens


async def _batch(engine: Engine, prompts: list[str], max_tokens: int) -> tuple[float, int, int]:
    """Wall time of concurrent requests on ``prompts``; their mean prompt tokens and least completion tokens."""
    started = time.perf_counter()
    results = await asyncio.gather(*(engine.generate(GenerationRequest(prompt=p, max_tokens=max_tokens)) for p in prompts))
    wall = time.perf_counter() - started
    return (wall, round(statistics.mean(r.prompt_tokens for r in results)),
            min(r.first.completion_tokens for r in results))


async def measure(engine: Engine, args: argparse.Namespace) -> tuple[list, list, int]:
    rng = random.Random(args.seed)
    await engine.generate(GenerationRequest(prompt="Hello", max_tokens=2))  # warm up
    joins: list[tuple[int, float]] = []
    for words in args.join_words:
        runs = [await _timed(engine, _prompt(words, rng), 1) for _ in range(args.repeats)]
        joins.append((runs[0][1], statistics.median(r[0] for r in runs)))
        print(f"join: {runs[0][1]} prompt tokens -> {joins[-1][1] * 1000:.1f} ms", file=sys.stderr)
    steps: list[tuple[int, float, float]] = []
    for batch in args.batches:
        for words in args.context_words:
            per_step = []
            for _ in range(args.repeats):
                # Prefill first, then time cached prompts: 1 token against T tokens differ by T-1 steps.
                prompts = [_prompt(words, rng) for _ in range(batch)]
                await _batch(engine, prompts, 1)
                t1, prompt_tokens, _ = await _batch(engine, prompts, 1)
                tT, _, generated = await _batch(engine, prompts, args.decode_tokens)
                if generated < 2:
                    continue
                per_step.append((tT - t1) / (generated - 1))
            if not per_step:
                print(f"decode: batch {batch}, {words} words: the model stopped at once; skipped", file=sys.stderr)
                continue
            context = batch * (prompt_tokens + args.decode_tokens / 2)
            steps.append((batch, context, statistics.median(per_step)))
            print(f"decode: batch {batch}, context {context:.0f} -> {steps[-1][2] * 1000:.2f} ms/step", file=sys.stderr)
    base = _prompt(50, random.Random(0))
    _, plain, _ = await _timed(engine, base, 1)
    _, with_suffix, _ = await _timed(engine, base + DEFAULT_PROBE_SUFFIX, 1)
    return steps, joins, max(0, with_suffix - plain)


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"comma-separated integers >= 1, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="embedded", help="embedded, embedded:/path.gguf or an http(s):// URL")
    parser.add_argument("--model", help="served model name (http) or GGUF path")
    parser.add_argument("--out", default="benchmarks/results/online-serving/cost-model-embedded.json")
    parser.add_argument("--batches", type=_int_list, default=[1], help="batch sizes to time (default 1)")
    parser.add_argument("--context-words", type=_int_list, default=[10, 60, 120, 200],
                        help="prompt lengths of decode points, in counting words (~2-4 tokens each)")
    parser.add_argument("--join-words", type=_int_list, default=[10, 50, 100, 150],
                        help="prompt lengths of join (prefill) points, in counting words")
    parser.add_argument("--decode-tokens", type=int, default=48, help="T, tokens per decode measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, help="requests the engine decodes together (default: 1 for "
                        "embedded, the largest of --batches otherwise)")
    parser.add_argument("--prefix-cache", choices=("last", "program"),
                        help="what the engine's prefix cache keeps (default: last for embedded, program otherwise)")
    parser.add_argument("--machine", default="2-core CPU VM, shared, noisy", help="the machine, for the record")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    embedded = not args.engine.startswith(("http://", "https://"))
    if embedded and args.batches != [1]:
        parser.error("the embedded engine runs one generation at a time: use --batches 1")
    engine = make_engine(args.engine, model=args.model,
                         extra_body=None if embedded else {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0})

    async def run() -> tuple[list, list, int]:
        try:
            return await measure(engine, args)
        finally:
            await engine.aclose()

    steps, joins, suffix_tokens = asyncio.run(run())
    model = fit_cost_model(
        steps,
        joins,
        max_batch=args.max_batch or (1 if embedded else max(args.batches)),
        prefix_cache=args.prefix_cache or ("last" if embedded else "program"),
        probe_suffix_tokens=suffix_tokens,
        meta={
            "engine": engine.name,
            "machine": args.machine,
            "host": platform.node(),
            "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "steps": [list(s) for s in steps],
            "joins": [list(j) for j in joins],
        },
    )
    path = model.save(args.out)
    print(json.dumps({k: v for k, v in model.to_dict().items() if k != "meta"}))
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
