"""Random and hostile requests through ``certaindex serve``: none may get a 5xx for its input.

Two processes on loopback, as a user runs them: ``certaindex replay-server`` on the shipped
Governor sample (``--speed 50``) and ``certaindex serve`` in front of it. This client sends
``--requests`` requests (bounded also by ``--max-seconds``), drawn with a fixed seed from:

- good requests (the served model, now and then another: 404): a recorded problem under every policy (default, cot, full, sc, off), streamed or
  not, with small budgets; and questions the replay server has no recording of (its 404);
- requests the programs cannot take: no question ("???", emoji, whitespace, system only), a
  question over the 100,000-character limit, ``stop``, ``n``, tools;
- hostile bodies: malformed JSON cut at a random byte, deep nesting, lone surrogates, huge
  integers, invalid UTF-8, non-objects, a body over the size limit, wrong types in every field
  (a good request with one field replaced by a random JSON value), unknown fields and options;
- other routes and methods: ``/v1/completions``, unknown paths, GET on the chat route.

A response counts as a server error when its status is 5xx, when an event stream carries an
error event of type ``server_error``, or when the connection breaks; ``/health``'s 503 is a report
on the upstream (the proxy's background read of its ``/v1/models`` failed), listed apart. The upstream's own 4xx (the
replay server knows only its recorded problems) are client errors, as they would be from vLLM.
Afterwards ``/health`` and a good request must still succeed. The results file lists every
status count and every server error with the request that caused it.

    .venv/bin/python benchmarks/fuzz_proxy.py --out benchmarks/results/fuzz/fuzz-proxy.txt
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.misbehaving_upstream import free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402

SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"
RUN = SAMPLE / "r1-distill-qwen-7b__math500__seed_42"
CHAT = "/v1/chat/completions"


def problems() -> list[str]:
    with gzip.open(RUN / "trajectories.jsonl.gz", "rt") as fh:
        return [json.loads(line)["problem"] for line in fh]


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value of any type, hostile values included."""
    kind = rng.choice(["null", "bool", "int", "bigint", "float", "str", "list", "dict"] if depth < 4
                      else ["null", "bool", "int", "float", "str"])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2, 7, 2**31, -2**63, 10**18])
    if kind == "bigint":
        return 10 ** rng.choice([20, 100, 400])
    if kind == "float":
        return rng.choice([0.0, -0.5, 0.5, 1.5, 2.5, 1e308, -1e-308, 3.14])
    if kind == "str":
        return rng.choice(["", " ", "x", "??", "😀", "\u0000", "a" * 300, "\u202e\u200b", "NaN", "1e9", "<think>"])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["role", "content", "type", "text", "policy", "k", "x"]): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
          "temperature", "top_p", "seed", "stop", "n", "certaindex", "top_k", "logprobs", "tools", "user"]
OPTIONS = ["policy", "budget", "probe_interval", "k", "probe_tokens", "answer_tokens", "samples",
           "threshold", "deadline_s", "priority", "nonsense"]


class Generator:
    """Draws one request at a time: (method, path, body bytes, headers, kind)."""

    def __init__(self, seed: int, questions: list[str], max_body_bytes: int, model: str) -> None:
        self.rng = random.Random(seed)
        self.model = model  # the served model (another name is refused with 404, as vLLM does)
        self.questions = questions
        self.max_body_bytes = max_body_bytes

    def good(self) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {"model": self.model if rng.random() < 0.9 else "gpt-4o", "messages": [{"role": "user", "content": rng.choice(self.questions)}],
                                "max_tokens": rng.choice([64, 128, 256, 512])}
        policy = rng.choice([None, "cot", "full", "sc", "off"])
        if policy is not None:
            body["certaindex"] = {"policy": policy}
        if rng.random() < 0.5:
            body["stream"] = True
            if rng.random() < 0.5:
                body["stream_options"] = {"include_usage": True}
        if rng.random() < 0.3:
            body["temperature"] = rng.choice([0, 0.6, 1.0])
        return body

    def draw(self) -> tuple[str, str, bytes, dict[str, str], str]:
        rng = self.rng
        kind = rng.choices(["good", "unrecorded", "no-question", "fallback", "mutated", "options", "malformed",
                            "deep", "surrogate", "bigint", "bytes", "shape", "oversize", "route"],
                           weights=[20, 5, 8, 6, 20, 10, 8, 4, 4, 3, 4, 6, 1, 6])[0]
        json_headers = {"content-type": "application/json"}
        body = self.good()
        if kind == "unrecorded":  # a fine question the replay server has no recording of: its 404
            body["messages"] = [{"role": "user", "content": rng.choice(["What is 6 * 7?", "Name a prime over 100."])}]
        elif kind == "no-question":
            body["messages"] = rng.choice([
                [{"role": "user", "content": rng.choice(["???", "😀😀", "   ", "\n\t", "...", "!!!?"])}],
                [{"role": "system", "content": "Be brief."}],
                [{"role": "user", "content": "a" * 100_001}],
                [{"role": "assistant", "content": "hello"}],
            ])
        elif kind == "fallback":
            extra = rng.choice([{"stop": ["\n\n"]}, {"stop": "x"}, {"n": 2}, {"logprobs": True},
                                {"tools": [{"type": "function", "function": {"name": "f"}}]},
                                {"response_format": {"type": "json_object"}}])
            body.update(extra)
        elif kind == "mutated":
            body[rng.choice(FIELDS)] = random_json(rng)
            if rng.random() < 0.5 and isinstance(body.get("messages"), list) and body["messages"]:
                body["messages"][0] = {"role": random_json(rng) if rng.random() < 0.5 else "user",
                                       "content": random_json(rng)}
        elif kind == "options":
            body["certaindex"] = {rng.choice(OPTIONS): random_json(rng) for _ in range(rng.randint(1, 3))}
        elif kind == "shape":
            raw = rng.choice([b"[]", b"null", b"42", b'"text"', b"{}", b'{"messages": []}', b'{"messages": null}',
                              b'{"messages": [null]}', b'{"messages": [{}]}', b'{"messages": [{"role": "user"}]}',
                              b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
                              b'{"messages": [{"role": "user", "content": [1, 2]}]}', b""])
            return "POST", CHAT, raw, json_headers, kind
        if kind in ("good", "unrecorded", "no-question", "fallback", "mutated", "options"):
            return "POST", CHAT, json.dumps(body).encode(), json_headers, kind
        encoded = json.dumps(body).encode()
        if kind == "malformed":
            return "POST", CHAT, encoded[:rng.randint(0, len(encoded) - 1)], json_headers, kind
        if kind == "deep":
            depth = rng.choice([200, 5_000, 100_000])
            opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
            return "POST", CHAT, b'{"messages": ' + opener * depth + b"1" + closer * depth + b"}", json_headers, kind
        if kind == "surrogate":
            escape = rng.choice([b"\\ud800", b"\\udfff", b"\\udbff\\u0041"])
            raw = b'{"model": "m", "messages": [{"role": "user", "content": "What is ' + escape + b' 2 + 2?"}]}'
            if rng.random() < 0.3:
                raw = b'{"model": "' + escape + b'", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}'
            return "POST", CHAT, raw, json_headers, kind
        if kind == "bigint":
            return "POST", CHAT, encoded[:-1] + b', "seed": 1' + b"0" * 5000 + b"}", json_headers, kind
        if kind == "bytes":
            return "POST", CHAT, bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))), json_headers, kind
        if kind == "oversize":
            return "POST", CHAT, b'{"messages": "' + b"a" * (self.max_body_bytes + 10) + b'"}', json_headers, kind
        method, path = rng.choice([("POST", "/v1/completions"), ("GET", "/v1/models"), ("GET", CHAT),
                                   ("POST", "/v1/nothing-here"), ("DELETE", "/v1/models"), ("GET", "/health")])
        payload = json.dumps({"model": "any", "prompt": rng.choice(["2+2=", random_json(rng)]), "max_tokens": 8})
        return method, path, payload.encode() if method == "POST" else b"", json_headers, "route"


def stream_error(text: str) -> dict[str, Any] | None:
    """The first error event of an event stream, if any."""
    for line in text.splitlines():
        if line.startswith("data: {") and '"error"' in line:
            try:
                event = json.loads(line[len("data: "):])
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("error"), dict):
                return event["error"]
    return None


async def send(client: httpx.AsyncClient, url: str, request: tuple[str, str, bytes, dict[str, str], str]
               ) -> tuple[str, str | None, str | None]:
    """(outcome label, server-error description or None, another error to list (an upstream's error
    event in a stream, /health reporting the upstream unreachable) or None)."""
    method, path, body, headers, _kind = request
    try:
        response = await client.request(method, f"{url}{path}", content=body or None, headers=headers)
    except httpx.HTTPError as exc:
        return "connection error", f"{type(exc).__name__}: {exc}", None
    label = str(response.status_code)
    if path == "/health" and response.status_code == 503:  # a report on the upstream, not a failed answer
        return "503 /health degraded", None, response.text[:300]
    if response.status_code >= 500:
        return label, response.text[:300], None
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        error = stream_error(response.text)
        if error is not None:
            label = f"200 stream error {error.get('type')}"
            if error.get("type") == "server_error":
                return label, json.dumps(error)[:300], None
            return label, None, json.dumps(error)[:300]
    return label, None, None


async def fuzz(url: str, generator: Generator, count: int, max_seconds: float, concurrency: int) -> dict[str, Any]:
    statuses: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    failures: list[str] = []
    stream_errors: list[str] = []  # upstream errors in streams, /health degraded: listed, not server errors
    sent = 0
    deadline = time.monotonic() + max_seconds
    started = time.monotonic()

    async def worker() -> None:
        nonlocal sent
        async with httpx.AsyncClient(timeout=120) as client:  # keep-alive: errors must not break it
            while sent < count and time.monotonic() < deadline:
                sent += 1
                request = generator.draw()
                kinds[request[4]] += 1
                label, failure, other = await send(client, url, request)
                statuses[label] += 1
                what = f"{request[4]} {request[0]} {request[1]} body={request[2][:160]!r}: {label}: "
                if failure is not None:
                    failures.append(what + failure)
                if other is not None:
                    stream_errors.append(what + other)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"sent": sent, "seconds": time.monotonic() - started, "statuses": statuses, "kinds": kinds,
            "failures": failures, "stream_errors": stream_errors}


def healthy_after(url: str, question: str, model: str) -> tuple[bool, str]:
    with httpx.Client(timeout=120) as client:
        health = client.get(f"{url}/health")
        good = client.post(f"{url}{CHAT}", json={"model": model, "messages": [{"role": "user", "content": question}],
                                                 "max_tokens": 256})
    ok = health.status_code == 200 and good.status_code == 200 and bool(good.json()["choices"])
    return ok, f"/health {health.status_code}, a good request {good.status_code}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop sending after this long")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed", type=float, default=50.0, help="replay-server --speed")
    parser.add_argument("--out", type=Path, help="write the results here too")
    args = parser.parse_args()
    max_body_bytes = 8 * 1024 * 1024
    replay_port, proxy_port = free_port(), free_port()
    replay_url, proxy_url = f"http://127.0.0.1:{replay_port}", f"http://127.0.0.1:{proxy_port}"
    python = sys.executable
    questions = problems()
    with running_server([python, "-m", "certaindex.cli", "replay-server", str(SAMPLE), "--speed", str(args.speed),
                         "--port", str(replay_port)], f"{replay_url}/health", "replay-server", cwd=ROOT), \
            running_server([python, "-m", "certaindex.cli", "serve", "--upstream", replay_url, "--port",
                            str(proxy_port), "--log-level", "warning"], f"{proxy_url}/health", "serve", cwd=ROOT):
        model = httpx.get(f"{replay_url}/v1/models", timeout=30).json()["data"][0]["id"]
        result = asyncio.run(fuzz(proxy_url, Generator(args.seed, questions, max_body_bytes, model), args.requests,
                                  args.max_seconds, args.concurrency))
        healthy, health_line = healthy_after(proxy_url, questions[0], model)
    lines = [
        "# certaindex serve under random and hostile requests (benchmarks/fuzz_proxy.py)",
        f"command: python benchmarks/fuzz_proxy.py --requests {args.requests} --max-seconds {args.max_seconds:g} "
        f"--concurrency {args.concurrency} --seed {args.seed} --speed {args.speed:g}",
        f"setup: serve --upstream <replay-server {SAMPLE.relative_to(ROOT)} --speed {args.speed:g}>, defaults otherwise",
        f"machine: {os.cpu_count()} CPUs ({platform.machine()}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}",
        f"sent {result['sent']} requests in {result['seconds']:.1f} s",
        "request kinds: " + ", ".join(f"{k} {v}" for k, v in sorted(result["kinds"].items())),
        "responses: " + ", ".join(f"{k}: {v}" for k, v in sorted(result["statuses"].items())),
        f"server errors (5xx, server_error events, broken connections): {len(result['failures'])}",
        *[f"  {line}" for line in result["failures"]],
        f"streams that ended with an upstream's error event, /health reporting the upstream unreachable "
        f"(not server errors; the first 5 listed): "
        f"{len(result['stream_errors'])}",
        *[f"  {line}" for line in result["stream_errors"][:5]],
        f"after the run: {health_line} -> {'healthy' if healthy else 'NOT HEALTHY'}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0 if healthy and not result["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
