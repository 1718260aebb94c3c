"""One main stream per chain of thought with probes on the side: same decisions as the chunked path
whatever the timing, overrun counted, the stream closed on exit, and every fault handled."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace

import pytest

from certaindex.engines.base import EngineError
from certaindex.programs.cot import CoTConfig, CoTResult, solve_cot
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is 6 * 7?"
CONFIG = CoTConfig(budget=64, probe_interval=8, k=3, probe_tokens=6)


def drifting(n: int) -> list[str]:
    """Probes that change their mind early and settle later."""
    return [str(40 + min(n, 40) // 16), "}"]


def hesitant_then_firm(n: int) -> list[str]:
    return ["42", "} wait"] if n < 32 else ["42", "}"]


def never_agree(n: int) -> list[str]:
    return [str(n), "}"]


SCENARIOS = {
    "settles": dict(reasoning=["step "] * 200, probe_reply=drifting, ends_naturally=False),
    "hesitates": dict(reasoning=["step "] * 200, probe_reply=hesitant_then_firm, ends_naturally=False),
    "budget": dict(reasoning=["step "] * 200, probe_reply=never_agree, ends_naturally=False),
    "ends-at-a-point": dict(reasoning=["step "] * 24, probe_reply=never_agree),
    "ends-between": dict(reasoning=["step "] * 29, probe_reply=never_agree),
    "thinking": dict(reasoning=["step "] * 21, probe_reply=never_agree, thinking=True),
}


def decisions(result: CoTResult) -> tuple:
    return (
        result.answer, result.stop_reason, result.reasoning, result.reasoning_tokens, result.probe_tokens,
        result.answer_tokens, [(p.at_tokens, p.answer, p.hesitant, p.certaindex) for p in result.probes],
    )


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("in_flight", [1, 3])
async def test_one_stream_decides_as_the_chunked_path_whatever_the_timing(name, in_flight) -> None:
    config = replace(CONFIG, max_probes_in_flight=in_flight)
    chunked_engine = ScriptedFakeEngine(**SCENARIOS[name])
    chunked = await solve_cot(chunked_engine, QUESTION, config)
    assert not chunked_engine.concurrent_streams and chunked.overrun_tokens == 0
    rng = random.Random(hash(name) % 1000 + in_flight)
    for _ in range(3):  # fast probes, slow probes: only the overrun may change
        engine = ScriptedFakeEngine(**SCENARIOS[name], streaming=True, token_delay_s=rng.choice([0, 0.0005, 0.002]),
                                    probe_delay_s=rng.choice([0, 0.001, 0.01]))
        streamed = await solve_cot(engine, QUESTION, config)
        assert decisions(streamed) == decisions(chunked)
        reasoning_streams = [c for c in engine.calls if not engine._is_probe(c)
                             and not c.prompt.endswith("</think>\n\n")]
        assert len(reasoning_streams) == 1  # one main stream, never restarted
        assert engine.streamed == streamed.reasoning_tokens + streamed.overrun_tokens  # every token accounted
        assert streamed.total_tokens == (streamed.reasoning_tokens + streamed.overrun_tokens
                                         + streamed.probe_tokens + streamed.answer_tokens)
        assert engine.open_streams == 0 and engine.probes_in_flight == 0


# A score rule that reads DEER trials at each "Wait" (and a probe every 8 tokens): exits once a trial
# is confident. The chunked path and the one stream must take the same trials at the same positions.
TRIAL_SUFFIX = "\n**Final Answer**\n\\boxed"
TRIAL_RULE = {"schedule": "bx+g8+tr", "threshold": 0.9, "trials": {"suffix": TRIAL_SUFFIX, "max": 30},
              "model": {"features": ["trial_conf", "trial_agree"], "mean": [0.0, 0.0], "scale": [1.0, 1.0],
                        "coef": [40.0, 1.0], "intercept": -37.5}}


def waits(n: int, every: int, at: int) -> list[str]:
    return ["Wait" if i % every == at else (", " if i % every == (at + 1) % every else "step ") for i in range(n)]


def sure_after(start: int):
    def reply(n: int) -> list[tuple[str, float]]:
        lp = -2.0 if n < start else -0.0005
        return [("{", -0.3), ("42" if n >= start // 2 else "41", lp), ("}\n", lp)]
    return reply


TRIAL_SCENARIOS = {
    "trial-settles": dict(reasoning=waits(200, 11, 4), trial_reply=sure_after(70), ends_naturally=False),
    "never-sure": dict(reasoning=waits(120, 9, 3), trial_reply=sure_after(10**6)),
    "wait-ends-each-chunk": dict(reasoning=waits(200, 8, 7), trial_reply=sure_after(60), ends_naturally=False),
    "wait-last": dict(reasoning=waits(40, 13, 5)[:-1] + ["Wait"], trial_reply=sure_after(10**6)),
    "boxes-and-trials": dict(reasoning=[("so \\boxed{42} " if i == 50 else t) for i, t in enumerate(waits(200, 12, 6))],
                             trial_reply=sure_after(10**6), ends_naturally=False),
}


def trial_decisions(result: CoTResult) -> tuple:
    return decisions(result) + ([(t.at_tokens, t.answer, t.confidence, t.min_prob, t.tokens) for t in result.trials],)


@pytest.mark.parametrize("name", sorted(TRIAL_SCENARIOS))
@pytest.mark.parametrize("in_flight", [1, 3])
async def test_trials_in_one_stream_decide_as_the_chunked_path_whatever_the_timing(name, in_flight) -> None:
    rule = dict(TRIAL_RULE, model=dict(TRIAL_RULE["model"], features=["trial_conf", "box_agree"])) \
        if name == "boxes-and-trials" else TRIAL_RULE
    config = replace(CONFIG, budget=160, max_probes_in_flight=in_flight, certainty=rule)
    chunked_engine = ScriptedFakeEngine(**TRIAL_SCENARIOS[name])
    chunked = await solve_cot(chunked_engine, QUESTION, config)
    assert chunked.trials and chunked_engine.trials
    rng = random.Random(sum(map(ord, name)) + in_flight)
    for _ in range(3):  # fast and slow side requests: only the overrun may change
        delay = rng.choice([0, 0.001, 0.01])  # probes and trials alike, so they finish in the order sent
        engine = ScriptedFakeEngine(**TRIAL_SCENARIOS[name], streaming=True, token_delay_s=rng.choice([0, 0.0005, 0.002]),
                                    probe_delay_s=delay, trial_delay_s=delay)
        streamed = await solve_cot(engine, QUESTION, config)
        if in_flight == 1:
            assert trial_decisions(streamed) == trial_decisions(chunked)
        else:  # a request sent beside the deciding one may finish first: real cost, same decisions
            assert streamed.probe_tokens >= chunked.probe_tokens
            assert replace(streamed, probe_tokens=0).trials == chunked.trials
            assert trial_decisions(replace(streamed, probe_tokens=0)) == trial_decisions(replace(chunked, probe_tokens=0))
        assert engine.streamed == streamed.reasoning_tokens + streamed.overrun_tokens
        assert engine.open_streams == 0 and engine.probes_in_flight == 0


async def test_exit_closes_the_stream_and_counts_the_overrun() -> None:
    engine = ScriptedFakeEngine(["step "] * 500, ends_naturally=False, streaming=True,
                                token_delay_s=0.001, probe_delay_s=0.02)
    result = await solve_cot(engine, QUESTION, replace(CONFIG, budget=400))
    assert result.stop_reason == "certain"
    assert result.reasoning_tokens == CONFIG.k * CONFIG.probe_interval  # judged where it was taken
    assert result.overrun_tokens > 0  # the stream went on while the probes ran
    assert engine.streamed == result.reasoning_tokens + result.overrun_tokens < 400  # closed, not run out
    assert engine.open_streams == 0
    # the reasoning never waited: probes were sent while the stream was open
    assert result.total_tokens == result.reasoning_tokens + result.overrun_tokens + result.probe_tokens


async def test_a_failing_probe_leaves_the_stream_running_and_falls_back_to_full_reasoning() -> None:
    engine = ScriptedFakeEngine(["step "] * 40, streaming=True, fail_probes=True, token_delay_s=0.0005)
    result = await solve_cot(engine, QUESTION, CONFIG, probe_failures="full-reasoning")
    assert result.stop_reason == "finished" and result.probe_failures == 1
    assert result.reasoning_tokens == 40 and result.overrun_tokens == 0  # the model reasoned to its end
    assert len([c for c in engine.calls if not engine._is_probe(c)]) == 1  # the same stream throughout


async def test_a_failing_probe_fails_the_program_when_asked_and_closes_the_stream() -> None:
    engine = ScriptedFakeEngine(["step "] * 500, ends_naturally=False, streaming=True, fail_probes=True,
                                token_delay_s=0.001)
    with pytest.raises(EngineError, match="scripted probe failure"):
        await solve_cot(engine, QUESTION, replace(CONFIG, budget=400))
    assert engine.open_streams == 0 and engine.streamed < 400


async def test_a_broken_main_stream_is_resumed_from_its_prefix_once() -> None:
    config = replace(CONFIG, k=100)  # no early exit: the whole reasoning is compared
    whole = await solve_cot(ScriptedFakeEngine(["step "] * 50, streaming=True), QUESTION, config)
    engine = ScriptedFakeEngine(["step "] * 50, streaming=True, break_stream_at=13)
    resumed = await solve_cot(engine, QUESTION, config)
    assert resumed.stream_resumes == 1
    assert decisions(resumed) == decisions(whole)
    streams = [c for c in engine.calls if not engine._is_probe(c)]
    assert len(streams) == 2
    assert streams[1].prompt == streams[0].prompt + "step " * 13 and streams[1].seed == streams[0].seed + 13
    assert streams[1].max_tokens == config.budget - 13


async def test_a_main_stream_that_breaks_twice_is_reported() -> None:
    engine = ScriptedFakeEngine(["step "] * 50, streaming=True, break_stream_at=13, breaks_left=2)
    with pytest.raises(EngineError, match="breaks off"):
        await solve_cot(engine, QUESTION, replace(CONFIG, k=100))
    assert engine.open_streams == 0 and engine.probes_in_flight == 0


async def test_cancelling_the_program_closes_the_stream_and_the_probe_in_flight() -> None:
    engine = ScriptedFakeEngine(["step "] * 5000, ends_naturally=False, streaming=True,
                                token_delay_s=0.001, probe_delay_s=30)
    task = asyncio.ensure_future(solve_cot(engine, QUESTION, replace(CONFIG, budget=4000)))
    for _ in range(500):
        await asyncio.sleep(0.01)
        if engine.probes_in_flight:
            break
    assert engine.probes_in_flight == 1 and engine.open_streams == 1  # the stream runs beside the probe
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.open_streams == 0 and engine.probes_in_flight == 0


async def test_probe_points_queue_rather_than_skip() -> None:
    """Probes slower than an interval: every point still gets its probe, in order."""
    engine = ScriptedFakeEngine(["step "] * 60, streaming=True, probe_reply=never_agree, probe_delay_s=0.01)
    result = await solve_cot(engine, QUESTION, CONFIG)
    assert [p.at_tokens for p in result.probes] == list(range(8, 60, 8))
    assert result.stop_reason == "finished"


def test_probe_trigger_and_in_flight_are_checked() -> None:
    with pytest.raises(ValueError, match="probe_trigger"):
        CoTConfig(probe_trigger="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_probes_in_flight"):
        CoTConfig(max_probes_in_flight=0)


EVENTFUL = ["step "] * 10 + ["Wait", ", "] + ["step "] * 20 + ["So the answer", " is 5. "] + ["step "] * 30


@pytest.mark.parametrize("trigger,points", [
    ("events", [11, 33]),  # right after "Wait" and "So the answer"
    # events a quarter interval after the last point: not 33 (one after 32) but 34, "the answer is"
    ("both", [8, 11, 16, 24, 32, 34, 40, 48, 56]),
])
async def test_events_trigger_probes_where_the_text_turns(trigger, points) -> None:
    engine = ScriptedFakeEngine(EVENTFUL, streaming=True, probe_reply=never_agree)
    result = await solve_cot(engine, QUESTION, replace(CONFIG, probe_trigger=trigger, probe_interval=8))
    assert [p.at_tokens for p in result.probes] == points


async def test_events_trigger_on_the_chunked_path_probes_after_chunks_with_an_event() -> None:
    engine = ScriptedFakeEngine(EVENTFUL, probe_reply=never_agree)
    result = await solve_cot(engine, QUESTION, replace(CONFIG, probe_trigger="events", probe_interval=8))
    assert [p.at_tokens for p in result.probes] == [16, 40]  # the chunks [8, 16) and [32, 40) hold them


def test_scheduler_budgets_cover_every_probe_a_trigger_may_send() -> None:
    assert CoTConfig(budget=64, probe_interval=8).max_probes == 9
    assert CoTConfig(budget=64, probe_interval=8, probe_trigger="events").max_probes == 9
    assert CoTConfig(budget=64, probe_interval=8, probe_trigger="both").max_probes == 33
    assert CoTConfig(budget=64, probe_interval=8, early_exit=False).max_probes == 1


# -- token ids (vLLM's return_token_ids and token-id prompts), on the fake upstream ---------------


async def _over_http(token_ids: bool):
    from certaindex.engines.http import HTTPEngine
    from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

    fake = FakeUpstream(token_delay_s=0.002)
    with serve_in_thread(fake.app()) as url:
        async with HTTPEngine(url, chat_template="chatml", token_ids=token_ids, max_retries=0) as engine:
            result = await solve_cot(engine, QUESTION, replace(CONFIG, budget=400))
    return fake, result


async def test_probes_continue_the_models_own_token_ids_where_the_server_reports_them() -> None:
    fake, result = await _over_http(token_ids=True)
    _, as_text = await _over_http(token_ids=False)
    assert decisions(result) == decisions(as_text)  # the fake's tokens re-tokenize exactly: same answers
    assert result.token_id_probes == len(result.probes) > 0 and as_text.token_id_probes == 0
    stream, *probes = fake.requests
    assert stream["return_token_ids"] is True and isinstance(stream["prompt"], str)
    step = fake.vocab["step "]
    for probe, record in zip(probes, result.probes):
        ids = probe["prompt"]
        assert isinstance(ids, list)
        # prompt (as the server tokenized it) + the model's own reasoning tokens + the suffix's ids
        assert ids == fake.encode(stream["prompt"]) + [step] * record.at_tokens + fake.encode(CONFIG.probe_suffix)


async def test_token_ids_fall_back_to_text_when_the_server_sends_none() -> None:
    from certaindex.engines.http import HTTPEngine
    from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

    fake = FakeUpstream(token_delay_s=0.002)
    with serve_in_thread(fake.app()) as url:
        async with HTTPEngine(url, chat_template="chatml", token_ids=True, max_retries=0) as engine:
            async def no_ids(text: str):
                raise EngineError("no /tokenize here")
            engine.tokenize = no_ids  # type: ignore[method-assign]
            result = await solve_cot(engine, QUESTION, replace(CONFIG, budget=400))
    assert result.stop_reason == "certain" and result.token_id_probes == 0
    assert all(isinstance(r["prompt"], str) for r in fake.requests)


async def test_a_server_that_runs_one_request_at_a_time_gets_chunks_and_probes_between() -> None:
    """llama-cpp-python's server (``owned_by: me``) interrupts a stream when another request comes:
    no side probes there."""
    from certaindex.engines.http import HTTPEngine
    from tests.misbehaving_upstream import FakeUpstream, serve_in_thread

    for owner, side in (("me", False), ("vllm", True)):
        fake = FakeUpstream(owned_by=owner)
        with serve_in_thread(fake.app()) as url:
            async with HTTPEngine(url, chat_template="chatml", max_retries=0) as engine:
                result = await solve_cot(engine, QUESTION, CONFIG)
                assert engine.concurrent_streams is side
        chunks = [r for r in fake.requests if r["kind"] == "chunk"]
        assert result.stop_reason == "certain"
        assert len(chunks) == (1 if side else CONFIG.k)
        if not side:  # full reasoning sends no side request: one stream even there
            fake.requests.clear()
            with serve_in_thread(fake.app()) as url:
                async with HTTPEngine(url, chat_template="chatml", max_retries=0) as engine:
                    full = await solve_cot(engine, QUESTION, replace(CONFIG, early_exit=False))
            assert full.stop_reason == "budget" and full.reasoning_tokens == CONFIG.budget
            assert [r["kind"] for r in fake.requests] == ["chunk", "probe"]  # one stream, the forced answer
    async with HTTPEngine("http://127.0.0.1:9", model="m", concurrent_streams=False) as engine:
        assert engine.concurrent_streams is False  # set by hand: nothing asked of the server


@pytest.mark.parametrize("capacity", [1, 4])
async def test_the_scheduler_charges_exactly_what_was_generated(capacity) -> None:
    """Stream, overrun and probes through a scheduler session: the program is charged every token
    the result counts (capacity 1 reasons in chunks: a side probe would wait for the stream)."""
    from certaindex.scheduler import Scheduler, SchedulerCore
    from certaindex.scheduler.budgets import program_budget

    engine = ScriptedFakeEngine(["step "] * 500, ends_naturally=False, streaming=True,
                                token_delay_s=0.001, probe_delay_s=0.01)
    config = replace(CONFIG, budget=300)
    scheduler = Scheduler(engine, SchedulerCore("fcfs", capacity=capacity))
    async with scheduler.session("p", budget=program_budget(config)) as session:
        assert session.concurrent_streams is (capacity > 1)
        result = await solve_cot(session, QUESTION, config)
        charged = program_budget(config) - session.allowance
    assert result.stop_reason == "certain" and charged == result.total_tokens
    assert (result.overrun_tokens > 0) is (capacity > 1)
