"""``certaindex replay-server``: an OpenAI-compatible completions server that plays recorded
reasoning trajectories back, paced like a GPU serving them (the live counterpart of
``certaindex simulate --traces``).

What it answers comes from :class:`~certaindex.traces.governor_engine.GovernorReplay` (the problem
recognised in the prompt, the trajectory's own text token by token, probes and DEER trials from
their recordings); when tokens come out comes from :class:`~certaindex.serving.batch_clock.BatchClock`
(continuous batching on a cost model, ``speed`` times faster than the modelled GPU).

Routes: ``POST /v1/completions`` (streaming and not; ``n`` 1; ``stream_options.include_usage``;
``logprobs``; every streamed choice carries its ``token_ids``, as vLLM's ``return_token_ids``),
``POST /v1/chat/completions`` (rendered with the model's chat template, answered like a
completion), ``POST /tokenize``, ``GET /v1/models`` (with the request fields it honours as
``supported_parameters``, as OpenRouter's model list has them: ``logprobs`` only where every
trajectory has recorded DEER trials), ``GET /health`` and ``GET /replay/stats`` (the
clock's counters). Every completion also reports ``replay``: its kind, trajectory, position and its
modelled timing (queueing, prefill, decode seconds, mean batch). A client that closes its stream
frees its batch slot at the next step. ``seed`` and ``temperature`` 0 pick the recording; a sampled
probe or trial is refused (HTTP 400: they were recorded greedy); docs/replay-server.md, "Sampling".

The routes are two routers (``info``: health, models, stats, tokenize; ``completions``) reading the
:class:`ReplayState` the app carries.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from certaindex.engines.chat_template import ChatTemplate, guess_template_name
from certaindex.serving.batch_clock import BatchClock, Sequence_
from certaindex.server.streaming import ClientGone, ClosingStreamingResponse, unless_client_leaves
from certaindex.traces.governor_engine import GovernorReplay, Piece, Reply, ReplayError, UnknownProblem
from certaindex.traces.tokenmap import encode

__all__ = ["ReplayState", "create_replay_app", "supported_parameters"]


@dataclass
class ReplayState:
    replay: GovernorReplay
    clock: BatchClock
    model: str  # the served model id
    template: ChatTemplate
    flush_s: float = 0.0  # a stream sends what it generated at most every this many wall seconds
    parameters: tuple[str, ...] = ()  # the request fields it honours (GET /v1/models' supported_parameters)


@dataclass(frozen=True)
class _Ask:
    """One completion request, checked: what the replay is asked and how the reply is sent."""

    prompt: str
    max_tokens: int
    stop: tuple[str, ...]
    logprobs: int | None
    seed: int | None
    temperature: float | None
    stream: bool
    include_usage: bool


def supported_parameters(replay: GovernorReplay) -> tuple[str, ...]:
    """The request fields the replay honours, as ``GET /v1/models`` lists them per model. Its only
    recorded logprobs are its DEER trials': where a trajectory has none (no ``deer.jsonl.gz``) it
    answers no trial, so it lists no ``logprobs``, as an engine without them would. A proxy then runs
    the profile for an engine without logprobs, which is what ``evaluate`` replays on such a trajectory."""
    trials = all(t.trials is not None for group in replay.problems.values() for t in group)
    return ("max_tokens", "temperature", "top_p", "stop", "seed") + (("logprobs",) if trials else ())


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param, "code": None}}, status_code=status)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ReplayError("stop must be a string or a list of strings")


def _int(body: dict, name: str, default: int | None, low: int = 0) -> int | None:
    value = body.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ReplayError(f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _number(body: dict, name: str, low: float, high: float, low_open: bool = False) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value > high or value < low or (low_open and value == low)):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise ReplayError(f"{name} must be a number {bound} and <= {high:g}, got {value!r}")
    return float(value)


def _prompt(body: dict, chat: bool, template: ChatTemplate) -> str:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ReplayError("messages must be a non-empty list")
        return template.render(messages)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ReplayError("prompt must be a string (token-id prompts are not replayed)")
    return prompt


def _ask(body: dict, chat: bool, template: ChatTemplate) -> _Ask:
    """The request's fields, checked; raises ReplayError (HTTP 400) for what cannot be replayed."""
    prompt = _prompt(body, chat, template)
    if (_int(body, "n", 1, 1) or 1) != 1:
        raise ReplayError("n must be 1 (send one request per sample)")
    max_tokens = _int(body, "max_tokens", 16 if not chat else 4096, 1)
    if chat and body.get("max_completion_tokens") is not None:
        max_tokens = _int(body, "max_completion_tokens", None, 1)
    lp = body.get("logprobs")
    logprobs = 1 if lp is True else (None if lp in (None, False) else _int(body, "logprobs", None, 0))
    _number(body, "top_p", 0.0, 1.0, low_open=True)  # checked; a continuation is the recorded sample
    return _Ask(prompt, max_tokens or 16, _stop(body.get("stop")), logprobs, _int(body, "seed", None, -2**63),
                _number(body, "temperature", 0.0, 2.0), bool(body.get("stream")),
                bool((body.get("stream_options") or {}).get("include_usage")))


def _logprobs(pieces: list[Piece], offset: int) -> dict[str, Any] | None:
    if not pieces or pieces[0].logprob is None:
        return None
    offsets, pos = [], offset
    for p in pieces:
        offsets.append(pos)
        pos += len(p.text)
    return {"tokens": [p.token_text for p in pieces], "token_logprobs": [p.logprob for p in pieces],
            "top_logprobs": [{p.token_text: p.logprob} for p in pieces], "text_offset": offsets}


def _replay_info(reply: Reply, seq: Sequence_) -> dict[str, Any]:
    return {"kind": reply.kind, "trajectory": reply.trajectory, "position": reply.position,
            "recorded_position": reply.recorded_position, **seq.stats()}


def _usage(reply: Reply, seq: Sequence_) -> dict[str, int]:
    # Nothing generated on "length": the end of a text the collection cut (the engine's limit), where
    # an engine samples no token; the clock's one step for an empty reply is its modelled cost only.
    generated = 0 if not reply.pieces and reply.finish_reason == "length" else seq.emitted
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": generated,
            "total_tokens": reply.prompt_tokens + generated}


def _state(request: Request) -> ReplayState:
    return request.app.state.replay


info = APIRouter()


@info.get("/health")
async def health(state: ReplayState = Depends(_state)) -> dict:
    return {"status": "ok", "model": state.model, "trajectories": state.replay.trajectories}


@info.get("/v1/models")
async def models(state: ReplayState = Depends(_state)) -> dict:
    return {"object": "list", "data": [{"id": state.model, "object": "model", "created": 0,
                                        "owned_by": "certaindex-replay", "root": state.replay.model_name,
                                        "supported_parameters": list(state.parameters)}]}


@info.get("/replay/stats")
async def stats(state: ReplayState = Depends(_state)) -> dict:
    clock = state.clock
    return {**clock.stats.to_dict(), "modelled_s": clock.now, "speed": clock.speed,
            "running": len(clock.active), "waiting": len(clock.waiting)}


@info.post("/tokenize")
async def tokenize(request: Request, state: ReplayState = Depends(_state)) -> Response:
    body = await request.json()
    text = body.get("prompt", body.get("content"))
    if not isinstance(text, str):
        return _error(400, "tokenize takes a prompt string", param="prompt")
    coded = encode(text, state.replay.model_name)
    if coded is None:
        return _error(501, f"no vocabulary for {state.replay.model_name} (pip install quicktok-v1)")
    return JSONResponse({"tokens": [int(i) for i in coded[0]], "count": len(coded[0])})


completions = APIRouter()


@completions.post("/v1/completions")
async def text_completions(request: Request, state: ReplayState = Depends(_state)) -> Response:
    return await complete(request, state, chat=False)


@completions.post("/v1/chat/completions")
async def chat_completions(request: Request, state: ReplayState = Depends(_state)) -> Response:
    return await complete(request, state, chat=True)


async def complete(request: Request, state: ReplayState, chat: bool) -> Response:
    """One completion: the replay's reply, paced by the clock, streamed or whole."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "the request body must be a JSON object")
    try:
        ask = _ask(body, chat, state.template)
        reply = state.replay.answer(ask.prompt, max_tokens=ask.max_tokens, stop=ask.stop, logprobs=ask.logprobs,
                                    seed=ask.seed, temperature=ask.temperature)
    except UnknownProblem as exc:
        return _error(404, str(exc), "not_found_error", param="prompt")
    except ReplayError as exc:
        return _error(400, str(exc))
    seq = Sequence_(reply.trajectory, reply.pieces, reply.prompt_tokens, reply.cached_tokens,
                    keeps_prefix=reply.kind == "continuation")
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    state.clock.submit(seq)
    if ask.stream:
        return _streamed(state, reply, seq, rid, chat, ask.include_usage)
    return await _whole(request, state, reply, seq, rid, chat)


def _stream_choice(pieces: list[Piece], offset: int, chat: bool) -> dict[str, Any]:
    text = "".join(p.text for p in pieces)
    if chat:
        return {"index": 0, "delta": {"content": text}, "finish_reason": None, "logprobs": None}
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": None, "logprobs": _logprobs(pieces, offset)}
    ids = [p.token_id for p in pieces]
    if all(i is not None for i in ids):
        choice["token_ids"] = ids
    return choice


def _streamed(state: ReplayState, reply: Reply, seq: Sequence_, rid: str, chat: bool,
              include_usage: bool) -> Response:
    """Server-sent events as the clock releases the tokens; a closed stream leaves the batch."""
    served = state.model

    async def events() -> AsyncIterator[bytes]:
        offset = 0
        async for pieces in seq.pieces_out(state.flush_s):
            choice = _stream_choice(pieces, offset, chat)
            offset += sum(len(p.text) for p in pieces)
            yield _sse(_chunk(rid, served, choice, chat))
        if seq.cancelled:
            return
        last: dict[str, Any] = ({"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
                                if chat else {"index": 0, "text": "", "finish_reason": reply.finish_reason})
        yield _sse({**_chunk(rid, served, last, chat), "replay": _replay_info(reply, seq)})
        if include_usage:
            yield _sse({**_chunk(rid, served, None, chat), "usage": _usage(reply, seq)})
        yield b"data: [DONE]\n\n"

    async def closed(_client_left: bool) -> None:
        state.clock.cancel(seq)  # no-op once it finished

    return ClosingStreamingResponse(events(), on_close=closed, media_type="text/event-stream")


async def _whole(request: Request, state: ReplayState, reply: Reply, seq: Sequence_, rid: str, chat: bool) -> Response:
    """The whole reply once the clock has generated it; a client that leaves first frees its slot."""

    async def generate() -> None:
        async for _ in seq.pieces_out():
            pass

    try:
        await unless_client_leaves(request.receive, generate())
    except ClientGone:
        return Response(status_code=499)
    finally:
        state.clock.cancel(seq)
    pieces = list(reply.pieces[: seq.emitted])
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": reply.text},
                  "finish_reason": reply.finish_reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": reply.text, "finish_reason": reply.finish_reason,
                  "logprobs": _logprobs(pieces, 0)}
    return JSONResponse({"id": rid, "object": "chat.completion" if chat else "text_completion",
                         "created": int(time.time()), "model": state.model, "choices": [choice],
                         "usage": _usage(reply, seq), "replay": _replay_info(reply, seq)})


def create_replay_app(replay: GovernorReplay, clock: BatchClock, *, model: str | None = None,
                      chat_template: str | None = None, flush_s: float = 0.0) -> FastAPI:
    """The replay server's app; the clock starts with the first request. ``flush_s``: a stream sends
    what it generated at most every this many wall seconds (0: every step, when the client keeps up),
    so a fast clock does not flood the client with one event per token."""
    template = ChatTemplate.named(chat_template or guess_template_name(replay.model_name))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await clock.stop()

    app = FastAPI(title="certaindex replay server", lifespan=lifespan)
    app.state.replay = ReplayState(replay, clock, model or replay.model_name, template, flush_s,
                                   supported_parameters(replay))
    app.include_router(info)
    app.include_router(completions)
    return app


def _chunk(rid: str, model: str, choice: dict[str, Any] | None, chat: bool) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
            "model": model, "choices": [choice] if choice is not None else []}


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
