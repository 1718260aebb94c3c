"""The asyncio side of the scheduler: programs run unmodified on a :class:`ScheduledEngine`.

Each program gets a session whose engine turns every ``generate`` (a gang of ``request.n``) and
``stream`` (a gang of 1) into submit -> wait for dispatch -> run on the inner engine -> finish.
Requests are capped to the program's allowance; a program with nothing left gets
:class:`~certaindex.engines.base.BudgetExhausted`, which ``solve_cot`` treats as its budget
running out. Cancelling a task or closing a stream gives the gang's slots back at once.

Once a program's stream has been admitted (one main stream with probes forked on the side,
:mod:`certaindex.programs.main_stream`), its ``generate`` calls (probes, trials, the forced answer)
are side requests: they start at once without a slot (:meth:`SchedulerCore.start_side`), at the
top engine priority of the program's class, charged to its budget like any request. Waiting for a
slot behind other programs' whole streams, a probe would let its own stream decode far past the
exit (the overrun; benchmarks/README.md, issue 13).

A program that sends a request while its own stream runs holds its whole budget from then on
(:meth:`SchedulerCore.hold_budget`): the ``certaindex`` policy lends a settled program's unused
budget to unsure ones, and lent away mid-stream it would refuse the stream's next probe
(``BudgetExhausted``) and end the program on ``budget`` far below its budget. Programs that reason
in chunks or rounds (nothing of theirs runs between them) keep lending between them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from certaindex.engines.base import (
    BudgetExhausted,
    Completion,
    Engine,
    EngineError,
    EngineView,
    GenerationRequest,
    StreamDelta,
)
from certaindex.scheduler.core import Gang, SchedulerCore

#: Longest wait before pending gangs are looked at again without any event (aging, deadlines).
REPUMP_S = 1.0


class Scheduler:
    """Owns one core and one inner engine; every session's requests go through it."""

    def __init__(
        self,
        engine: Engine,
        core: SchedulerCore,
        clock: Callable[[], float] = time.monotonic,
        *,
        engine_priorities: bool = False,
    ) -> None:
        """``engine_priorities``: send :meth:`SchedulerCore.engine_priority` as the request's
        ``priority`` (only for servers that accept it, e.g. vLLM ``--scheduling-policy priority``)."""
        self.engine = engine
        self.core = core
        self.clock = clock
        self.engine_priorities = engine_priorities
        self._waiters: dict[int, asyncio.Future[None]] = {}
        self._by_program: dict[str, set[int]] = {}
        self._timer: asyncio.TimerHandle | None = None

    @asynccontextmanager
    async def session(
        self,
        program_id: str,
        *,
        budget: int,
        deadline: float | None = None,
        priority: int = 0,
        engine: Engine | None = None,
    ) -> AsyncIterator["ScheduledEngine"]:
        """Run one program: yields the engine it must use. ``deadline`` is a time on ``clock``;
        ``priority``: lower runs sooner. ``engine``: run this program's requests on it instead of
        the scheduler's own (the same upstream with per-request fields, e.g. ``HTTPEngine.derive``);
        it shares the scheduler's capacity. Leaving the block drops the program's pending gangs."""
        self.core.add_program(program_id, now=self.clock(), budget=budget, deadline=deadline, priority=priority)
        self._by_program[program_id] = set()
        engine = ScheduledEngine(self, program_id, engine)
        try:
            yield engine
        finally:
            engine.closed = True
            for gang_id in self._by_program.pop(program_id, set()):
                waiter = self._waiters.pop(gang_id, None)
                if waiter is not None and not waiter.done():
                    waiter.set_exception(EngineError(f"the session of program {program_id!r} ended"))
            self.core.remove_program(program_id)
            self._pump()

    # -- gang life cycle ---------------------------------------------------------------------

    async def acquire(self, program_id: str, width: int, max_tokens: int) -> Gang:
        """Submit a gang and wait until the core dispatches it. Cancelled while waiting: the gang
        is withdrawn (or given back if it was dispatched meanwhile)."""
        gang = self.core.submit(program_id, width=width, max_tokens=max_tokens, now=self.clock())
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[gang.gang_id] = waiter
        self._by_program[program_id].add(gang.gang_id)
        self._pump()
        try:
            await waiter
        except BaseException:
            self._forget(gang)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.core.cancel(gang)  # dispatched just as we were cancelled: free its slots
            elif program_id in self._by_program:  # still pending (a dropped gang is gone already)
                try:
                    self.core.cancel(gang)
                except KeyError:
                    pass
            self._pump()
            raise
        self._forget(gang)
        return gang

    def start_side(self, program_id: str, width: int, max_tokens: int) -> Gang:
        """Start a side request of an admitted program now: no slot, no wait."""
        return self.core.start_side(program_id, width=width, max_tokens=max_tokens, now=self.clock())

    def release(self, gang: Gang, tokens: int | None) -> None:
        """A dispatched gang ended: ``tokens`` generated, or None when unknown (failed, cancelled)."""
        if tokens is None:
            self.core.cancel(gang)
        else:
            self.core.finish(gang, tokens=tokens)
        # Decide on the next loop turn, not now: the program whose request just ended submits its
        # next step within this turn, so the core chooses between it and the waiting programs
        # (deciding now would always hand the slot away and make programs take turns on the engine,
        # losing the engine's cached prefix of every program each time).
        try:
            asyncio.get_running_loop().call_soon(self._pump)
        except RuntimeError:
            self._pump()

    def _forget(self, gang: Gang) -> None:
        self._waiters.pop(gang.gang_id, None)
        ids = self._by_program.get(gang.program_id)
        if ids is not None:
            ids.discard(gang.gang_id)

    def _pump(self) -> None:
        """Start whatever the core dispatches now; look again later while gangs wait."""
        for gang in self.core.dispatch(now=self.clock()):
            waiter = self._waiters.get(gang.gang_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            else:  # nobody waits for it any more
                self.core.cancel(gang)
        if self.core.pending_gangs and self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._timer = loop.call_later(min(REPUMP_S, max(self.core.aging_s, 0.01)), self._repump)

    def _repump(self) -> None:
        self._timer = None
        self._pump()


class ScheduledEngine(EngineView):
    """The engine a program sees inside a session: the inner engine, behind the scheduler."""

    def __init__(self, scheduler: Scheduler, program_id: str, inner: Engine | None = None) -> None:
        super().__init__(inner or scheduler.engine)
        self.scheduler = scheduler
        self.program_id = program_id
        self.closed = False
        self.streamed = False  # a stream of it has been admitted: its generate calls are side requests
        self.streams_open = 0  # its streams running now: a request sent meanwhile runs beside one
        counter = getattr(self.inner, "count_tokens", None)
        if counter is not None:
            self.count_tokens = counter  # the inner engine's tokenizer, where it has one

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"scheduled:{self.inner.name}"

    @property
    def concurrent_streams(self) -> bool:  # type: ignore[override]
        """One stream with side probes where the capacity is 2 or more; with capacity 1 (an engine
        said to serve one request at a time) programs reason in chunks, as before side probes took
        no slot (:meth:`Scheduler.start_side`)."""
        return super().concurrent_streams and self.scheduler.core.capacity >= 2

    @property
    def allowance(self) -> int:
        """Tokens this program may still generate."""
        return self.scheduler.core.allowance(self.program_id)

    def report(self, certaindex: float) -> None:
        """Tell the scheduler how settled the program's answer is (0 unsure .. 1 settled)."""
        self.scheduler.core.report(self.program_id, certaindex=certaindex)

    def _capped(self, request: GenerationRequest) -> GenerationRequest:
        if self.closed:
            raise EngineError(f"the session of program {self.program_id!r} has ended")
        allowance = self.allowance
        each = allowance // request.n
        if each < 1:
            raise BudgetExhausted(
                f"program {self.program_id!r} has {allowance} tokens left, fewer than its {request.n} request(s) need"
            )
        if each < request.max_tokens:
            request = dataclasses.replace(request, max_tokens=each)
        return request

    def _prioritised(self, request: GenerationRequest, gang: Gang) -> GenerationRequest:
        if self.scheduler.engine_priorities and request.priority is None:
            return dataclasses.replace(request, priority=self.scheduler.core.engine_priority(gang))
        return request

    async def generate(self, request: GenerationRequest) -> Completion:
        if self.streams_open:  # a probe or trial beside its open stream: its own budget is no longer lent
            self.scheduler.core.hold_budget(self.program_id)
        request = self._capped(request)
        if self.streamed:  # a probe or trial on the admitted stream's prefix: it must not wait
            gang = self.scheduler.start_side(self.program_id, request.n, request.max_tokens)
        else:
            gang = await self.scheduler.acquire(self.program_id, request.n, request.max_tokens)
        try:
            completion = await self.inner.generate(self._prioritised(request, gang))
        except BaseException:
            self.scheduler.release(gang, None)
            raise
        self.scheduler.release(gang, completion.completion_tokens)
        return completion

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        if request.n != 1:
            raise ValueError("stream() takes n=1; start one stream per sample")
        request = self._capped(request)
        gang = await self.scheduler.acquire(self.program_id, 1, request.max_tokens)
        self.streamed = True
        self.streams_open += 1
        tokens = 0
        inner = self.inner.stream(self._prioritised(request, gang))
        try:
            async for delta in inner:
                tokens += delta.tokens
                yield delta
        finally:
            self.streams_open -= 1
            try:
                await inner.aclose()  # type: ignore[attr-defined]
            finally:
                self.scheduler.release(gang, tokens)  # closed early too: charge what was generated


def cot_reporter(session: ScheduledEngine) -> Callable[[object], None]:
    """An ``on_event`` callback for :func:`~certaindex.programs.cot.solve_cot` that reports the
    certaindex after each probe, and after each DEER-style trial under a score rule, to the scheduler."""

    def on_event(event: object) -> None:
        certaindex = getattr(event, "certaindex", None)
        if certaindex is not None:
            session.report(certaindex)

    return on_event


def sc_reporter(session: ScheduledEngine) -> Callable[[object], None]:
    """An ``on_round`` callback for :func:`~certaindex.programs.self_consistency.self_consistency`
    that reports the vote's certaindex after every round."""

    def on_round(vote: object) -> None:
        session.report(min(1.0, max(0.0, float(getattr(vote, "certaindex")))))

    return on_round


__all__ = ["BudgetExhausted", "REPUMP_S", "ScheduledEngine", "Scheduler", "cot_reporter", "sc_reporter"]
