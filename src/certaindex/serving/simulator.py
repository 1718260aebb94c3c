"""Discrete-event simulation of online serving: the real programs and the real scheduler core,
an engine replaced by a cost model.

Every program is ``solve_cot`` itself, answered from recorded traces (:class:`ReplayEngine`), so
its requests, token counts, probe answers and early-exit decisions are exactly those of a live run
(see docs/traces.md). Every request goes through the same :class:`SchedulerCore` as the live
scheduler (submit, dispatch, finish, certaindex reports, allowances). Only time is modelled: the
engine runs continuous batching, one token per running request per decode step, each step costing
``CostModel.step_s(batch, context)``, plus a prefill of the tokens its prefix cache lacks when a
request joins (:mod:`certaindex.serving.costmodel`).

Time advances from event to event (arrival, a request finishing), jumping whole runs of steps in
closed form, so a sweep of thousands of programs takes seconds. Replicas are independent engines,
each with its own core; a program arriving goes to the replica with the fewest live programs.

Like the live runtime (scheduler/runtime.py), a finished gang's program submits its next request
before the freed slot is dispatched, so the scheduler core chooses between it and the waiting
programs (shortest remaining work keeps a program that is nearly done on the engine).

Probe timing of logged programs that carry their main stream (``LoggedProgram.stream_tokens``: plans
of recorded trajectories, see :mod:`certaindex.evaluation.serving_plans`), ``probe_timing``:

* ``"side"`` (the live default on HTTP engines, issue 11; :mod:`certaindex.programs.main_stream`):
  one main-stream request decodes the reasoning from the prompt to its natural end; each probe (or
  DEER-style trial) is a separate short request forked once the stream has passed its position
  (prefill of the probe suffix only: the prompt and reasoning are the main stream's cached prefix),
  at most one in flight, later points queued, judged in position order. The exit decision arrives
  when the deciding probe finishes; the main stream is then closed, and the tokens it decoded past
  the deciding position meanwhile are ``overrun_tokens``: real cost, counted in the record's tokens.
  It needs a batch of 2 (``max_batch`` and ``capacity``); below that the live runtime reasons in
  chunks, and so does the simulation.
* ``"chunked"`` (the earlier design, and the embedded engine's): the reasoning pauses for every probe:
  a chunk up to each probe position, then the probe, one after another.

Approximation: when the certaindex core's allowance cuts a request below what the program asked,
the cut is rounded down to whole recorded chunks (traces hold chunks of g tokens), and a probe that
does not fit counts as the budget running out; the live runtime cuts to the exact token.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Sequence

import numpy as np

from certaindex.core.answers import answers_equal
from certaindex.serving.costmodel import CostModel
from certaindex.engines.base import BudgetExhausted, Choice, Completion, Engine, EngineError, GenerationRequest
from certaindex.traces.replay import ReplayEngine
from certaindex.serving.loadgen import ProgramRecord, Summary, poisson_arrivals, summarise
from certaindex.serving.loadtest import policy_spec
from certaindex.scheduler.budgets import program_budget
from certaindex.programs.cot import CoTConfig, CoTResult, solve_cot
from certaindex.scheduler.core import Gang, SchedulerCore
from certaindex.traces import TraceRecord, TraceSet

PROBE_TIMINGS = ("side", "chunked")

__all__ = ["PROBE_TIMINGS", "LoggedProgram", "SimulationError", "plot_sweep", "simulate", "simulate_logged", "sweep"]


class SimulationError(RuntimeError):
    """The simulation cannot go on (a program asked for something the traces cannot serve)."""


# ------------------------------------------------------------------------------ programs as coroutines


class _Ask:
    """What a program's engine call yields to the simulator: answered by ``coroutine.send``."""

    __slots__ = ("request",)

    def __init__(self, request: GenerationRequest) -> None:
        self.request = request

    def __await__(self) -> Generator["_Ask", Any, Completion]:
        return (yield self)


class _YieldingEngine(Engine):
    """The engine a simulated program sees: every generate is handed to the simulator."""

    def __init__(self, replay: ReplayEngine | None) -> None:
        self.replay = replay
        self.name = f"sim:{replay.name if replay is not None else 'log'}"

    def render_chat(self, messages):  # type: ignore[override]
        if self.replay is None:
            raise SimulationError("a logged program renders no prompts")
        return self.replay.render_chat(messages)

    async def generate(self, request: GenerationRequest) -> Completion:
        return await _Ask(request)


@dataclass(frozen=True)
class LoggedProgram:
    """A program as a live run logged it (``certaindex loadtest --out``): its requests in order,
    each ``[is_probe, prompt_tokens, max_tokens, tokens]`` (a probe's with a fifth item, the
    certaindex the program reported after it), and its outcome. Simulating it checks
    the timing model on exactly the work that ran, whatever the engine's output would be now."""

    program_id: str
    arrival: float
    requests: tuple[tuple, ...]
    tokens: int
    correct: bool = False
    answer: str | None = None
    stop_reason: str = ""
    budget: int | None = None  # its scheduler budget (None: the simulation's default)
    # One-stream timing (plans of recorded trajectories): reasoning tokens the main stream generates
    # if never closed, and the reasoning position where the program exits (None: it reasons to the end).
    stream_tokens: int | None = None
    exit_pos: int | None = None


async def _scripted(engine: Engine, program: LoggedProgram, report: Callable[[float], None] | None) -> None:
    for entry in program.requests:
        is_probe, _prompt_tokens, max_tokens = entry[:3]
        await engine.generate(GenerationRequest(prompt="probe" if is_probe else "", max_tokens=max(1, max_tokens)))
        if report is not None and len(entry) > 4:
            report(float(entry[4]))


def _run_sync(coroutine: Any) -> Any:
    """Run a coroutine that never suspends (the replay engine's generate) to its result."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise SimulationError("the replay engine suspended; it must answer at once")


_CORRECT: dict[tuple[str | None, str], bool] = {}


def _correct(answer: str | None, gold: str) -> bool:
    """answers_equal, memoised: replayed programs give the same few answers over and over, and
    symbolic comparison is the slowest step of a simulation."""
    key = (answer, gold)
    if key not in _CORRECT:
        _CORRECT[key] = answers_equal(answer, gold)
    return _CORRECT[key]


# ------------------------------------------------------------------------------------- state


@dataclass(eq=False)
class _Program:
    program_id: str
    trace: TraceRecord | None
    arrival: float
    logged: LoggedProgram | None = None
    cursor: int = 0  # next logged request
    coroutine: Any = None
    replica: "_Replica | None" = None
    start: float | None = None
    end: float | None = None
    result: CoTResult | None = None
    cached_end: int = 0  # tokens of its context an engine with per-program prefix caching holds
    kv_final: int = 0  # KV tokens it holds at its end (logged programs: known in advance)
    side: "_Side | None" = None  # one main stream with probes on the side


@dataclass(eq=False)
class _Side:
    """A program reasoning in one main stream, its probes forked on the side (issue 11)."""

    probes: list[tuple[int, tuple]]  # (reasoning position, logged probe entry), in position order
    stream_tokens: int  # where the main stream ends by itself
    exit_pos: int | None
    prompt_tokens: int
    free_exit: bool  # the exit is read from the stream itself (the model's own \boxed{}), not a probe
    offered: int = 0  # probes whose point the stream has passed
    launched: int = 0
    judged: int = 0
    streamed: int = 0  # main-stream tokens generated so far
    stream_done: bool = False
    decided: bool = False
    probe_tokens: int = 0
    main: "_Request | None" = None
    main_gang: Gang | None = None

    def threshold(self, i: int) -> int:
        """Stream tokens at which probe ``i`` is sent: once the stream has gone past its position
        (or ended there), as main_stream confirms a point only when something follows it."""
        return min(self.probes[i][0] + 1, self.stream_tokens)

    def next_milestone(self) -> int:
        """The next stream position where something happens: a probe point passed, the exit read
        from the stream, or the stream's end."""
        marks = [self.stream_tokens]
        if self.offered < len(self.probes):
            marks.append(self.threshold(self.offered))
        if self.free_exit and self.exit_pos is not None and self.streamed < self.exit_pos:
            marks.append(self.exit_pos)
        return max(self.streamed + 1, min(marks))

    @property
    def overrun(self) -> int:
        return max(0, self.streamed - self.exit_pos) if self.decided and self.exit_pos is not None else 0


@dataclass(eq=False)
class _Request:
    program: _Program
    gang: Gang
    tokens: int  # tokens it generates
    base: int  # prompt + reasoning tokens in its prompt (what a cache can hold)
    context: int  # tokens in its context when it joins (base, plus the probe suffix for probes)
    is_probe: bool
    remaining: int = 0  # decode steps left
    length: int = 0  # current context length
    role: str = ""  # one-stream programs: "main" (the reasoning stream) or "probe" (a side request)
    shared: int = 0  # prompt tokens shared with a running main stream (a side probe's prefix)


@dataclass(eq=False)
class _GangState:
    program: _Program
    completion: Completion
    outstanding: int
    is_probe: bool
    role: str = ""
    certaindex: float | None = None  # a side probe's report, heard when it finishes


@dataclass(eq=False)
class _Replica:
    index: int
    core: SchedulerCore
    time: float = 0.0  # its last step boundary
    queue: deque = field(default_factory=deque)  # dispatched, waiting for a batch slot
    waiting: list = field(default_factory=list)  # the same with a KV capacity: a heap by engine priority
    active: list = field(default_factory=list)
    live: int = 0
    last_program: _Program | None = None  # "last" prefix cache: whose sequence the KV holds
    last_end: int = 0

    def next_finish(self, cost: CostModel) -> float:
        if not self.active:
            return math.inf
        k = min(r.remaining for r in self.active)
        return self.time + cost.steps_s(k, len(self.active), sum(r.length for r in self.active))


# ------------------------------------------------------------------------------------ simulator


class _Simulation:
    def __init__(
        self,
        traces: TraceSet | None,
        cost: CostModel,
        policy: str,
        config: CoTConfig,
        *,
        capacity: int,
        replicas: int,
        slo_s: float | None,
        aging_s: float,
        kv_tokens: int | None = None,
        deadline_slack_s: float | None = None,
        chunked_prefill: bool = False,
        probe_timing: str = "side",
        side_probes_scheduled: bool = True,
    ) -> None:
        self.side_probes_scheduled = side_probes_scheduled
        if probe_timing not in PROBE_TIMINGS:
            raise ValueError(f"probe_timing must be one of {', '.join(PROBE_TIMINGS)}, got {probe_timing!r}")
        self.spec = policy_spec(policy)
        self.chunked_prefill = chunked_prefill
        # Side probes need a second slot beside the stream, as the live runtime requires.
        self.side = probe_timing == "side" and cost.max_batch >= 2 and capacity >= 2
        self.kv_tokens = kv_tokens
        self._seq = itertools.count()
        self.policy = policy
        self.cost = cost
        self.config = dataclasses.replace(config, early_exit=self.spec.early_exit)
        self.budget = program_budget(self.config)
        self.replay = ReplayEngine(traces) if traces is not None else None
        self.granularity = traces.settings.granularity if traces is not None else 1
        self.suffix = self.config.probe_suffix
        self.slo_s = slo_s
        self.replicas = [
            _Replica(i, SchedulerCore(self.spec.core_policy, capacity=capacity, aging_s=aging_s,
                                       deadline_slack_s=deadline_slack_s)) for i in range(replicas)
        ]
        self.gangs: dict[Gang, _GangState] = {}
        self.records: list[ProgramRecord] = []

    # -- programs ---------------------------------------------------------------------------

    def arrive(self, program: _Program, now: float) -> None:
        replica = min(self.replicas, key=lambda r: (r.live, r.index))
        replica.live += 1
        program.replica = replica
        deadline = program.arrival + self.slo_s if self.spec.deadlines and self.slo_s is not None else None
        budget = program.logged.budget if program.logged is not None and program.logged.budget else self.budget
        replica.core.add_program(program.program_id, now=now, budget=budget, deadline=deadline)
        if program.logged is not None and self.side and program.logged.stream_tokens is not None:
            self._start_side(program, now)
            return
        if program.logged is not None:
            core, pid = replica.core, program.program_id
            report = (lambda c: core.report(pid, certaindex=c)) if self.spec.deadlines else None
            program.coroutine = _scripted(_YieldingEngine(self.replay), program.logged, report)  # type: ignore[arg-type]
        else:
            assert program.trace is not None
            engine = _YieldingEngine(self.replay)  # type: ignore[arg-type]
            config = dataclasses.replace(self.config, seed=program.trace.seed)
            on_event = self._reporter(replica.core, program.program_id) if self.spec.deadlines else None
            program.coroutine = solve_cot(engine, program.trace.question, config, on_event)
        self.resume(program, now, None)

    @staticmethod
    def _reporter(core: SchedulerCore, program_id: str) -> Callable[[object], None]:
        def on_event(event: object) -> None:
            probe = getattr(event, "probe", None)
            if getattr(event, "kind", None) == "probe" and probe is not None:
                core.report(program_id, certaindex=probe.certaindex)

        return on_event

    def resume(self, program: _Program, now: float, completion: Completion | None) -> None:
        """Run the program until it asks the engine for something it may have, or ends."""
        replica = program.replica
        assert replica is not None
        value: Any = completion
        error: BaseException | None = None
        while True:
            try:
                asked = program.coroutine.throw(error) if error is not None else program.coroutine.send(value)
            except StopIteration as stop:
                self._finish_program(program, now, stop.value)
                return
            except EngineError as exc:
                raise SimulationError(f"program {program.program_id} ({program.trace.id}): {exc}") from exc
            error = None
            if not isinstance(asked, _Ask):
                raise SimulationError(f"a program awaited {asked!r}; only engine calls can be simulated")
            try:
                request, served, is_probe = self._capped(program, asked.request)
            except BudgetExhausted as exc:
                error = exc
                continue
            gang = replica.core.submit(program.program_id, width=request.n, max_tokens=request.max_tokens, now=now)
            self.gangs[gang] = _GangState(program, served, request.n, is_probe)
            return

    # -- one main stream, probes on the side --------------------------------------------------

    def _start_side(self, program: _Program, now: float) -> None:
        """Submit the main stream; its probes are forked as it passes their positions."""
        logged = program.logged
        assert logged is not None and logged.stream_tokens is not None
        probes: list[tuple[int, tuple]] = []
        pos, prompt = 0, None
        for entry in logged.requests:
            if entry[0]:
                probes.append((pos, entry))
            else:
                prompt = entry[1] - pos if prompt is None else prompt
                pos += entry[3]
        if prompt is None:  # probes only: their prompts hold the prompt, the suffix and no reasoning
            prompt = max(0, logged.requests[0][1] - self.cost.probe_suffix_tokens)
        stream = max(1, logged.stream_tokens)
        exit_pos = logged.exit_pos
        side = _Side(probes, stream, exit_pos, prompt,
                     free_exit=exit_pos is not None and not any(p == exit_pos for p, _ in probes))
        program.side = side
        program.kv_final = prompt + stream
        gang = program.replica.core.submit(program.program_id, width=1, max_tokens=stream, now=now)  # type: ignore[union-attr]
        choice = Choice(text="", finish_reason="length", completion_tokens=stream)
        self.gangs[gang] = _GangState(program, Completion(choices=(choice,), prompt_tokens=prompt), 1, False, "main")
        side.main_gang = gang

    def _launch_probe(self, program: _Program, now: float) -> None:
        """Send the next offered probe when none is in flight (at most one, the rest queued)."""
        side = program.side
        assert side is not None and program.replica is not None
        if side.decided or side.launched > side.judged or side.launched >= side.offered:
            return
        _pos, entry = side.probes[side.launched]
        side.launched += 1
        base = max(0, entry[1] - self.cost.probe_suffix_tokens)
        choice = Choice(text="", finish_reason="length", completion_tokens=entry[3])
        state = _GangState(program, Completion(choices=(choice,), prompt_tokens=base), 1, True, "probe",
                           float(entry[4]) if len(entry) > 4 else None)
        if self.side_probes_scheduled:  # as the live runtime: the probe takes a slot from the core
            gang = program.replica.core.submit(program.program_id, width=1, max_tokens=max(1, entry[2]), now=now)
            self.gangs[gang] = state
            return
        # Straight to the engine, ahead of its queue (its program already holds a slot).
        gang = Gang(-next(self._seq) - 1, program.program_id, 1, max(1, entry[2]), now)
        self.gangs[gang] = state
        self._enqueue(program.replica, gang, state, front=True)

    def _side_stream(self, replica: _Replica, request: _Request, now: float) -> None:
        """The main stream reached a milestone (or its end): offer the probes it passed."""
        program = request.program
        side = program.side
        assert side is not None
        if side.stream_done:  # closed by a decision earlier in this step
            return
        side.streamed = request.length - request.context
        while side.offered < len(side.probes) and side.threshold(side.offered) <= side.streamed:
            side.offered += 1
        if side.streamed >= side.stream_tokens:
            side.stream_done = True
            replica.core.finish(request.gang, tokens=side.streamed)
            del self.gangs[request.gang]
        else:
            request.remaining = side.next_milestone() - side.streamed
        self._launch_probe(program, now)
        self._side_check(replica, program, now)

    def _side_probe_done(self, replica: _Replica, state: _GangState, now: float) -> None:
        program = state.program
        side = program.side
        assert side is not None
        side.judged += 1
        side.probe_tokens += state.completion.completion_tokens
        if state.certaindex is not None and self.spec.deadlines:
            replica.core.report(program.program_id, certaindex=state.certaindex)
        if side.main is not None and not side.stream_done:
            side.streamed = side.main.length - side.main.context
        self._launch_probe(program, now)
        self._side_check(replica, program, now)

    def _side_check(self, replica: _Replica, program: _Program, now: float) -> None:
        """Decide once every probe up to the exit is judged (and the stream has passed an exit it
        reads itself); close the main stream; end the program when nothing of it is left."""
        side = program.side
        assert side is not None
        if side.decided or side.judged < len(side.probes):
            return
        if side.exit_pos is None:
            if not side.stream_done:  # no exit: it reasons to the end
                return
        elif side.free_exit and side.streamed < side.exit_pos and not side.stream_done:
            return
        else:
            side.decided = True
        if not side.stream_done and side.main is not None:  # close the stream: the server aborts it
            main = side.main
            if main in replica.active:
                replica.active.remove(main)
            replica.core.finish(main.gang, tokens=side.streamed)
            self.gangs.pop(main.gang, None)
            side.stream_done = True
        self._finish_program(program, now, None)

    def _capped(self, program: _Program, request: GenerationRequest) -> tuple[GenerationRequest, Completion, bool]:
        """The request as the runtime's allowance cap sends it, the recorded answer to it, and
        whether it is a probe (the only request whose prompt ends in the probe suffix)."""
        if program.logged is not None:  # what ran, as it ran: no allowance cuts
            is_probe, prompt_tokens, _, tokens = program.logged.requests[program.cursor][:4]
            program.cursor += 1
            base = max(0, prompt_tokens - self.cost.probe_suffix_tokens) if is_probe else prompt_tokens
            choice = Choice(text="", finish_reason="length", completion_tokens=tokens)
            return request, Completion(choices=(choice,), prompt_tokens=base), bool(is_probe)
        assert self.replay is not None
        core = program.replica.core  # type: ignore[union-attr]
        allowance = core.allowance(program.program_id)
        each = allowance // request.n
        if each < 1:
            raise BudgetExhausted(f"program {program.program_id!r} has {allowance} tokens left")
        is_probe = request.prompt.endswith(self.suffix)
        if each < request.max_tokens:
            if is_probe:
                capped = dataclasses.replace(request, max_tokens=each)
                try:
                    return capped, _run_sync(self.replay.generate(capped)), True
                except EngineError:
                    raise BudgetExhausted("the probe does not fit the allowance") from None
            whole = each // self.granularity * self.granularity
            if whole < 1:
                raise BudgetExhausted(f"program {program.program_id!r} has less than a chunk left")
            request = dataclasses.replace(request, max_tokens=whole)
        try:
            return request, _run_sync(self.replay.generate(request)), is_probe
        except EngineError as exc:
            raise SimulationError(f"program {program.program_id} ({program.trace.id}): {exc}") from exc

    def _finish_program(self, program: _Program, now: float, result: CoTResult | None) -> None:
        replica = program.replica
        assert replica is not None
        replica.core.remove_program(program.program_id)
        replica.live -= 1
        program.end = now
        program.result = result
        start = program.start if program.start is not None else now
        overrun = 0
        if program.side is not None:
            logged, side = program.logged, program.side
            assert logged is not None
            overrun = side.overrun
            tokens, correct, answer, stop = side.streamed + side.probe_tokens, logged.correct, logged.answer, logged.stop_reason
        elif program.logged is not None:
            logged = program.logged
            tokens, correct, answer, stop = logged.tokens, logged.correct, logged.answer, logged.stop_reason
        else:
            assert result is not None and program.trace is not None
            tokens, answer, stop = result.total_tokens, result.answer, result.stop_reason
            correct = _correct(result.answer, program.trace.gold)
        self.records.append(
            ProgramRecord(
                program_id=program.program_id,
                arrival=program.arrival,
                start=start,
                end=now,
                tokens=tokens,
                correct=correct,
                policy=self.policy,
                answer=answer,
                stop_reason=stop,
                overrun_tokens=overrun,
            )
        )

    # -- engine -----------------------------------------------------------------------------

    def dispatch(self, replica: _Replica) -> None:
        """Start what the core dispatches; fill the batch from the engine's queue.

        With a KV capacity (``kv_tokens``) the engine admits a request only while the final lengths
        (context + tokens to generate) of its running requests and the newcomer fit, and its waiting
        requests are ordered by the core's ``engine_priority`` taken at dispatch (vLLM's priority
        scheduling, which the proxy feeds), so the scheduler still picks who runs next when memory,
        not the batch size, is the limit."""
        for gang in replica.core.dispatch(now=replica.time):
            self._enqueue(replica, gang, self.gangs[gang])
        while replica.queue and len(replica.active) < self.cost.max_batch:
            self._join(replica, replica.queue.popleft())
        while (replica.waiting and len(replica.active) < self.cost.max_batch
               and self._kv_fits(replica, replica.waiting[0][2])):
            self._join(replica, heapq.heappop(replica.waiting)[2])

    def _enqueue(self, replica: _Replica, gang: Gang, state: _GangState, front: bool = False) -> None:
        """Hand a dispatched gang's requests to the engine's queue (``front``: ahead of it)."""
        program = state.program
        if program.start is None:
            program.start = replica.time
        base = state.completion.prompt_tokens
        context = base + (self.cost.probe_suffix_tokens if state.is_probe else 0)
        for choice in state.completion.choices:
            request = _Request(program, gang, choice.completion_tokens, base, context, state.is_probe,
                               role=state.role, shared=base if state.role == "probe" else 0)
            if state.role == "main":
                assert program.side is not None
                program.side.main = request
            if self.kv_tokens is None:
                if front:
                    replica.queue.appendleft(request)
                else:
                    replica.queue.append(request)
            else:
                priority = -(1 << 62) if front else replica.core.engine_priority(gang)
                heapq.heappush(replica.waiting, (priority, next(self._seq), request))

    def _kv_fits(self, replica: _Replica, request: _Request) -> bool:
        """Whether the KV cache holds the newcomer beside the running requests, each program counted
        at its largest length (its whole final context for a logged program, so a full-reasoning
        request and an early-exit chunk are held alike: no preemption). A request alone always fits."""
        if self.kv_tokens is None or not replica.active:
            return True
        held = sum(self._kv_need(r) for r in replica.active)
        return held + self._kv_need(request) <= self.kv_tokens

    @staticmethod
    def _kv_need(request: _Request) -> int:
        if request.shared:  # a side probe: its prefix is the main stream's blocks (prefix caching)
            return request.context - request.shared + max(1, request.tokens)
        return max(request.context + max(1, request.tokens), request.program.kv_final)

    def _join(self, replica: _Replica, request: _Request) -> None:
        program = request.program
        if request.shared:  # a side probe forks the running stream's prefix: only its suffix is new
            cached = request.shared
        elif self.cost.prefix_cache == "last":
            cached = min(request.base, replica.last_end) if replica.last_program is program else 0
        else:
            cached = min(request.base, program.cached_end)
        new = request.context - cached
        # Chunked prefill (vLLM, SGLang): the newcomer's uncached tokens ride along in the running
        # decode steps, costing their compute alone; otherwise the join stalls the batch for a
        # forward pass of its own (the fixed request cost plus its tokens).
        replica.time += self.cost.prefill_s * max(0, new) if self.chunked_prefill else self.cost.join_s(new)
        request.remaining = max(1, request.tokens)  # even an empty completion takes one step
        request.length = request.context
        if request.role == "main":  # run to the first milestone (a probe point passed, ...)
            assert program.side is not None
            request.remaining = program.side.next_milestone() - program.side.streamed
        replica.active.append(request)

    def advance(self, replica: _Replica, until: float) -> None:
        """Run whole decode steps up to the first step boundary at or after ``until`` (no request
        finishes on the way: callers process finishes first)."""
        if not replica.active:
            replica.time = max(replica.time, until)
            return
        if replica.time >= until:
            return
        batch = len(replica.active)
        context = sum(r.length for r in replica.active)
        k_max = min(r.remaining for r in replica.active)
        lo, hi = 1, k_max  # smallest k whose end reaches `until`
        while lo < hi:
            mid = (lo + hi) // 2
            if replica.time + self.cost.steps_s(mid, batch, context) >= until:
                hi = mid
            else:
                lo = mid + 1
        self._steps(replica, lo, batch, context)

    def _steps(self, replica: _Replica, k: int, batch: int, context: int) -> None:
        replica.time += self.cost.steps_s(k, batch, context)
        for request in replica.active:
            request.remaining -= k
            request.length += k

    def finish_next(self, replica: _Replica) -> None:
        """Run the batch until its first request finishes; hand the finished gangs' answers back."""
        batch = len(replica.active)
        k = min(r.remaining for r in replica.active)
        self._steps(replica, k, batch, sum(r.length for r in replica.active))
        now = replica.time
        reached = [r for r in replica.active if r.remaining <= 0]
        # A main stream at a milestone short of its end keeps decoding.
        done = [r for r in reached if not (r.role == "main" and r.length - r.context < r.tokens)]
        replica.active = [r for r in replica.active if r.remaining > 0 or r not in done]
        finished: list[_GangState] = []
        for request in reached:
            if request.role == "main":
                self._side_stream(replica, request, now)
                continue
            if request.role == "probe":
                state = self.gangs.pop(request.gang)
                if request.gang.gang_id >= 0:  # scheduled by the core (not sent straight to the engine)
                    replica.core.finish(request.gang, tokens=state.completion.completion_tokens)
                self._side_probe_done(replica, state, now)
                continue
            self._remember_cache(replica, request)
            state = self.gangs[request.gang]
            state.outstanding -= 1
            if state.outstanding == 0:
                del self.gangs[request.gang]
                replica.core.finish(request.gang, tokens=state.completion.completion_tokens)
                finished.append(state)
        for state in finished:
            self.resume(state.program, now, state.completion)
        self.dispatch(replica)

    def _remember_cache(self, replica: _Replica, request: _Request) -> None:
        end = request.base if request.is_probe else request.base + request.tokens
        replica.last_program, replica.last_end = request.program, end
        request.program.cached_end = end

    # -- main loop --------------------------------------------------------------------------

    def run(self, programs: list[_Program]) -> list[ProgramRecord]:
        pending = deque(sorted(programs, key=lambda p: p.arrival))
        while True:
            next_arrival = pending[0].arrival if pending else math.inf
            replica = min(self.replicas, key=lambda r: r.next_finish(self.cost))
            next_finish = replica.next_finish(self.cost)
            if next_arrival == math.inf and next_finish == math.inf:
                break
            if next_finish <= next_arrival:
                self.finish_next(replica)
                continue
            program = pending.popleft()
            # It goes to the least-loaded replica, which first runs to its next step boundary.
            target = min(self.replicas, key=lambda r: (r.live, r.index))
            self.advance(target, program.arrival)
            self.arrive(program, program.arrival)
            self.dispatch(target)
        stuck = [r for r in self.replicas if r.core.pending_gangs or r.queue or r.waiting or r.live]
        if stuck:
            raise SimulationError(
                f"the simulation stopped with work left on replica {stuck[0].index} "
                f"({stuck[0].core.pending_gangs} pending gangs, {stuck[0].live} live programs)"
            )
        return sorted(self.records, key=lambda r: r.arrival)


def _check_kv(kv_tokens: int | None) -> None:
    if kv_tokens is not None and (not isinstance(kv_tokens, int) or isinstance(kv_tokens, bool) or kv_tokens < 1):
        raise ValueError(f"kv_tokens must be an integer >= 1 or None, got {kv_tokens!r}")


def simulate(
    traces: TraceSet,
    cost: CostModel,
    policy: str,
    arrivals: Sequence[float],
    config: CoTConfig,
    *,
    capacity: int,
    replicas: int = 1,
    slo_s: float | None = None,
    aging_s: float = 30.0,
    order: Sequence[int] | None = None,
    kv_tokens: int | None = None,
) -> list[ProgramRecord]:
    """Serve programs arriving at ``arrivals`` under ``policy``; program i replays trace
    ``order[i]`` (default ``i % len(traces)``, the traces in file order)."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if not traces.records:
        raise ValueError("the trace set holds no traces")
    if order is not None and len(order) != len(arrivals):
        raise ValueError(f"{len(arrivals)} arrivals but {len(order)} trace indices")
    g = traces.settings.granularity
    if config.probe_interval % g or config.budget % g or config.budget > traces.settings.budget:
        raise ValueError(
            f"the traces serve probe intervals and budgets that are multiples of g={g} and at most "
            f"{traces.settings.budget} tokens; got interval {config.probe_interval}, budget {config.budget}"
        )
    indices = list(order) if order is not None else [i % len(traces.records) for i in range(len(arrivals))]
    programs = [
        _Program(f"{policy}:{i}:{traces.records[j].id}", traces.records[j], float(t))
        for i, (t, j) in enumerate(zip(arrivals, indices))
    ]
    _check_kv(kv_tokens)
    sim = _Simulation(traces, cost, policy, config, capacity=capacity, replicas=replicas, slo_s=slo_s, aging_s=aging_s,
                      kv_tokens=kv_tokens)
    return sim.run(programs)


def simulate_logged(
    programs: Sequence[LoggedProgram],
    cost: CostModel,
    policy: str,
    *,
    capacity: int,
    replicas: int = 1,
    slo_s: float | None = None,
    aging_s: float = 30.0,
    kv_tokens: int | None = None,
    deadline_slack_s: float | None = None,
    chunked_prefill: bool = False,
    probe_timing: str = "side",
    side_probes_scheduled: bool = True,
) -> list[ProgramRecord]:
    """Serve logged programs (their requests exactly as they ran live) under ``policy``: the check
    of the cost model against a load test, free of any difference in what the engine writes. The
    certaindex core hears the logged certaindex reports and cuts nothing.

    Programs carrying ``stream_tokens`` (plans of recorded trajectories) reason in one main stream
    with side probes under ``probe_timing="side"``, or in chunks under ``"chunked"``; programs
    logged by a load test run as they were logged. ``side_probes_scheduled``: a side probe takes a
    slot from the scheduler core like any request (the live runtime), waiting behind other programs
    when the capacity is used; False sends it straight to the engine, ahead of its queue."""
    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    for program in programs:
        if not program.requests:
            raise ValueError(f"logged program {program.program_id!r} made no requests")
    sims = [_Program(p.program_id, None, float(p.arrival), logged=p, kv_final=max(r[1] + r[3] for r in p.requests))
            for p in programs]
    config = CoTConfig()
    _check_kv(kv_tokens)
    sim = _Simulation(None, cost, policy, config, capacity=capacity, replicas=replicas, slo_s=slo_s, aging_s=aging_s,
                      kv_tokens=kv_tokens, deadline_slack_s=deadline_slack_s, chunked_prefill=chunked_prefill,
                      probe_timing=probe_timing, side_probes_scheduled=side_probes_scheduled)
    return sim.run(sims)


def sweep(
    traces: TraceSet,
    cost: CostModel,
    policies: Sequence[str],
    rates: Sequence[float],
    config: CoTConfig,
    *,
    programs: int,
    capacity: int,
    replicas: int = 1,
    slos: Sequence[float] = (),
    seed: int = 0,
    aging_s: float = 30.0,
    on_done: Callable[[str, float, Summary], None] | None = None,
    kv_tokens: int | None = None,
) -> dict[tuple[str, float], tuple[Summary, list[ProgramRecord]]]:
    """Every policy at every arrival rate; one seed draws the arrival times and which traces arrive,
    shared by all policies at a rate."""
    results: dict[tuple[str, float], tuple[Summary, list[ProgramRecord]]] = {}
    for rate in rates:
        rng = np.random.default_rng([seed, int(round(rate * 1e6))])
        arrivals = poisson_arrivals(programs, rate, rng)
        order = [int(i) for i in rng.integers(0, len(traces.records), size=programs)]
        for policy in policies:
            records = simulate(
                traces, cost, policy, arrivals, config, capacity=capacity, replicas=replicas,
                slo_s=slos[0] if slos else None, aging_s=aging_s, order=order, kv_tokens=kv_tokens,
            )
            summary = summarise(policy, records, slos)
            results[(policy, rate)] = (summary, records)
            if on_done is not None:
                on_done(policy, rate, summary)
    return results


def plot_sweep(
    results: dict[tuple[str, float], tuple[Summary, list[ProgramRecord]]], slos: Sequence[float], prefix: str, title: str = ""
) -> list[str]:
    """PNG plots against arrival rate, one curve per policy: SLO attainment (one file per SLO) and
    throughput (programs/s). Returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(p for p, _ in results))
    rates = sorted({r for _, r in results})
    written: list[str] = []

    def curve(ax, value: Callable[[Summary], float]) -> None:
        for policy in policies:
            ax.plot(rates, [value(results[(policy, r)][0]) for r in rates], marker="o", label=policy)
        ax.set_xlabel("arrival rate (programs/s)")
        ax.grid(alpha=0.3)
        ax.legend()

    def figure(name: str, value: Callable[[Summary], float], ylabel: str, ylim: tuple[float, float] | None) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        curve(ax, value)
        ax.set_ylabel(ylabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_title(title)
        path = f"{prefix}-{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

    for slo in slos:
        figure(f"slo{slo:g}", lambda s, slo=slo: s.slo[float(slo)], f"SLO attainment (latency <= {slo:g} s)", (-0.02, 1.02))
    figure("throughput", lambda s: s.programs_per_s, "throughput (programs/s)", None)
    return written
