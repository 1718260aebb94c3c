"""What the proxy itself costs, measured against calling the upstream directly in the same run.

Three processes on loopback, as in a deployment: an upstream, ``certaindex serve`` in front of it,
and this client. Measurements, interleaved so machine noise hits both sides alike:

1. per request: one chat request passed through (policy ``off``) against the same request sent to
   the upstream directly;
2. per probe step: the same early-exit chain of thought run by ``solve_cot`` in this process
   straight against the upstream, against the proxy running it (``policy cot``), once with the
   proxy's scheduler on (the default) and once against a second proxy with ``--scheduler off``;
   each difference is divided by the upstream requests the program made (chunks and probes);
3. load: ``--streams`` streaming requests at once through the proxy: answered, errors, peak in
   flight, the proxy's memory before and after.

The upstream is either the fake upstream of the tests (instant answers: isolates the proxy's own
cost) or a real engine (``--upstream URL``, e.g. llama-cpp-python's server with the embedded model).

    .venv/bin/python benchmarks/proxy_overhead.py --out benchmarks/results/proxy/proxy-overhead.txt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certaindex.engines.http import HTTPEngine  # noqa: E402
from certaindex.engines.pool import ShardedClient  # noqa: E402
from certaindex.programs.cot import CoTConfig, solve_cot  # noqa: E402
from tests.misbehaving_upstream import free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402

QUESTION = "What is 6 * 7?"
MESSAGES = [{"role": "user", "content": QUESTION}]


def process(args: list[str], ready_url: str):
    """The server command running, answering at ``ready_url`` (output kept in a temporary log)."""
    return running_server(args, ready_url, " ".join(args[:4]), cwd=ROOT)


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[int(0.9 * (len(ordered) - 1))]
    return f"median {statistics.median(ordered) * 1e3:7.2f} ms, p90 {p90 * 1e3:7.2f} ms"


async def per_request(upstream: str, proxy: str, rounds: int) -> list[str]:
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 8, "temperature": 0,
            "certaindex": {"policy": "off"}}
    direct_body = {k: v for k, v in body.items() if k != "certaindex"}
    direct, proxied = [], []
    async with httpx.AsyncClient(timeout=120) as client:
        for i in range(rounds + 5):
            for target, payload, sink in ((upstream, direct_body, direct), (proxy, body, proxied)):
                started = time.perf_counter()
                response = await client.post(f"{target}/v1/chat/completions", json=payload)
                response.raise_for_status()
                if i >= 5:  # the first rounds warm connections and caches
                    sink.append(time.perf_counter() - started)
    added = [p - d for p, d in zip(proxied, direct)]
    return [
        f"passthrough, {rounds} requests each, interleaved:",
        f"  direct to upstream   {summary(direct)}",
        f"  through the proxy    {summary(proxied)}",
        f"  added per request    median {statistics.median(added) * 1e3:.2f} ms",
    ]


async def per_probe_step(upstream: str, proxies: dict[str, str], rounds: int, config: CoTConfig,
                         extra: dict) -> list[str]:
    """Direct, then each proxy (e.g. with and without its scheduler), interleaved round by round."""
    direct, steps = [], []
    proxied: dict[str, list[float]] = {name: [] for name in proxies}
    mismatches = 0
    body = {"model": "m", "messages": MESSAGES, "temperature": 0, **extra,
            "certaindex": {"policy": "cot", "budget": config.budget, "probe_interval": config.probe_interval,
                           "k": config.k, "probe_tokens": config.probe_tokens}}
    async with HTTPEngine(upstream, extra_body=extra) as engine, httpx.AsyncClient(timeout=600) as client:
        for i in range(rounds + 2):
            started = time.perf_counter()
            result = await solve_cot(engine, QUESTION, config, messages=MESSAGES)
            direct_s = time.perf_counter() - started
            times, infos = {}, []
            for name, proxy in proxies.items():
                started = time.perf_counter()
                response = await client.post(f"{proxy}/v1/chat/completions", json=body)
                response.raise_for_status()
                times[name] = time.perf_counter() - started
                infos.append(response.json()["certaindex"])
            if any(info["stop_reason"] != result.stop_reason for info in infos):
                mismatches += 1  # the runs parted ways (engine nondeterminism); reported below
            if i >= 2:
                direct.append(direct_s)
                for name in proxies:
                    proxied[name].append(times[name])
                steps.append(infos[0]["upstream_requests"])
    lines = [
        f"early-exit chain of thought, {rounds} runs each, interleaved "
        f"(budget {config.budget}, probe interval {config.probe_interval}, k {config.k}):",
        f"  solve_cot direct     {summary(direct)}",
    ]
    for name, times in proxied.items():
        lines.append(f"  proxy, {name:<14} {summary(times)}")
    lines.append(f"  upstream requests per run (chunks + probes): median {statistics.median(steps):.0f}")
    for name, times in proxied.items():
        per_step = [(p - d) / s for p, d, s in zip(times, direct, steps)]
        lines.append(f"  added per probe step, {name}: median {statistics.median(per_step) * 1e3:.3f} ms")
    lines.append(f"  runs where a proxied run stopped for another reason than the direct one: {mismatches}")
    return lines


async def load(proxy: str, proxy_proc: psutil.Process, streams: int) -> list[str]:
    body = {"model": "m", "messages": MESSAGES, "stream": True,
            "certaindex": {"policy": "cot", "budget": 64, "probe_interval": 8, "k": 2, "probe_tokens": 8}}
    peak = {"in_flight": 0.0}
    done = asyncio.Event()

    async def watch() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while not done.is_set():
                try:
                    text = (await client.get(f"{proxy}/metrics")).text
                except httpx.HTTPError:  # a busy proxy may answer late; the next look will do
                    continue
                for line in text.splitlines():
                    if line.startswith("certaindex_requests_in_flight "):
                        peak["in_flight"] = max(peak["in_flight"], float(line.split()[1]))
                await asyncio.sleep(0.2)

    failures: dict[str, int] = {}

    async def one(client: httpx.AsyncClient) -> bool:
        try:
            async with client.stream("POST", f"{proxy}/v1/chat/completions", json=body) as response:
                text = "".join([line async for line in response.aiter_lines()])
            if response.status_code == 200 and "[DONE]" in text:
                return True
            why = f"HTTP {response.status_code}: {text[-160:]}"
        except httpx.HTTPError as exc:
            why = f"client {type(exc).__name__}"
        failures[why] = failures.get(why, 0) + 1
        return False

    rss_before = proxy_proc.memory_info().rss
    watcher = asyncio.create_task(watch())
    started = time.perf_counter()
    # Several small client pools: one big httpx pool costs O(connections) per request (see
    # certaindex/engines/pool.py) and would make this load generator the bottleneck.
    pool = ShardedClient(streams, timeout=600)
    try:
        results = await asyncio.gather(*(one(pool.pick()) for _ in range(streams)))
    finally:
        await pool.aclose()
    elapsed = time.perf_counter() - started
    done.set()
    await watcher
    rss_peak_after = proxy_proc.memory_info().rss
    await asyncio.sleep(2)
    rss_settled = proxy_proc.memory_info().rss
    ok = sum(results)
    return [
        f"load: {streams} streaming early-exit requests at once (proxy --max-concurrency {streams}):",
        f"  answered {ok}, errors {streams - ok}, peak in flight {peak['in_flight']:.0f}, "
        f"wall {elapsed:.1f} s ({ok / elapsed:.0f} programs/s)",
        f"  proxy RSS before {rss_before / 2**20:.0f} MiB, right after {rss_peak_after / 2**20:.0f} MiB, "
        f"2 s later {rss_settled / 2**20:.0f} MiB",
    ] + [f"  failed x{count}: {why}" for why, count in sorted(failures.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", help="a real engine's URL (default: the fake upstream, instant answers)")
    parser.add_argument("--extra-body", default="{}", help="JSON sent with every upstream request")
    parser.add_argument("--requests", type=int, default=200, help="passthrough requests per side")
    parser.add_argument("--programs", type=int, default=30, help="chain-of-thought runs per side")
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams in the load test (0: skip)")
    parser.add_argument("--waves", type=int, default=2, help="load test waves, one after another")
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--probe-interval", type=int, default=32)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    import json

    extra = json.loads(args.extra_body)
    config = CoTConfig(budget=args.budget, probe_interval=args.probe_interval, k=args.k, probe_tokens=16,
                       system_prompt=None)
    lines = [
        f"$ {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared, noisy); "
        f"python {platform.python_version()}",
    ]

    @contextmanager
    def fake_upstream() -> Iterator[str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with process([sys.executable, "-m", "tests.misbehaving_upstream", "--port", str(port),
                      "--token-delay", "0.002"], f"{url}/v1/models"):
            yield url

    @contextmanager
    def given_upstream() -> Iterator[str]:
        yield args.upstream.rstrip("/").removesuffix("/v1")

    with (given_upstream() if args.upstream else fake_upstream()) as upstream:
        lines.append(f"upstream: {args.upstream or 'fake upstream (tests/misbehaving_upstream.py, 2 ms per streamed token)'}")
        port, plain_port = free_port(), free_port()
        proxy, plain = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{plain_port}"

        def serve(port_: int, *flags: str) -> list[str]:
            return [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"{upstream}/v1",
                    "--port", str(port_), "--max-concurrency", str(max(64, args.streams)),
                    "--max-queue", str(max(256, args.streams)), "--log-level", "warning",
                    "--extra-body", args.extra_body, *flags]

        # The proxy as shipped (scheduler on), and one with --scheduler off: the scheduler's share.
        with process(serve(port), f"{proxy}/health") as proc, process(serve(plain_port, "--scheduler", "off"),
                                                                       f"{plain}/health"):
            lines += asyncio.run(per_request(upstream, proxy, args.requests))
            lines += asyncio.run(per_probe_step(upstream, {"scheduler on": proxy, "scheduler off": plain},
                                                args.programs, config, extra))
            for wave in range(args.waves if args.streams else 0):  # a leak would grow wave after wave
                lines.append(f"wave {wave + 1} of {args.waves}")
                lines += asyncio.run(load(proxy, psutil.Process(proc.pid), args.streams))
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
