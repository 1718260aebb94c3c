"""A streaming response that notices a client leaving at once, and always cleans up after itself.

Starlette only notices a disconnect on its next write under ASGI 2.4; a proxy that is probing
between reasoning chunks may not write for a while, and meanwhile the upstream would go on
generating for nobody. Here a listener runs beside the stream on every ASGI version, and
``on_close`` runs however the response ends (finished, failed, cancelled, client gone).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Awaitable, Callable, TypeVar

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

T = TypeVar("T")


async def wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_and_wait(*tasks: "asyncio.Future[Any]") -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


class ClientGone(Exception):
    """The client disconnected; its work was cancelled."""


async def unless_client_leaves(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work`` while listening for the client to leave; if it leaves first, cancel the work
    and raise ClientGone. For what runs before a response's first byte (a whole non-streaming
    answer, an upstream's response headers): Starlette would notice the disconnect only when it
    writes, after the engine had generated everything for nobody. Cancelling the work aborts it:
    the embedded engine's llama.cpp stops at its next token, an HTTP request closes its connection."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            raise ClientGone()
        return task.result()
    finally:
        await cancel_and_wait(task, listener)


class ClosingStreamingResponse(StreamingResponse):
    def __init__(self, content: Any, on_close: Callable[[bool], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self.stream_response(send))
        listening = asyncio.ensure_future(wait_for_disconnect(receive))
        client_left = False
        try:
            await asyncio.wait({streaming, listening}, return_when=asyncio.FIRST_COMPLETED)
            client_left = listening.done() and not streaming.done()
            if streaming.done() and not streaming.cancelled():
                error = streaming.exception()
                if isinstance(error, OSError):  # the client left while we were writing (ASGI 2.4)
                    client_left = True
                elif error is not None:
                    raise error
        finally:
            await cancel_and_wait(streaming, listening)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            await self._on_close(client_left)
