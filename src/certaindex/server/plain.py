"""Policy ``off`` on the embedded engine, streamed: the completion's tokens go to the client as the
engine generates them (not gathered first and sent as one chunk)."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any, AsyncIterator, Callable

from certaindex.engines.base import Engine, EngineError, GenerationRequest
from certaindex.server.chat_programs import ChatOutcome
from certaindex.server.errors import engine_failure
from certaindex.server.responses import chunk, sse, usage_chunk


async def plain_events(
    engine: Engine, generation: GenerationRequest, request_id: str, model: str, include_usage: bool,
    on_done: Callable[[ChatOutcome], None] | None = None, note: dict[str, Any] | None = None,
) -> AsyncIterator[bytes]:
    """Server-sent events of one plain completion, a ``content`` delta per generated piece. A failure
    mid-way ends the stream with an error event and no ``[DONE]`` (the answer is not complete).
    ``note``: a fallback to name (``{"policy": "off", "fallback": why}``) on the last chunk and in the usage."""
    yield sse(chunk(request_id, model, {"role": "assistant", "content": ""}))
    tokens, prompt_tokens, finish = 0, 0, None
    try:
        async with aclosing(engine.stream(generation)) as deltas:
            async for delta in deltas:
                tokens += delta.tokens
                prompt_tokens = delta.prompt_tokens or prompt_tokens
                finish = delta.finish_reason or finish
                if delta.text:
                    yield sse(chunk(request_id, model, {"content": delta.text}))
    except EngineError as exc:
        yield sse(engine_failure(str(exc)).body())
        return
    outcome = ChatOutcome(
        reasoning="", content="", finish_reason="length" if finish == "length" else "stop",
        prompt_tokens=prompt_tokens, reasoning_tokens=0, probe_tokens=0, answer_tokens=tokens,
        details={"policy": "off", "stop_reason": finish, **(note or {})},
    )
    yield sse(chunk(request_id, model, {}, outcome.finish_reason, **({"certaindex": outcome.details} if note else {})))
    if include_usage:
        yield sse(usage_chunk(request_id, model, outcome))
    yield sse("[DONE]")
    if on_done is not None:
        on_done(outcome)


__all__ = ["plain_events"]
