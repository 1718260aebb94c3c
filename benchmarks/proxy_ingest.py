"""How many streamed tokens a second one proxy process takes in (issue 18, "keep up with the upstream").

An H100 serving one 7B replica at a full batch (~128 streams) sends about 19k tokens/s of SSE. This
measures the proxy's side of that, reading C concurrent streams from an upstream that sends as fast
as the socket takes it, so the proxy is the bottleneck. The upstream is a bare asyncio server in a
**separate process** (pre-rendered vLLM-style completion chunks, ``token_ids`` included), so its
CPU is not counted.

Two layers: ``engine`` reads the streams with ``HTTPEngine.stream`` (the reader of every ``serve``
main stream) and nothing else; ``program`` runs ``solve_cot`` with the shipped R1-Distill-Qwen
profile (its certainty score, probes every 512 tokens, DEER trials at "Wait") on each stream, so the
per-event work of the main stream and of the program is counted too. The upstream's text is a
recorded R1-7B reasoning (the shipped sample's first trajectory, in its own tokens), repeated; its
probes answer nothing and its trials are unsure, so no program exits early.

``--pace R`` paces the upstream instead: R tokens/s in all, spread evenly over the streams (19000 over
128 streams: an H100 7B replica at a full batch); the figure to read is then ``cpu share``, the
share of one core the proxy process spends keeping up (and ``tok/s``, whether it did).

Reported per setting: tokens read, wall seconds, the reading process's CPU seconds, and tokens per
CPU second (what one core of proxy takes in; cpu share = CPU s / wall s; on a shared VM the wall figure moves with other
people's load, the CPU figure much less). ``--tokens-per-event`` 1 is one token an SSE event
(llama.cpp, vLLM at stream interval 1); 8 is vLLM's several tokens an event.

    python benchmarks/proxy_ingest.py --layer engine program --streams 1 64 256 --tokens-per-event 1 8 \\
        --out benchmarks/results/proxy-ingest/ingest.txt
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import platform
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from certaindex.engines.base import GenerationRequest  # noqa: E402
from certaindex.engines.http import HTTPEngine  # noqa: E402
from certaindex.evaluation.profiles import profile_for_model  # noqa: E402
from certaindex.programs.cot import CoTConfig, solve_cot  # noqa: E402


def _pieces() -> list[tuple[str, int]]:
    """A recorded reasoning's tokens (text, id): the sample's first R1-7B trajectory up to </think>."""
    from certaindex.traces.governor import read_governor
    from certaindex.traces.tokenmap import encode

    traj = read_governor(ROOT / "src" / "certaindex" / "data" / "governor_sample")[0].trajectories[0]
    text = traj.full_text.split("</think>")[0].removeprefix("<think>\n")
    coded = encode(text, traj.model_name)
    if coded is None:
        return [(w + " ", 1000 + i) for i, w in enumerate(text.split())]
    ids, ends = coded
    out, lo = [], 0
    for tid, hi in zip(ids, ends):
        out.append((text[lo:int(hi)], int(tid)))
        lo = max(lo, int(hi))
    return out


def _events(tokens: int, per_event: int, pieces: list[tuple[str, int]]) -> list[bytes]:
    """The SSE events of one stream, as vLLM writes them."""
    out = []
    for start in range(0, tokens, per_event):
        part = [pieces[i % len(pieces)] for i in range(start, min(tokens, start + per_event))]
        choice = {"index": 0, "text": "".join(t for t, _ in part), "logprobs": None, "finish_reason": None,
                  "stop_reason": None, "token_ids": [i for _, i in part]}
        out.append({"id": "cmpl-x", "object": "text_completion", "created": 0, "model": "m", "choices": [choice]})
    out.append({"id": "cmpl-x", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}]})
    out.append({"id": "cmpl-x", "object": "text_completion", "created": 0, "model": "m", "choices": [],
                "usage": {"prompt_tokens": 50, "completion_tokens": tokens, "total_tokens": tokens + 50}})
    return [f"data: {json.dumps(e, separators=(',', ':'))}\n\n".encode() for e in out] + [b"data: [DONE]\n\n"]


def _side_reply(body: dict) -> bytes:
    """A probe answers nothing (no box closed); a trial (logprobs asked for) is unsure."""
    n = int(body.get("max_tokens") or 16)
    logprobs = None
    if body.get("logprobs") is not None:
        logprobs = {"tokens": ["{", "7", "}"], "token_logprobs": [-3.0, -3.0, -3.0],
                    "top_logprobs": [None] * 3, "text_offset": [0, 1, 2]}
    text = "{7}" if logprobs else " ".join(["\\dots"] * 8)
    return json.dumps({"id": "cmpl-y", "object": "text_completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "text": text, "finish_reason": "length", "logprobs": logprobs}],
                       "usage": {"prompt_tokens": 50, "completion_tokens": n, "total_tokens": n + 50}}).encode()


def _http(status_and_headers: bytes, body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + status_and_headers + b"content-length: %d\r\n\r\n" % len(body) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _serve(port: int, per_event: int, ready, stream_rate: float | None = None) -> None:
    """The fake upstream: a stream of ``max_tokens`` tokens, at once in 16 KiB HTTP chunks or, with
    ``stream_rate``, paced at that many tokens/s a stream (a write every 20 ms); a request without
    ``stream`` gets one JSON completion (a probe or a trial)."""
    pieces = _pieces()
    events: dict[int, list[bytes]] = {}
    framed: dict[int, bytes] = {}

    def events_of(tokens: int) -> list[bytes]:
        if tokens not in events:
            events[tokens] = _events(tokens, per_event, pieces)
        return events[tokens]

    def stream_of(tokens: int) -> bytes:
        if tokens not in framed:
            body = b"".join(events_of(tokens))
            framed[tokens] = b"".join(_chunk(body[i:i + 16384]) for i in range(0, len(body), 16384)) + b"0\r\n\r\n"
        return framed[tokens]

    async def paced(writer: asyncio.StreamWriter, tokens: int) -> None:
        body, sent, due, start = events_of(tokens), 0, 0.0, time.perf_counter()
        while sent < len(body):
            await asyncio.sleep(0.02)
            due = (time.perf_counter() - start) * stream_rate / per_event  # events due by now
            upto = len(body) if sent + 1 >= len(body) - 3 else min(len(body) - 3, max(sent, int(due)))
            if upto > sent:
                writer.write(_chunk(b"".join(body[sent:upto])))
                sent = upto
                await writer.drain()
        writer.write(b"0\r\n\r\n")

    models = json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "bench"}]}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(await reader.readexactly(length)) if length else {}
                if head.startswith(b"GET"):
                    writer.write(_http(b"content-type: application/json\r\n", models))
                elif body.get("stream") and stream_rate:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                    await paced(writer, int(body.get("max_tokens") or 16))
                elif body.get("stream"):
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n" + stream_of(int(body.get("max_tokens") or 16)))
                else:
                    writer.write(_http(b"content-type: application/json\r\n", _side_reply(body)))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _program_config(tokens: int) -> CoTConfig:
    """The shipped R1-Distill-Qwen profile's settings, on a budget of ``tokens`` reasoning tokens."""
    profile = profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    return CoTConfig(budget=tokens, probe_interval=profile.probe_interval, probe_suffix=profile.probe_suffix,
                     probe_tokens=profile.probe_tokens, certainty=profile.rule, answer_tokens=16)


async def _read(url: str, streams: int, tokens: int, layer: str) -> tuple[int, float, float]:
    engine = HTTPEngine(url, model="m", token_ids=True, chat_template="deepseek-r1", connect_timeout_s=120)
    await engine.connect()
    config = _program_config(tokens) if layer == "program" else None

    async def one(i: int) -> int:
        if config is not None:
            result = await solve_cot(engine, f"Question {i}: what is 3+4?", config)
            return result.reasoning_tokens + result.overrun_tokens
        got = 0
        async for delta in engine.stream(GenerationRequest(prompt="p", max_tokens=tokens)):
            got += delta.tokens
        return got

    cpu0, wall0 = time.process_time(), time.perf_counter()
    counts = await asyncio.gather(*(one(i) for i in range(streams)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    await engine.aclose()
    assert all(c >= tokens for c in counts), counts
    return sum(counts), wall, cpu


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(streams: int, per_event: int, tokens: int, layer: str, pace: float | None = None) -> dict:
    port = _free_port()
    ready = mp.Event()
    server = mp.Process(target=_serve, args=(port, per_event, ready, pace / streams if pace else None), daemon=True)
    server.start()
    try:
        ready.wait(30)
        total, wall, cpu = asyncio.run(_read(f"http://127.0.0.1:{port}", streams, tokens, layer))
    finally:
        server.terminate()
        server.join()
    return {"layer": layer, "streams": streams, "tokens_per_event": per_event, "tokens": total, "wall_s": wall,
            "cpu_share": cpu / wall,
            "cpu_s": cpu, "tokens_per_s": total / wall, "tokens_per_cpu_s": total / cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", nargs="+", choices=["engine", "program"], default=["engine", "program"])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--tokens-per-event", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=4000, help="tokens per stream (default 4000)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per setting; the best (by tokens per CPU s) is kept")
    parser.add_argument("--pace", type=float, help="the upstream sends this many tokens/s in all, spread over the "
                        "streams (e.g. 19000: an H100 7B replica at a full batch); default: as fast as it is read")
    parser.add_argument("--out", help="write the table here too")
    args = parser.parse_args()
    lines = [f"$ python benchmarks/proxy_ingest.py {' '.join(sys.argv[1:])}",
             f"machine: {platform.node()} ({os.cpu_count()} CPUs, shared), Python {platform.python_version()}",
             f"{args.tokens} tokens a stream; best of {args.repeat}; upstream "
             + (f"paced at {args.pace:g} tokens/s in all" if args.pace else "as fast as read"), "",
             f"{'layer':>7} {'streams':>7} {'tok/event':>9} {'tokens':>9} {'wall s':>7} {'cpu s':>6} "
             f"{'tok/s':>9} {'tok/cpu-s':>10} {'cpu share':>9}"]
    print("\n".join(lines), flush=True)
    for layer, per_event, streams in itertools.product(args.layer, args.tokens_per_event, args.streams):
        best = max((run(streams, per_event, args.tokens, layer, args.pace) for _ in range(args.repeat)),
                   key=lambda r: r["tokens_per_cpu_s"])
        line = (f"{layer:>7} {streams:>7} {per_event:>9} {best['tokens']:>9} {best['wall_s']:>7.2f} "
                f"{best['cpu_s']:>6.2f} {best['tokens_per_s']:>9.0f} {best['tokens_per_cpu_s']:>10.0f} "
                f"{best['cpu_share']:>9.2f}")
        print(line, flush=True)
        lines.append(line)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
