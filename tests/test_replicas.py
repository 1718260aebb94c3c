"""Routing over engine replicas: affinity, load balance, failover, health, and a real two-server run."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

import pytest

from certaindex.engines.chat_template import ChatTemplate
from certaindex.engines import make_engine
from certaindex.engines.base import (
    BudgetExhausted,
    Choice,
    Completion,
    Engine,
    EngineConfigError,
    EngineError,
    GenerationRequest,
    StreamDelta,
)
from certaindex.engines.replicas import ReplicatedEngine, is_replica_fault
from certaindex.engines.routing import AffinityKeys, Router, affinity_digest, rendezvous_order
from tests.conftest import UTF8_SLACK

# -- fakes ----------------------------------------------------------------------------------------


@dataclass
class FakeReplicaEngine(Engine):
    """A replica that answers "ok", records its prompts, and can be made to fail or to hold requests.

    ``mode``: "up"; "down" (a replica fault: unreachable); "client" (HTTP 400: the request's fault).
    ``gate``: when set, requests wait for it, so tests can hold them in flight.
    """

    name: str = "fake:replica"
    model: str | None = "m"
    template: str = "raw"
    mode: str = "up"
    gate: asyncio.Event | None = None
    prompts: list[str] = field(default_factory=list)
    prepared: int = 0
    closed: int = 0

    async def prepare(self) -> None:
        if self.mode == "down":
            raise EngineError(f"cannot reach the engine at {self.name}: connection refused")
        self.prepared += 1

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return ChatTemplate.named(self.template).render(messages)

    def _check(self, request: GenerationRequest) -> None:
        self.prompts.append(request.prompt)
        if self.mode == "down":
            raise EngineError(f"cannot reach the engine at {self.name}: connection refused")
        if self.mode == "client":
            raise EngineError(f"{self.name}/v1/completions answered HTTP 400: prompt too long")

    async def generate(self, request: GenerationRequest) -> Completion:
        self._check(request)
        if self.gate is not None:
            await self.gate.wait()
        return Completion(tuple(Choice("ok", "stop", 1) for _ in range(request.n)), prompt_tokens=3)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        self._check(request)
        yield StreamDelta("o", 1)
        if self.mode == "dies-mid-stream":
            raise EngineError(f"streaming from {self.name} failed: connection reset")
        yield StreamDelta("k", 1, finish_reason="stop")

    async def aclose(self) -> None:
        self.closed += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replicas(count: int, **kwargs) -> list[FakeReplicaEngine]:
    return [FakeReplicaEngine(name=f"fake:{i}", **kwargs) for i in range(count)]


def program_prompt(engine: Engine, question: str) -> str:
    messages = [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": question}]
    return engine.render_chat(messages)


def request(prompt: str, n: int = 1) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, max_tokens=8, n=n)


def home_of(fakes: Sequence[FakeReplicaEngine], prompt: str) -> int:
    [index] = [i for i, fake in enumerate(fakes) if prompt in fake.prompts]
    return index


# -- pure routing ---------------------------------------------------------------------------------


def test_adding_a_replica_moves_only_the_keys_it_wins():
    keys = [affinity_digest(f"program {i}") for i in range(2000)]
    five = [f"http://r{i}:8000" for i in range(5)]
    six = five + ["http://r5:8000"]
    before = [five[rendezvous_order(five, k)[0]] for k in keys]
    after = [six[rendezvous_order(six, k)[0]] for k in keys]
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == "http://r5:8000" for _, a in moved)  # keys only ever move to the new replica
    assert 0.10 < len(moved) / len(keys) < 0.25  # about 1/6 of the keys move, the rest keep their cache
    assert len(set(before)) == 5  # every replica gets keys


def test_removing_a_replica_moves_only_its_keys():
    keys = [affinity_digest(f"program {i}") for i in range(500)]
    four = [f"r{i}" for i in range(4)]
    three = ["r0", "r1", "r3"]
    for k in keys:
        old, new = four[rendezvous_order(four, k)[0]], three[rendezvous_order(three, k)[0]]
        assert old == new or old == "r2"


def test_router_diverts_beyond_slack_and_remembers_the_new_home():
    router = Router(["a", "b"], slack=2)
    key = affinity_digest("p")
    home = router.choose(key, now=0.0)
    other = 1 - home
    for _ in range(3):  # 0, 1, 2 in flight at home: within slack of the idle replica
        assert router.choose(key, now=0.0) == home
        router.start(home)
    assert router.choose(key, now=0.0) == other  # 3 above the least loaded: moved
    router.start(other)
    for _ in range(3):
        router.finish(home)
    router.finish(other)
    assert router.choose(key, now=0.0) == other  # the program follows its new home, even when idle


def test_router_slack_zero_balances_strictly():
    router = Router(["a", "b", "c"], slack=0)
    key = affinity_digest("p")
    chosen = []
    for _ in range(6):
        index = router.choose(key, now=0.0)
        router.start(index)
        chosen.append(index)
    assert sorted(router.in_flight) == [2, 2, 2]


def test_router_cooloff_takes_a_replica_out_and_back():
    router = Router(["a", "b"], cooloff_s=5.0)
    key = affinity_digest("p")
    home = router.choose(key, now=0.0)
    router.fail(home, now=0.0)
    assert router.choose(key, now=1.0) == 1 - home
    assert router.stats(1.0)[home].healthy is False
    assert router.stats(1.0)[home].down_for_s == pytest.approx(4.0)
    router.fail(1 - home, now=1.0)
    assert router.choose(key, now=2.0) is None
    assert router.retry_in(2.0) == pytest.approx(3.0)
    assert router.healthy(home, 5.0)


def test_router_refuses_bad_settings():
    with pytest.raises(ValueError, match="at least one"):
        Router([])
    with pytest.raises(ValueError, match="unique"):
        Router(["a", "a"])
    with pytest.raises(ValueError, match="slack"):
        Router(["a"], slack=-1)


def test_affinity_key_is_the_rendered_prompt_even_behind_a_long_system_prompt():
    keys = AffinityKeys(prefix_chars=512)
    system = "You are careful. " * 100  # 1,700 characters shared by every program
    p1, p2 = system + "Q: 1+1?\nA:", system + "Q: 2+2?\nA:"
    keys.remember(p1)
    keys.remember(p2)
    assert keys.key(p1) == keys.key(p1 + " reasoning so far") == keys.key(p1 + " more... probe {")
    assert keys.key(p1) != keys.key(p2)
    # Not rendered here: the first characters, which a long shared system prompt makes collide.
    assert keys.key(system + "Q: 3?") == keys.key(system + "Q: 4?")


def test_affinity_keys_prefer_the_longest_rendered_prefix_and_forget_the_oldest():
    keys = AffinityKeys(capacity=2)
    keys.remember("turn one")
    keys.remember("turn one, turn two")
    assert keys.key_text("turn one, turn two and reasoning") == "turn one, turn two"
    assert keys.key_text("turn one and reasoning") == "turn one"
    keys.remember("another")  # evicts the least recently used: "turn one" was used last
    assert keys.key_text("turn one, turn two and more") == "turn one"
    assert keys.key_text("unknown prompt") == "unknown prompt"
    with pytest.raises(ValueError):
        AffinityKeys(prefix_chars=0)


def test_which_errors_blame_the_replica():
    assert is_replica_fault(EngineError("cannot reach the engine at http://a: refused"))
    assert is_replica_fault(EngineError("http://a/v1/completions answered HTTP 503: overloaded"))
    assert is_replica_fault(EngineError("http://a/v1/completions answered HTTP 429: slow down"))
    assert not is_replica_fault(EngineError("http://a/v1/completions answered HTTP 400: too long"))
    assert not is_replica_fault(EngineConfigError("bad template"))
    assert not is_replica_fault(BudgetExhausted("no tokens left"))


# -- the engine, with fakes -----------------------------------------------------------------------


async def test_all_requests_of_one_program_go_to_one_replica_and_programs_spread():
    fakes = replicas(3)
    engine = ReplicatedEngine(fakes)
    await engine.prepare()
    homes = set()
    for q in range(12):
        prompt = program_prompt(engine, f"question {q}")
        reasoning = ""
        for step in range(4):
            await engine.generate(request(prompt + reasoning))
            await engine.generate(request(prompt + reasoning + " probe {"))
            reasoning += f" step {step}"
        used = {i for i, fake in enumerate(fakes) if any(p.startswith(prompt) for p in fake.prompts)}
        assert len(used) == 1, f"question {q} was split over replicas {used}"
        homes |= used
    assert len(homes) >= 2
    assert [s.in_flight for s in engine.stats()] == [0, 0, 0]
    assert sum(s.requests for s in engine.stats()) == 12 * 8


async def test_a_busy_home_sends_new_work_to_the_least_loaded_replica():
    gate = asyncio.Event()
    fakes = replicas(2, gate=gate)
    engine = ReplicatedEngine(fakes, slack=2)
    await engine.prepare()
    prompt = program_prompt(engine, "busy")
    held = [asyncio.create_task(engine.generate(request(prompt + f" sample {i}"))) for i in range(3)]
    await asyncio.sleep(0)
    home = home_of(fakes, prompt + " sample 0")
    assert engine.stats()[home].in_flight == 3
    extra = asyncio.create_task(engine.generate(request(prompt + " sample 3")))
    await asyncio.sleep(0)
    assert home_of(fakes, prompt + " sample 3") == 1 - home
    gate.set()
    await asyncio.gather(*held, extra)
    await engine.generate(request(prompt + " next"))
    assert home_of(fakes, prompt + " next") == 1 - home  # remembered: the program moved
    assert [s.in_flight for s in engine.stats()] == [0, 0]


async def test_samples_count_as_load():
    gate = asyncio.Event()
    fakes = replicas(2, gate=gate)
    engine = ReplicatedEngine(fakes, slack=2)
    await engine.prepare()
    first = program_prompt(engine, "wide")
    wide = asyncio.create_task(engine.generate(request(first, n=8)))
    await asyncio.sleep(0)
    home = home_of(fakes, first)
    assert engine.stats()[home].in_flight == 8
    same_key = asyncio.create_task(engine.generate(request(first + " more")))
    await asyncio.sleep(0)
    assert home_of(fakes, first + " more") == 1 - home
    gate.set()
    await asyncio.gather(wide, same_key)


async def test_a_failing_replica_is_skipped_and_its_program_fails_over():
    clock = FakeClock()
    fakes = replicas(2)
    engine = ReplicatedEngine(fakes, cooloff_s=10.0, clock=clock)
    await engine.prepare()
    prompt = program_prompt(engine, "failover")
    await engine.generate(request(prompt))
    home = home_of(fakes, prompt)
    fakes[home].mode = "down"
    completion = await engine.generate(request(prompt + " step"))
    assert completion.first.text == "ok"
    assert prompt + " step" in fakes[home].prompts  # tried at home first ...
    assert prompt + " step" in fakes[1 - home].prompts  # ... and served by the other
    stats = engine.stats()
    assert stats[home].failures == 1 and not stats[home].healthy
    calls_at_home = len(fakes[home].prompts)
    await engine.generate(request(prompt + " step two"))
    assert len(fakes[home].prompts) == calls_at_home  # down: not tried again during the cool-off
    fakes[home].mode = "up"
    clock.now += 11
    assert engine.stats()[home].healthy
    await engine.generate(request(prompt + " step three"))
    assert prompt + " step three" in fakes[1 - home].prompts  # its cache is there now: it stays


async def test_a_request_error_is_raised_without_failover():
    fakes = replicas(2)
    engine = ReplicatedEngine(fakes)
    await engine.prepare()
    prompt = program_prompt(engine, "too long")
    for fake in fakes:
        fake.mode = "client"
    with pytest.raises(EngineError, match="HTTP 400"):
        await engine.generate(request(prompt))
    assert sum(len(f.prompts) for f in fakes) == 1
    assert all(s.healthy and s.failures == 0 for s in engine.stats())


async def test_all_replicas_down_raises_a_clear_error():
    clock = FakeClock()
    fakes = replicas(2)
    engine = ReplicatedEngine(fakes, cooloff_s=30.0, clock=clock)
    await engine.prepare()
    for fake in fakes:
        fake.mode = "down"
    prompt = program_prompt(engine, "doomed")
    with pytest.raises(EngineError, match=r"all 2 engine replicas are down .*connection refused"):
        await engine.generate(request(prompt))
    assert [len(f.prompts) for f in fakes] == [1, 1]
    clock.now += 5
    with pytest.raises(EngineError, match=r"tried again in 25\.0 s"):
        await engine.generate(request(prompt))
    assert [len(f.prompts) for f in fakes] == [1, 1]  # refused at once, nothing sent
    assert [s.in_flight for s in engine.stats()] == [0, 0]


async def test_stream_fails_over_before_its_first_piece_only():
    fakes = replicas(2)
    engine = ReplicatedEngine(fakes)
    await engine.prepare()
    prompt = program_prompt(engine, "stream")
    await engine.generate(request(prompt))
    home = home_of(fakes, prompt)
    fakes[home].mode = "down"
    text = "".join([d.text async for d in engine.stream(request(prompt))])
    assert text == "ok"
    assert engine.stats()[home].failures == 1
    other = fakes[1 - home]
    other.mode = "dies-mid-stream"
    with pytest.raises(EngineError, match="connection reset"):
        _ = [d async for d in engine.stream(request(prompt + " again"))]
    assert engine.stats()[1 - home].failures == 1
    assert [s.in_flight for s in engine.stats()] == [0, 0]


async def test_closing_a_stream_early_frees_its_slot():
    fakes = replicas(2)
    engine = ReplicatedEngine(fakes)
    stream = engine.stream(request(program_prompt(engine, "early")))
    assert (await stream.__anext__()).text == "o"
    assert sum(s.in_flight for s in engine.stats()) == 1
    await stream.aclose()
    assert sum(s.in_flight for s in engine.stats()) == 0


async def test_prepare_refuses_replicas_that_serve_different_models_or_templates():
    two_models = [FakeReplicaEngine(name="a", model="x"), FakeReplicaEngine(name="b", model="y")]
    with pytest.raises(EngineConfigError, match="different models"):
        await ReplicatedEngine(two_models).prepare()
    mixed = [FakeReplicaEngine(name="a", template="raw"), FakeReplicaEngine(name="b", template="chatml")]
    with pytest.raises(EngineConfigError, match="different chat templates"):
        await ReplicatedEngine(mixed).prepare()


async def test_a_replica_down_at_start_is_prepared_after_its_cooloff():
    clock = FakeClock()
    fakes = replicas(2)
    fakes[1].mode = "down"
    engine = ReplicatedEngine(fakes, cooloff_s=10.0, clock=clock)
    await engine.prepare()
    for q in range(20):
        await engine.generate(request(program_prompt(engine, f"q{q}")))
    assert fakes[1].prompts == [] and fakes[1].prepared == 0  # never routed to while unprepared
    fakes[1].mode = "up"
    clock.now += 11
    await engine.prepare()
    assert fakes[1].prepared == 1
    for q in range(20):
        await engine.generate(request(program_prompt(engine, f"q{q} later")))
    assert fakes[1].prompts


async def test_no_replica_reachable_at_prepare_raises():
    engine = ReplicatedEngine(replicas(2, mode="down"))
    with pytest.raises(EngineError, match="all 2 engine replicas are down"):
        await engine.prepare()


async def test_derived_views_share_routing_and_close_nothing():
    fakes = replicas(2)
    engine = ReplicatedEngine(fakes)
    view = engine.derive({"top_k": 5})
    await view.generate(request(program_prompt(view, "shared")))
    assert sum(s.requests for s in engine.stats()) == 1
    await view.aclose()
    assert [f.closed for f in fakes] == [0, 0]
    await engine.aclose()
    assert [f.closed for f in fakes] == [1, 1]


def test_make_engine_builds_replicas_from_a_comma_separated_list():
    engine = make_engine("http://a:8000/v1, http://b:8000/v1")
    assert isinstance(engine, ReplicatedEngine)
    assert [r.base_url for r in engine.replicas] == ["http://a:8000", "http://b:8000"]
    assert not isinstance(make_engine("http://a:8000/v1"), ReplicatedEngine)
    with pytest.raises(EngineConfigError, match="http"):
        make_engine("http://a:8000/v1,")
    with pytest.raises(EngineConfigError, match="twice"):
        make_engine("http://a:8000,http://a:8000/v1")
    with pytest.raises(EngineConfigError, match="at least one"):
        ReplicatedEngine([])


# -- two real servers -----------------------------------------------------------------------------

GREEDY = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}
# SmolLM2's end tokens (<|endoftext|> 0, <|im_end|> 2) banned: the model cannot end its reasoning by
# itself, so every program reasons to its budget and makes the same number of requests whatever text
# it writes (the text moves with the CPU and the cache state).
NEVER_ENDS = {**GREEDY, "logit_bias": {"0": -100.0, "2": -100.0}}


@pytest.mark.model
async def test_two_real_servers_keep_programs_together_and_survive_a_kill(model_path, tmp_path):
    from certaindex.core.datasets import load_dataset
    from certaindex.engines.http import HTTPEngine
    from certaindex.programs.cot import CoTConfig, solve_cot
    from tests.conftest import start_llama_server

    problems = load_dataset("gsm8k")
    config = CoTConfig(budget=96, probe_interval=16, probe_tokens=8, k=100)  # many requests, no early exit
    with start_llama_server(model_path, tmp_path) as (url_a, proc_a), start_llama_server(model_path, tmp_path) as (
        url_b,
        proc_b,
    ):
        servers = {url_a: proc_a, url_b: proc_b}
        replicas_ = [
            HTTPEngine(url, chat_template="chatml", extra_body=NEVER_ENDS, max_retries=0, timeout_s=120) for url in servers
        ]
        engine = ReplicatedEngine(replicas_, cooloff_s=60.0)
        try:
            # 1. Affinity: every request of a program lands on one replica.
            before = [s.requests for s in engine.stats()]
            first = await solve_cot(engine, problems[2].question, config)
            sent = [s.requests - b for s, b in zip(engine.stats(), before)]
            assert config.budget <= first.reasoning_tokens <= config.budget + UTF8_SLACK and first.stop_reason == "budget"
            assert sorted(sent)[0] == 0 and sum(sent) >= 6, sent
            home = sent.index(max(sent))

            # 2. Failover: the same program again (same home); its replica is killed after the first
            # chunk, and the program finishes on the other.
            victim = servers[engine.replicas[home].base_url]

            def kill_after_first_chunk(event):
                if event.kind == "chunk" and victim.poll() is None:
                    victim.kill()
                    victim.wait()

            second = await solve_cot(engine, problems[2].question, config, on_event=kill_after_first_chunk)
            stats = engine.stats()
            assert stats[home].failures >= 1 and not stats[home].healthy
            assert stats[1 - home].requests >= 5
            # It went on reasoning on the survivor after the kill, to the end of its budget. (Not
            # compared with the first run's text: a fresh prefill and a cached one can differ in the
            # last bits, which can flip a greedy near-tie on this tiny model.)
            assert second.reasoning_tokens >= config.budget and second.probes
        finally:
            await engine.aclose()
