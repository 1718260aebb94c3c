"""``record_one`` never records a run the engine cut before the budget as finished: it refuses it
with an error that says so (a trace stands for the model's full reasoning at the recording's
budget), and records an answer the full context refused as cut (``length``, 0 tokens)."""

from __future__ import annotations

import pytest

from certaindex.core.datasets import Problem
from certaindex.engines.base import EngineError
from certaindex.traces import TraceHeader, read_traces, record_one, record_traces, write_traces
from tests.fakes import ScriptedFakeEngine, refuse_fake_probes_from
from tests.test_context_full import CONTEXT_FULL_MESSAGES
from tests.test_traces import QUESTION, script, settings

PROBLEM = Problem("a", QUESTION, "42")


def probe_positions(engine: ScriptedFakeEngine) -> list[int]:
    return [engine._consumed(c.prompt[: -len(engine.probe_suffix)])[1] for c in engine.calls
            if c.prompt.endswith(engine.probe_suffix)]


@pytest.mark.parametrize("refusal", [None, CONTEXT_FULL_MESSAGES[0]], ids=["gives-nothing", "refuses"])
@pytest.mark.parametrize("context", [12, 10])  # mid-chunk, or right at a chunk's end (g=5)
async def test_a_run_the_engine_cut_is_refused_not_recorded_finished(context: int, refusal: str | None) -> None:
    engine = ScriptedFakeEngine(reasoning=[], ends_naturally=False, context_tokens=context, context_refusal=refusal)
    with pytest.raises(EngineError, match=rf"cut the reasoning of problem 'a' at {context} tokens, before the "
                                          r"budget of 40 .*not recorded"):
        await record_one(engine, PROBLEM, settings())
    # no probe after the cut: a chunk cut short has none; one that filled its g tokens cannot be told apart
    assert probe_positions(engine) == [p for p in (5, 10) if p <= context]


async def test_a_prompt_the_context_cannot_hold_is_the_engines_own_error() -> None:
    engine = ScriptedFakeEngine(reasoning=[], ends_naturally=False, context_tokens=0,
                                context_refusal=CONTEXT_FULL_MESSAGES[2])
    with pytest.raises(EngineError, match="maximum context length") as caught:
        await record_one(engine, PROBLEM, settings())
    assert "cut the reasoning" not in str(caught.value)


async def test_record_traces_keeps_the_records_before_the_cut(tmp_path) -> None:
    problems = [PROBLEM, Problem("b", "What is two plus two?", "4")]
    engine = ScriptedFakeEngine(reasoning=script(6, "\\boxed{42}"))
    path = tmp_path / "x.jsonl.gz"

    def shrink_context(done: int, total: int, record) -> None:
        engine.context_tokens = 3  # the next problem's reasoning does not fit any more

    with pytest.raises(EngineError, match="problem 'b' at 3 tokens"):
        await record_traces(engine, problems, settings(), path, shrink_context)
    kept = read_traces(path).records
    assert [r.id for r in kept] == ["a"] and kept[0].stop == "finished" and kept[0].correct


async def test_an_answer_the_full_context_refuses_is_recorded_cut(tmp_path) -> None:
    reasoning = script(6) + ["so \\boxed{42} "] + script(10)[7:]
    engine = ScriptedFakeEngine(reasoning=reasoning, thinking=True, context_tokens=10,
                                context_refusal=CONTEXT_FULL_MESSAGES[0])
    record = await record_one(engine, PROBLEM, settings())
    assert record.stop == "finished" and record.reasoning_tokens == 10
    assert (record.final.source, record.final.finish_reason, record.final.tokens) == ("after-think", "length", 0)
    assert record.final.answer == "42" and record.correct
    header = TraceHeader(model="fake", engine="fake:scripted", settings=settings(), created="2025-01-01T00:00:00+00:00")
    write_traces(tmp_path / "t.jsonl.gz", header, [record])
    assert read_traces(tmp_path / "t.jsonl.gz").records == [record]


async def test_a_probe_the_full_context_refuses_is_the_same_clear_error() -> None:
    engine = ScriptedFakeEngine(reasoning=[], ends_naturally=False, context_tokens=10)
    refuse_fake_probes_from(engine, 10, CONTEXT_FULL_MESSAGES[-2])
    with pytest.raises(EngineError, match="at 10 tokens, before the budget of 40 .its probe was refused"):
        await record_one(engine, PROBLEM, settings())
