"""FastAPI dependencies shared by the proxy's routers: the proxy's state, the client's API key and
the request body (bounded in size, parsed as one JSON object)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request

from certaindex.server.errors import ProxyError
from certaindex.server.request_body import parse_json_object
from certaindex.server.settings import ServerSettings
from certaindex.server.state import ProxyState


def proxy_state(request: Request) -> ProxyState:
    """The running proxy's state, built by the app's lifespan."""
    return request.app.state.proxy


def server_settings(request: Request) -> ServerSettings:
    """The proxy's settings (known before the lifespan has run)."""
    return request.app.state.settings


def is_authorised(request: Request) -> bool:
    """Whether the client sent ``Authorization: Bearer <--api-key>``, or no key is set."""
    api_key = server_settings(request).api_key
    if api_key is None:
        return True
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    return hmac.compare_digest(token.encode(), api_key.encode())


def authorize(request: Request) -> None:
    """401 unless the client sends ``Authorization: Bearer <--api-key>`` (when one is set)."""
    if not is_authorised(request):
        raise ProxyError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                         "authentication_error", code="invalid_api_key")


async def request_body(request: Request) -> bytes:
    """The raw body; 413 beyond ``max_body_bytes``, declared or sent."""
    limit = server_settings(request).max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProxyError(413, f"the request body is over {limit} bytes", code="body_too_large")
    body = await request.body()
    if len(body) > limit:
        raise ProxyError(413, f"the request body is over {limit} bytes", code="body_too_large")
    return body


def parse_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object; a 400 naming the problem otherwise (server/request_body.py)."""
    return parse_json_object(body)
