"""What the proxy's scheduler does for clients: the same GSM8K chat requests, arriving as a Poisson
process, sent with the official ``openai`` client to ``certaindex serve`` on the embedded engine,
once per ``--scheduler`` setting (each a fresh proxy process, one after another, same arrival times).

    .venv/bin/python benchmarks/proxy_scheduling.py --out benchmarks/results/proxy/proxy-scheduling.txt

Every request runs the early-exit chain of thought (``policy cot``). Latency is measured by the
client from its request's arrival time; throughput is programs (and generated tokens, from
``usage``) over first arrival .. last answer. llama.cpp's greedy output depends on its cache state,
so the same question can reason differently under another schedule. The headline is therefore
the tokens/s ratio (the engine's generated tokens per second); programs/s and latencies are printed
raw, with the mean tokens per program that show whether they compare the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

from certaindex.core.answers import answers_equal, extract_answer  # noqa: E402
from certaindex.core.datasets import load_dataset  # noqa: E402
from certaindex.serving.loadgen import ProgramRecord, Summary, poisson_arrivals, summarise  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from benchmarks.proxy_overhead import process  # noqa: E402


async def run_clients(url: str, problems, arrivals: list[float], options: dict) -> list[ProgramRecord]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=1800)
    t0 = time.monotonic()

    async def one(i: int) -> ProgramRecord:
        await asyncio.sleep(max(0.0, arrivals[i] - (time.monotonic() - t0)))
        problem = problems[i]
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": problem.question}],
            extra_body={"certaindex": options})
        end = time.monotonic() - t0
        answer = extract_answer(reply.choices[0].message.content or "")
        info = reply.model_extra.get("certaindex", {}) if reply.model_extra else {}
        return ProgramRecord(program_id=f"{i}:{problem.id}", arrival=arrivals[i], start=arrivals[i], end=end,
                             tokens=reply.usage.completion_tokens, answer=answer,
                             correct=answer is not None and answers_equal(answer, problem.answer),
                             stop_reason=str(info.get("stop_reason", "")))

    try:
        return await asyncio.gather(*(one(i) for i in range(len(problems))))
    finally:
        await client.close()


def line(name: str, s: Summary, base: Summary | None, slos: list[float]) -> str:
    token_ratio = f" ({s.tokens_per_s / base.tokens_per_s:.2f}x)" if base else ""
    slo = ", ".join(f"{s.slo[t]:.0%} within {t:g} s" for t in slos)
    p50, p90, p99 = (s.latency[q] for q in (50, 90, 99))
    return (f"  scheduler {name:<10} {s.tokens_per_s:.1f} tokens/s{token_ratio}; mean tokens {s.mean_tokens:.1f}, "
            f"{s.programs_per_s:.4f} programs/s, latency p50/p90/p99 "
            f"{p50:.1f}/{p90:.1f}/{p99:.1f} s, mean {s.mean_latency:.1f} s, {slo}")


def headline(summaries: dict[str, Summary]) -> list[str]:
    """The tokens/s ratio against ``off``, and why programs/s is not the headline."""
    base = summaries.get("off")
    if base is None:
        return []
    out = []
    for name, s in summaries.items():
        if name == "off":
            continue
        out.append(f"headline: scheduler {name} generated {s.tokens_per_s / base.tokens_per_s:.2f}x the tokens/s "
                   f"of scheduler off")
        out.append(f"  programs/s and latencies are not comparable here: mean tokens per program {base.mean_tokens:.1f} "
                   f"(off) against {s.mean_tokens:.1f} ({name}); llama.cpp's greedy output depends on its cache "
                   f"state, so the same questions reason differently under another schedule (identical work is "
                   f"compared in the simulator, benchmarks/README.md)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=16, help="requests (GSM8K test problems, in order)")
    parser.add_argument("--rate", type=float, default=1.0, help="Poisson arrival rate, requests/s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--schedulers", default="off,certaindex")
    parser.add_argument("--budget", type=int, default=384)
    parser.add_argument("--probe-interval", type=int, default=16)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--slo", type=float, action="append", default=None)
    parser.add_argument("--out")
    args = parser.parse_args()
    slos = args.slo or [20.0, 60.0]
    problems = load_dataset("gsm8k")[: args.limit]
    arrivals = poisson_arrivals(len(problems), args.rate, args.seed)
    options = {"policy": "cot", "budget": args.budget, "probe_interval": args.probe_interval, "k": args.k}
    lines = [
        "$ python benchmarks/proxy_scheduling.py " + shlex.join(sys.argv[1:]),
        f"machine: {platform.node() or 'vm'} {platform.machine()}, 2-core CPU VM (shared, noisy); "
        f"python {platform.python_version()}",
        f"{len(problems)} GSM8K requests, Poisson {args.rate:g}/s (seed {args.seed}), openai client -> "
        f"certaindex serve (embedded engine, capacity 1) with certaindex {options}",
    ]
    summaries: dict[str, Summary] = {}
    for name in args.schedulers.split(","):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "certaindex.cli", "serve", "--port", str(port), "--scheduler", name,
                 "--log-level", "warning", "--request-timeout", "3600"]
        with process(serve, f"{url}/health"):
            records = asyncio.run(run_clients(url, problems, arrivals, options))
        summaries[name] = summarise(name, records, slos)
        print(line(name, summaries[name], None, slos), flush=True)
    base = summaries.get("off")
    lines.append("schedulers ran one after another, each in a fresh proxy, on the same arrival times:")
    lines += [line(name, s, base if name != "off" else None, slos) for name, s in summaries.items()]
    lines += headline(summaries)
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
