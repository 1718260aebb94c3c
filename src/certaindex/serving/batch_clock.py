"""A GPU's continuous batching, paced by a cost model, for the replay server: every running sequence
advances together one decode step at a time, so concurrent programs slow each other down as on the
modelled GPU.

The model is the simulator's (:mod:`certaindex.serving.simulator`, :class:`CostModel`): a step of
``batch`` sequences holding ``context`` tokens together takes ``step_s(batch, context)``; a sequence
joining the batch first stalls it for ``join_s(uncached prompt tokens)`` (``chunked_prefill``: only
the prefill, as vLLM folds it into the running steps); at most ``max_batch`` sequences decode
together, the rest wait in arrival order. The prefix cache is the simulator's too: ``program``
keeps each recorded trajectory's prefix (a probe computes only its suffix, a continuation only what
its previous request did not leave cached), ``last`` keeps only the last sequence's.

``speed`` runs the clock that many times faster than the modelled GPU (CPU tests and benchmarks):
every modelled second takes 1 / speed wall seconds. The clock keeps modelled time of its own and
sleeps until the wall clock reaches it; when the host cannot keep up it runs late, and says so
(``lag_s``). Counters (``stats``) are in modelled seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from certaindex.serving.costmodel import CostModel

__all__ = ["BatchClock", "Sequence_", "ClockStats"]


@dataclass(eq=False)
class Sequence_:
    """One request's generation: ``pieces`` are handed out one per decode step it takes part in."""

    key: str  # the program's cache key (the recorded trajectory)
    pieces: Sequence[Any]
    prompt_tokens: int
    cached_tokens: int  # of the prompt, what a prefix cache may hold (no probe suffix)
    keeps_prefix: bool = True  # a continuation's generated tokens extend the cached prefix; a probe's do not
    emitted: int = 0
    joined_at: float | None = None  # modelled time it joined the batch
    queued_s: float = 0.0  # modelled seconds waiting for a batch slot
    prefill_tokens: int = 0
    decode_s: float = 0.0  # modelled seconds of the steps it took part in
    batch_sum: int = 0  # sum of the batch sizes of those steps
    done: bool = False
    cancelled: bool = False
    submitted_at: float = 0.0
    _buffer: list = field(default_factory=list)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def context(self) -> int:
        return self.prompt_tokens + self.emitted

    def take(self) -> list:
        """The pieces generated since the last take."""
        out, self._buffer = self._buffer, []
        self._ready.clear()
        return out

    async def pieces_out(self, flush_s: float = 0.0):
        """Pieces as they are generated, several at once when the reader falls behind or when
        ``flush_s`` (wall seconds) gathers what comes meanwhile into one piece of output."""
        while True:
            await self._ready.wait()
            if flush_s > 0 and not self.done:
                await asyncio.sleep(flush_s)
            out = self.take()
            if out:
                yield out
            if self.done:
                rest = self.take()
                if rest:
                    yield rest
                return

    def stats(self) -> dict:
        return {"tokens": self.emitted, "prefill_tokens": self.prefill_tokens, "queued_s": self.queued_s,
                "decode_s": self.decode_s, "mean_batch": self.batch_sum / self.emitted if self.emitted else 0.0,
                "per_token_s": self.decode_s / self.emitted if self.emitted else 0.0}


@dataclass
class ClockStats:
    steps: int = 0
    tokens: int = 0
    joins: int = 0
    prefill_tokens: int = 0
    busy_s: float = 0.0  # modelled seconds of steps and joins
    batch_sum: int = 0  # sum of batch sizes over steps
    max_batch_seen: int = 0
    cancelled: int = 0
    lag_s: float = 0.0  # largest wall-clock lateness of a step (modelled seconds)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mean_batch"] = self.batch_sum / self.steps if self.steps else 0.0
        return d


class BatchClock:
    """Decode steps of a modelled GPU, shared by every sequence submitted."""

    def __init__(self, cost: CostModel, *, speed: float = 1.0, chunked_prefill: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        self.cost = cost
        self.speed = speed
        self.chunked_prefill = chunked_prefill
        self.clock = clock
        self.stats = ClockStats()
        self.active: list[Sequence_] = []
        self.waiting: deque[Sequence_] = deque()
        self._cached: dict[str, int] = {}  # program -> tokens of its prefix held ("program" cache)
        self._last: tuple[str, int] | None = None  # ("last" cache) whose sequence the KV holds
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._t0 = 0.0
        self.now = 0.0  # modelled seconds since start

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._t0 = self.clock()
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def _wall(self) -> float:
        """Wall time since start, in modelled seconds."""
        return (self.clock() - self._t0) * self.speed

    # -- sequences --------------------------------------------------------------------------

    def submit(self, seq: Sequence_) -> Sequence_:
        self.start()
        seq.submitted_at = max(self.now, self._wall())
        if not seq.pieces:  # nothing to generate: an empty completion still takes one step
            seq.pieces = [None]
        self.waiting.append(seq)
        self._wake.set()
        return seq

    def cancel(self, seq: Sequence_) -> None:
        """The client went away: the sequence leaves the batch at the next step boundary."""
        if not seq.done and not seq.cancelled:
            seq.cancelled = True
            self.stats.cancelled += 1

    def _uncached(self, seq: Sequence_) -> int:
        if self.cost.prefix_cache == "last":
            held = self._last[1] if self._last is not None and self._last[0] == seq.key else 0
        else:  # a running sequence's computed prefix is shared too (vLLM's cache hashes full blocks as they fill)
            held = max([self._cached.get(seq.key, 0)] + [s.cached_tokens + s.emitted for s in self.active
                                                          if s.key == seq.key and s.keeps_prefix])
        return seq.prompt_tokens - min(seq.cached_tokens, held)

    def _remember(self, seq: Sequence_) -> None:
        end = seq.cached_tokens + (seq.emitted if seq.keeps_prefix else 0)
        self._last = (seq.key, end)
        self._cached[seq.key] = max(end, self._cached.get(seq.key, 0)) if seq.keeps_prefix else max(
            seq.cached_tokens, self._cached.get(seq.key, 0))

    def _finish(self, seq: Sequence_) -> None:
        seq.done = True
        seq._ready.set()

    # -- the loop ---------------------------------------------------------------------------

    def _admit(self) -> None:
        while self.waiting and self.waiting[0].cancelled:
            self._finish(self.waiting.popleft())
        while self.waiting and len(self.active) < self.cost.max_batch:
            seq = self.waiting.popleft()
            if seq.cancelled:
                self._finish(seq)
                continue
            new = max(0, self._uncached(seq))
            seq.prefill_tokens = new
            seq.queued_s = max(0.0, self.now - seq.submitted_at)
            join = self.cost.prefill_s * new if self.chunked_prefill else self.cost.join_s(new)
            self.now += join
            self.stats.busy_s += join
            self.stats.joins += 1
            self.stats.prefill_tokens += new
            seq.joined_at = self.now
            self.active.append(seq)

    async def _run(self) -> None:
        while True:
            for seq in [s for s in self.active if s.cancelled]:
                self._finish(seq)
            self.active = [s for s in self.active if not s.cancelled]
            if not self.active and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                self.now = max(self.now, self._wall())  # idle time passes
                continue
            self._admit()
            if not self.active:
                continue
            batch = len(self.active)
            step = self.cost.step_s(batch, sum(s.context for s in self.active))
            self.now += step
            self.stats.busy_s += step
            late = self._wall() - self.now
            if late < 0:
                await asyncio.sleep(-late / self.speed)
            else:
                self.stats.lag_s = max(self.stats.lag_s, late)
                await asyncio.sleep(0)  # let the readers and the server run
            self.stats.steps += 1
            self.stats.batch_sum += batch
            self.stats.max_batch_seen = max(self.stats.max_batch_seen, batch)
            still: list[Sequence_] = []
            for seq in self.active:
                if seq.cancelled:
                    self._finish(seq)
                    continue
                piece = seq.pieces[seq.emitted]
                seq.emitted += 1
                seq.decode_s += step
                seq.batch_sum += batch
                self.stats.tokens += 1
                if piece is not None:
                    seq._buffer.append(piece)
                seq._ready.set()
                if seq.emitted >= len(seq.pieces):
                    self._remember(seq)
                    self._finish(seq)
                else:
                    still.append(seq)
            self.active = still
