"""Bounded concurrency with backpressure: a fixed number of requests are served at once, a bounded
number wait for a slot, and the rest are refused at once with 429 rather than piling up in memory."""

from __future__ import annotations

import asyncio

from certaindex.server.errors import ProxyError


class Admission:
    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(max_concurrency)
        self.active = 0
        self.waiting = 0

    async def acquire(self) -> None:
        """Take a slot, waiting in the bounded queue; 429 when the queue is full."""
        if self.active >= self.max_concurrency and self.waiting >= self.max_queue:
            raise ProxyError(
                429,
                f"certaindex is serving {self.active} requests with {self.waiting} waiting; retry shortly",
                "server_busy", code="server_busy", headers={"Retry-After": "1"},
            )
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()


class Slot:
    """One admitted request's slot, released exactly once however the request ends."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._held = False

    async def __aenter__(self) -> "Slot":
        await self._admission.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._admission.release()
