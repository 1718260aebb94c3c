"""Many small HTTP connection pools instead of one large one.

httpcore looks at every pooled connection each time a request starts or a response is closed, so
one pool of a thousand connections costs O(connections) per event and a thousand concurrent
streams cost O(n^2): measured here, a second wave of 1,000 proxied streams took twice as long as the
first and some timed out, with the proxy's CPU spent in ``_assign_requests_to_connections``.
Requests are spread over pools of at most ``SHARD_CONNECTIONS`` connections instead: each goes to
the least busy pool, the first on ties, so under light load requests reuse the warm connections of
the first pool (round-robin made every request of a quiet proxy open a fresh connection once the
idle ones expired: about 10 ms before the first token on this VM).
"""

from __future__ import annotations

import math
import ssl
from typing import Any

import certifi
import httpx

SHARD_CONNECTIONS = 32


class ShardedClient:
    def __init__(self, max_connections: int, **client_kwargs: Any) -> None:
        shards = max(1, math.ceil(max_connections / SHARD_CONNECTIONS))
        per_shard = min(max_connections, SHARD_CONNECTIONS)
        limits = httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard)
        # One TLS context for all pools: each costs about 1.5 MB and a read of the CA bundle.
        client_kwargs.setdefault("verify", ssl.create_default_context(cafile=certifi.where()))
        self.clients = [httpx.AsyncClient(limits=limits, **client_kwargs) for _ in range(shards)]

    def pick(self) -> httpx.AsyncClient:
        """The least busy pool (the first on ties). Use it for one whole request (and its streamed response)."""
        if len(self.clients) == 1:
            return self.clients[0]
        return min(self.clients, key=_in_flight)

    def replace(self, client: httpx.AsyncClient) -> None:
        """Use this one client for everything (tests with a mock transport)."""
        self.clients = [client]

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def _in_flight(client: httpx.AsyncClient) -> int:
    """Requests open on ``client``'s pool, sent or waiting, until their responses are closed
    (httpcore's own list; 0 where a transport has none, e.g. a mock)."""
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    return len(getattr(pool, "_requests", ()))
