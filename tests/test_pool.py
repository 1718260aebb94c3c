"""Sharded connection pools: requests spread over small pools, each within its connection limit."""

from __future__ import annotations

import httpx

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
