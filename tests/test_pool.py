"""Sharded connection pools: requests spread over small pools, each within its connection limit."""

from __future__ import annotations

import httpx

from certaindex.engines.http import HTTPEngine
from certaindex.engines.pool import SHARD_CONNECTIONS, ShardedClient


async def test_requests_rotate_over_small_pools() -> None:
    pool = ShardedClient(100)
    try:
        assert len(pool.clients) == -(-100 // SHARD_CONNECTIONS)
        picked = [pool.pick() for _ in range(2 * len(pool.clients))]
        assert set(map(id, picked)) == set(map(id, pool.clients))  # every pool is used, in turn
        assert picked[: len(pool.clients)] == picked[len(pool.clients):]
        for client in pool.clients:
            assert client._transport._pool._max_connections <= SHARD_CONNECTIONS
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
    assert [c.text for c in completion.choices] == ["ok"] * 3 and seen == ["/v1/completions"] * 3
    await engine.aclose()
