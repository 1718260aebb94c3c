"""Self-consistency with early stopping and first-finish, on a sampling fake engine."""

from __future__ import annotations

import pytest

from certaindex.programs.self_consistency import (
    NoAnswerError,
    SCConfig,
    first_finish,
    self_consistency,
)
from tests.fakes import SamplingFakeEngine

QUESTION = "What is six times seven?"


async def test_fixed_rule_spends_the_whole_budget() -> None:
    engine = SamplingFakeEngine({"42": 1.0})
    result = await self_consistency(engine, QUESTION, SCConfig(n=12, first_round=4, round_size=4, rule="fixed"))
    assert result.samples_used == 12 and result.stop_reason == "budget"
    assert result.total_tokens == 12 * engine.tokens_per_sample
    assert result.answer == "42" and result.vote.count == 12


async def test_entropy_rule_stops_after_the_first_round_when_unanimous() -> None:
    engine = SamplingFakeEngine({"42": 1.0})
    result = await self_consistency(engine, QUESTION, SCConfig(n=16, first_round=4, rule="entropy", threshold=0.8))
    assert result.stop_reason == "certain"
    assert result.samples_used == 4
    assert result.certaindex_history == [1.0]
    assert len(engine.calls) == 1 and engine.calls[0].n == 4  # one request shares the prompt


async def test_entropy_rule_keeps_sampling_while_answers_disagree() -> None:
    engine = SamplingFakeEngine({str(i): 1.0 for i in range(50)})
    result = await self_consistency(engine, QUESTION, SCConfig(n=12, first_round=4, round_size=4, threshold=0.9))
    assert result.stop_reason == "budget" and result.samples_used == 12
    assert all(c < 0.9 for c in result.certaindex_history)


async def test_anytime_rule_stops_early_on_a_clear_majority_and_counts_every_token() -> None:
    engine = SamplingFakeEngine({"7": 1.0}, tokens_per_sample=5)
    config = SCConfig(n=64, first_round=4, round_size=2, rule="anytime", alpha=0.05)
    result = await self_consistency(engine, QUESTION, config)
    assert result.stop_reason == "significant"
    # (2^c - 1) / c >= 63 / 0.05 first holds at c = 15 unanimous samples; rounds of 2 reach 16.
    assert result.samples_used == 16
    assert result.total_tokens == 16 * 5


async def test_equivalent_answers_vote_together() -> None:
    engine = SamplingFakeEngine({"0.5": 1.0, "\\frac{1}{2}": 1.0, "1/2": 1.0})
    result = await self_consistency(engine, QUESTION, SCConfig(n=6, first_round=6, rule="fixed"))
    assert result.vote.count == 6 and len(result.vote.clusters) == 1


async def test_all_samples_without_an_answer_is_a_clear_error() -> None:
    engine = SamplingFakeEngine({None: 1.0})
    with pytest.raises(NoAnswerError, match="none of the 4 samples"):
        await self_consistency(engine, QUESTION, SCConfig(n=4, first_round=4))


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"threshold": 1.5}, {"threshold": -0.1}, {"alpha": 0}, {"alpha": 1}, {"rule": "vibes"}, {"first_round": 0}],
)
def test_bad_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SCConfig(**kwargs)


async def test_first_finish_returns_the_shortest_and_cancels_the_rest() -> None:
    engine = SamplingFakeEngine({"1": 1.0}, tokens_per_sample=200, token_delay_s=0.001, lengths={2: 5})
    result = await first_finish(engine, QUESTION, n=4, config=SCConfig(seed=0))
    assert result.answer == "1"
    assert result.text.split().count("x") == 4  # the 5-token sample (seed 2) won
    # The others were stopped long before their 200 tokens, and what they generated is counted.
    assert 5 <= result.total_tokens < 5 + 3 * 200
    assert result.total_tokens == engine.streamed_tokens
