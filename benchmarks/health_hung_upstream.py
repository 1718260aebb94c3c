"""How long `/health` takes when the upstream accepts connections and never answers, and when it
answers: `certaindex serve` as a user starts it (a subprocess, no --model), N sequential GETs.

    python benchmarks/health_hung_upstream.py [--requests 50] [--out benchmarks/results/health/health-hung-upstream.txt]

The hung upstream is a listening socket that never accepts; the answering one is a minimal HTTP
server with `GET /v1/models`. `/health` answers from the proxy's background read of the upstream
(server/upstream_watch.py), so its latency should not depend on the upstream.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        body = json.dumps({"object": "list", "data": [{"id": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def measure(upstream: str, requests: int) -> dict[str, float]:
    """Start `serve` in front of ``upstream``; time its readiness and ``requests`` GETs of /health."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "certaindex.cli", "serve", "--upstream", upstream,
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        while True:
            try:
                httpx.get(f"{url}/health", timeout=30)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.perf_counter() - started > 120:
                    raise RuntimeError("serve did not start")
                time.sleep(0.1)
        ready_s = time.perf_counter() - started
        seconds, statuses = [], set()
        with httpx.Client(timeout=30) as client:
            for _ in range(requests):
                t0 = time.perf_counter()
                statuses.add(client.get(f"{url}/health").status_code)
                seconds.append(time.perf_counter() - t0)
        return {"ready_s": ready_s, "median_ms": 1000 * statistics.median(seconds),
                "max_ms": 1000 * max(seconds), "statuses": sorted(statuses)}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/health/health-hung-upstream.txt"))
    args = parser.parse_args()
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    answering = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=answering.serve_forever, daemon=True).start()
    rows = {"hung (accepts, never answers)": measure(f"http://127.0.0.1:{hung.getsockname()[1]}/v1", args.requests),
            "answering": measure(f"http://127.0.0.1:{answering.server_address[1]}/v1", args.requests)}
    answering.shutdown()
    hung.close()
    lines = [f"# python benchmarks/health_hung_upstream.py --requests {args.requests}",
             f"# machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs (shared), Python {platform.python_version()}",
             f"{'upstream':32} {'serve ready s':>13} {'/health median ms':>18} {'max ms':>8}  statuses"]
    for name, r in rows.items():
        lines.append(f"{name:32} {r['ready_s']:13.2f} {r['median_ms']:18.1f} {r['max_ms']:8.1f}  {r['statuses']}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
