"""How long ``certaindex serve`` takes to answer when its upstream hangs: the bound is
``--request-timeout`` + 1 s, every time.

``serve`` runs as its own process in front of a hung upstream (``tests/misbehaving_upstream.py``'s
HungUpstream: a real socket that accepts every connection, reads the request and never answers).
Each try sends one request of a rotating shape (chat under the default policy, streamed or not;
policy cot and off; ``/v1/completions``; ``GET /v1/models``) on a fresh connection and records how
long the answer took, its status, and the error code it carried. The upstream's connection count
shows whether retries stack up. A second series measures the upstream header timeout
(``--upstream-headers-timeout``) under a long ``--request-timeout``.

    .venv/bin/python benchmarks/hung_upstream.py --out benchmarks/results/fuzz/hung-upstream.txt
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.misbehaving_upstream import HungUpstream, free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
SHAPES: list[tuple[str, str, str, dict | None]] = [
    ("chat, default policy", "POST", "/v1/chat/completions", {"messages": QUESTION}),
    ("chat, default policy, stream", "POST", "/v1/chat/completions", {"messages": QUESTION, "stream": True}),
    ("chat, policy cot", "POST", "/v1/chat/completions", {"messages": QUESTION, "certaindex": {"policy": "cot"}}),
    ("chat, policy cot, stream", "POST", "/v1/chat/completions",
     {"messages": QUESTION, "certaindex": {"policy": "cot"}, "stream": True}),
    ("chat, policy off", "POST", "/v1/chat/completions", {"messages": QUESTION, "certaindex": {"policy": "off"}}),
    ("completions", "POST", "/v1/completions", {"model": "m", "prompt": "2+2=", "max_tokens": 4}),
    ("models", "GET", "/v1/models", None),
]


def error_code(response: httpx.Response) -> str:
    """The error code of a JSON error or of an event stream's error event."""
    try:
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            events = [line[6:] for line in response.text.splitlines() if line.startswith("data: {")]
            return str(json.loads(events[-1]).get("error", {}).get("code"))
        return str(response.json().get("error", {}).get("code"))
    except (ValueError, IndexError, AttributeError):
        return "?"


def series(tries: int, serve_args: list[str], bound_s: float, shapes: list[tuple[str, str, str, dict | None]]
           ) -> tuple[list[str], float, int]:
    """Run ``tries`` requests against a fresh serve + hung upstream; (lines, worst seconds, upstream connections)."""
    lines: list[str] = []
    worst = 0.0
    with HungUpstream() as hung:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        args = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", hung.url, "--port", str(port),
                "--log-level", "warning", *serve_args]
        with running_server(args, f"{url}/metrics", "serve", cwd=ROOT):
            for i in range(tries):
                name, method, path, body = shapes[i % len(shapes)]
                started = time.monotonic()
                with httpx.Client(timeout=bound_s * 10) as client:
                    response = client.request(method, f"{url}{path}", json=body)
                elapsed = time.monotonic() - started
                worst = max(worst, elapsed)
                lines.append(f"  try {i + 1:2d} {name:32s} {response.status_code} {error_code(response):17s} "
                             f"{elapsed:6.2f} s")
        connections = hung.connections
    return lines, worst, connections


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=21)
    parser.add_argument("--request-timeout", type=float, default=3.0)
    parser.add_argument("--headers-timeout", type=float, default=2.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    bound = args.request_timeout + 1.0
    first, worst, connections = series(args.tries, ["--request-timeout", f"{args.request_timeout:g}"], bound, SHAPES)
    # Streamed requests and the engine's setup wait on headers; a non-streamed passthrough's headers
    # come with its whole answer, so --upstream-timeout bounds it instead (not measured here).
    header_shapes = [SHAPES[1], SHAPES[2], SHAPES[3]]
    header_tries = 6
    second, worst_headers, connections_headers = series(
        header_tries, ["--request-timeout", "600", "--upstream-headers-timeout", f"{args.headers_timeout:g}"],
        600.0, header_shapes)
    ok = worst <= bound
    lines = [
        "# certaindex serve in front of an upstream that hangs (benchmarks/hung_upstream.py)",
        f"command: python benchmarks/hung_upstream.py --tries {args.tries} --request-timeout {args.request_timeout:g} "
        f"--headers-timeout {args.headers_timeout:g}",
        "upstream: tests/misbehaving_upstream.py HungUpstream (accepts, reads, never answers); a fresh client "
        "connection per try",
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        "",
        f"serve --request-timeout {args.request_timeout:g}: {args.tries} tries, worst answer {worst:.2f} s, "
        f"bound {bound:g} s -> {'within' if ok else 'OVER'}; upstream connections opened: {connections}",
        *first,
        "",
        f"serve --request-timeout 600 --upstream-headers-timeout {args.headers_timeout:g}: {header_tries} tries "
        f"(streamed and setup waits only), worst answer {worst_headers:.2f} s; upstream connections opened: "
        f"{connections_headers}",
        *second,
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
