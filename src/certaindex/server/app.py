"""The OpenAI-compatible proxy: early exit for chat requests it understands, passthrough for the rest.

Routes: ``/v1/chat/completions`` (certaindex programs, or passthrough), ``/v1/completions`` and
every other path (passthrough), ``/v1/models``, ``/health`` and ``/metrics``. With no upstream the
embedded engine serves chat and completions itself.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from certaindex.engines import make_engine
from certaindex.engines.base import Engine, EngineError, GenerationRequest
from certaindex.engines.http import normalise_base_url
from certaindex.core.prompting import THINK_OPEN
from certaindex.programs.self_consistency import SCConfig
from certaindex.scheduler import Scheduler, SchedulerCore
from certaindex.scheduler.budgets import program_budget, sc_program_budget
from certaindex.server.admission import Admission, Slot
from certaindex.server.chat_programs import ChatOutcome, run_chat_program
from certaindex.server.errors import ProxyError, bad_request, error_body, upstream_failed
from certaindex.server.metrics import ProxyMetrics
from certaindex.server.passthrough import Passthrough
from certaindex.server.plain import plain_events
from certaindex.server.responses import chunk, completion_object, new_id, sse, usage_chunk
from certaindex.server.schema import ChatPlan, Policy, plan_chat
from certaindex.server.settings import ServerSettings
from certaindex.server.shadow import ShadowRecorder, run_shadow_program, shadow_plan
from certaindex.server.streaming import (
    ClientGone,
    ClosingStreamingResponse,
    cancel_and_wait,
    unless_client_leaves,
)

log = logging.getLogger("certaindex.server")
_PROGRAM_ENDED = object()  # queued after a streamed program's last piece of reasoning


@dataclass
class ProxyState:
    settings: ServerSettings
    engine: Engine
    passthrough: Passthrough | None
    admission: Admission
    metrics: ProxyMetrics
    scheduler: Scheduler | None = None
    sc: SCConfig = field(default_factory=lambda: SCConfig(n=8, first_round=4, round_size=2, max_tokens=1024))
    reasoning_model: bool | None = None
    shadow: ShadowRecorder | None = None  # --shadow DIR: full reasoning, side probes, traces

    async def default_policy(self) -> Policy:
        """The server's policy, with ``auto`` resolved: early exit for reasoning models only."""
        if self.settings.policy != "auto":
            return self.settings.policy
        if self.reasoning_model is None:
            try:
                await self.engine.prepare()
                probe = self.engine.render_chat([{"role": "user", "content": "?"}])
                self.reasoning_model = probe.rstrip().endswith(THINK_OPEN)
            except EngineError:
                return "off"  # the upstream is down: passing through gives the client its error
        return "cot" if self.reasoning_model else "off"

    def engine_for(self, plan: ChatPlan) -> Engine:
        if not plan.sampling_extra:
            return self.engine
        derive = getattr(self.engine, "derive", None)  # HTTPEngine and ReplicatedEngine take per-request fields
        if derive is not None:
            return derive(plan.sampling_extra)
        raise bad_request(f"the embedded engine does not take {', '.join(sorted(plan.sampling_extra))}",
                          param=sorted(plan.sampling_extra)[0])


async def _sample_gauges(metrics: ProxyMetrics, every_s: float = 1.0) -> None:
    """One of several workers: keep this process's gauges current in the shared metrics files."""
    while True:
        metrics.refresh()
        await asyncio.sleep(every_s)


class WorkerHeader:
    """ASGI middleware naming the serving process (``x-certaindex-worker: <pid>``) on every response,
    so a client or a test behind one port can tell the workers apart. Pure ASGI: streams pass as they are."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.header = (b"x-certaindex-worker", str(os.getpid()).encode())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_pid(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_with_pid)


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The proxy app. ``engine``: use this engine instead of building one from ``settings``
    (tests; embedding the proxy in a larger program); the caller closes it."""
    admission = Admission(settings.max_concurrency, settings.max_queue)
    metrics = ProxyMetrics(lambda: admission.active, lambda: admission.waiting, multiprocess=settings.workers > 1)
    holder: dict[str, ProxyState] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inner = engine or make_engine(
            settings.upstream or "embedded", model=settings.model, chat_template=settings.chat_template,
            api_key=settings.upstream_api_key, extra_body=settings.engine_extra_body or None,
            timeout_s=settings.upstream_timeout_s, verbose=settings.verbose, token_ids=settings.token_ids,
            logprobs=settings.embedded_logprobs,
        )
        passthrough = None
        if settings.upstream:
            passthrough = Passthrough(
                [normalise_base_url(url) for url in settings.upstream.split(",")], settings.upstream_api_key,
                strip_client_auth=settings.api_key is not None, timeout_s=settings.upstream_timeout_s,
            )
        scheduler = None
        if settings.scheduler != "off":
            core = SchedulerCore(settings.scheduler, capacity=settings.scheduler_capacity, aging_s=settings.aging_s)
            scheduler = Scheduler(inner, core, engine_priorities=settings.engine_priorities)
            metrics.watch_scheduler(core)
        holder["state"] = ProxyState(settings, inner, passthrough, admission, metrics, scheduler)
        if settings.shadow_dir is not None:
            holder["state"].shadow = app.state.shadow = ShadowRecorder(
                settings.shadow_dir, metrics, settings.shadow_max_file_bytes)
        sampler = asyncio.ensure_future(_sample_gauges(metrics)) if metrics.multiprocess else None
        try:
            yield
        finally:
            if sampler is not None:
                await cancel_and_wait(sampler)
            if holder["state"].shadow is not None:
                await holder["state"].shadow.aclose()  # the traces being written are finished
            if passthrough is not None:
                await passthrough.aclose()
            if engine is None:  # an engine handed in belongs to the caller
                await inner.aclose()

    app = FastAPI(title="certaindex proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.admission = admission
    app.state.metrics = metrics
    if settings.workers > 1:
        app.add_middleware(WorkerHeader)

    def state() -> ProxyState:
        return holder["state"]

    @app.exception_handler(ProxyError)
    async def proxy_error(request: Request, exc: ProxyError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), settings.api_key.encode()):
            raise ProxyError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                             "authentication_error", code="invalid_api_key")

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise ProxyError(413, f"the request body is over {settings.max_body_bytes} bytes", code="body_too_large")
        body = await request.body()
        if len(body) > settings.max_body_bytes:
            raise ProxyError(413, f"the request body is over {settings.max_body_bytes} bytes", code="body_too_large")
        return body

    def parse_json(body: bytes) -> dict[str, Any]:
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise bad_request("the body must be a JSON object")
        return payload

    # -- passthrough ---------------------------------------------------------------------------

    async def forward(request: Request, body: bytes, endpoint: str) -> Response:
        st = state()
        if st.passthrough is None:
            raise ProxyError(404, f"{request.url.path} is not served by the embedded engine", code="not_found")
        slot = Slot(st.admission)
        await slot.__aenter__()
        started = time.perf_counter()
        try:
            # A non-streaming upstream sends its headers only when it has generated everything:
            # a client that leaves meanwhile closes the upstream request (which aborts it).
            upstream = await unless_client_leaves(request.receive, st.passthrough.open(
                request.method, request.url.path, request.url.query, dict(request.headers), body))
        except ClientGone:
            slot.release()
            metrics.disconnects.inc()
            raise
        except BaseException:
            slot.release()
            metrics.upstream_errors.labels(endpoint).inc()
            raise
        status = str(upstream.status_code)
        headers = st.passthrough.response_headers(upstream)

        async def done(client_left: bool) -> None:
            await upstream.aclose()
            slot.release()
            if client_left:
                metrics.disconnects.inc()
            metrics.requests.labels(endpoint, "off", status).inc()
            metrics.duration.labels(endpoint, "off").observe(time.perf_counter() - started)

        return ClosingStreamingResponse(st.passthrough.relay(upstream), on_close=done,
                                        status_code=upstream.status_code, headers=headers)

    # -- certaindex programs -------------------------------------------------------------------

    def engine_error(exc: EngineError) -> ProxyError:
        message = str(exc)
        if any(f"HTTP {code}" in message for code in (400, 413, 422)):
            return ProxyError(400, f"the upstream refused the request: {message}", "invalid_request_error")
        return upstream_failed(message)

    def record(outcome: ChatOutcome, plan: ChatPlan, status: str, seconds: float) -> None:
        metrics.requests.labels("chat", plan.policy, status).inc()
        metrics.duration.labels("chat", plan.policy).observe(seconds)
        for kind, value in (("prompt", outcome.prompt_tokens), ("reasoning", outcome.reasoning_tokens),
                            ("overrun", outcome.overrun_tokens), ("probe", outcome.probe_tokens),
                            ("answer", outcome.answer_tokens)):
            metrics.tokens.labels(kind).inc(value)
        metrics.stops.labels(str(outcome.details.get("stop_reason"))).inc()
        metrics.probe_failures.inc(int(outcome.details.get("probe_failures") or 0))
        line = "chat policy=%s stop=%s tokens=%d (reasoning %d, probe %d, answer %d) %.2fs"
        args: list[Any] = [plan.policy, outcome.details.get("stop_reason"), outcome.completion_tokens,
                           outcome.reasoning_tokens, outcome.probe_tokens, outcome.answer_tokens, seconds]
        if settings.log_content:
            line += " messages=%r answer=%r"
            args += [plan.messages, outcome.content]
        log.info(line, *args)

    async def scheduled_program(plan: ChatPlan, engine_: Engine, events: asyncio.Queue[Any] | None) -> ChatOutcome:
        """The program in a scheduler session (its upstream requests queue and are ordered there),
        or straight on the engine with ``--scheduler off``."""
        st = state()
        scheduler = st.scheduler

        async def program(on: Engine) -> ChatOutcome:
            if st.shadow is not None and plan.policy == "full":
                model = plan.model or getattr(st.engine, "model", None) or st.engine.name
                return await run_shadow_program(on, plan, st.shadow, str(model), st.engine.name, events)
            return await run_chat_program(on, plan, events)

        if scheduler is None:
            return await program(engine_)
        budget = sc_program_budget(plan.sc) if plan.policy == "sc" else program_budget(plan.cot)
        deadline = None if plan.deadline_s is None else scheduler.clock() + plan.deadline_s
        async with scheduler.session(new_id(), budget=budget, deadline=deadline, priority=plan.priority,
                                     engine=engine_) as session:
            return await program(session)

    async def run_program(plan: ChatPlan, engine_: Engine, events: asyncio.Queue[Any] | None) -> ChatOutcome:
        try:
            return await asyncio.wait_for(scheduled_program(plan, engine_, events), settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise ProxyError(504, f"the request took longer than {settings.request_timeout_s:g} s",
                             "upstream_error", code="request_timeout") from None
        except EngineError as exc:
            metrics.upstream_errors.labels("chat").inc()
            raise engine_error(exc) from exc

    async def respond(request: Request, plan: ChatPlan, model: str) -> Response:
        st = state()
        engine_ = st.engine_for(plan)
        if plan.stream:
            return await respond_streaming(request, plan, engine_, model)
        started = time.perf_counter()
        async with Slot(st.admission):
            try:
                outcome = await unless_client_leaves(request.receive, run_program(plan, engine_, None))
            except ClientGone:
                metrics.disconnects.inc()
                raise
            except ProxyError as exc:
                metrics.requests.labels("chat", plan.policy, str(exc.status)).inc()
                raise
        record(outcome, plan, "200", time.perf_counter() - started)
        return JSONResponse(completion_object(new_id(), model, outcome))

    async def respond_streaming(request: Request, plan: ChatPlan, engine_: Engine, model: str) -> Response:
        st = state()
        slot = Slot(st.admission)
        await slot.__aenter__()  # waits in the bounded queue, or 429 before any byte is sent
        started = time.perf_counter()
        request_id = new_id()
        events: asyncio.Queue[Any] = asyncio.Queue()
        task = asyncio.ensure_future(run_program(plan, engine_, events))
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
            record(outcome, plan, "200", time.perf_counter() - started)

        async def done(client_left: bool) -> None:
            if client_left or not task.done():
                metrics.disconnects.inc()
            await cancel_and_wait(task)  # closing the program's upstream streams aborts their generation
            slot.release()

        return ClosingStreamingResponse(body(), on_close=done, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def plain_chat(request: Request, payload: dict[str, Any], plan: ChatPlan) -> Response:
        """Policy ``off`` on the embedded engine: an ordinary completion of the conversation."""
        if plan.passthrough_reason:
            raise bad_request(f"the embedded engine cannot serve this request: {plan.passthrough_reason}")
        st = state()
        max_tokens = payload.get("max_completion_tokens") or payload.get("max_tokens") or settings.plain_max_tokens
        temperature = payload.get("temperature")
        generation = GenerationRequest(
            prompt=st.engine.render_chat(plan.messages),
            max_tokens=int(max_tokens),
            temperature=1.0 if temperature is None else float(temperature),
            top_p=float(payload.get("top_p") or 1.0),
            seed=payload.get("seed"),
        )
        if plan.stream:
            return await plain_chat_streaming(plan, generation)
        async with Slot(st.admission):
            try:
                completion = await unless_client_leaves(
                    request.receive, asyncio.wait_for(st.engine.generate(generation), settings.request_timeout_s))
            except ClientGone:
                metrics.disconnects.inc()
                raise
            except asyncio.TimeoutError:
                raise ProxyError(504, f"the request took longer than {settings.request_timeout_s:g} s",
                                 "upstream_error", code="request_timeout") from None
            except EngineError as exc:
                raise engine_error(exc) from exc
        choice = completion.first
        outcome = ChatOutcome(
            reasoning="", content=choice.text, finish_reason="length" if choice.finish_reason == "length" else "stop",
            prompt_tokens=completion.prompt_tokens, reasoning_tokens=0, probe_tokens=0,
            answer_tokens=choice.completion_tokens, details={"policy": "off", "stop_reason": choice.finish_reason},
        )
        metrics.requests.labels("chat", "off", "200").inc()
        return JSONResponse(completion_object(new_id(), plan.model or st.engine.name, outcome))

    async def plain_chat_streaming(plan: ChatPlan, generation: GenerationRequest) -> Response:
        """Policy ``off`` on the embedded engine, streamed token by token as llama.cpp generates."""
        st = state()
        slot = Slot(st.admission)
        await slot.__aenter__()  # waits in the bounded queue, or 429 before any byte is sent
        started = time.perf_counter()

        def finished(outcome: ChatOutcome) -> None:
            metrics.requests.labels("chat", "off", "200").inc()
            metrics.duration.labels("chat", "off").observe(time.perf_counter() - started)

        async def done(client_left: bool) -> None:
            if client_left:
                metrics.disconnects.inc()
            slot.release()

        events = plain_events(st.engine, generation, new_id(), plan.model or st.engine.name, plan.include_usage,
                              on_done=finished)
        return ClosingStreamingResponse(events, on_close=done, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- routes --------------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        authorize(request)
        body = await read_body(request)
        payload = parse_json(body)
        st = state()
        plan = plan_chat(payload, await st.default_policy(), settings.cot, st.sc, settings.max_tokens_limit)
        if st.shadow is not None and plan.policy in ("cot", "full"):
            plan = shadow_plan(plan, settings.cot)  # never an early exit: full reasoning, probes beside it
        if plan.policy == "off":
            if st.passthrough is None:
                return await plain_chat(request, payload, plan)
            if "certaindex" in payload:  # our own field is the one thing not passed on
                payload.pop("certaindex")
                body = json.dumps(payload).encode()
            return await forward(request, body, "chat")
        model = plan.model or getattr(st.engine, "model", None) or st.engine.name
        return await respond(request, plan, str(model))

    @app.get("/health")
    async def health() -> JSONResponse:
        st = state()
        worker = {"worker_pid": os.getpid()} if settings.workers > 1 else {}
        if st.passthrough is None:
            return JSONResponse({"status": "ok", "engine": st.engine.name, **worker})
        try:
            reachable = await st.passthrough.reachable()
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            reachable = False
        return JSONResponse(
            {"status": "ok" if reachable else "degraded", "engine": st.engine.name, "upstream_reachable": reachable,
             **worker},
            status_code=200 if reachable else 503,
        )

    @app.get("/metrics")
    async def prometheus(request: Request) -> Response:
        authorize(request)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        authorize(request)
        st = state()
        if st.passthrough is not None:
            return await forward(request, b"", "models")
        return JSONResponse({"object": "list", "data": [
            {"id": st.engine.name, "object": "model", "created": 0, "owned_by": "certaindex"}]})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        authorize(request)
        body = await read_body(request)
        st = state()
        if st.passthrough is None:
            raise ProxyError(404, "/v1/completions is not served by the embedded engine; use /v1/chat/completions",
                             code="not_found")
        if "certaindex" in parse_json(body):
            raise bad_request("early exit runs on chat requests; /v1/completions is passed through untouched",
                              param="certaindex")
        return await forward(request, body, "completions")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def anything_else(request: Request, path: str) -> Response:
        authorize(request)
        return await forward(request, await read_body(request), "other")

    return app
