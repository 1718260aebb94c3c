"""Parallel programs end to end on the embedded llama.cpp engine with the real model."""

from __future__ import annotations

import pytest

from certaindex.engines.embedded import EmbeddedEngine
from certaindex.programs.deepconf import DeepConfConfig, deepconf
from certaindex.programs.self_consistency import NoAnswerError, SCConfig, first_finish, self_consistency
from tests.conftest import UTF8_SLACK

pytestmark = pytest.mark.model

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have now?"


@pytest.fixture(scope="module")
def logprob_engine(model_path):
    return EmbeddedEngine(model_path=model_path, n_ctx=2048, logprobs=True)


async def _sc_or_no_answer(engine, config: SCConfig) -> tuple[int, int, list]:
    """(samples used, total tokens, samples) of a run; a 135M model may answer nothing, and the
    cost is still reported."""
    try:
        result = await self_consistency(engine, QUESTION, config)
    except NoAnswerError as exc:
        return exc.samples_used, exc.total_tokens, []
    assert result.total_tokens == sum(s.tokens for s in result.samples)
    return result.samples_used, result.total_tokens, list(result.samples)


async def test_self_consistency_early_stop_spends_no_more_than_fixed_n(embedded_engine) -> None:
    """Counts that hold for any text. That the early run's samples are the fixed run's first ones
    (same seeds) and cost no more is checked on the scripted engine (tests/test_self_consistency.py):
    on llama.cpp the same seed can decode differently after other work changed the cache state."""
    base = SCConfig(n=6, first_round=3, round_size=1, max_tokens=96, temperature=0.7, seed=1, threshold=0.5)
    fixed_used, fixed_tokens, fixed_samples = await _sc_or_no_answer(
        embedded_engine, SCConfig(**{**base.__dict__, "rule": "fixed"}))
    early_used, early_tokens, early_samples = await _sc_or_no_answer(embedded_engine, base)
    assert fixed_used == 6 and fixed_tokens > 0
    assert 3 <= early_used <= 6 and early_tokens > 0
    assert all(0 <= s.tokens <= 96 + UTF8_SLACK for s in fixed_samples + early_samples)


async def test_first_finish_and_deepconf_on_real_logprobs(logprob_engine) -> None:
    ff = await first_finish(logprob_engine, QUESTION, n=2, config=SCConfig(max_tokens=64, seed=3))
    assert ff.total_tokens >= len(ff.text.split()) // 2 and ff.samples_started == 2
    config = DeepConfConfig(n=4, warmup=2, window=8, max_tokens=64, concurrency=2, keep_percentile=50)
    try:
        result = await deepconf(logprob_engine, QUESTION, config)
    except NoAnswerError as exc:  # a 135M model may answer nothing; the cost is still reported
        assert exc.total_tokens > 0
        return
    assert 2 <= result.samples_used <= 4
    assert result.bar is not None and result.bar > 0
    finished = [t for t in result.traces if not t.stopped_early]
    assert finished and all(t.confidence > 0 for t in finished)
