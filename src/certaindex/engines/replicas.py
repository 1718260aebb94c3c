"""One engine in front of several upstream replicas (scale-out).

Each request goes to one replica, chosen by :class:`certaindex.engines.routing.Router`: all requests
of one reasoning program stay on one replica (its prefix cache then holds the program's prompt and
reasoning), load is balanced within ``slack`` sequences, and a replica that fails by its own fault
(unreachable, 5xx after its retries, a broken stream) is skipped for a cool-off while its request is
sent to the next replica. Failures that are the request's fault (HTTP 4xx, a misconfiguration, a
scheduler's refusal) are raised as they are: another replica would refuse them too.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Callable, Sequence

from certaindex.engines.base import (
    BudgetExhausted,
    Completion,
    Engine,
    EngineConfigError,
    EngineError,
    GenerationRequest,
    StreamDelta,
)
from certaindex.engines.routing import AffinityKeys, ReplicaStats, Router

# Rendered on every replica at prepare time: different outputs mean different chat templates.
_TEMPLATE_PROBE = (
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
)
# HTTP statuses that blame the request, not the replica (408 and 429 are the replica's load).
_CLIENT_ERROR = re.compile(r"HTTP (?!408|429)4\d\d\b")


def is_replica_fault(exc: EngineError) -> bool:
    """Whether ``exc`` says the replica failed (so another may succeed) rather than the request."""
    if isinstance(exc, (EngineConfigError, BudgetExhausted)):
        return False
    return _CLIENT_ERROR.search(str(exc)) is None


class ReplicatedEngine(Engine):
    """Routes each request to one of ``replicas`` (see the module docstring).

    ``slack``: sequences in flight a program's home replica may have above the least-loaded one
    before the program moves. ``cooloff_s``: how long a failing replica is skipped.
    ``prefix_chars``: the key length for prompts not rendered by :meth:`render_chat`.
    ``clock``: seconds, monotonic (a parameter so tests can move time).
    """

    @property
    def concurrent_streams(self) -> bool:  # type: ignore[override]
        return all(getattr(r, "concurrent_streams", False) for r in self.replicas)

    @property
    def token_ids(self) -> bool:  # type: ignore[override]
        return all(getattr(r, "token_ids", False) for r in self.replicas)

    @property
    def streams_tokens(self) -> bool:  # type: ignore[override]
        return all(getattr(r, "streams_tokens", False) for r in self.replicas)

    @property
    def returns_logprobs(self) -> bool:  # type: ignore[override]
        return all(getattr(r, "returns_logprobs", False) for r in self.replicas)

    async def tokenize(self, text: str) -> tuple[int, ...]:
        """By the first replica that answers (they serve one model)."""
        error: EngineError | None = None
        for replica in self.replicas:
            try:
                return await replica.tokenize(text)
            except EngineError as exc:
                error = exc
        raise error or EngineError("no replica to tokenize with")

    def __init__(
        self,
        replicas: Sequence[Engine],
        *,
        slack: int = 2,
        cooloff_s: float = 10.0,
        prefix_chars: int = 512,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = list(replicas)
        if not self.replicas:
            raise EngineConfigError("ReplicatedEngine needs at least one replica")
        ids = [r.name for r in self.replicas]
        ids = [name if ids.count(name) == 1 else f"{name}#{i}" for i, name in enumerate(ids)]
        self._router = Router(ids, slack=slack, cooloff_s=cooloff_s)
        self._keys = AffinityKeys(prefix_chars)
        self._clock = clock
        self._prepared: set[int] = set()
        self._reference: tuple[int, str | None, str] | None = None  # (index, model, rendered probe)
        self._last_error: dict[int, str] = {}
        self._lock = asyncio.Lock()
        self._owns = True

    @property
    def name(self) -> str:  # type: ignore[override]
        return "replicas[" + ", ".join(self._router.ids) + "]"

    def stats(self) -> list[ReplicaStats]:
        """Per-replica counters (requests, sequences in flight, failures, health) for metrics."""
        return self._router.stats(self._clock())

    def derive(self, extra_body: dict[str, Any]) -> "ReplicatedEngine":
        """A view whose replicas send ``extra_body`` too (replicas with a ``derive``, as
        :class:`HTTPEngine` has), sharing routing, health and counters. Closing it closes nothing."""
        view = object.__new__(ReplicatedEngine)
        view.__dict__.update(self.__dict__)
        view.replicas = [r.derive(extra_body) if hasattr(r, "derive") else r for r in self.replicas]
        view._owns = False
        return view

    # -- setup -------------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Prepare every replica not yet prepared (and not cooling off), and check that they all
        serve the same model and chat template. A replica that fails is marked down and retried
        by a later call; raises :class:`EngineError` only when no replica is prepared. While one
        caller prepares the rest, others go on with the replicas already prepared."""
        if len(self._prepared) == len(self.replicas) or (self._prepared and self._lock.locked()):
            return
        async with self._lock:
            now = self._clock()
            todo = [i for i in range(len(self.replicas)) if i not in self._prepared and self._router.healthy(i, now)]
            results = await asyncio.gather(*(self.replicas[i].prepare() for i in todo), return_exceptions=True)
            for i, result in zip(todo, results):
                if isinstance(result, BaseException):
                    if not isinstance(result, EngineError) or not is_replica_fault(result):
                        raise result
                    self._mark_down(i, result)
                    continue
                self._check_same(i)
                self._prepared.add(i)
            if not self._prepared:
                raise self._all_down_error()

    def _check_same(self, index: int) -> None:
        replica = self.replicas[index]
        model = getattr(replica, "model", None)
        model = str(model) if model is not None else None
        rendered = replica.render_chat(list(_TEMPLATE_PROBE))
        if self._reference is None:
            self._reference = (index, model, rendered)
            return
        ref_index, ref_model, ref_rendered = self._reference
        ref_name, name = self._router.ids[ref_index], self._router.ids[index]
        if model is not None and ref_model is not None and model != ref_model:
            raise EngineConfigError(
                f"the replicas serve different models: {ref_name} serves {ref_model!r}, {name} serves {model!r}"
            )
        if rendered != ref_rendered:
            raise EngineConfigError(
                f"the replicas use different chat templates: {ref_name} renders {ref_rendered[:120]!r}, "
                f"{name} renders {rendered[:120]!r}"
            )

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Render with the first prepared replica, and remember the prompt as a program's key."""
        index = self._reference[0] if self._reference is not None else 0
        rendered = self.replicas[index].render_chat(messages)
        self._keys.remember(rendered)
        return rendered

    # -- routing -----------------------------------------------------------------------------

    def _mark_down(self, index: int, exc: BaseException) -> None:
        self._router.fail(index, now=self._clock())
        self._last_error[index] = str(exc) or type(exc).__name__

    def _all_down_error(self) -> EngineError:
        now = self._clock()
        reasons = "; ".join(
            f"{name}: {self._last_error.get(i, 'not prepared')}" for i, name in enumerate(self._router.ids)
        )
        return EngineError(
            f"all {len(self.replicas)} engine replicas are down ({reasons}); "
            f"the first is tried again in {self._router.retry_in(now):.1f} s"
        )

    def _pick(self, key: bytes, tried: set[int]) -> int:
        unprepared = set(range(len(self.replicas))) - self._prepared
        index = self._router.choose(key, now=self._clock(), exclude=tried | unprepared)
        if index is None:
            raise self._all_down_error()
        return index

    async def generate(self, request: GenerationRequest) -> Completion:
        await self.prepare()
        key = self._keys.key(request.prompt)
        tried: set[int] = set()
        while True:
            index = self._pick(key, tried)
            self._router.start(index, request.n)
            try:
                return await self.replicas[index].generate(request)
            except EngineError as exc:
                if not is_replica_fault(exc):
                    raise
                self._mark_down(index, exc)
                tried.add(index)
            finally:
                self._router.finish(index, request.n)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Stream from one replica. A replica failing before its first piece is replaced by the
        next; once text has been passed on, its failure is raised (the text cannot be taken back)."""
        if request.n != 1:
            raise ValueError("stream() takes n=1; start one stream per sample")
        await self.prepare()
        key = self._keys.key(request.prompt)
        tried: set[int] = set()
        while True:
            index = self._pick(key, tried)
            self._router.start(index)
            started = False
            try:
                async with aclosing(self.replicas[index].stream(request)) as deltas:
                    async for delta in deltas:
                        started = True
                        yield delta
                return
            except EngineError as exc:
                if not is_replica_fault(exc):
                    raise
                self._mark_down(index, exc)
                if started:
                    raise
                tried.add(index)
            finally:
                self._router.finish(index)

    async def aclose(self) -> None:
        """Close every replica (all of them, even if one fails to close)."""
        if not self._owns:
            return
        results = await asyncio.gather(*(r.aclose() for r in self.replicas), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
