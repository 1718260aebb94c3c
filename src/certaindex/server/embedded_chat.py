"""Policy ``off`` on the embedded engine: an ordinary completion of the conversation, whole or
streamed token by token (an upstream would get the request passed through instead)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from certaindex.engines.base import EngineError, GenerationRequest
from certaindex.engines.deadline import capped
from certaindex.server.admission import Slot
from certaindex.server.chat_programs import ChatOutcome
from certaindex.server.chat_run import engine_error, timed_out
from certaindex.server.errors import bad_request
from certaindex.server.plain import plain_events
from certaindex.server.responses import completion_object, new_id
from certaindex.server.schema import ChatPlan, embedded_plain_problem, fallback_note
from certaindex.server.state import ProxyState
from certaindex.server.streaming import ClientGone, ClosingStreamingResponse, unless_client_leaves


async def plain_chat(request: Request, state: ProxyState, payload: dict[str, Any], plan: ChatPlan) -> Response:
    """Policy ``off`` on the embedded engine: an ordinary completion of the conversation, ``stop``
    honoured; what it cannot honour (``n`` > 1, tools, ...) is refused with a 400 naming the field."""
    problem = embedded_plain_problem(payload, plan)
    if problem is not None:
        raise bad_request(f"the embedded engine cannot serve this request: {problem[0]}", param=problem[1])
    settings = state.settings
    max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens") or settings.plain_max_tokens
    temperature = payload.get("temperature")
    generation = GenerationRequest(
        prompt=state.engine.render_chat(plan.messages),
        max_tokens=int(max_tokens),
        temperature=1.0 if temperature is None else float(temperature),
        top_p=float(payload.get("top_p") or 1.0),
        seed=payload.get("seed"),
        stop=plan.stop,
    )
    if plan.stream:
        return await plain_chat_streaming(state, plan, generation)
    async with Slot(state.admission):
        try:
            completion = await unless_client_leaves(
                request.receive, asyncio.wait_for(state.engine.generate(generation), capped(settings.request_timeout_s)))
        except ClientGone:
            state.metrics.disconnects.inc()
            raise
        except asyncio.TimeoutError:
            raise timed_out(state) from None
        except EngineError as exc:
            raise engine_error(exc) from exc
    choice = completion.first
    outcome = ChatOutcome(
        reasoning="", content=choice.text, finish_reason="length" if choice.finish_reason == "length" else "stop",
        prompt_tokens=completion.prompt_tokens, reasoning_tokens=0, probe_tokens=0,
        answer_tokens=choice.completion_tokens,
        details={"policy": "off", "stop_reason": choice.finish_reason, **fallback_note(plan)},
    )
    state.metrics.requests.labels("chat", "off", "200").inc()
    return JSONResponse(completion_object(new_id(), plan.model or state.engine.name, outcome))


async def plain_chat_streaming(state: ProxyState, plan: ChatPlan, generation: GenerationRequest) -> Response:
    """Policy ``off`` on the embedded engine, streamed token by token as llama.cpp generates."""
    metrics = state.metrics
    slot = Slot(state.admission)
    await slot.__aenter__()  # waits in the bounded queue, or 429 before any byte is sent
    started = time.perf_counter()

    def finished(outcome: ChatOutcome) -> None:
        metrics.requests.labels("chat", "off", "200").inc()
        metrics.duration.labels("chat", "off").observe(time.perf_counter() - started)

    async def done(client_left: bool) -> None:
        if client_left:
            metrics.disconnects.inc()
        slot.release()

    events = plain_events(state.engine, generation, new_id(), plan.model or state.engine.name, plan.include_usage,
                          on_done=finished, note=fallback_note(plan) or None)
    return ClosingStreamingResponse(events, on_close=done, media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
