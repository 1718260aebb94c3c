"""The OpenAI-compatible proxy: early exit for chat requests it understands, passthrough for the rest.

Routes: ``/v1/chat/completions`` (certaindex programs, or passthrough), ``/v1/completions`` and
every other path (passthrough), ``/v1/models``, ``/health`` and ``/metrics``. With no upstream the
embedded engine serves chat and completions itself. Each concern is a router in
``server/routers/``; this module builds the app: its state (lifespan), error handlers and routers.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from certaindex.engines import make_engine
from certaindex.engines.base import Engine
from certaindex.engines.http import normalise_base_url
from certaindex.scheduler import Scheduler, SchedulerCore
from certaindex.server.admission import Admission
from certaindex.server.errors import ProxyError
from certaindex.server.guard import RequestGuard
from certaindex.server.metrics import ProxyMetrics
from certaindex.server.model_profiles import ModelProfiles
from certaindex.server.passthrough import Passthrough
from certaindex.server.routers import chat, health, models, passthrough
from certaindex.server.settings import ServerSettings
from certaindex.server.shadow import ShadowRecorder
from certaindex.server.state import ProxyState
from certaindex.server.streaming import ClientGone, cancel_and_wait
from certaindex.server.upstream_watch import UpstreamWatch

__all__ = ["ProxyState", "WorkerHeader", "create_app"]

log = logging.getLogger("certaindex.server")


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


def _build_engine(settings: ServerSettings) -> Engine:
    return make_engine(
        settings.upstream or "embedded", model=settings.model, chat_template=settings.chat_template,
        api_key=settings.upstream_api_key, extra_body=settings.engine_extra_body or None,
        timeout_s=settings.upstream_timeout_s, verbose=settings.verbose, token_ids=settings.token_ids,
        logprobs=settings.embedded_logprobs, headers_timeout_s=settings.upstream_headers_timeout_s,
    )


def _build_state(settings: ServerSettings, engine: Engine, admission: Admission, metrics: ProxyMetrics) -> ProxyState:
    """The running proxy's parts: passthrough to the upstream(s), scheduler, shadow recorder."""
    passthrough_ = None
    if settings.upstream:
        passthrough_ = Passthrough(
            [normalise_base_url(url) for url in settings.upstream.split(",")], settings.upstream_api_key,
            strip_client_auth=settings.api_key is not None, timeout_s=settings.upstream_timeout_s,
            headers_timeout_s=settings.upstream_headers_timeout_s,
        )
    scheduler = None
    if settings.scheduler != "off":
        core = SchedulerCore(settings.scheduler, capacity=settings.scheduler_capacity, aging_s=settings.aging_s)
        scheduler = Scheduler(engine, core, engine_priorities=settings.engine_priorities)
        metrics.watch_scheduler(core)
    state = ProxyState(settings, engine, passthrough_, admission, metrics, scheduler)
    state.watch = UpstreamWatch(passthrough_) if passthrough_ is not None else None
    state.profiles = ModelProfiles(settings, bool(getattr(engine, "returns_logprobs", False)), engine.name)
    if settings.shadow_dir is not None:
        state.shadow = ShadowRecorder(settings.shadow_dir, metrics, settings.shadow_max_file_bytes)
    return state


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProxyError)
    async def proxy_error(request: Request, exc: ProxyError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; nginx's code for "client closed request"
    # Any other exception: RequestGuard answers it (a 500 that keeps the connection open).


def create_app(settings: ServerSettings, engine: Engine | None = None) -> FastAPI:
    """The proxy app. ``engine``: use this engine instead of building one from ``settings``
    (tests; embedding the proxy in a larger program); the caller closes it."""
    admission = Admission(settings.max_concurrency, settings.max_queue)
    metrics = ProxyMetrics(lambda: admission.active, lambda: admission.waiting, multiprocess=settings.workers > 1)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        inner = engine or _build_engine(settings)
        state = app.state.proxy = _build_state(settings, inner, admission, metrics)
        if state.shadow is not None:
            app.state.shadow = state.shadow
        sampler = asyncio.ensure_future(_sample_gauges(metrics)) if metrics.multiprocess else None
        if state.watch is not None:
            await state.watch.start()  # the served models, read once before the first request
            if state.watch.first_warning is not None:
                logging.getLogger("certaindex.server").warning(state.watch.first_warning)
        try:
            yield
        finally:
            if sampler is not None:
                await cancel_and_wait(sampler)
            if state.watch is not None:
                await state.watch.aclose()
            if state.shadow is not None:
                await state.shadow.aclose()  # the traces being written are finished
            if state.passthrough is not None:
                await state.passthrough.aclose()
            if engine is None:  # an engine handed in belongs to the caller
                await inner.aclose()

    app = FastAPI(title="certaindex proxy", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.state.admission = admission
    app.state.metrics = metrics
    if settings.workers > 1:
        app.add_middleware(WorkerHeader)
    app.add_middleware(RequestGuard, timeout_s=settings.request_timeout_s)  # outermost: deadline, no 500 drops
    _add_error_handlers(app)
    for router in (chat.router, models.router, health.router, passthrough.router):  # its catch-all last
        app.include_router(router)
    return app
