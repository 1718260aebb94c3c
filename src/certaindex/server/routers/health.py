"""``GET /health`` (open to all: load balancers probe it) and ``GET /metrics`` (Prometheus; behind
the API key like every other route).

``/health`` answers from memory (the upstream's state as the background watch last read it), so it
never waits on a hung upstream. With ``--api-key`` set, only an authorised caller sees the engine,
the upstream's models and the early-exit profiles; others get the status alone."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from certaindex.server.dependencies import authorize, is_authorised, proxy_state
from certaindex.server.state import ProxyState

router = APIRouter()


def _details(state: ProxyState) -> dict[str, Any]:
    """What an authorised caller also sees: the engine, the upstream's models and the profiles."""
    served = state.served_models()
    details: dict[str, Any] = {"engine": state.engine.name}
    if state.watch is not None:
        snapshot = state.watch.snapshot
        details["upstream_models"] = list(served)
        details["upstream_checked_s_ago"] = (None if snapshot.checked_at is None
                                             else round(time.monotonic() - snapshot.checked_at, 1))
        if snapshot.error:
            details["upstream_error"] = snapshot.error
    if state.profiles is not None:
        details.update(state.profiles.report(served, state.models_without_logprobs()))
    return details


@router.get("/health")
async def health(request: Request, state: ProxyState = Depends(proxy_state)) -> JSONResponse:
    worker = {"worker_pid": os.getpid()} if state.settings.workers > 1 else {}
    shown = _details(state) if is_authorised(request) else {}
    if state.watch is None:
        return JSONResponse({"status": "ok", **shown, **worker})
    reachable = bool(state.watch.snapshot.reachable)
    return JSONResponse(
        {"status": "ok" if reachable else "degraded", "upstream_reachable": reachable, **shown, **worker},
        status_code=200 if reachable else 503,
    )


@router.get("/metrics", dependencies=[Depends(authorize)])
async def prometheus(state: ProxyState = Depends(proxy_state)) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
