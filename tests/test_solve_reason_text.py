"""solve says in the words of the rule that decided why a run stopped."""

from certaindex.cli.solve import _reason_text
from certaindex.programs.cot import CoTResult


def _result(stop: str) -> CoTResult:
    return CoTResult(question="q", answer="4", answer_text="4", stop_reason=stop, reasoning="r", prompt_tokens=3,
                     reasoning_tokens=128, probe_tokens=10, answer_tokens=2, budget=1024)


def test_a_score_exit_names_the_certainty_score_not_agreeing_probes() -> None:
    text = _reason_text(_result("certain"), scored=True)
    assert "certainty score" in text and "agreed" not in text and "128" in text


def test_a_dynasor_exit_names_agreeing_probes() -> None:
    assert "agreed" in _reason_text(_result("certain"))


def test_finished_and_budget_read_the_same_under_either_rule() -> None:
    for stop in ("finished", "budget"):
        assert _reason_text(_result(stop), scored=True) == _reason_text(_result(stop))


def test_a_cut_answer_is_named_as_cut() -> None:
    text = _reason_text(_result("answer_length"))
    assert "cut" in text and "budget" not in text and "2 tokens" in text


def test_an_engine_cut_is_named_as_the_engines_not_the_budgets_or_finished() -> None:
    text = _reason_text(_result("engine_length"))
    assert "engine cut" in text and "128" in text and "finished" not in text and "ran out" not in text
