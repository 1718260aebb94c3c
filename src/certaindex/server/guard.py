"""Every HTTP request ends with a complete response, by its deadline, on a connection that survives.

Starlette answers an unexpected exception with a 500 and then re-raises it, and uvicorn closes the
connection: the client's next request on that keep-alive connection fails with "connection reset".
Nothing bounded a request as a whole either: a hung upstream could hold a client for as long as
every upstream timeout and retry allowed. This pure ASGI middleware, outermost but for Starlette's
own, does both jobs:

- it sets the request's deadline (arrival + ``--request-timeout``) where engines read it
  (:mod:`certaindex.engines.deadline`), and cancels the request ``grace_s`` after it if the inner
  504 did not come first;
- a failure before the response started is answered as an OpenAI error (504 for the deadline, 500
  otherwise); one after an event stream started ends it with an ``error`` event, then a clean end
  of the body. Only a plain body cut mid-way closes the connection (its end must not look complete).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from certaindex.engines.deadline import REQUEST_DEADLINE
from certaindex.server.errors import ProxyError, error_body

log = logging.getLogger("certaindex.server")


class _Progress:
    """What the inner app has sent so far."""

    def __init__(self) -> None:
        self.started = False
        self.event_stream = False
        self.finished = False
        self.taken_over = False  # the guard answers now: late messages of the inner app are dropped


def _failure(exc: BaseException, timeout_s: float) -> ProxyError:
    if isinstance(exc, TimeoutError):
        return ProxyError(504, f"the request took longer than {timeout_s:g} s (--request-timeout)",
                          "upstream_error", code="request_timeout")
    return ProxyError(500, f"internal error: {type(exc).__name__}", "server_error")


class RequestGuard:
    """ASGI middleware: the request deadline, and a complete answer to every failure (module docstring)."""

    def __init__(self, app: Any, timeout_s: float, grace_s: float = 0.5) -> None:
        self.app = app
        self.timeout_s = timeout_s
        self.grace_s = grace_s

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        progress = _Progress()

        async def tracked_send(message: dict[str, Any]) -> None:
            if progress.taken_over:
                return
            if message["type"] == "http.response.start":
                progress.started = True
                headers = dict(message.get("headers") or [])
                progress.event_stream = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                progress.finished = True
            await send(message)

        token = REQUEST_DEADLINE.set(time.monotonic() + self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s + self.grace_s):
                await self.app(scope, receive, tracked_send)
            return
        except Exception as exc:  # noqa: BLE001 - every failure gets an answer; TimeoutError included
            if not isinstance(exc, TimeoutError):
                log.exception("unexpected error serving %s", scope.get("path"))
            failure = _failure(exc, self.timeout_s)
        finally:
            REQUEST_DEADLINE.reset(token)
        progress.taken_over = True
        await self._answer(send, progress, failure)

    @staticmethod
    async def _answer(send: Any, progress: _Progress, failure: ProxyError) -> None:
        if progress.finished:
            return  # the response was complete: the failure came in clean-up, already logged
        if not progress.started:
            body = json.dumps(failure.body()).encode()
            await send({"type": "http.response.start", "status": failure.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if not progress.event_stream:
            raise RuntimeError(f"a response body was cut off: {failure.message}")  # the server closes the connection
        event = b"data: " + json.dumps(error_body(failure.message, failure.type, code=failure.code)).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
