"""The chain of thought's phases alone: observe and decide (Judge), side requests, reasoning in
chunks or in one stream, the answer, and the main stream's bookkeeping."""

from __future__ import annotations

import pytest

from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX
from certaindex.engines.base import Choice, Completion, EngineError, GenerationRequest, StreamDelta
from certaindex.programs.base import open_prompt
from certaindex.programs.cot_answer import answer
from certaindex.programs.cot_chunks import reason_in_chunks
from certaindex.programs.cot_observe import Judge
from certaindex.programs.cot_run import CoTRun, SideRequests
from certaindex.programs.cot_stream import reason_in_stream
from certaindex.programs.cot_types import CoTConfig, CoTEvent
from certaindex.programs.main_stream import MainStream
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is six times seven?"
BOX_RULE = {"schedule": "bx+g10", "threshold": 0.9,
            "model": {"features": ["box_agree"], "mean": [0.0], "scale": [1.0], "coef": [10.0], "intercept": -5.0}}


def reply(text: str, finish: str = "stop", tokens: int = 2) -> Completion:
    return Completion(choices=(Choice(text=text, finish_reason=finish, completion_tokens=tokens),), prompt_tokens=5)


async def new_run(engine: ScriptedFakeEngine, config: CoTConfig, **kw) -> tuple[CoTRun, list[CoTEvent]]:
    _, prompt = await open_prompt(engine, QUESTION, config.system_prompt)
    events: list[CoTEvent] = []
    judge = Judge(config, None, events.append)
    run = CoTRun(config=config, prompt=prompt, judge=judge, side=SideRequests(engine, prompt, config, None),
                 emit=events.append, early_exit=config.early_exit, **kw)
    return run, events


def test_judge_settles_on_k_agreeing_probes_and_not_on_a_hesitant_one() -> None:
    events: list[CoTEvent] = []
    judge = Judge(CoTConfig(k=2), None, events.append)
    first = judge.record_probe(64, reply("42}"), probe_tokens=2)
    assert not judge.settled_after(first, 64)
    hesitant = judge.record_probe(128, reply("42} wait, let me check"), probe_tokens=4)
    assert hesitant.hesitant and not judge.settled_after(hesitant, 128)
    judge.record_probe(192, reply("42}"), probe_tokens=6)
    last = judge.record_probe(256, reply("42}"), probe_tokens=8)
    assert judge.settled_after(last, 256) and last.certaindex == 1.0
    assert judge.final_answer() == "42" and judge.exit_position() is None
    assert [(e.kind, e.reasoning_tokens, e.probe_tokens) for e in events] == [
        ("probe", 64, 2), ("probe", 128, 4), ("probe", 192, 6), ("probe", 256, 8)]


def test_judge_under_a_score_rule_exits_on_a_box_agreeing_with_a_probe() -> None:
    from certaindex.core.answers import canonical_answer
    from certaindex.core.exit_score import LiveScore

    live = LiveScore(BOX_RULE, canonical_answer)
    judge = Judge(CoTConfig(probe_interval=10, certainty=BOX_RULE), live)
    live.add_text("t " * 10, 10)
    record = judge.record_probe(10, reply("42}"), probe_tokens=2)
    assert not judge.settled_after(record, 10)  # no box written yet
    live.add_text("so \\boxed{42} ", 1)
    assert judge.boxes_settle()
    assert judge.final_answer() == "42" and judge.exit_position() == 11


async def test_side_requests_count_probe_tokens_and_send_the_probe_prompt() -> None:
    engine = ScriptedFakeEngine(reasoning=["a "] * 20, probe_reply=lambda n: ["7", "}"])
    config = CoTConfig(probe_tokens=5)
    _, prompt = await open_prompt(engine, QUESTION, config.system_prompt)
    side = SideRequests(engine, prompt, config, None)
    completion = await side.probe("a a ")
    assert completion.first.text.startswith("7")
    assert side.probe_tokens == completion.first.completion_tokens > 0
    assert engine.calls[-1].prompt == prompt + "a a " + DEFAULT_PROBE_SUFFIX
    assert engine.calls[-1].max_tokens == 5 and side.id_probes == 0


async def test_a_failed_probe_raises_or_gives_up_early_exit() -> None:
    engine = ScriptedFakeEngine(reasoning=["a "] * 20)
    run, _ = await new_run(engine, CoTConfig(), probe_failures="full-reasoning")
    run.probe_failed(EngineError("probe broke"))
    assert run.early_exit is False and run.failed_probes == 1
    strict, _ = await new_run(engine, CoTConfig())
    with pytest.raises(EngineError, match="probe broke"):
        strict.probe_failed(EngineError("probe broke"))


@pytest.mark.parametrize("early_exit", [False, True])
async def test_chunks_and_one_stream_differ_only_in_transport(early_exit) -> None:
    # the same engine script and config give the same reasoning, positions, probes and stop
    def engine(streaming: bool) -> ScriptedFakeEngine:
        return ScriptedFakeEngine(reasoning=[f"t{i} " for i in range(90)], streaming=streaming,
                                  probe_reply=lambda n: [str(n) if n < 40 else "42", "}"])
    config = CoTConfig(budget=200, probe_interval=10, k=2, early_exit=early_exit)
    chunked, _ = await new_run(engine(False), config)
    await reason_in_chunks(chunked, chunked.side.engine)
    streamed, _ = await new_run(engine(True), config)
    await reason_in_stream(streamed, streamed.side.engine)
    for run in (chunked, streamed):
        assert run.stop_reason == ("certain" if early_exit else "finished")
    assert chunked.reasoning == streamed.reasoning
    assert chunked.reasoning_tokens == streamed.reasoning_tokens == (50 if early_exit else 90)
    assert [p.at_tokens for p in chunked.judge.probes] == [p.at_tokens for p in streamed.judge.probes]
    assert chunked.overrun_tokens == 0 and streamed.overrun_tokens >= 0


async def test_answer_phase_by_stop_reason() -> None:
    engine = ScriptedFakeEngine(reasoning=["a "] * 20, thinking=True)
    run, _ = await new_run(engine, CoTConfig())
    run.stop_reason = "finished"
    run.reasoning = "a a "
    assert await answer(run, engine) == ("42", "The answer is \\boxed{42}.")
    assert run.answer_tokens == 3  # the model's own answer after </think> is counted
    assert engine.calls[-1].prompt.endswith("a a </think>\n\n")
    forced, _ = await new_run(engine, CoTConfig())
    forced.stop_reason = "budget"
    assert (await answer(forced, engine))[0] == "42"  # one last probe answers
    assert len(forced.judge.probes) == 1 and forced.answer_tokens == 0


class RecordingProbes:
    """Stands in for SideProbes: records the points offered."""

    active = True

    def __init__(self) -> None:
        self.offered: list[tuple[int, str]] = []

    def offer(self, at_tokens, reasoning, ids=None, kind="probe") -> None:
        self.offered.append((at_tokens, kind))


def test_main_stream_confirms_a_point_only_once_something_follows_it() -> None:
    probes = RecordingProbes()
    points: list[int] = []
    stream = MainStream(ScriptedFakeEngine(reasoning=[]), "P", budget=100, base=GenerationRequest("P", 100),
                        probes=probes, is_point=lambda last, tokens, text, added: tokens % 2 == 0,  # type: ignore[arg-type]
                        on_delta=lambda d, n: None, on_point=lambda n, text: points.append(n))
    stream.take(StreamDelta(text="a ", tokens=1))
    stream.take(StreamDelta(text="b ", tokens=1))  # reaches point 2: pending
    assert points == [2] and probes.offered == []
    stream.take(StreamDelta(text="c ", tokens=1))  # something follows: point 2 is offered
    assert probes.offered == [(2, "probe")]
    stream.take(StreamDelta(text="d", tokens=1, finish_reason="stop"))  # point 4 came with the end itself
    assert probes.offered == [(2, "probe")] and stream.text == "a b c d" and stream.tokens == 4
    assert stream.request().prompt == "Pa b c d" and stream.request().max_tokens == 96
