"""Requests/s through ``certaindex serve`` with 1 worker process against ``--workers 2``, side by side.

Processes on loopback: one fake upstream (tests/misbehaving_upstream.py, no delay per token: as fast
as it can stream), a proxy with one worker and a proxy with ``--workers N`` (both started, measured
in alternating rounds so machine noise hits both alike), and this client: ``--clients`` concurrent
early-exit chat requests (policy cot: a reasoning stream and probes per request) for ``--seconds``
per round. Each round also records the CPU seconds each side used (proxy processes, upstream,
client), so a ratio held down by the machine's cores shows where the CPU went.

    .venv/bin/python benchmarks/proxy_workers.py --out benchmarks/results/proxy/proxy-workers.txt
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.misbehaving_upstream import free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402


def cpu_seconds(processes: list[psutil.Process], children: bool = True) -> float:
    """User + system CPU of the processes and (``children``) their children: a proxy's workers."""
    total = 0.0
    for proc in processes:
        for p in [proc, *(proc.children(recursive=True) if children else [])]:
            try:
                times = p.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    return total


async def drive(url: str, clients: int, seconds: float, body: dict) -> tuple[int, int]:
    """``clients`` loops sending chat requests for ``seconds``: (answered 200, other outcomes)."""
    ok = failed = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        stop_at = time.monotonic() + seconds

        async def loop() -> None:
            nonlocal ok, failed
            while time.monotonic() < stop_at:
                try:
                    reply = await client.post(f"{url}/v1/chat/completions", json=body)
                    if reply.status_code == 200:
                        ok += 1
                    else:
                        failed += 1
                except httpx.HTTPError:
                    failed += 1

        await asyncio.gather(*(loop() for _ in range(clients)))
    return ok, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="workers of the second proxy (default 2)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent client requests (default 64)")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds per measured round (default 15)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per proxy, alternating (default 4)")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--probe-interval", type=int, default=16)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    body = {"model": "fake-reasoner", "messages": [{"role": "user", "content": "What is 6 * 7?"}]}
    lines = [
        f"$ {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs, noisy); "
        f"python {platform.python_version()}",
        f"upstream: fake (tests/misbehaving_upstream.py, no token delay), one process; requests: early-exit chat "
        f"(policy cot, budget {args.budget}, probe interval {args.probe_interval}, k {args.k}), {args.clients} "
        f"concurrent clients, {args.seconds:g} s a round, {args.rounds} rounds each, alternating",
    ]
    load_start = os.getloadavg()
    with ExitStack() as stack:
        up_port = free_port()
        upstream_url = f"http://127.0.0.1:{up_port}"
        upstream = stack.enter_context(running_server(
            [sys.executable, "-m", "tests.misbehaving_upstream", "--port", str(up_port)], f"{upstream_url}/v1/models",
            "fake upstream", cwd=ROOT))
        proxies: dict[int, tuple[str, psutil.Process]] = {}
        for workers in (1, args.workers):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = stack.enter_context(running_server(
                [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"{upstream_url}/v1",
                 "--port", str(port), "--workers", str(workers), "--policy", "cot", "--profile", "none",
                 "--budget", str(args.budget), "--probe-interval", str(args.probe_interval), "--k", str(args.k),
                 "--max-concurrency", str(args.clients), "--max-queue", str(4 * args.clients),
                 "--log-level", "warning"], f"{url}/health", f"serve --workers {workers}", cwd=ROOT))
            proxies[workers] = (url, psutil.Process(proc.pid))
        me = psutil.Process()
        asyncio.run(drive(proxies[1][0], 8, 2.0, body))  # warm both: connections, imports, caches
        asyncio.run(drive(proxies[args.workers][0], 8, 2.0, body))
        rates: dict[int, list[float]] = {w: [] for w in proxies}
        cpu: dict[int, list[tuple[float, float, float]]] = {w: [] for w in proxies}
        failures: dict[int, int] = {w: 0 for w in proxies}
        for _ in range(args.rounds):
            for workers, (url, proc) in proxies.items():
                before = (cpu_seconds([proc]), cpu_seconds([psutil.Process(upstream.pid)]),
                          cpu_seconds([me], children=False))
                started = time.monotonic()
                ok, failed = asyncio.run(drive(url, args.clients, args.seconds, body))
                wall = time.monotonic() - started
                after = (cpu_seconds([proc]), cpu_seconds([psutil.Process(upstream.pid)]),
                         cpu_seconds([me], children=False))
                rates[workers].append(ok / wall)
                failures[workers] += failed
                cpu[workers].append(tuple((a - b) / wall for a, b in zip(after, before)))
                print(f"workers {workers}: {ok / wall:.1f} requests/s ({failed} failed)", flush=True)
    lines.append("requests/s per round (answered 200 / wall seconds):")
    for workers in rates:
        lines.append(f"  workers {workers}: " + ", ".join(f"{r:.1f}" for r in rates[workers])
                     + f"  -> median {statistics.median(rates[workers]):.1f}, failed {failures[workers]}")
    lines.append("CPU cores busy while serving (median over rounds; CPU seconds / wall seconds):")
    for workers in rates:
        proxy, up, client = (statistics.median(c[i] for c in cpu[workers]) for i in range(3))
        per_request = proxy / statistics.median(rates[workers]) * 1e3
        lines.append(f"  workers {workers}: proxy {proxy:.2f}, fake upstream {up:.2f}, client {client:.2f}; "
                     f"proxy CPU {per_request:.2f} ms per chat request")
    lines.append("load average (1, 5, 15 min) at the start: {:.2f}, {:.2f}, {:.2f}; at the end: {:.2f}, {:.2f}, {:.2f} "
                 "(other jobs on the machine)".format(*load_start, *os.getloadavg()))
    ratios = [two / one for one, two in zip(rates[1], rates[args.workers])]
    lines.append(f"ratio workers {args.workers} / 1, round by round: " + ", ".join(f"{r:.2f}" for r in ratios)
                 + f"; median {statistics.median(ratios):.2f}x")
    report = "\n".join(lines)
    print(report)
    if args.out:
        Path(args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
