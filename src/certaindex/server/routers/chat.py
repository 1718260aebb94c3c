"""``POST /v1/chat/completions``: a certaindex program (cot, sc, full, shadow) for the requests it
understands, plain completion or passthrough for policy ``off``."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from certaindex.engines.base import Engine
from certaindex.evaluation.profile_choice import ProfileChoice
from certaindex.server.admission import Slot
from certaindex.server.chat_run import record_chat, run_program
from certaindex.server.dependencies import authorize, parse_json, proxy_state, request_body
from certaindex.server.embedded_chat import plain_chat
from certaindex.server.errors import ProxyError
from certaindex.server.forwarding import forward
from certaindex.server.model_profiles import unknown_model
from certaindex.server.responses import chunk, completion_object, new_id, sse, usage_chunk
from certaindex.server.schema import ChatPlan, fallback_note, parse_options, plan_chat
from certaindex.server.shadow import shadow_plan
from certaindex.server.state import ProxyState
from certaindex.server.streaming import ClientGone, ClosingStreamingResponse, cancel_and_wait, unless_client_leaves

router = APIRouter(dependencies=[Depends(authorize)])
_PROGRAM_ENDED = object()  # queued after a streamed program's last piece of reasoning


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: bytes = Depends(request_body),
                           state: ProxyState = Depends(proxy_state)) -> Response:
    payload = parse_json(body)
    settings = state.settings
    model = payload.get("model")
    served = state.served_models()
    if settings.check_model and isinstance(model, str):
        served = await _check_model(state, model, served)
    profile, cot = state.profiles.choose(model if isinstance(model, str) else None, served,
                                         state.models_without_logprobs())
    # A request naming its policy does not wait for the server's default (its setup read upstream).
    asked = parse_options(payload.get("certaindex")).policy
    plan = plan_chat(payload, asked or await state.default_policy(), cot, state.sc, settings.max_tokens_limit)
    if profile is not None and cot.certainty is not None and plan.cot.certainty is None:
        profile = ProfileChoice(None, "the request's k / probe_interval: Dynasor's rule", profile.model)
    if state.shadow is not None and plan.policy in ("cot", "full"):
        plan = shadow_plan(plan, cot)  # never an early exit: full reasoning, probes beside it
    if plan.policy == "off":
        if state.passthrough is None:
            return await plain_chat(request, state, payload, plan)
        if "certaindex" in payload:  # our own field is the one thing not passed on
            payload.pop("certaindex")
            body = json.dumps(payload).encode()
        return await forward(request, state, body, "chat", fallback_note(plan) or None)
    return await respond(request, state, plan, state.model_name(plan), profile)


async def _check_model(state: ProxyState, model: str, served: tuple[str, ...]) -> tuple[str, ...]:
    """The served models, read again if ``model`` is not among them (the upstream may have changed);
    404 if it still is not (nor ``--model``'s name)."""
    aliases = [state.settings.model] if state.settings.model else []
    if unknown_model(model, served, aliases) is not None and state.watch is not None:
        served = (await state.watch.fresh()).models
    refused = unknown_model(model, served, aliases)
    if refused is not None:
        raise refused
    return served


async def respond(request: Request, state: ProxyState, plan: ChatPlan, model: str,
                  profile: ProfileChoice | None = None) -> Response:
    """The program's answer as one completion object, or streamed (reasoning as it comes)."""
    engine = state.engine_for(plan)
    if plan.stream:
        return await respond_streaming(state, plan, engine, model, profile)
    started = time.perf_counter()
    async with Slot(state.admission):
        try:
            outcome = await unless_client_leaves(request.receive, run_program(state, plan, engine, None, profile))
        except ClientGone:
            state.metrics.disconnects.inc()
            raise
        except ProxyError as exc:
            state.metrics.requests.labels("chat", plan.policy, str(exc.status)).inc()
            raise
    record_chat(state, outcome, plan, "200", time.perf_counter() - started)
    return JSONResponse(completion_object(new_id(), model, outcome))


async def respond_streaming(state: ProxyState, plan: ChatPlan, engine: Engine, model: str,
                            profile: ProfileChoice | None = None) -> Response:
    """Server-sent events: the role, each piece of reasoning, the answer, the finish, usage, [DONE]."""
    metrics = state.metrics
    slot = Slot(state.admission)
    await slot.__aenter__()  # waits in the bounded queue, or 429 before any byte is sent
    started = time.perf_counter()
    request_id = new_id()
    events: asyncio.Queue[Any] = asyncio.Queue()
    task = asyncio.ensure_future(run_program(state, plan, engine, events, profile))
    # The program's end is queued after its last piece of reasoning: each piece then reaches the
    # client in one loop turn (no helper task and wait per piece), in order, and nothing is left behind.
    task.add_done_callback(lambda _: events.put_nowait(_PROGRAM_ENDED))

    async def body() -> AsyncIterator[bytes]:
        yield sse(chunk(request_id, model, {"role": "assistant", "content": ""}))
        while (text := await events.get()) is not _PROGRAM_ENDED:
            yield sse(chunk(request_id, model, {"reasoning_content": text}))
        try:
            outcome = task.result()
        except ProxyError as exc:
            metrics.requests.labels("chat", plan.policy, str(exc.status)).inc()
            yield sse(exc.body())  # the OpenAI client raises it; no [DONE]: the answer is not complete
            return
        if outcome.content:
            yield sse(chunk(request_id, model, {"content": outcome.content}))
        yield sse(chunk(request_id, model, {}, outcome.finish_reason, certaindex=outcome.details))
        if plan.include_usage:
            yield sse(usage_chunk(request_id, model, outcome))
        yield sse("[DONE]")
        record_chat(state, outcome, plan, "200", time.perf_counter() - started)

    async def done(client_left: bool) -> None:
        if client_left or not task.done():
            metrics.disconnects.inc()
        await cancel_and_wait(task)  # closing the program's upstream streams aborts their generation
        slot.release()

    return ClosingStreamingResponse(body(), on_close=done, media_type="text/event-stream",
                                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
