"""Sharded connection pools: requests spread over small pools, each within its connection limit."""

from __future__ import annotations

import httpx

from certaindex.engines.base import GenerationRequest
from certaindex.engines.http import HTTPEngine
from certaindex.engines.pool import SHARD_CONNECTIONS, ShardedClient


async def test_requests_go_to_the_least_busy_pool_and_reuse_warm_connections_when_quiet() -> None:
    from contextlib import AsyncExitStack

    from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

    pool = ShardedClient(100)
    try:
        assert len(pool.clients) == -(-100 // SHARD_CONNECTIONS)
        for client in pool.clients:
            assert client._transport._pool._max_connections <= SHARD_CONNECTIONS
        assert {id(pool.pick()) for _ in range(5)} == {id(pool.clients[0])}  # quiet: always the first
        with serve_in_thread(FakeUpstream(token_delay_s=0.05).app()) as url:
            async with AsyncExitStack() as open_streams:
                used = []
                for _ in range(2 * len(pool.clients)):  # held open together
                    client = pool.pick()
                    used.append(id(client))
                    await open_streams.enter_async_context(client.stream(
                        "POST", f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 3, "stream": True}))
                assert sorted(used.count(id(c)) for c in pool.clients) == [2] * len(pool.clients)  # spread
            assert pool.pick() is pool.clients[0]  # all closed: back to the first pool's warm connections
    finally:
        await pool.aclose()


async def test_a_small_limit_is_one_pool_of_that_size() -> None:
    pool = ShardedClient(4)
    try:
        assert len(pool.clients) == 1 and pool.clients[0]._transport._pool._max_connections == 4
    finally:
        await pool.aclose()


async def test_engine_uses_a_replaced_client_for_everything() -> None:
    engine = HTTPEngine("http://test", model="m", chat_template="chatml")
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"choices": [{"text": "ok", "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    engine._client = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(handler))
    from certaindex.engines.base import GenerationRequest

    completion = await engine.generate(GenerationRequest(prompt="hi", max_tokens=2, n=3))
    assert [c.text for c in completion.choices] == ["ok"] * 3
    assert [p for p in seen if p != "/v1/models"] == ["/v1/completions"] * 3  # models: the concurrency check
    await engine.aclose()


async def test_a_stream_read_to_its_end_gives_its_connection_back_for_the_next_request() -> None:
    """A streamed completion ends with ``[DONE]`` and then the end of the chunked body; reading only
    up to ``[DONE]`` closed the connection, so every request of a quiet proxy opened a new one."""
    from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

    fake = FakeUpstream(finish_after=4)
    inner = fake.app()
    connections: list[tuple[str, int]] = []

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] == "/v1/completions":
            connections.append(tuple(scope["client"]))
        await inner(scope, receive, send)

    with serve_in_thread(app) as url:
        engine = HTTPEngine(url, model="fake-reasoner", chat_template="chatml", max_connections=1)
        try:
            for _ in range(3):
                deltas = [d async for d in engine.stream(GenerationRequest(prompt="x", max_tokens=8))]
                assert deltas[-1].finish_reason == "stop"
        finally:
            await engine.aclose()
    assert len(connections) == 3 and len(set(connections)) == 1  # one connection, reused


async def test_a_server_that_keeps_the_body_open_after_done_is_not_waited_for() -> None:
    """Reading past ``[DONE]`` is bounded: a server that never ends the body still gives a finished
    stream (waiting for the end would run into the read timeout and fail the stream)."""
    import asyncio

    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from tests.misbehaving_upstream import serve_in_thread

    async def events():  # type: ignore[no-untyped-def]
        yield b'data: {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop"}]}\n\n'
        yield b"data: [DONE]\n\n"
        await asyncio.sleep(3600)

    async def completions(request):  # type: ignore[no-untyped-def]
        return StreamingResponse(events(), media_type="text/event-stream")

    with serve_in_thread(Starlette(routes=[Route("/v1/completions", completions, methods=["POST"])])) as url:
        engine = HTTPEngine(url, model="m", chat_template="chatml", timeout_s=2.0, concurrent_streams=True)
        try:
            deltas = [d async for d in engine.stream(GenerationRequest(prompt="x", max_tokens=8))]
        finally:
            await engine.aclose()
    assert "".join(d.text for d in deltas) == "hi" and deltas[-1].finish_reason == "stop"
