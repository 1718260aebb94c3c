"""Reward-guided search and confidence-filtered voting, on fake engines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from certaindex.programs.deepconf import DeepConfConfig, deepconf
from certaindex.programs.search import (
    Node,
    SearchConfig,
    SelfConfidenceScorer,
    best_of_n,
    majority_agreement_rewards,
    rebase_allocation,
    rebase_search,
)
from tests.fakes import SamplingFakeEngine, StepFakeEngine

QUESTION = "What is six times seven?"


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.integers(0, 64), st.floats(0.05, 2))
def test_rebase_allocation_spends_exactly_the_budget_and_favours_better_nodes(rewards, budget, temperature) -> None:
    counts = rebase_allocation(rewards, budget, temperature)
    assert sum(counts) == budget and all(c >= 0 for c in counts)
    best, worst = rewards.index(max(rewards)), rewards.index(min(rewards))
    assert counts[best] >= counts[worst] - 1


def test_majority_agreement_rewards() -> None:
    assert majority_agreement_rewards(["1", "1", "2", None]) == [0.5, 0.5, 0.25, 0.0]


async def test_best_of_n_without_a_prm_picks_the_majority() -> None:
    engine = SamplingFakeEngine({"42": 3.0, "41": 1.0})
    result = await best_of_n(engine, QUESTION, SearchConfig(width=8))
    assert result.answer == "42"
    assert result.total_tokens == 8 * engine.tokens_per_sample
    assert 0 < result.certaindex <= 1


async def test_best_of_n_with_self_confidence_prefers_the_confident_candidates() -> None:
    engine = SamplingFakeEngine({"42": 1.0, "41": 3.0}, logprob_of={"42": -0.05, "41": -1.5})
    result = await best_of_n(engine, QUESTION, SearchConfig(width=8), scorer=SelfConfidenceScorer())
    assert result.answer == "42"  # the minority, but the model was sure of it


async def test_rebase_search_finishes_candidates_and_counts_tokens() -> None:
    engine = StepFakeEngine(answers=("7", "9"), steps_to_answer=2)

    async def prefers_seven(question: str, node: Node) -> list[float]:
        return [0.9 if "path 7" in step or "boxed{7}" in step else 0.2 for step in node.steps]

    config = SearchConfig(width=4, max_depth=5, threshold=1.0, reject_margin=1.0)
    result = await rebase_search(engine, QUESTION, prefers_seven, config)
    assert result.answer == "7"
    assert len(result.finished) == 4
    assert result.total_tokens == sum(call.n for call in engine.calls) * engine.tokens_per_step


async def test_rebase_rejects_partial_candidates_that_fall_behind() -> None:
    engine = StepFakeEngine(answers=("7", "9"), steps_to_answer=3)

    async def prefers_seven(question: str, node: Node) -> list[float]:
        return [0.9 if "7" in node.steps[0] else 0.1 for _ in node.steps]

    config = SearchConfig(width=4, max_depth=6, threshold=1.0, reject_margin=0.5)
    result = await rebase_search(engine, QUESTION, prefers_seven, config)
    assert result.rejected >= 1
    assert all("boxed{7}" in node.text for node in result.finished)


async def test_rebase_stops_once_the_reward_certaindex_is_reached() -> None:
    engine = StepFakeEngine(answers=("7",), steps_to_answer=1)

    async def sure(question: str, node: Node) -> list[float]:
        return [0.95] * len(node.steps)

    result = await rebase_search(engine, QUESTION, sure, SearchConfig(width=8, max_depth=5, threshold=0.9))
    assert result.stop_reason == "certain" and result.certaindex >= 0.9


@pytest.mark.parametrize("kwargs", [{"width": 0}, {"threshold": 2}, {"reject_margin": -0.1}, {"balance_temperature": 0}])
def test_bad_search_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SearchConfig(**kwargs)


async def test_deepconf_online_filter_stops_unconfident_traces_and_saves_their_tokens() -> None:
    # Wrong answers come from unconfident traces; the online bar stops them early.
    engine = SamplingFakeEngine(
        {"42": 1.0, "13": 1.0}, tokens_per_sample=40, logprob_of={"42": -0.01, "13": -3.0}
    )
    config = DeepConfConfig(n=12, warmup=4, keep_percentile=50, window=8, threshold=1.0, concurrency=4)
    result = await deepconf(engine, QUESTION, config)
    assert result.answer == "42"
    stopped = [t for t in result.traces if t.stopped_early]
    assert stopped and all(t.tokens == config.window for t in stopped)
    assert result.total_tokens == engine.streamed_tokens
    assert result.total_tokens < 12 * 40


async def test_deepconf_weighted_vote_beats_an_unconfident_majority() -> None:
    engine = SamplingFakeEngine({"42": 1.0, "13": 2.0}, tokens_per_sample=20, logprob_of={"42": -0.01, "13": -2.5})
    config = DeepConfConfig(n=12, warmup=12, online=False, keep_fraction=0.3, window=4, threshold=1.0)
    result = await deepconf(engine, QUESTION, config)
    assert result.answer == "42"
    assert result.samples_used == 12


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"warmup": 0}, {"keep_percentile": 0}, {"keep_fraction": 1.5}, {"window": 0}])
def test_bad_deepconf_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        DeepConfConfig(**kwargs)
