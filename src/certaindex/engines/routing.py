"""Pure routing of requests over engine replicas: affinity keys, rendezvous hashing, load, health.

No I/O and no clock reads (callers pass ``now``), so every decision can be tested exactly.
:class:`certaindex.engines.replicas.ReplicatedEngine` drives it.

Why affinity: every request of one reasoning program (reasoning chunks, probes, samples) continues
the same rendered chat prompt, so sending them all to one replica lets its prefix cache compute that
prompt once. Why rendezvous (highest-random-weight) hashing: adding or removing a replica moves only
the keys that the changed replica wins (about 1/N of them), so most programs keep their warm cache.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable, Sequence


def affinity_digest(text: str) -> bytes:
    """A stable digest of a key text (stable across processes, unlike ``hash``)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def rendezvous_score(replica_id: str, key: bytes) -> int:
    """The weight of ``replica_id`` for ``key``; the highest weight wins."""
    digest = hashlib.blake2b(replica_id.encode("utf-8") + b"\0" + key, digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(replica_ids: Sequence[str], key: bytes) -> list[int]:
    """Indices of ``replica_ids`` from most to least preferred for ``key`` (ties: lower index)."""
    return sorted(range(len(replica_ids)), key=lambda i: (-rendezvous_score(replica_ids[i], key), i))


class AffinityKeys:
    """Turns a prompt into the key of the program it belongs to.

    Prompts rendered by the engine's ``render_chat`` are remembered (a bounded LRU): a prompt that
    extends a remembered one is keyed by the longest such prefix, which is exactly "this program"
    whatever the length of a shared system prompt. Other prompts fall back to their first
    ``prefix_chars`` characters. Lookup walks the distinct remembered lengths, longest first, with a
    ``startswith`` per candidate: sub-millisecond for the default capacity.
    """

    def __init__(self, prefix_chars: int = 512, capacity: int = 1024) -> None:
        if prefix_chars < 1:
            raise ValueError(f"prefix_chars must be >= 1, got {prefix_chars}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.prefix_chars = prefix_chars
        self.capacity = capacity
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._by_len: dict[int, set[str]] = {}

    def remember(self, rendered: str) -> None:
        """Record a rendered chat prompt: requests extending it share its key."""
        if not rendered:
            return
        if rendered in self._lru:
            self._lru.move_to_end(rendered)
            return
        self._lru[rendered] = None
        self._by_len.setdefault(len(rendered), set()).add(rendered)
        while len(self._lru) > self.capacity:
            old, _ = self._lru.popitem(last=False)
            bucket = self._by_len[len(old)]
            bucket.discard(old)
            if not bucket:
                del self._by_len[len(old)]

    def key_text(self, prompt: str) -> str:
        """The text the key is made of: the longest remembered prefix, else the first characters."""
        for length in sorted((n for n in self._by_len if n <= len(prompt)), reverse=True):
            for rendered in self._by_len[length]:
                if prompt.startswith(rendered):
                    self._lru.move_to_end(rendered)
                    return rendered
        return prompt[: self.prefix_chars]

    def key(self, prompt: str) -> bytes:
        return affinity_digest(self.key_text(prompt))


@dataclass(frozen=True)
class ReplicaStats:
    """Per-replica counters, for metrics: calls routed, sequences in flight, replica faults."""

    name: str
    requests: int
    in_flight: int
    failures: int
    healthy: bool
    down_for_s: float  # seconds left of the cool-off (0 when healthy)


class Router:
    """Chooses a replica per request: affinity first, load balance within ``slack``, skip the down.

    ``choose`` picks the key's remembered home if it is usable, else the first usable replica in
    rendezvous order; if that replica has more than ``slack`` sequences in flight above the least
    loaded usable replica, the least loaded one is taken instead and remembered as the key's home
    (bounded LRU of ``max_homes``), so the program's next requests follow it there. Load is counted
    in sequences (a request with ``n`` samples weighs ``n``), since that is what occupies a batch.
    A replica reported failing is down for ``cooloff_s`` seconds, then tried again.
    """

    def __init__(
        self, replica_ids: Sequence[str], *, slack: int = 2, cooloff_s: float = 10.0, max_homes: int = 65536
    ) -> None:
        if not replica_ids:
            raise ValueError("a router needs at least one replica")
        if len(set(replica_ids)) != len(replica_ids):
            raise ValueError(f"replica ids must be unique, got {list(replica_ids)}")
        if slack < 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        if cooloff_s < 0:
            raise ValueError(f"cooloff_s must be >= 0, got {cooloff_s}")
        if max_homes < 1:
            raise ValueError(f"max_homes must be >= 1, got {max_homes}")
        self.ids = list(replica_ids)
        self.slack = slack
        self.cooloff_s = cooloff_s
        self.max_homes = max_homes
        n = len(self.ids)
        self.requests = [0] * n
        self.in_flight = [0] * n
        self.failures = [0] * n
        self.down_until = [float("-inf")] * n
        self._homes: OrderedDict[bytes, int] = OrderedDict()

    def healthy(self, index: int, now: float) -> bool:
        return self.down_until[index] <= now

    def choose(self, key: bytes, *, now: float, exclude: Iterable[int] = ()) -> int | None:
        """The replica for a request with ``key``, or None when no replica is usable."""
        excluded = set(exclude)
        order = rendezvous_order(self.ids, key)
        usable = [i for i in order if i not in excluded and self.healthy(i, now)]
        if not usable:
            return None
        home = self._homes.get(key)
        chosen = home if home in usable else usable[0]
        least = min(usable, key=lambda i: self.in_flight[i])  # ties: the earlier in rendezvous order
        if self.in_flight[chosen] - self.in_flight[least] > self.slack:
            chosen = least
        if chosen == order[0]:
            self._homes.pop(key, None)  # back at its natural home: nothing to remember
        else:
            self._homes[key] = chosen
            self._homes.move_to_end(key)
            while len(self._homes) > self.max_homes:
                self._homes.popitem(last=False)
        return chosen

    def start(self, index: int, weight: int = 1) -> None:
        """A request of ``weight`` sequences was sent to replica ``index``."""
        self.requests[index] += 1
        self.in_flight[index] += weight

    def finish(self, index: int, weight: int = 1) -> None:
        """A request sent to ``index`` ended (well, badly or cancelled)."""
        self.in_flight[index] = max(0, self.in_flight[index] - weight)

    def fail(self, index: int, *, now: float) -> None:
        """Replica ``index`` failed a request by its own fault: take it out for the cool-off."""
        self.failures[index] += 1
        self.down_until[index] = max(self.down_until[index], now + self.cooloff_s)

    def retry_in(self, now: float) -> float:
        """Seconds until the first down replica is tried again (0 if one is healthy)."""
        return max(0.0, min(self.down_until) - now)

    def stats(self, now: float) -> list[ReplicaStats]:
        return [
            ReplicaStats(
                name=name,
                requests=self.requests[i],
                in_flight=self.in_flight[i],
                failures=self.failures[i],
                healthy=self.healthy(i, now),
                down_for_s=max(0.0, self.down_until[i] - now),
            )
            for i, name in enumerate(self.ids)
        ]
