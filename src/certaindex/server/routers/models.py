"""``GET /v1/models``: the upstream's list, passed through, or the embedded engine's one model."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from certaindex.server.dependencies import authorize, proxy_state
from certaindex.server.forwarding import forward
from certaindex.server.state import ProxyState

router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/v1/models")
async def models(request: Request, state: ProxyState = Depends(proxy_state)) -> Response:
    if state.passthrough is not None:
        return await forward(request, state, b"", "models")
    return JSONResponse({"object": "list", "data": [
        {"id": state.engine.name, "object": "model", "created": 0, "owned_by": "certaindex"}]})
