"""Does the reasoning wait for probes? Wall time and time to first reasoning token through the proxy,
against streaming the same tokens from the upstream directly, all in one run.

Processes on loopback, as in a deployment: a paced upstream, two ``certaindex serve`` proxies in
front of it (side probes, the default; and ``--no-side-probes``, the chunked design it replaces),
and this client. Paths, interleaved repetition by repetition so machine noise hits all alike:

* ``direct``: one streaming completions request to the upstream (the same prompt, same max_tokens);
* ``full``: a streaming chat request, ``policy full`` (no early exit);
* ``cot``: ``policy cot``, probes every ``--interval`` tokens that never agree (so the reasoning runs
  to its end, and every probe's cost shows);
* ``full/chunked``, ``cot/chunked``: the same through the ``--no-side-probes`` proxy.

The upstream is the paced fake of the tests (``tests/misbehaving_upstream.py``: ``R`` seconds before
each request's first token, then ``T`` per token; the model writes ``--tokens`` reasoning tokens and
stops; probes answer a different number each time), once per ``--settings R,T`` pair; or with
``--llama`` also llama-cpp-python's server with the embedded model (one request at a time; the
model writes what it writes, so tokens are reported beside the times, and ``k`` is set so probes
never stop it).

    .venv/bin/python benchmarks/probe_latency.py --out benchmarks/results/probe-latency/probe-latency.txt --llama
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from certaindex.engines.chat_template import ChatTemplate  # noqa: E402
from tests.misbehaving_upstream import free_port  # noqa: E402
from tests.processes import running_server  # noqa: E402

MESSAGES = [{"role": "user", "content": "What is 6 * 7?"}]
LLAMA_MESSAGES = [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half "
                   "as many clips in May. How many clips did Natalia sell altogether in April and May? Think step by step."}]


def process(args: list[str], ready_url: str):
    return running_server(args, ready_url, " ".join(args[:4]), cwd=ROOT)


def direct(client: httpx.Client, upstream: str, model: str, prompt: str, max_tokens: int,
           extra: dict[str, Any]) -> dict[str, Any]:
    """Stream the completion straight from the upstream: first token and last event times."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "seed": 0, **extra}
    start = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", f"{upstream}/v1/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    tokens += 1
                    first = first or time.perf_counter()
    end = time.perf_counter()
    return {"wall": end - start, "ttft": (first or end) - start, "tokens": tokens}


def through_proxy(client: httpx.Client, proxy: str, policy: str, options: dict[str, Any]) -> dict[str, Any]:
    """A streaming chat request: time to the first reasoning token and to [DONE], and the usage."""
    body = {"model": "m", "messages": options.pop("messages"), "stream": True, "temperature": 0.0,
            "stream_options": {"include_usage": True}, "certaindex": {"policy": policy, **options}}
    start = time.perf_counter()
    first, usage, info = None, {}, {}
    with client.stream("POST", f"{proxy}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(f"the proxy answered an error: {event['error']}")
            for choice in event.get("choices") or []:
                if first is None and choice.get("delta", {}).get("reasoning_content"):
                    first = time.perf_counter()
            usage = event.get("usage") or usage
            info = event.get("certaindex") or info
    end = time.perf_counter()
    details = usage.get("certaindex", {})
    return {"wall": end - start, "ttft": (first or end) - start, "tokens": details.get("reasoning_tokens", 0)
            + details.get("overrun_tokens", 0), "probes": info.get("probes"), "overrun": details.get("overrun_tokens"),
            "requests": info.get("upstream_requests"), "stop": info.get("stop_reason")}


def table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    base_wall = statistics.median(r["wall"] for r in results["direct"])
    base_ttft = statistics.median(r["ttft"] for r in results["direct"])
    lines = [f"{'path':<14} {'wall vs direct':>14} {'TTFT - direct':>14} {'per-rep range':>15} {'tokens':>7} "
             f"{'probes':>6} {'overrun':>7} {'requests':>8}  stop"]
    for path, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        ttft = statistics.median(r["ttft"] for r in runs)
        # the spread: each repetition's TTFT against the direct TTFT of the same repetition
        paired = [(r["ttft"] - d["ttft"]) * 1e3 for r, d in zip(runs, results["direct"])]
        spread = f"{min(paired):+.1f}..{max(paired):+.1f}"
        last = runs[-1]
        lines.append(
            f"{path:<14} {wall / base_wall:>13.3f}x {(ttft - base_ttft) * 1e3:>+11.1f} ms {spread:>15} {last['tokens']:>7} "
            f"{str(last.get('probes', '-')):>6} {str(last.get('overrun', '-')):>7} {str(last.get('requests', 1)):>8}"
            f"  {last.get('stop', '-')}"
        )
    walls = ", ".join(f"{p} {statistics.median(r['wall'] for r in runs):.2f}" for p, runs in results.items())
    lines.append(f"(median wall seconds, this 2-core VM, for scale only: {walls})")
    return lines


def measure(upstream: str, model: str, prompt: str, proxies: dict[str, str], reps: int, max_tokens: int,
            cot: dict[str, Any], messages: list[dict[str, str]], direct_extra: dict[str, Any],
            paths: tuple[str, ...] = ("direct", "full", "cot", "full/chunked", "cot/chunked"),
            pause_s: float = 0.0) -> dict[str, list]:
    results: dict[str, list[dict[str, Any]]] = {path: [] for path in paths}
    with httpx.Client(timeout=600) as client:
        for rep in range(reps + 1):  # the first round warms every path up and is not counted
            for path in paths:
                # A quiet start for every path: what the servers still do after the previous response
                # (the upstream closing its stream) would otherwise land on this path's first token,
                # always on the same path ("full" after "direct").
                time.sleep(pause_s)
                if path == "direct":
                    run = direct(client, upstream, model, prompt, max_tokens, direct_extra)
                else:
                    policy, _, design = path.partition("/")
                    run = through_proxy(client, proxies[design or "side"], policy,
                                        {**cot, "budget": max_tokens, "messages": messages})
                if rep:
                    results[path].append(run)
    return results


def proxies_for(upstream: str, extra: list[str], designs: tuple[str, ...] = ("side", "chunked")) -> tuple[list, dict[str, str]]:
    ports = {design: free_port() for design in designs}
    commands = []
    for design, port in ports.items():
        args = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"{upstream}/v1", "--port", str(port),
                "--policy", "cot", "--log-level", "warning", "--chat-template", "chatml",
                # Dynasor's rule with the standard probe suffix (the paced fake answers only that
                # suffix as a probe; a profile's own suffix would make it reason probe_tokens tokens)
                "--profile", "none", *extra]
        if design == "chunked":
            args.append("--no-side-probes")
        commands.append((args, f"http://127.0.0.1:{port}/health"))
    return commands, {design: f"http://127.0.0.1:{port}" for design, port in ports.items()}


def fake_run(r: float, t: float, args: argparse.Namespace) -> list[str]:
    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    fake = [sys.executable, "-m", "tests.misbehaving_upstream", "--port", str(port), "--token-delay", str(t),
            "--request-delay", str(r), "--finish-after", str(args.tokens), "--disagree"]
    commands, proxies = proxies_for(upstream, [])
    prompt = ChatTemplate.named("chatml").render(MESSAGES)
    cot = {"probe_interval": args.interval, "k": 3}
    with process(fake, f"{upstream}/v1/models"), process(*commands[0]), process(*commands[1]):
        results = measure(upstream, "fake-reasoner", prompt, proxies, args.reps, 2 * args.tokens, cot, MESSAGES, {},
                          pause_s=args.pause)
    return [f"fake upstream, R = {r * 1e3:g} ms before each request's first token, T = {t * 1e3:g} ms per token; "
            f"{args.tokens} reasoning tokens, probe interval {args.interval}, probes never agree", *table(results), ""]


def llama_run(args: argparse.Namespace) -> list[str]:
    from certaindex.engines.embedded import default_model_path

    port = free_port()
    upstream = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()), "--model_alias",
              "smollm2-135m-instruct", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
              "--n_threads", str(args.llama_threads)]
    sampling = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
    # One proxy as shipped: it recognises llama-cpp-python's server (one request at a time; a new
    # request interrupts the stream in progress) and reasons in chunks there, probing between them.
    commands, proxies = proxies_for(upstream, ["--extra-body", json.dumps(sampling)], designs=("side",))
    prompt = ChatTemplate.named("chatml").render(LLAMA_MESSAGES)
    cot = {"probe_interval": args.llama_interval, "k": 1000}  # probes run, never stop the reasoning
    with process(server, f"{upstream}/v1/models"), process(*commands[0]):
        results = measure(upstream, "smollm2-135m-instruct", prompt, proxies, args.reps, args.llama_tokens, cot,
                          LLAMA_MESSAGES, sampling, paths=("direct", "full", "cot"), pause_s=args.pause)
    return [f"llama-cpp-python server (one request at a time: the proxy reasons in chunks there), "
            f"SmolLM2-135M-Instruct Q4_1, {args.llama_threads} threads on {os.cpu_count()} CPU cores; "
            f"max {args.llama_tokens} tokens, "
            f"probe interval {args.llama_interval}, k=1000 (probes never stop it)", *table(results), ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="0.02,0.01;0.1,0.01", help="R,T pairs in seconds, ';'-separated")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--interval", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds of quiet before each request")
    parser.add_argument("--llama", action="store_true", help="also against llama-cpp-python's server")
    parser.add_argument("--llama-tokens", type=int, default=256)
    parser.add_argument("--llama-interval", type=int, default=32)
    parser.add_argument("--llama-threads", type=int, default=os.cpu_count() or 1, help="llama.cpp threads")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [f"# benchmarks/probe_latency.py {' '.join(sys.argv[1:])}",
             f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"medians of {args.reps} interleaved repetitions after one warm-up, {args.pause:g} s apart",
             "# wall: request sent -> last event; TTFT: -> first reasoning token; ratios against 'direct' in the "
             "same run; per-rep range: min..max of each repetition's TTFT - that repetition's direct TTFT (ms)", ""]
    for pair in filter(None, args.settings.split(";")):
        r, t = (float(x) for x in pair.split(","))
        lines += fake_run(r, t, args)
        print("\n".join(lines), flush=True)
    if args.llama:
        lines += llama_run(args)
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
