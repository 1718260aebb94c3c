"""A fake OpenAI-compatible upstream for fault-injection tests only (FakeUpstream), and a helper
that serves any ASGI app with uvicorn on loopback in a background thread.

The fake "model" reasons forever in tokens of ``"step "`` (a ``"Wait, "`` every ``waits_every``
tokens where set) and answers every probe with ``fake_answer}`` and every DEER-style trial
(a prompt ending in ``\boxed``) with ``{answer}`` (logprobs, legacy format, where asked); faults are switched on per request kind (``chunk``: reasoning, ``probe``: an
answer probe, ``chat``: the chat endpoint) to refuse, fail, hang, break off or send garbage.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX

Fault = str  # "500" | "hang" | "break" | "break-once" (the first stream only) | "malformed" | "400"


@dataclass
class FakeUpstream:
    model: str = "fake-reasoner"
    owned_by: str = "fake"  # "me" poses as llama-cpp-python's server (one request at a time)
    answer: str = "42"
    token_delay_s: float = 0.0  # per generated token (streams are paced to a schedule, not sleep after sleep)
    request_delay_s: float = 0.0  # before the first token of every request (queueing, prefill)
    disagreeing_probes: bool = False  # each probe answers a different number: probes never agree
    finish_after: int | None = None  # reasoning tokens after which the fake writes its answer and stops
    # the engine's own limit (a full context): the reasoning ends on "length" at this many tokens, and a
    # continuation from there gets no token ("length" again), as a server whose context is full
    context_tokens: int | None = None
    # with context_tokens: a continuation (reasoning or answer) from the full context is refused with
    # HTTP 400 and this body, as llama.cpp's server refuses it, instead of giving no token
    context_refusal: dict[str, Any] | None = None
    final_text: str = " So the answer is \\boxed{7}."
    # what the model writes after a prompt that closed its thinking ("</think>\n\n"), one token each
    answer_reply: tuple[str, ...] = ("The answer ", "is ", "\\boxed{42}", ".")
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    active_streams: int = 0
    streams_closed_early: int = 0
    chat_bodies: list[dict[str, Any]] = field(default_factory=list)
    other_paths: list[str] = field(default_factory=list)
    chat_tokens: int | None = None  # the chat endpoint writes this many tokens (token_delay_s apart)
    in_flight: int = 0  # requests being generated now, streamed or not
    abandoned: int = 0  # requests whose client (the proxy) left before the end: streamed or not
    # Token ids as vLLM reports and takes them: a prompt's characters are its "tokens" (id = code
    # point); every generated token gets an id of its own above them.
    vocab: dict[str, int] = field(default_factory=dict)
    waits_every: int | None = None  # the reasoning writes "Wait, " as every n-th token
    trial_logprob: float = -0.0001  # each trial token's logprob

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def token_id(self, token: str) -> int:
        return self.vocab.setdefault(token, 0x110000 + len(self.vocab))

    def decode(self, ids: list[int]) -> str:
        names = {i: t for t, i in self.vocab.items()}
        return "".join(names[i] if i >= 0x110000 else chr(i) for i in ids)

    def kind(self, prompt: str) -> str:
        if prompt.endswith("\\boxed"):
            return "trial"
        if prompt.endswith("</think>\n\n"):
            return "answer"
        return "probe" if prompt.endswith(DEFAULT_PROBE_SUFFIX) else "chunk"

    def reasoning_so_far(self, prompt: str) -> int:
        return prompt.count("step ") + prompt.count("Wait, ")

    def _reasoning_token(self, i: int) -> str:
        return "Wait, " if self.waits_every and i % self.waits_every == self.waits_every - 1 else "step "

    def continuation(self, prompt: str, max_tokens: int) -> tuple[list[str], str]:
        if self.kind(prompt) == "trial":
            return ["{", self.answer, "}\n"][:max_tokens], "stop"
        if self.kind(prompt) == "probe":
            answer = str(self.reasoning_so_far(prompt)) if self.disagreeing_probes else self.answer
            return [answer, "}"], "stop"
        if self.kind(prompt) == "answer":
            return list(self.answer_reply[:max_tokens]), "length" if len(self.answer_reply) > max_tokens else "stop"
        done = self.reasoning_so_far(prompt)
        if self.finish_after is not None and done + max_tokens > self.finish_after:
            n = max(0, self.finish_after - done)
            return [self._reasoning_token(done + i) for i in range(n)] + [self.final_text], "stop"
        if self.context_tokens is not None and done + max_tokens > self.context_tokens:
            return [self._reasoning_token(done + i) for i in range(max(0, self.context_tokens - done))], "length"
        return [self._reasoning_token(done + i) for i in range(max_tokens)], "length"

    def _logprobs(self, body: dict[str, Any], tokens: list[str]) -> dict[str, Any] | None:
        if not body.get("logprobs"):
            return None
        return {"tokens": tokens, "token_logprobs": [self.trial_logprob] * len(tokens),
                "top_logprobs": [{t: self.trial_logprob} for t in tokens]}

    # -- endpoints ------------------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": self.owned_by}]})

    async def completions(self, request: Request) -> Response:
        body = await request.json()
        prompt = body["prompt"]
        if isinstance(prompt, list):  # a token-id prompt
            prompt = self.decode(prompt)
        kind = self.kind(prompt)
        self.requests.append({"kind": kind, **body})
        fault = self.faults.get(kind)
        if fault == "500":
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
        if fault == "400":
            return JSONResponse({"error": {"message": "prompt is too long"}}, status_code=400)
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "malformed" and not body.get("stream"):
            return Response(b"{not json", media_type="application/json")
        full = self.context_tokens is not None and self.reasoning_so_far(prompt) >= self.context_tokens
        if full and self.context_refusal is not None and kind in ("chunk", "answer"):
            return JSONResponse(self.context_refusal, status_code=400)
        tokens, finish = self.continuation(prompt, int(body["max_tokens"]))
        if not body.get("stream"):
            if self.request_delay_s:
                await asyncio.sleep(self.request_delay_s)
            if self.token_delay_s and not await self._generate_unless_left(request, len(tokens)):
                return Response(status_code=499)
            return JSONResponse({
                "id": "cmpl-fake", "object": "text_completion", "model": self.model,
                "choices": [{"index": 0, "text": "".join(tokens), "finish_reason": finish,
                             "logprobs": self._logprobs(body, tokens)}],
                "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(tokens),
                          "total_tokens": len(prompt) // 4 + len(tokens)},
            })
        if fault == "break-once":
            del self.faults[kind]
            fault = "break"
        ids = body.get("prompt") if isinstance(body.get("prompt"), list) else self.encode(prompt)
        return StreamingResponse(self._stream(prompt, tokens, finish, fault, ids if body.get("return_token_ids") else None),
                                 media_type="text/event-stream")

    async def _generate_unless_left(self, request: Request, tokens: int) -> bool:
        """Take ``token_delay_s`` per token, as a non-streaming engine would, and notice the client
        leaving meanwhile (as vLLM does, which then aborts). False if it left."""
        self.in_flight += 1
        try:
            for _ in range(tokens):
                await asyncio.sleep(self.token_delay_s)
                if await request.is_disconnected():
                    self.abandoned += 1
                    return False
            return True
        finally:
            self.in_flight -= 1

    async def tokenize(self, request: Request) -> Response:
        body = await request.json()
        return JSONResponse({"tokens": self.encode(body["prompt"]), "count": len(body["prompt"])})

    async def _stream(self, prompt: str, tokens: list[str], finish: str, fault: Fault | None,
                      prompt_ids: list[int] | None = None) -> Any:
        self.active_streams += 1
        self.in_flight += 1
        finished = False
        start = time.monotonic() + self.request_delay_s
        try:
            for i, token in enumerate(tokens):
                if self.token_delay_s or self.request_delay_s:  # token i is due at start + (i + 1) * T
                    await asyncio.sleep(max(0.0, start + (i + 1) * self.token_delay_s - time.monotonic()))
                if fault == "break" and i == 2:
                    raise ConnectionResetError("injected: the stream breaks off")
                if fault == "malformed" and i == 2:
                    yield b"data: {this is not json\n\n"
                    continue
                last = i == len(tokens) - 1
                event = {"choices": [{"index": 0, "text": token, "finish_reason": finish if last else None}]}
                if prompt_ids is not None:
                    event["choices"][0]["token_ids"] = [self.token_id(token)]
                    if i == 0:
                        event["choices"][0]["prompt_token_ids"] = prompt_ids
                yield f"data: {json.dumps(event)}\n\n".encode()
            if not tokens:  # nothing generated: the finish reason alone, as vLLM sends it
                yield f"data: {json.dumps({'choices': [{'index': 0, 'text': '', 'finish_reason': finish}]})}\n\n".encode()
            usage = {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(tokens)}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.active_streams -= 1
            self.in_flight -= 1
            if not finished:
                self.streams_closed_early += 1
                self.abandoned += 1

    async def _chat_stream(self, tokens: int) -> Any:
        self.in_flight += 1
        finished = False
        try:
            for i in range(tokens):
                await asyncio.sleep(self.token_delay_s)
                delta = {"role": "assistant", "content": "word "} if i == 0 else {"content": "word "}
                event = {"id": "chatcmpl-upstream", "object": "chat.completion.chunk", "model": self.model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if i == tokens - 1 else None}]}
                yield f"data: {json.dumps(event)}\n\n".encode()
            yield b"data: [DONE]\n\n"
            finished = True
        finally:
            self.in_flight -= 1
            if not finished:
                self.abandoned += 1

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.chat_bodies.append(body)
        if self.faults.get("chat") == "500":
            return JSONResponse({"error": {"message": "injected failure"}}, status_code=500)
        if self.chat_tokens is not None:  # a long answer, generated token by token
            if body.get("stream"):
                return StreamingResponse(self._chat_stream(self.chat_tokens), media_type="text/event-stream")
            if not await self._generate_unless_left(request, self.chat_tokens):
                return Response(status_code=499)
        return JSONResponse({
            "id": "chatcmpl-upstream", "object": "chat.completion", "created": 0, "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "plain upstream answer"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6},
        })

    async def other(self, request: Request) -> Response:
        self.other_paths.append(request.url.path)
        return JSONResponse({"path": request.url.path, "method": request.method})

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/models", self.models),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/embeddings", self.other, methods=["POST"]),
        ])


class HungUpstream:
    """A server (fake, for tests and benchmarks only) that accepts every connection, reads what is
    sent, and never answers: the upstream that hung. ``connections`` counts the connections opened.
    A context manager; ``url`` is its base URL."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:  # timeout: look at the stop flag again
                continue
            conn.setblocking(False)
            self.connections += 1
            self._held.append(conn)
            for held in self._held:  # read what was sent (so the sender is not blocked), answer nothing
                try:
                    held.recv(65536)
                except OSError:
                    pass

    def __enter__(self) -> "HungUpstream":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve_in_thread(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` on loopback from a background thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":  # a stand-alone fake upstream, for benchmarks/proxy_overhead.py
    import argparse

    parser = argparse.ArgumentParser(description="fake OpenAI-compatible upstream (tests and benchmarks only)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds per streamed token")
    parser.add_argument("--request-delay", type=float, default=0.0, help="seconds before each request's first token")
    parser.add_argument("--finish-after", type=int, help="reasoning tokens after which the fake answers and stops")
    parser.add_argument("--disagree", action="store_true", help="probes never agree")
    args = parser.parse_args()
    fake = FakeUpstream(token_delay_s=args.token_delay, request_delay_s=args.request_delay,
                        finish_after=args.finish_after, disagreeing_probes=args.disagree)
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning")
