"""HTTPEngine's setup read (the model, the chat template): requests that come while it is in flight
share it, each waiting at most until its own deadline, and a failed read is read again by the next
request. Against a small fake upstream on loopback that counts its reads; outcomes and counts are
asserted, times only under generous bounds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

import pytest

from certaindex.engines.base import EngineError
from certaindex.engines.deadline import REQUEST_DEADLINE
from certaindex.engines.http import HTTPEngine

GENEROUS_S = 20.0


@dataclass
class FakeSetupUpstream:
    """Answers ``GET /v1/models`` as scripted: ``hang`` never answers, ``fail`` answers HTTP 400,
    ``ok`` answers after ``delay_s``; one script entry per read, the last repeated. Any other path
    gets a 404 (so the template is guessed from the model name)."""

    script: list[str]
    delay_s: float = 0.0
    model_reads: int = 0
    paths: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1].decode()
                self.paths.append(path)
                if path != "/v1/models":
                    await self._send(writer, 404, {"error": {"message": "no such path"}})
                    continue
                step = self.script[min(self.model_reads, len(self.script) - 1)]
                self.model_reads += 1
                if step == "hang":
                    await asyncio.sleep(3600)
                if step == "fail":
                    await self._send(writer, 400, {"error": {"message": "not today"}})
                    continue
                await asyncio.sleep(self.delay_s)
                await self._send(writer, 200, {"object": "list", "data": [{"id": "fake-reasoner", "owned_by": "fake"}]})
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
                     .encode() + data)
        await writer.drain()


@contextlib.asynccontextmanager
async def upstream(fake: FakeSetupUpstream) -> AsyncIterator[str]:
    server = await asyncio.start_server(fake.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def connect_within(engine: HTTPEngine, deadline_s: float | None) -> BaseException | None:
    """``engine.connect()`` as a request whose deadline is ``deadline_s`` from now; its error, if any."""
    REQUEST_DEADLINE.set(None if deadline_s is None else time.monotonic() + deadline_s)
    try:
        await engine.connect()
    except EngineError as exc:
        return exc
    return None


async def test_concurrent_first_requests_to_a_hung_upstream_share_one_setup_read() -> None:
    fake = FakeSetupUpstream(["hang"])
    async with upstream(fake) as url:
        engine = HTTPEngine(url, headers_timeout_s=1.0, max_retries=0)
        started = time.monotonic()
        errors = await asyncio.gather(*(connect_within(engine, None) for _ in range(6)))
        elapsed = time.monotonic() - started
        await engine.aclose()
    assert fake.model_reads == 1  # one read, not one per request in turn
    assert all(isinstance(e, EngineError) and "timed out on /v1/models" in str(e) for e in errors), errors
    assert elapsed < GENEROUS_S  # one headers timeout (1 s), not six in a row


async def test_each_request_waits_for_the_shared_read_only_until_its_own_deadline() -> None:
    fake = FakeSetupUpstream(["hang"])
    async with upstream(fake) as url:
        engine = HTTPEngine(url, headers_timeout_s=600.0, max_retries=0)
        first = asyncio.ensure_future(connect_within(engine, None))  # e.g. the proxy's start-up read
        while fake.model_reads == 0:
            await asyncio.sleep(0.01)
        started = time.monotonic()
        waiting = asyncio.gather(*(connect_within(engine, 0.3) for _ in range(3)))
        try:  # bounded here, so a wait past the deadlines fails the test rather than hanging it
            errors = await asyncio.wait_for(waiting, GENEROUS_S)
            still_reading = not first.done()  # leaving at a deadline leaves the shared read running
        finally:
            elapsed = time.monotonic() - started
            first.cancel()
            await engine.aclose()  # cancels the read in flight
        with contextlib.suppress(asyncio.CancelledError):
            await first
    assert still_reading
    assert fake.model_reads == 1
    assert all(isinstance(e, EngineError) and "before this request's deadline" in str(e) for e in errors), errors
    assert elapsed < GENEROUS_S


async def test_a_shared_read_that_answers_serves_every_waiter_once() -> None:
    fake = FakeSetupUpstream(["ok"], delay_s=0.2)
    async with upstream(fake) as url:
        engine = HTTPEngine(url, headers_timeout_s=30.0, max_retries=0)
        errors = await asyncio.gather(*(connect_within(engine, 30.0) for _ in range(5)))
        await engine.connect()  # ready: no further read
        await engine.aclose()
    assert errors == [None] * 5
    assert engine.model == "fake-reasoner"
    assert fake.model_reads == 1


async def test_a_failed_setup_read_is_read_again_by_the_next_request() -> None:
    fake = FakeSetupUpstream(["fail", "ok"])
    async with upstream(fake) as url:
        engine = HTTPEngine(url, headers_timeout_s=30.0, max_retries=0)
        first = await connect_within(engine, 30.0)
        second = await connect_within(engine, 30.0)
        await engine.aclose()
    assert isinstance(first, EngineError) and "HTTP 400" in str(first)
    assert second is None and engine.model == "fake-reasoner"
    assert fake.model_reads == 2


@pytest.mark.parametrize("waiters", [1, 4])
async def test_a_derived_view_shares_its_parents_setup_read(waiters: int) -> None:
    fake = FakeSetupUpstream(["ok"], delay_s=0.2)
    async with upstream(fake) as url:
        engine = HTTPEngine(url, headers_timeout_s=30.0, max_retries=0)
        views = [engine.derive({"top_k": 20}) for _ in range(waiters)]
        errors = await asyncio.gather(connect_within(engine, 30.0), *(connect_within(v, 30.0) for v in views))
        await engine.aclose()
    assert errors == [None] * (waiters + 1)
    assert all(v.model == "fake-reasoner" for v in views)
    assert fake.model_reads == 1
