"""Would a second llama.cpp context for probes help the embedded engine? Measured, not assumed.

The embedded engine has one llama.cpp context, so its chain of thought reasons in chunks and probes
between them (sequential). The alternative: a second context (the same GGUF loaded twice) that
answers probes while the first streams the reasoning, i.e. the side-probe design of the HTTP
engines, in one process. Both run the same early-exit program (``solve_cot``; ``k`` so large that
probes never stop it, so both do the same work), interleaved repetition by repetition:

* ``one context``: the embedded engine as shipped (chunks, probes between);
* ``two contexts, T+T threads``: main stream on context A, probes on context B, each with the given
  llama.cpp thread count.

    .venv/bin/python benchmarks/embedded_side_context.py --out benchmarks/results/probe-latency/embedded-side-context.txt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import AsyncIterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.engines.base import Completion, Engine, GenerationRequest, StreamDelta  # noqa: E402
from certaindex.engines.embedded import EmbeddedEngine  # noqa: E402
from certaindex.programs.cot import CoTConfig, solve_cot  # noqa: E402

QUESTION = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May?")


class TwoContexts(Engine):
    """Reasoning streams on ``main``; probes (and every other request) go to ``side``. Benchmark only."""

    concurrent_streams = True

    def __init__(self, main: EmbeddedEngine, side: EmbeddedEngine) -> None:
        self.main, self.side = main, side
        self.name = f"two-contexts:{main.name}"

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.main.render_chat(messages)

    async def generate(self, request: GenerationRequest) -> Completion:
        return await self.side.generate(request)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        async for delta in self.main.stream(request):
            yield delta


async def run(engine: Engine, config: CoTConfig, main_stream: bool) -> tuple[float, int, int]:
    start = time.perf_counter()
    result = await solve_cot(engine, QUESTION, config, main_stream=main_stream)
    return time.perf_counter() - start, result.reasoning_tokens + result.overrun_tokens, len(result.probes)


async def main_async(args: argparse.Namespace) -> str:
    config = CoTConfig(budget=args.budget, probe_interval=args.interval, k=1000, probe_tokens=args.probe_tokens)
    cores = os.cpu_count() or 1
    one = EmbeddedEngine(n_threads=cores)
    setups: dict[str, tuple[Engine, bool]] = {"one context (shipped: chunks, probes between)": (one, False)}
    for main_threads, side_threads in ((cores, cores), (max(1, cores - 1), 1)):
        pair = TwoContexts(EmbeddedEngine(n_threads=main_threads), EmbeddedEngine(n_threads=side_threads))
        setups[f"two contexts, {main_threads}+{side_threads} threads (side probes)"] = (pair, True)
    times: dict[str, list[float]] = {name: [] for name in setups}
    work: dict[str, tuple[int, int]] = {}
    for rep in range(args.reps + 1):  # the first round warms up and is not counted
        for name, (engine, side) in setups.items():
            wall, tokens, probes = await run(engine, config, side)
            if rep:
                times[name].append(wall)
                work[name] = (tokens, probes)
    base = statistics.median(times[next(iter(setups))])
    lines = [f"# benchmarks/embedded_side_context.py {' '.join(sys.argv[1:])}",
             f"# {platform.node()} {cores} cores (shared VM), SmolLM2-135M-Instruct Q4_1; budget {args.budget}, "
             f"probe interval {args.interval}, {args.probe_tokens}-token probes, k=1000 (never stops); "
             f"medians of {args.reps} interleaved repetitions after one warm-up", "",
             f"{'setup':<52} {'wall vs one context':>20} {'reasoning tokens':>17} {'probes':>7}"]
    for name in setups:
        tokens, probes = work[name]
        lines.append(f"{name:<52} {statistics.median(times[name]) / base:>19.3f}x {tokens:>17} {probes:>7}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--probe-tokens", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = asyncio.run(main_async(args))
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
