"""``GET /health`` (open to all: load balancers probe it) and ``GET /metrics`` (Prometheus; behind
the API key like every other route)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from certaindex.server.dependencies import authorize, proxy_state
from certaindex.server.state import ProxyState

router = APIRouter()


@router.get("/health")
async def health(state: ProxyState = Depends(proxy_state)) -> JSONResponse:
    worker = {"worker_pid": os.getpid()} if state.settings.workers > 1 else {}
    if state.passthrough is None:
        return JSONResponse({"status": "ok", "engine": state.engine.name, **worker})
    try:
        reachable = await state.passthrough.reachable()
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        reachable = False
    return JSONResponse(
        {"status": "ok" if reachable else "degraded", "engine": state.engine.name, "upstream_reachable": reachable,
         **worker},
        status_code=200 if reachable else 503,
    )


@router.get("/metrics", dependencies=[Depends(authorize)])
async def prometheus(state: ProxyState = Depends(proxy_state)) -> Response:
    return Response(state.metrics.render(), media_type=state.metrics.content_type)
