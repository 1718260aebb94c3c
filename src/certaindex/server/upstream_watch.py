"""The upstream's state as the proxy last saw it: reachable or not, and the models it serves.

A background task reads ``GET /v1/models`` from every upstream at start, then every few seconds and
at once after a request to it fails, each read bounded by a short timeout. ``/health``, the model
check and the profile choice answer from this memory: a hung upstream never makes them wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any

import httpx

from certaindex.server.passthrough import Passthrough


@dataclass(frozen=True)
class UpstreamSnapshot:
    """``reachable`` None: not read yet. ``models``: the ids served, in the upstream's order (the
    replicas' lists joined); empty when unknown (never read, or a list the proxy cannot read). An
    upstream whose latest read failed keeps the models it was last read with. ``without_logprobs``:
    the served models listed without token logprobs (:func:`models_without_logprobs`)."""

    reachable: bool | None = None
    models: tuple[str, ...] = ()
    checked_at: float | None = None  # time.monotonic() of the read
    error: str | None = None
    without_logprobs: tuple[str, ...] = ()


def served_model_ids(payload: Any) -> tuple[str, ...]:
    """The model ids in an OpenAI ``/v1/models`` answer; () when it is not one."""
    return tuple(m["id"] for m in _model_entries(payload))


def models_without_logprobs(payload: Any) -> tuple[str, ...]:
    """The model ids in a ``/v1/models`` answer whose entry lists the request fields it honours
    (``supported_parameters``, as OpenRouter's model list and the replay server give them) without
    ``logprobs``: served without token logprobs. An entry that lists none says nothing (vLLM, SGLang
    and llama.cpp's server list none, and return logprobs)."""
    return tuple(m["id"] for m in _model_entries(payload)
                 if isinstance(m.get("supported_parameters"), list) and "logprobs" not in m["supported_parameters"])


def _model_entries(payload: Any) -> list[dict[str, Any]]:
    """The entries of a ``/v1/models`` answer that name a model (a non-empty string ``id``)."""
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]]


def merge(reads: list[tuple[bool, tuple[str, ...], str | None]], now: float) -> UpstreamSnapshot:
    """One snapshot from each upstream's (reachable, models, error): reachable if any is, models joined."""
    models: list[str] = []
    for _, served, _ in reads:
        models += [m for m in served if m not in models]
    errors = [e for _, _, e in reads if e]
    return UpstreamSnapshot(any(r for r, _, _ in reads), tuple(models), now, "; ".join(errors) or None)


def failure_reason(exc: BaseException, timeout_s: float) -> str:
    """Why a read of an upstream failed, in words a deployer reads at start."""
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return f"no answer in {timeout_s:g} s"
    if isinstance(exc, httpx.ConnectError):
        return "cannot connect"
    return str(exc) or type(exc).__name__


def start_warning(roots: list[str], reads: list[tuple[bool, tuple[str, ...], str | None]]) -> str | None:
    """The warning for the first read, naming every upstream that does not answer (the proxy starts
    anyway: an engine such as vLLM may still be loading); None when all answer."""
    down = [f"{root} ({error.removeprefix(f'{root}: ')})" for root, (reachable, _, error) in zip(roots, reads)
            if not reachable and error]
    if not down:
        return None
    if len(down) == len(roots):
        return (f"no upstream answers: {'; '.join(down)}. Serving anyway: requests get 502 and /health 503 until "
                "one answers")
    return f"upstream down: {'; '.join(down)}. Requests go to the {len(roots) - len(down)} that answer"


class UpstreamWatch:
    """Keeps an :class:`UpstreamSnapshot` current in the background (see the module's docstring)."""

    def __init__(self, passthrough: Passthrough, every_s: float = 10.0, timeout_s: float = 2.0,
                 min_gap_s: float = 1.0) -> None:
        self.passthrough = passthrough
        self.every_s = every_s
        self.timeout_s = timeout_s
        self.min_gap_s = min_gap_s  # pokes closer together than this wait for the next read
        self.snapshot = UpstreamSnapshot()
        self._known: dict[str, tuple[str, ...]] = {}  # each upstream's models as last read
        self._no_logprobs: dict[str, tuple[str, ...]] = {}  # ... and those it lists without logprobs
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Future[UpstreamSnapshot] | None = None
        self.first_warning: str | None = None  # set by start(): the upstreams its first read found down

    async def _read(self, root: str) -> tuple[bool, tuple[str, ...], str | None]:
        headers = self.passthrough.request_headers({})  # the upstream's own API key, if any
        try:
            response = await asyncio.wait_for(self.passthrough.pool.pick().get(
                f"{root}/v1/models", headers=headers, timeout=self.timeout_s), self.timeout_s)
        except (httpx.HTTPError, asyncio.TimeoutError) as exc:
            return False, (), f"{root}: {failure_reason(exc, self.timeout_s)}"
        if response.status_code >= 500:
            return False, (), f"{root}: HTTP {response.status_code}"
        if response.status_code != 200:
            return True, (), f"{root}: GET /v1/models answered HTTP {response.status_code}"
        try:
            payload = response.json()
            self._no_logprobs[root] = models_without_logprobs(payload)
            return True, served_model_ids(payload), None
        except ValueError:
            return True, (), f"{root}: GET /v1/models is not JSON"

    async def refresh(self) -> UpstreamSnapshot:
        """Read every upstream now (each within ``timeout_s``) and keep the result; callers that
        ask while a read is under way share it."""
        if self._reading is None or self._reading.done():
            self._reading = asyncio.ensure_future(self._read_all())
        return await asyncio.shield(self._reading)

    async def _read_all(self) -> UpstreamSnapshot:
        roots = list(self.passthrough.root_urls)
        reads = await asyncio.gather(*(self._read(root) for root in roots))
        if self.snapshot.checked_at is None:
            self.first_warning = start_warning(roots, reads)
        kept = []
        for root, (reachable, served, error) in zip(roots, reads):
            if reachable:
                self._known[root] = served
            else:  # a read that failed (a timeout under load) does not forget the model that upstream served
                served = self._known.get(root, ())
            kept.append((reachable, served, error))
        without = [m for root in roots for m in self._no_logprobs.get(root, ())]
        self.snapshot = replace(merge(kept, time.monotonic()), without_logprobs=tuple(dict.fromkeys(without)))
        return self.snapshot

    async def fresh(self) -> UpstreamSnapshot:
        """The snapshot, read again first unless it is under ``min_gap_s`` old: for a request
        naming a model the last read did not list (the upstream may have changed its model)."""
        checked = self.snapshot.checked_at
        if checked is None or time.monotonic() - checked >= self.min_gap_s:
            return await self.refresh()
        return self.snapshot

    def poke(self) -> None:
        """A request to the upstream failed: read it again soon (its model may have changed)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            self._wake.clear()
            with contextlib.suppress(Exception):  # a read that fails is recorded as unreachable
                await self.refresh()
            await asyncio.sleep(self.min_gap_s)

    async def start(self) -> None:
        """The first read (bounded by ``timeout_s``; :attr:`first_warning` names the upstreams it
        found down), then the background task."""
        with contextlib.suppress(Exception):
            await self.refresh()
        self._task = asyncio.ensure_future(self._run())

    async def aclose(self) -> None:
        for task in (self._task, self._reading):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
