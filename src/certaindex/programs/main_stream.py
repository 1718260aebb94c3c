"""One open upstream stream per chain of thought, with probes forked on the side.

On engines that stream token by token and serve other requests meanwhile
(``Engine.concurrent_streams``), the reasoning is one streaming request from the prompt to the
budget or the model's own end. At each probe point a probe (prompt + the reasoning streamed so far
+ the probe suffix) is sent as a concurrent side request; the reasoning never waits for it.

Decisions depend on positions, never on timing:

* a probe point is taken at the token position the stream has reached, and it is only *confirmed*
  (sent) once something follows it (a token, or the model's end as a piece of its own), exactly as
  the chunked path probes after a chunk that ended on ``length`` and not after a chunk cut by a
  stop string;
* a probe point that comes while ``max_in_flight`` probes are running is **queued, not skipped**,
  so every point gets its probe, as in the chunked path and in replayed traces;
* probes are judged strictly in position order (an early answer waits for the ones before it);
* DEER-style trial points (before each "Wait", where a score rule reads trials) are points too,
  offered once the word is confirmed and merged by position with the probe points.

So a run makes the same decisions as the chunked path (and as a replay of its recorded traces);
only the *overrun* depends on timing: the tokens streamed after the deciding probe's position until
the stream was closed. They are real cost and are reported.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import aclosing
from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Literal, TypeVar

from certaindex.engines.base import BudgetExhausted, Engine, EngineError, GenerationRequest, StreamDelta

T = TypeVar("T")
Verdict = Literal["continue", "settled", "stop-probing", "budget"]
Stop = Literal["certain", "finished", "budget", "engine_length"]


@dataclass(frozen=True)
class ProbePoint:
    """Where a probe is forked: the ``index``-th point, after ``at_tokens`` reasoning tokens."""

    index: int
    at_tokens: int
    reasoning: str
    ids: tuple[int, ...] | None = None  # prompt + reasoning as the model's token ids, where the engine reports them
    kind: Literal["probe", "trial"] = "probe"  # a probe point (every interval) or a DEER trial point


@dataclass
class MainStreamOutcome:
    """How the main stream ended. ``reasoning``/``tokens`` stop at the deciding probe's position
    when a probe decided; ``streamed_tokens`` is everything the main stream generated."""

    reasoning: str
    tokens: int
    stop: Stop
    streamed_tokens: int
    prompt_tokens: int
    resumes: int
    decided_at: ProbePoint | None = None

    @property
    def overrun_tokens(self) -> int:
        """Tokens generated past the deciding position before the stream was closed."""
        return self.streamed_tokens - self.tokens


class SideProbes(Generic[T]):
    """Probes on the side: at most ``max_in_flight`` running, the rest queued, judged in order.

    ``run(point)`` sends one probe; ``judge(point, result_or_error)`` turns it into a verdict
    (raising to fail the program). The first verdict other than ``continue`` stops probing."""

    def __init__(
        self,
        run: Callable[[ProbePoint], Awaitable[T]],
        judge: Callable[[ProbePoint, T | BaseException], Verdict],
        max_in_flight: int = 1,
    ) -> None:
        self._run = run
        self._judge = judge
        self.max_in_flight = max(1, max_in_flight)
        self._queue: deque[ProbePoint] = deque()
        self._running: dict[int, asyncio.Task[T]] = {}
        self._results: dict[int, tuple[ProbePoint, T | BaseException]] = {}
        self.offered = 0
        self.judged = 0
        self.active = True
        self.verdict: Verdict = "continue"
        self.decided_at: ProbePoint | None = None
        self.error: BaseException | None = None
        self.decided: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()

    def offer(self, at_tokens: int, reasoning: str, ids: tuple[int, ...] | None = None,
              kind: Literal["probe", "trial"] = "probe") -> None:
        if not self.active:
            return
        self._queue.append(ProbePoint(self.offered, at_tokens, reasoning, ids, kind))
        self.offered += 1
        self._launch()

    def _launch(self) -> None:
        while self.active and self._queue and len(self._running) < self.max_in_flight:
            point = self._queue.popleft()
            task = asyncio.ensure_future(self._run(point))
            self._running[point.index] = task
            task.add_done_callback(lambda t, p=point: self._done(p, t))

    def _done(self, point: ProbePoint, task: "asyncio.Task[T]") -> None:
        self._running.pop(point.index, None)
        if task.cancelled():
            return
        error = task.exception()
        self._results[point.index] = (point, error if error is not None else task.result())
        self._judge_in_order()
        self._launch()  # after judging: a settled answer sends no further probe
        self._progress.set()

    def _judge_in_order(self) -> None:
        while self.active and self.judged in self._results:
            point, outcome = self._results.pop(self.judged)
            self.judged += 1
            try:
                verdict = self._judge(point, outcome)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the reasoning
                self.error, verdict = exc, "budget"
            if verdict != "continue":
                self._stop(verdict, point)

    def _stop(self, verdict: Verdict, point: ProbePoint) -> None:
        self.active = False
        self.verdict, self.decided_at = verdict, point
        self._queue.clear()
        for task in self._running.values():
            task.cancel()
        if verdict != "stop-probing" and not self.decided.done():
            self.decided.set_result(None)

    @property
    def settled_or_error(self) -> bool:
        return self.error is not None or self.verdict in ("settled", "budget")

    async def drain(self) -> None:
        """Wait until every point offered so far is judged, or probing stopped."""
        while self.active and self.judged < self.offered:
            self._progress.clear()
            await self._progress.wait()

    async def aclose(self) -> None:
        """Cancel probes in flight and wait for them to go."""
        self.active = False
        self._queue.clear()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled or failed: it no longer matters
                pass


PointRule = Callable[[int, int, str, str], bool]
TrialRule = Callable[[bool], list[tuple[int, int]]]


class MainStream:
    """The state of one main stream as it is read: the reasoning so far, its token ids, the probe
    point waiting to be confirmed, and how many times the stream was resumed.

    :meth:`take` handles one streamed piece (pure bookkeeping, offering the points it confirms to
    the side probes); :meth:`read` is the transport: it opens the stream, resumes it once when it
    breaks, and continues it when a scheduler's allowance cut it before the budget."""

    def __init__(self, engine: Engine, prompt: str, *, budget: int, base: GenerationRequest,
                 probes: SideProbes | None, is_point: PointRule, on_delta: Callable[[StreamDelta, int], None],
                 on_point: Callable[[int, str], None], max_resumes: int = 1,
                 trial_points: TrialRule | None = None) -> None:
        self.engine, self.prompt, self.budget, self.base = engine, prompt, budget, base
        self.probes, self.is_point, self.on_delta, self.on_point = probes, is_point, on_delta, on_point
        self.max_resumes, self.trial_points = max_resumes, trial_points
        self.text = ""
        self.tokens = 0
        self.prompt_tokens = 0
        self.resumes = 0
        self.last_point = 0
        # a point reached, sent once the stream goes past it
        self.pending: list[tuple[int, str, tuple[int, ...] | None]] = []
        # The model's own tokens, where the engine reports their ids (the prompt's on the first piece).
        self.ids: list[int] | None = [] if getattr(engine, "token_ids", False) else None
        self.prompt_ids: list[tuple[int, ...]] = []

    def known_ids(self) -> tuple[int, ...] | None:
        return self.prompt_ids[0] + tuple(self.ids) if self.ids is not None and self.prompt_ids else None

    def _keep_ids(self, delta: StreamDelta) -> None:
        if delta.prompt_ids and not self.prompt_ids:
            self.prompt_ids.append(delta.prompt_ids)
        if self.ids is not None:
            if delta.tokens and (delta.token_ids is None or len(delta.token_ids) != delta.tokens):
                self.ids = None  # a piece without its ids: probes fall back to text
            elif delta.token_ids:
                self.ids.extend(delta.token_ids)

    def take(self, delta: StreamDelta) -> None:
        """One streamed piece: add it, offer the points it confirms, and note a point it reaches."""
        probes = self.probes
        ready: list[tuple[int, str, tuple[int, ...] | None, Literal["probe", "trial"]]] = []
        if self.pending and (delta.tokens > 0 or delta.finish_reason):
            # Something came after the point: more tokens, or the model's end as its own piece (an
            # engine samples the end of text after token p, so a chunk of p tokens said "length"
            # and was probed). An end that came with token p itself (a stop string) is not probed.
            at, text, point_ids = self.pending.pop()
            ready.append((at, text, point_ids, "probe"))
        self._keep_ids(delta)
        added = delta.text
        self.text += added
        self.tokens += delta.tokens
        if delta.prompt_tokens and not self.prompt_tokens:
            self.prompt_tokens = delta.prompt_tokens
        self.on_delta(delta, self.tokens)
        tokens = self.tokens
        if self.trial_points is not None and probes is not None and probes.active:
            ready += [(pos, self.text[:char], None, "trial") for char, pos in self.trial_points(bool(delta.finish_reason))]
        if probes is not None:
            for at, text, point_ids, kind in sorted(ready, key=lambda r: (r[0], r[3] == "trial")):
                probes.offer(at, text, point_ids, kind)
        if (
            probes is not None
            and probes.active
            and delta.tokens > 0
            and tokens < self.budget
            and self.is_point(self.last_point, tokens, self.text, added)
        ):
            self.pending[:] = [(tokens, self.text, self.known_ids())]
            self.on_point(tokens, self.text)
            self.last_point = tokens

    def request(self) -> GenerationRequest:
        """The stream's request from where it stands (a resumed stream goes on from the exact tokens)."""
        base, start_tokens = self.base, self.tokens
        return GenerationRequest(
            prompt=self.prompt + self.text,
            max_tokens=self.budget - start_tokens,
            stop=base.stop,
            temperature=base.temperature,
            top_p=base.top_p,
            seed=None if base.seed is None else base.seed + start_tokens,
            priority=base.priority,
            prompt_ids=self.known_ids() if start_tokens else None,
        )

    def _resume(self, error: EngineError) -> None:
        """A broken stream: resume it from the prefix, or raise once ``max_resumes`` are spent."""
        if self.resumes >= self.max_resumes:
            raise error
        self.resumes += 1

    async def read(self) -> Stop:
        """Stream up to the budget or the model's end (``budget`` also when an allowance ran out;
        ``engine_length`` when the engine cut it before the budget and gives no more, or refuses
        to go on because its context is full)."""
        while self.tokens < self.budget:
            start_tokens = self.tokens
            finish: str | None = None
            try:
                async with aclosing(self.engine.stream(self.request())) as deltas:
                    async for delta in deltas:
                        self.take(delta)
                        finish = delta.finish_reason or finish
                        if self.probes is not None and self.probes.decided.done():
                            # decided: close the upstream stream now, not when the waiting program is
                            # next scheduled (a reader with a backlog would read on meanwhile)
                            return "certain" if self.probes.verdict == "settled" else "budget"
            except BudgetExhausted:
                return "budget"
            except EngineError as exc:
                if self.tokens and exc.context_full:
                    # the engine refused to go on because its context is full (llama.cpp's server,
                    # SGLang, vLLM): its own limit, as a continuation that gives no token. Refused
                    # before any reasoning, the prompt itself does not fit: that error stands.
                    return "engine_length"
                self._resume(exc)
                continue
            if finish is None:  # an engine whose stream ended without saying why: treat as broken
                self._resume(EngineError(f"the stream from {self.engine.name} ended without a finish reason"))
                continue
            if finish != "length":
                return "finished"
            if self.tokens == start_tokens:
                # cut on length before the budget and its continuation gave nothing: the engine's own
                # limit (its context, a recording's cut), not the model's end and not the budget
                return "engine_length"
        return "budget"

    def outcome(self, stop: Stop) -> MainStreamOutcome:
        """How it ended: at the deciding point when the side probes settled it (or spent the budget)."""
        probes = self.probes
        outcome = MainStreamOutcome(
            reasoning=self.text, tokens=self.tokens, stop=stop, streamed_tokens=self.tokens,
            prompt_tokens=self.prompt_tokens, resumes=self.resumes,
        )
        if probes is not None and probes.error is not None:
            raise probes.error
        if probes is not None and probes.verdict in ("settled", "budget") and probes.decided_at is not None:
            point = probes.decided_at
            outcome.reasoning, outcome.tokens, outcome.decided_at = point.reasoning, point.at_tokens, point
            outcome.stop = "certain" if probes.verdict == "settled" else "budget"
        return outcome


async def reason_in_one_stream(
    engine: Engine,
    prompt: str,
    *,
    budget: int,
    base: GenerationRequest,
    probes: SideProbes | None,
    is_point: PointRule,
    on_delta: Callable[[StreamDelta, int], None],
    on_point: Callable[[int, str], None],
    max_resumes: int = 1,
    trial_points: TrialRule | None = None,
) -> MainStreamOutcome:
    """Stream the reasoning from ``prompt`` up to ``budget`` tokens, forking probes through
    ``probes`` at the positions ``is_point(last_point_tokens, tokens, reasoning, added_text)`` picks.

    ``base`` carries the sampling (temperature, top_p, stop, seed); the seed of a resumed stream is
    ``seed + tokens so far``, as the chunked path seeds each chunk. A stream that breaks is resumed
    from the prefix ``max_resumes`` times, then its error is raised; a stream cut on ``length``
    before the budget (a scheduler's allowance) is simply continued; where the continuation gives no
    token, or the engine refuses it because its context is full, the engine's own limit cut it (stop
    ``engine_length``). Cancelling closes the stream.

    ``trial_points(final)``, called after ``on_delta`` has seen each piece, gives the trial points
    confirmed since (character offset, token position); they are offered as ``trial`` points, in
    position order with the probe points (a probe point before a trial point at the same position)."""
    stream = MainStream(engine, prompt, budget=budget, base=base, probes=probes, is_point=is_point,
                        on_delta=on_delta, on_point=on_point, max_resumes=max_resumes, trial_points=trial_points)
    reader = asyncio.ensure_future(stream.read())
    waits: set[asyncio.Future] = {reader}
    if probes is not None:
        waits.add(probes.decided)
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            stop: Stop = reader.result()  # raises the main stream's error
            stream.pending.clear()  # the stream ended right at the last point: no probe there
            if probes is not None:
                await probes.drain()  # decisions by position: the probes before the end still count
        else:
            stop = "budget"
    finally:
        if not reader.done():
            reader.cancel()  # closes the upstream stream: the server aborts the generation
        try:
            await reader
        except BaseException:  # noqa: BLE001 - its error was raised above if it mattered
            pass
        if probes is not None:
            await probes.aclose()
    return stream.outcome(stop)


__all__ = ["MainStream", "MainStreamOutcome", "ProbePoint", "SideProbes", "Verdict", "reason_in_one_stream"]
