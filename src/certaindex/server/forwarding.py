"""Relaying a request to the upstream untouched (policy ``off``, ``/v1/completions``, every other
path), inside an admission slot, counted in the metrics."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from certaindex.server.admission import Slot
from certaindex.server.errors import ProxyError
from certaindex.server.state import ProxyState
from certaindex.server.streaming import ClientGone, ClosingStreamingResponse, unless_client_leaves


async def forward(request: Request, state: ProxyState, body: bytes, endpoint: str,
                  note: dict[str, Any] | None = None) -> Response:
    """The upstream's answer to this request with ``body``, streamed back as it comes; 404 without
    an upstream. ``endpoint`` labels the metrics; ``note`` names a fallback in a relayed chat
    completion (server/annotate.py)."""
    if state.passthrough is None:
        raise ProxyError(404, f"{request.url.path} is not served by the embedded engine", code="not_found")
    metrics = state.metrics
    passthrough = state.passthrough
    slot = Slot(state.admission)
    await slot.__aenter__()
    started = time.perf_counter()
    try:
        # A non-streaming upstream sends its headers only when it has generated everything:
        # a client that leaves meanwhile closes the upstream request (which aborts it).
        upstream = await unless_client_leaves(request.receive, passthrough.open(
            request.method, request.url.path, request.url.query, dict(request.headers), body))
    except ClientGone:
        slot.release()
        metrics.disconnects.inc()
        raise
    except BaseException:
        slot.release()
        metrics.upstream_errors.labels(endpoint).inc()
        if state.watch is not None:
            state.watch.poke()
        raise
    status = str(upstream.status_code)
    headers = passthrough.response_headers(upstream)

    async def done(client_left: bool) -> None:
        await upstream.aclose()
        slot.release()
        if client_left:
            metrics.disconnects.inc()
        metrics.requests.labels(endpoint, "off", status).inc()
        metrics.duration.labels(endpoint, "off").observe(time.perf_counter() - started)

    return ClosingStreamingResponse(passthrough.relay(upstream, note), on_close=done,
                                    status_code=upstream.status_code, headers=headers)
