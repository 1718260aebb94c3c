"""Online serving load test: chain-of-thought programs arriving over time at one engine.

Policies run one after another on the same engine and the *same* arrival times:

* ``full-fcfs``: full reasoning, first-come-first-served scheduler core (the baseline);
* ``full-sched``: full reasoning under the ``certaindex`` core (no probes, so no certaindex: it
  separates what scheduling alone gains from what early exit adds);
* ``exit-fcfs``: early exit (probe agreement), first-come-first-served core;
* ``exit-sched``: early exit under the ``certaindex`` core, which hears every probe's certaindex and
  each program's deadline (arrival + the first SLO), so it can run nearly-settled and urgent
  programs first and move token budget to unsure ones.

Every program runs unmodified (``solve_cot``) on its scheduler session; the scheduler's capacity
bounds the requests in flight. A program's record (arrival, first dispatch, end, tokens,
correctness) feeds :mod:`certaindex.serving.loadgen`, the same metrics the simulator reports.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

from certaindex.core.answers import answers_equal
from certaindex.core.datasets import Problem
from certaindex.engines.base import Completion, Engine, EngineError, GenerationRequest
from certaindex.serving.loadgen import ProgramRecord
from certaindex.programs.cot import CoTConfig, solve_cot
from certaindex.scheduler import Scheduler, SchedulerCore, cot_reporter
from certaindex.scheduler.budgets import program_budget

__all__ = [
    "POLICIES",
    "PolicySpec",
    "program_budget",
    "policy_spec",
    "run_loadtest",
    "run_policy",
]

PolicyName = Literal["full-fcfs", "full-sched", "exit-fcfs", "exit-sched"]
POLICIES: tuple[PolicyName, ...] = ("full-fcfs", "exit-fcfs", "exit-sched")  # the default comparison


@dataclass(frozen=True)
class PolicySpec:
    """What a load-test policy means for the program and the scheduler core."""

    name: str
    early_exit: bool
    core_policy: Literal["fcfs", "certaindex"]
    deadlines: bool  # give the core deadlines and certaindex reports


def policy_spec(name: str) -> PolicySpec:
    specs = {
        "full-fcfs": PolicySpec("full-fcfs", False, "fcfs", False),
        "full-sched": PolicySpec("full-sched", False, "certaindex", True),
        "exit-fcfs": PolicySpec("exit-fcfs", True, "fcfs", False),
        "exit-sched": PolicySpec("exit-sched", True, "certaindex", True),
    }
    if name not in specs:
        raise ValueError(f"unknown policy {name!r}: use one of {', '.join(specs)}")
    return specs[name]


# The record of the program whose task is running: the engine wrapper notes its first dispatch.
_current: contextvars.ContextVar[dict | None] = contextvars.ContextVar("certaindex_loadtest_program", default=None)


class _DispatchClock(Engine):
    """The inner engine, noting when each program's first request reaches it, and what each of its
    requests was (probe or not, prompt tokens as the engine counts them, max_tokens, tokens
    generated): the log the simulator replays to check its timing on exactly the programs that ran."""

    def __init__(self, inner: Engine, clock: Callable[[], float], probe_suffix: str) -> None:
        self.inner = inner
        self.clock = clock
        self.name = inner.name
        self.probe_suffix = probe_suffix

    async def prepare(self) -> None:
        await self.inner.prepare()

    def render_chat(self, messages):  # type: ignore[override]
        return self.inner.render_chat(messages)

    async def generate(self, request: GenerationRequest) -> Completion:
        state = _current.get()
        if state is not None and state.get("start") is None:
            state["start"] = self.clock()
        completion = await self.inner.generate(request)
        if state is not None:
            is_probe = request.prompt.endswith(self.probe_suffix)
            state["requests"].append(
                [int(is_probe), completion.prompt_tokens, request.max_tokens, completion.completion_tokens]
            )
        return completion

    async def aclose(self) -> None:
        """Shared engine: the caller closes it."""


def _logging(report: Callable[[object], None], state: dict) -> Callable[[object], None]:
    """Report each probe's (and trial's) certaindex, and note it on the program's last logged request
    (that probe or trial)."""

    def on_event(event: object) -> None:
        report(event)
        certaindex = getattr(event, "certaindex", None)
        if certaindex is not None and state["requests"]:
            state["requests"][-1][4:] = [certaindex]

    return on_event


async def run_policy(
    engine: Engine,
    problems: Sequence[Problem],
    arrivals: Sequence[float],
    policy: str,
    config: CoTConfig,
    *,
    capacity: int,
    slo_s: float | None = None,
    aging_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    on_done: Callable[[ProgramRecord], None] | None = None,
    request_log: dict[str, list[list[int]]] | None = None,
) -> list[ProgramRecord]:
    """Replay ``problems`` arriving at ``arrivals`` (seconds from now) under ``policy``.

    Times in the records are seconds from the start of this policy's run. ``slo_s``: the deadline
    (arrival + slo_s) the ``exit-sched`` core is told. ``request_log``: filled with each program's
    requests, ``[is_probe, prompt_tokens, max_tokens, tokens]`` in order, a probe's with the
    certaindex reported after it appended when the core hears reports (see
    :func:`certaindex.serving.simulator.simulate_logged`)."""
    spec = policy_spec(policy)
    if len(arrivals) != len(problems):
        raise ValueError(f"{len(problems)} problems but {len(arrivals)} arrival times")
    if any(b < a for a, b in zip(arrivals, arrivals[1:])) or (arrivals and arrivals[0] < 0):
        raise ValueError("arrival times must be >= 0 and non-decreasing")
    cot = dataclasses.replace(config, early_exit=spec.early_exit)
    budget = program_budget(cot)
    core = SchedulerCore(spec.core_policy, capacity=capacity, aging_s=aging_s)
    scheduler = Scheduler(_DispatchClock(engine, clock, cot.probe_suffix), core, clock)
    t0 = clock()

    async def one(index: int, problem: Problem) -> ProgramRecord:
        arrival = t0 + arrivals[index]
        delay = arrival - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        state: dict = {"start": None, "requests": []}
        _current.set(state)  # this task's own context: seen by the engine wrapper
        deadline = arrival + slo_s if spec.deadlines and slo_s is not None else None
        program_id = f"{policy}:{index}:{problem.id}"
        async with scheduler.session(program_id, budget=budget, deadline=deadline) as session:
            on_event = _logging(cot_reporter(session), state) if spec.deadlines else None
            result = await solve_cot(session, problem.question, cot, on_event)
        end = clock()
        start = state["start"] if state["start"] is not None else end
        record = ProgramRecord(
            program_id=program_id,
            arrival=arrivals[index],
            start=max(arrivals[index], start - t0),
            end=max(arrivals[index], end - t0),
            tokens=result.total_tokens,
            correct=answers_equal(result.answer, problem.answer),
            policy=policy,
            answer=result.answer,
            stop_reason=result.stop_reason,
        )
        if request_log is not None:
            request_log[program_id] = state["requests"]
        if on_done is not None:
            on_done(record)
        return record

    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(problems)]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_loadtest(
    engine: Engine,
    problems: Sequence[Problem],
    arrivals: Sequence[float],
    config: CoTConfig,
    *,
    capacity: int,
    slo_s: float | None,
    policies: Sequence[str] = POLICIES,
    aging_s: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
    on_done: Callable[[ProgramRecord], None] | None = None,
    warmup: bool = True,
    request_log: dict[str, list[list[int]]] | None = None,
) -> dict[str, list[ProgramRecord]]:
    """Every policy in turn on the same engine and arrival times (after one warm-up request, so no
    policy pays for loading)."""
    for name in policies:
        policy_spec(name)
    await engine.prepare()
    if warmup:
        try:
            await engine.generate(GenerationRequest(prompt="Hello", max_tokens=1))
        except EngineError:
            pass  # an engine that serves only known prompts (replay) needs no warming
    results: dict[str, list[ProgramRecord]] = {}
    for name in policies:
        results[name] = await run_policy(
            engine, problems, arrivals, name, config, capacity=capacity, slo_s=slo_s, aging_s=aging_s,
            clock=clock, on_done=on_done, request_log=request_log,
        )
    return results
