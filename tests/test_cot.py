"""Program logic of the early-exit chain of thought, on a scripted fake engine."""

from __future__ import annotations

import pytest

from certaindex.engines.base import EngineError
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, NoQuestionError, read_probe_answer
from certaindex.programs.cot import CoTConfig, solve_cot
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is six times seven?"


def script(n: int, tail: str = "") -> list[str]:
    tokens = [f"t{i} " for i in range(n)]
    if tail:
        tokens.append(tail)
    return tokens


def is_probe(request) -> bool:
    return request.prompt.endswith(DEFAULT_PROBE_SUFFIX)


async def test_stops_once_k_probes_agree() -> None:
    engine = ScriptedFakeEngine(reasoning=script(200), probe_reply=lambda n: ["42", "}", " \\]"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10, k=3, probe_tokens=20))
    assert result.stop_reason == "certain"
    assert result.answer == "42"
    assert result.reasoning_tokens == 30
    assert [p.at_tokens for p in result.probes] == [10, 20, 30]
    assert result.probe_tokens == 9  # three probes of three tokens each: probes are cost
    assert result.total_tokens == 39
    assert [p.certaindex for p in result.probes] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert "boxed{42}" in result.answer_text


async def test_changing_answers_delay_the_exit_until_they_settle() -> None:
    # The probe says 1 before 25 reasoning tokens and 2 after: two early 1s must not count.
    engine = ScriptedFakeEngine(reasoning=script(300), probe_reply=lambda n: ["1" if n < 25 else "2", "}"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10, k=3))
    assert result.stop_reason == "certain"
    assert result.answer == "2"
    assert [p.answer for p in result.probes] == ["1", "1", "2", "2", "2"]
    assert result.reasoning_tokens == 50


async def test_answers_that_change_every_probe_never_stop_early() -> None:
    engine = ScriptedFakeEngine(reasoning=script(100, "so \\boxed{7}"), probe_reply=lambda n: [str(n), "}"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10, k=2))
    assert result.stop_reason == "finished"
    assert result.answer == "7"  # read from the finished reasoning, not from a probe
    assert len(result.probes) == 10


@pytest.mark.parametrize("reply", [["42} hmm"], ["Wait", ", 42}"], ["42} but"]])
async def test_hesitant_probes_never_count_as_agreement(reply: list[str]) -> None:
    engine = ScriptedFakeEngine(reasoning=script(60, "\\boxed{42}"), probe_reply=lambda n: reply)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10, k=2))
    assert result.stop_reason == "finished"
    assert all(p.hesitant for p in result.probes)
    assert all(p.certaindex == 0.0 for p in result.probes)


async def test_unclosed_probe_answers_are_empty_and_never_agree() -> None:
    engine = ScriptedFakeEngine(reasoning=script(40, "\\boxed{5}"), probe_reply=lambda n: ["4", "2", "2", "2"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10, k=2, probe_tokens=3))
    assert all(p.answer is None for p in result.probes)
    assert result.stop_reason == "finished"
    assert result.answer == "5"


async def test_full_reasoning_never_probes_and_early_exit_is_its_prefix() -> None:
    reasoning = script(120, "\\boxed{42}")
    full_engine = ScriptedFakeEngine(reasoning=reasoning)
    full = await solve_cot(full_engine, QUESTION, CoTConfig(budget=500, probe_interval=16, early_exit=False))
    assert not any(is_probe(r) for r in full_engine.calls)
    assert full.probes == [] and full.probe_tokens == 0
    assert full.reasoning == "".join(reasoning)
    assert full.reasoning_tokens == 121
    early = await solve_cot(ScriptedFakeEngine(reasoning=reasoning), QUESTION, CoTConfig(budget=500, probe_interval=16))
    assert full.reasoning.startswith(early.reasoning)
    assert early.total_tokens < full.total_tokens
    assert early.answer == full.answer == "42"


async def test_requests_continue_the_exact_prefix_and_probes_are_greedy() -> None:
    engine = ScriptedFakeEngine(reasoning=script(100))
    config = CoTConfig(budget=500, probe_interval=10, k=3, probe_tokens=7, temperature=0.7)
    result = await solve_cot(engine, QUESTION, config)
    prompts = [r.prompt for r in engine.calls if not is_probe(r)]
    for earlier, later in zip(prompts, prompts[1:]):
        assert later.startswith(earlier)
    probes = [r for r in engine.calls if is_probe(r)]
    assert len(probes) == len(result.probes) == 3
    assert all(r.temperature == 0.0 and r.max_tokens == 7 for r in probes)
    assert all(r.temperature == 0.7 for r in engine.calls if not is_probe(r))


async def test_budget_exhausted_forces_a_labelled_final_probe() -> None:
    engine = ScriptedFakeEngine(reasoning=[], ends_naturally=False, probe_reply=lambda n: [str(n), "}"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=50, probe_interval=20, k=3))
    assert result.stop_reason == "budget"
    assert result.reasoning_tokens == 50
    assert result.probes[-1].at_tokens == 50
    assert result.answer == "50"
    assert result.total_tokens == 50 + result.probe_tokens


async def test_full_reasoning_over_budget_also_gets_a_forced_answer() -> None:
    engine = ScriptedFakeEngine(reasoning=[], ends_naturally=False)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=30, probe_interval=8, early_exit=False))
    assert result.stop_reason == "budget"
    assert len(result.probes) == 1 and result.probes[0].at_tokens == 30


async def test_thinking_model_writes_its_answer_after_closing_the_thought() -> None:
    engine = ScriptedFakeEngine(reasoning=script(25), thinking=True, probe_reply=lambda n: [str(n), "}"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10, k=3))
    assert engine.calls[0].stop == ("</think>",)
    assert result.stop_reason == "finished"
    assert result.answer == "42"
    assert result.answer_tokens == 3
    assert result.total_tokens == 25 + result.probe_tokens + 3


async def test_a_model_that_never_answers_gives_no_answer() -> None:
    engine = ScriptedFakeEngine(reasoning=["I ", "do ", "not ", "know."], probe_reply=lambda n: ["hmm"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=100, probe_interval=2, k=2))
    assert result.answer is None
    assert result.answer_text == ""


async def test_engine_failure_propagates() -> None:
    engine = ScriptedFakeEngine(reasoning=script(100), fail_after_calls=2)
    with pytest.raises(EngineError):
        await solve_cot(engine, QUESTION, CoTConfig(budget=500, probe_interval=10))


@pytest.mark.parametrize("question", ["", "   ", "?!?", "x" * 100_001])
async def test_bad_questions_are_refused(question: str) -> None:
    with pytest.raises(NoQuestionError):
        await solve_cot(ScriptedFakeEngine(reasoning=script(5)), question)


@pytest.mark.parametrize(
    "kwargs",
    [{"budget": 0}, {"probe_interval": 0}, {"k": 0}, {"probe_tokens": 0}, {"temperature": -1}, {"top_p": 0}],
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        CoTConfig(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("42} \\]", "42"), ("\\frac{1}{2}} \\]", "\\frac{1}{2}"), ("4", None), ("}", None)],
)
def test_probe_answer_is_read_from_the_opened_box(text: str, expected: str | None) -> None:
    answer = read_probe_answer(DEFAULT_PROBE_SUFFIX, text)
    assert (answer or None) == expected
