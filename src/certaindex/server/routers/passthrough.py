"""``POST /v1/completions`` and every path no other router serves: passed to the upstream untouched
(404 on the embedded engine). Include this router last: its catch-all route matches everything."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from certaindex.server.dependencies import authorize, parse_json, proxy_state, request_body
from certaindex.server.errors import ProxyError, bad_request
from certaindex.server.forwarding import forward
from certaindex.server.state import ProxyState

router = APIRouter(dependencies=[Depends(authorize)])


@router.post("/v1/completions")
async def completions(request: Request, body: bytes = Depends(request_body),
                      state: ProxyState = Depends(proxy_state)) -> Response:
    if state.passthrough is None:
        raise ProxyError(404, "/v1/completions is not served by the embedded engine; use /v1/chat/completions",
                         code="not_found")
    if "certaindex" in parse_json(body):
        raise bad_request("early exit runs on chat requests; /v1/completions is passed through untouched",
                          param="certaindex")
    return await forward(request, state, body, "completions")


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
async def anything_else(request: Request, path: str, body: bytes = Depends(request_body),
                        state: ProxyState = Depends(proxy_state)) -> Response:
    return await forward(request, state, body, "other")
