"""Scheduler runtime: unmodified programs on a ScheduledEngine, gangs, capacity, cancellation."""

from __future__ import annotations

import asyncio
from contextlib import aclosing
import dataclasses
from dataclasses import dataclass, field

import pytest

from certaindex.engines.base import BudgetExhausted, Completion, Engine, GenerationRequest
from certaindex.engines.http import HTTPEngine
from certaindex.programs.cot import CoTConfig, solve_cot
from certaindex.programs.self_consistency import SCConfig, first_finish, self_consistency
from certaindex.scheduler import Scheduler, SchedulerCore, cot_reporter, sc_reporter
from tests.fakes import SamplingFakeEngine, ScriptedFakeEngine
from tests.conftest import UTF8_SLACK

QUESTION = "What is six times seven?"


@dataclass
class Instrumented(Engine):
    """Wraps a fake engine and records how many requests are in flight at once. Each generate
    yields to the loop a few times, so concurrent programs really overlap."""

    inner: Engine
    hold: asyncio.Event | None = None  # when set, generate waits for it (tests cancellation)
    in_flight: int = 0
    peak: int = 0
    starts: list[tuple[int, int]] = field(default_factory=list)  # (n, in flight after start)
    name: str = "fake:instrumented"

    def render_chat(self, messages):
        return self.inner.render_chat(messages)

    async def generate(self, request: GenerationRequest) -> Completion:
        self.in_flight += request.n
        self.peak = max(self.peak, self.in_flight)
        self.starts.append((request.n, self.in_flight))
        try:
            if self.hold is not None:
                await self.hold.wait()
            for _ in range(3):
                await asyncio.sleep(0)
            return await self.inner.generate(request)
        finally:
            self.in_flight -= request.n

    async def stream(self, request: GenerationRequest):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            async for delta in self.inner.stream(request):
                yield delta
        finally:
            self.in_flight -= 1


def scripted() -> ScriptedFakeEngine:
    return ScriptedFakeEngine(reasoning=["step "] * 40, probe_reply=lambda n: ["42", "}", " \\]"])


async def test_gang_members_of_one_generate_start_together_and_never_split() -> None:
    engine = Instrumented(SamplingFakeEngine({"7": 1.0}))
    scheduler = Scheduler(engine, SchedulerCore(capacity=6))
    config = SCConfig(n=8, first_round=4, round_size=4, max_tokens=16, rule="fixed")

    async def run(pid: str):
        async with scheduler.session(pid, budget=10_000) as session:
            return await self_consistency(session, QUESTION, config)

    results = await asyncio.gather(*(run(f"sc{i}") for i in range(3)))
    assert all(r.answer == "7" and r.samples_used == 8 for r in results)
    # Every inner call carries the whole round (n=4); two rounds (8) never fit in 6 slots at once.
    assert {n for n, _ in engine.starts} == {4}
    assert engine.peak == 4
    assert scheduler.core.running == 0 and scheduler.core.live_programs == 0


async def test_concurrency_never_exceeds_capacity_across_many_programs() -> None:
    engine = Instrumented(scripted())
    scheduler = Scheduler(engine, SchedulerCore(capacity=3))
    config = CoTConfig(budget=64, probe_interval=8, k=2, probe_tokens=4)

    async def run(pid: str):
        async with scheduler.session(pid, budget=1000) as session:
            return await solve_cot(session, QUESTION, config, on_event=cot_reporter(session))

    results = await asyncio.gather(*(run(f"cot{i}") for i in range(8)))
    assert all(r.answer == "42" for r in results)
    assert engine.peak == 3  # programs overlapped, up to the capacity and never beyond it
    assert scheduler.core.running == 0 and scheduler.core.pending_gangs == 0


async def test_solve_cot_gives_the_same_result_through_the_scheduler() -> None:
    config = CoTConfig(budget=64, probe_interval=8, k=3, probe_tokens=4)
    bare = await solve_cot(scripted(), QUESTION, config)
    scheduler = Scheduler(scripted(), SchedulerCore(capacity=2))
    async with scheduler.session("cot", budget=10_000) as session:
        scheduled = await solve_cot(session, QUESTION, config, on_event=cot_reporter(session))
        assert scheduler.core.certaindex("cot") == scheduled.probes[-1].certaindex == 1.0
    assert scheduled.to_dict() == bare.to_dict()


async def test_self_consistency_gives_the_same_result_through_the_scheduler() -> None:
    config = SCConfig(n=12, first_round=4, round_size=4, max_tokens=16, threshold=0.9)
    distribution = {"7": 0.5, "9": 0.3, None: 0.2}
    bare = await self_consistency(SamplingFakeEngine(distribution), QUESTION, config)
    scheduler = Scheduler(SamplingFakeEngine(distribution), SchedulerCore(capacity=4))
    async with scheduler.session("sc", budget=10_000) as session:
        scheduled = await self_consistency(session, QUESTION, config, on_round=sc_reporter(session))
    assert scheduled.answer == bare.answer
    assert scheduled.samples == bare.samples and scheduled.stop_reason == bare.stop_reason


async def test_first_finish_streams_through_the_scheduler_and_frees_every_slot() -> None:
    engine = Instrumented(SamplingFakeEngine({"7": 1.0}, tokens_per_sample=30, lengths={2: 3}))
    scheduler = Scheduler(engine, SchedulerCore(capacity=2))
    async with scheduler.session("ff", budget=10_000) as session:
        result = await first_finish(session, QUESTION, n=4, config=SCConfig(max_tokens=64))
        assert result.answer == "7"
        assert engine.peak <= 2
        assert scheduler.core.running == 0 and scheduler.core.pending_gangs == 0
        # Streams closed early are charged what they generated, no more.
        assert scheduler.core.allowance("ff") == 10_000 - result.total_tokens


async def test_cancelling_a_running_or_waiting_generate_frees_its_slots() -> None:
    hold = asyncio.Event()
    engine = Instrumented(SamplingFakeEngine({"7": 1.0}), hold=hold)
    scheduler = Scheduler(engine, SchedulerCore(capacity=4))
    request = GenerationRequest(prompt="x", max_tokens=5, n=4)
    async with scheduler.session("a", budget=1000) as a, scheduler.session("b", budget=1000) as b:
        running = asyncio.create_task(a.generate(request))
        waiting = asyncio.create_task(b.generate(request))
        for _ in range(5):
            await asyncio.sleep(0)
        assert scheduler.core.running == 4 and scheduler.core.pending_gangs == 1
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        assert scheduler.core.pending_gangs == 0
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        assert scheduler.core.running == 0 and engine.in_flight == 0
        assert a.allowance == 1000 and b.allowance == 1000  # nothing stays held
        hold.set()
        done = await a.generate(request)  # the capacity is usable again
        assert len(done.choices) == 4


async def test_a_cancelled_waiter_lets_the_next_gang_start() -> None:
    hold = asyncio.Event()
    engine = Instrumented(SamplingFakeEngine({"7": 1.0}, tokens_per_sample=5), hold=hold)
    scheduler = Scheduler(engine, SchedulerCore(capacity=1))
    one = GenerationRequest(prompt="x", max_tokens=5)
    async with scheduler.session("a", budget=100) as a:
        first = asyncio.create_task(a.generate(one))
        second = asyncio.create_task(a.generate(one))
        third = asyncio.create_task(a.generate(one))
        await asyncio.sleep(0)
        second.cancel()
        hold.set()
        results = await asyncio.gather(first, second, third, return_exceptions=True)
        assert isinstance(results[1], asyncio.CancelledError)
        assert all(isinstance(r, Completion) for r in (results[0], results[2]))
        assert scheduler.core.running == 0 and a.allowance == 100 - 2 * 5


async def test_requests_are_capped_to_the_allowance_and_refused_at_zero() -> None:
    scheduler = Scheduler(SamplingFakeEngine({"7": 1.0}, tokens_per_sample=10), SchedulerCore(capacity=4))
    seen: list[GenerationRequest] = []
    async with scheduler.session("a", budget=25) as a:
        original = scheduler.engine.generate

        async def spy(request):
            seen.append(request)
            return await original(request)

        scheduler.engine.generate = spy  # type: ignore[method-assign]
        await a.generate(GenerationRequest(prompt="x", max_tokens=100, n=2))
        assert seen[-1].max_tokens == 12  # 25 tokens over 2 samples
        assert a.allowance == 5
        with pytest.raises(BudgetExhausted, match="5 tokens left"):
            await a.generate(GenerationRequest(prompt="x", max_tokens=100, n=8))


async def test_solve_cot_treats_an_exhausted_allowance_as_its_budget_running_out() -> None:
    engine = scripted()
    scheduler = Scheduler(engine, SchedulerCore(capacity=1))
    config = CoTConfig(budget=1000, probe_interval=8, k=50, probe_tokens=4)  # never settles by itself
    async with scheduler.session("cot", budget=30) as session:
        result = await solve_cot(session, QUESTION, config)
    assert result.stop_reason == "budget"
    assert result.answer == "42"  # the last probe's answer stands
    assert result.total_tokens <= 30


async def test_leaving_a_session_fails_its_waiting_requests() -> None:
    hold = asyncio.Event()
    scheduler = Scheduler(Instrumented(SamplingFakeEngine({"7": 1.0}), hold=hold), SchedulerCore(capacity=1))
    one = GenerationRequest(prompt="x", max_tokens=5)
    async with scheduler.session("a", budget=100) as a:
        blocker = asyncio.create_task(a.generate(one))
        async with scheduler.session("b", budget=100) as b:
            waiting = asyncio.create_task(b.generate(one))
            await asyncio.sleep(0)
        with pytest.raises(Exception, match="session of program 'b' ended"):
            await waiting
        hold.set()
        await blocker
    assert scheduler.core.running == 0 and scheduler.core.live_programs == 0


async def test_engine_priorities_are_sent_only_when_asked_for() -> None:
    engine = Instrumented(SamplingFakeEngine({"7": 1.0}))
    seen: list[GenerationRequest] = []
    original = engine.inner.generate

    async def spy(request):
        seen.append(request)
        return await original(request)

    engine.inner.generate = spy  # type: ignore[method-assign]
    for flag in (False, True):
        scheduler = Scheduler(engine, SchedulerCore(capacity=1), engine_priorities=flag)
        async with scheduler.session("a", budget=100, priority=2) as a:
            await a.generate(GenerationRequest(prompt="x", max_tokens=5))
    assert seen[0].priority is None and seen[1].priority is not None and seen[1].priority > 0
    body = HTTPEngine("http://127.0.0.1:9")._body(dataclasses.replace(seen[1]), None, False)
    assert body["priority"] == seen[1].priority
    assert "priority" not in HTTPEngine("http://127.0.0.1:9")._body(seen[0], None, False)


@pytest.mark.model
async def test_two_cot_programs_share_the_real_embedded_engine(embedded_engine) -> None:
    # llama.cpp's output shifts with its cache state (a second bare run can differ from the first),
    # so this checks the scheduling, not that answers match a bare run.
    config = CoTConfig(budget=96, probe_interval=16, k=2, probe_tokens=12)
    questions = ["What is 12 plus 30?", "A box has 3 rows of 4 apples. How many apples?"]
    engine = Instrumented(embedded_engine)
    scheduler = Scheduler(engine, SchedulerCore(capacity=1))

    async def run(i: int):
        async with scheduler.session(f"q{i}", budget=4096) as session:
            result = await solve_cot(session, questions[i], config, on_event=cot_reporter(session))
            if result.probes:
                assert scheduler.core.certaindex(f"q{i}") == result.probes[-1].certaindex
            return result

    results = await asyncio.gather(run(0), run(1))
    for result in results:
        assert result.stop_reason in ("certain", "finished", "budget")
        assert result.total_tokens == result.reasoning_tokens + result.probe_tokens + result.answer_tokens
        assert result.reasoning_tokens <= config.budget + UTF8_SLACK
    assert engine.peak == 1 and len(engine.starts) >= 2
    assert scheduler.core.running == 0 and scheduler.core.live_programs == 0


async def test_a_side_probe_of_an_admitted_stream_is_sent_without_waiting() -> None:
    """Capacity 1 held by a's stream, b's stream waiting: a's probe goes to the engine at once, at
    the top priority of a's class; a new program's first request still waits for the slot."""
    from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX

    engine = ScriptedFakeEngine(["step "] * 50, ends_naturally=False, streaming=True, token_delay_s=0.001)
    base = engine.render_chat([{"role": "user", "content": QUESTION}])
    scheduler = Scheduler(engine, SchedulerCore("fcfs", capacity=1), engine_priorities=True)
    order: list[str] = []

    async def first_token(session, name: str) -> None:
        async with aclosing(session.stream(GenerationRequest(prompt=base, max_tokens=40))) as deltas:
            async for _ in deltas:
                order.append(name)
                return

    async with scheduler.session("a", budget=1000) as a, scheduler.session("b", budget=1000) as b, \
            scheduler.session("c", budget=1000) as c:
        stream = a.stream(GenerationRequest(prompt=base, max_tokens=40))
        await stream.__anext__()  # a's stream is admitted and open
        waiting_b = asyncio.ensure_future(first_token(b, "b"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting_b.done() and scheduler.core.pending_gangs == 1
        probe = await asyncio.wait_for(a.generate(GenerationRequest(prompt=base + "step " + DEFAULT_PROBE_SUFFIX,
                                                                    max_tokens=3)), timeout=5)
        assert probe.choices[0].text == "42} \\]" and not waiting_b.done()
        first_c = asyncio.ensure_future(c.generate(GenerationRequest(prompt=base, max_tokens=3)))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not first_c.done() and scheduler.core.pending_gangs == 2  # no stream of c admitted: it waits
        await stream.aclose()
        await asyncio.wait_for(asyncio.gather(waiting_b, first_c), timeout=5)
    sent = {r.prompt.endswith(DEFAULT_PROBE_SUFFIX): r.priority for r in engine.calls}
    assert sent[True] < sent[False]  # the probe: first in its class
    assert order == ["b"] and scheduler.core.running == 0


@pytest.mark.parametrize("policy", ["fcfs", "certaindex"])
async def test_programs_streaming_through_a_full_scheduler_decide_by_position_and_are_charged_exactly(policy) -> None:
    """Three one-stream programs on capacity 2: side probes take no slot, yet every program decides
    where it does alone and is charged exactly what its result counts."""
    from certaindex.scheduler.budgets import program_budget

    def engine() -> ScriptedFakeEngine:
        return ScriptedFakeEngine(["step "] * 500, ends_naturally=False, streaming=True, token_delay_s=0.001,
                                  probe_delay_s=0.005, probe_reply=lambda n: ["42", "}"] if n >= 48 else [str(n), "}"])

    config = CoTConfig(budget=300, probe_interval=16, k=2, probe_tokens=4)
    bare = await solve_cot(engine(), QUESTION, config)
    scheduler = Scheduler(engine(), SchedulerCore(policy, capacity=2, floor_fraction=1.0))  # no budget moves

    async def run(pid: str):
        async with scheduler.session(pid, budget=program_budget(config)) as session:
            result = await solve_cot(session, QUESTION, config, on_event=cot_reporter(session))
            return result, program_budget(config) - session.allowance

    outcomes = await asyncio.gather(*(run(f"p{i}") for i in range(3)))
    for result, charged in outcomes:
        assert (result.answer, result.stop_reason, result.reasoning_tokens) == (
            bare.answer, bare.stop_reason, bare.reasoning_tokens)
        assert [p.answer for p in result.probes] == [p.answer for p in bare.probes]
        assert charged == result.total_tokens
    assert scheduler.core.running == 0 and scheduler.core.pending_gangs == 0
