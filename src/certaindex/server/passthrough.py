"""Relay requests the proxy does not take over to the upstream server, byte for byte.

Streams are relayed as they arrive; when the client goes away the upstream response is closed,
which makes vLLM, SGLang and llama.cpp abort the generation. Upstream faults become OpenAI-style
errors: before the first byte as a 502/504 response, mid-stream as a final ``error`` event.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import httpx

from certaindex.engines.deadline import capped
from certaindex.engines.pool import ShardedClient
from certaindex.server.annotate import annotate_events, annotate_whole
from certaindex.server.errors import ProxyError, error_body

# Hop-by-hop and framing headers are the proxy's own business on each leg.
DROPPED_REQUEST_HEADERS = frozenset({
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade",
    "accept-encoding", "te", "trailer", "proxy-authorization",
})
DROPPED_RESPONSE_HEADERS = frozenset({
    "content-length", "connection", "keep-alive", "transfer-encoding", "content-encoding", "server", "date",
})


def wants_stream(body: bytes) -> bool:
    """Whether a request body asks for a streamed answer (``"stream": true``)."""
    if b'"stream"' not in body:
        return False
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and payload.get("stream") is True


class Passthrough:
    """Relays to one upstream, or round-robin over replicas, moving on when one refuses connections."""

    def __init__(self, root_urls: list[str], upstream_api_key: str | None, strip_client_auth: bool,
                 timeout_s: float, max_connections: int = 1024, headers_timeout_s: float = 60.0) -> None:
        self.root_urls = root_urls
        self.timeout_s = timeout_s
        self.headers_timeout_s = headers_timeout_s
        self.upstream_api_key = upstream_api_key
        self.strip_client_auth = strip_client_auth
        self._next = 0
        self.pool = ShardedClient(max_connections, timeout=httpx.Timeout(timeout_s, connect=10.0))

    @property
    def root_url(self) -> str:
        return ",".join(self.root_urls)

    def _rotation(self) -> list[str]:
        start = self._next % len(self.root_urls)
        self._next += 1
        return self.root_urls[start:] + self.root_urls[:start]

    def request_headers(self, headers: dict[str, str]) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() not in DROPPED_REQUEST_HEADERS}
        if self.upstream_api_key is not None or self.strip_client_auth:
            out = {k: v for k, v in out.items() if k.lower() != "authorization"}
        if self.upstream_api_key is not None:
            out["authorization"] = f"Bearer {self.upstream_api_key}"
        return out

    async def open(self, method: str, path: str, query: str, headers: dict[str, str],
                   body: bytes) -> httpx.Response:
        """Send the request and return the upstream response with its body not yet read. A replica
        that refuses the connection is skipped (nothing was sent to it); other faults are final.
        A streamed request's headers must come within ``headers_timeout_s``; a non-streamed one's
        come with its whole answer, within ``timeout_s``; both are cut at the request's deadline."""
        failure: ProxyError | None = None
        wait = capped(self.headers_timeout_s if wants_stream(body) else self.timeout_s)
        for root in self._rotation():
            client = self.pool.pick()
            request = client.build_request(
                method, f"{root}{path}" + (f"?{query}" if query else ""),
                headers=self.request_headers(headers), content=body,
                timeout=httpx.Timeout(capped(self.timeout_s), connect=min(10.0, wait)),
            )
            try:
                async with asyncio.timeout(wait):
                    return await client.send(request, stream=True)
            except TimeoutError:
                raise ProxyError(504, f"the upstream at {root} sent no response headers in {wait:.3g} s",
                                 "upstream_error", code="upstream_timeout") from None
            except httpx.ConnectError as exc:
                failure = ProxyError(502, f"cannot reach the upstream at {root}: {exc or type(exc).__name__}",
                                     "upstream_error", code="upstream_unreachable")
            except httpx.TimeoutException as exc:
                raise ProxyError(504, f"the upstream at {root} timed out: {type(exc).__name__}",
                                 "upstream_error", code="upstream_timeout") from exc
            except httpx.HTTPError as exc:
                raise ProxyError(502, f"the upstream at {root} failed: {exc or type(exc).__name__}",
                                 "upstream_error", code="upstream_error") from exc
        assert failure is not None
        raise failure

    @staticmethod
    def response_headers(response: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k.lower() not in DROPPED_RESPONSE_HEADERS}

    def relay(self, response: httpx.Response, note: dict[str, Any] | None = None) -> AsyncIterator[bytes]:
        """The upstream body as it arrives; with ``note`` (a fallback to name), a chat completion
        in it carries the note (:mod:`certaindex.server.annotate`)."""
        raw = self._relay(response)
        if note is None:
            return raw
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return annotate_events(raw, note)
        if response.headers.get("content-type", "").startswith("application/json"):
            return annotate_whole(raw, note)
        return raw

    async def _relay(self, response: httpx.Response) -> AsyncIterator[bytes]:
        """The upstream body as it arrives. A break mid-way ends an event stream with an error
        event (so no client takes a cut-off stream for a finished one)."""
        event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
        try:
            async for piece in response.aiter_raw():
                yield piece
        except httpx.HTTPError as exc:
            if not event_stream:
                raise
            message = f"the upstream stream broke off: {exc or type(exc).__name__}"
            yield b"\n\ndata: " + json.dumps(error_body(message, "upstream_error", code="upstream_stream_broken")).encode() + b"\n\n"
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.pool.aclose()
