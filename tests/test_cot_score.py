"""The chain of thought driven by a fitted certainty score (a profile's ``score`` rule), on a
scripted fake engine, chunked and in one stream with side probes."""

from __future__ import annotations

import pytest

from certaindex.evaluation.profiles import shipped_profiles
from certaindex.programs.cot import CoTConfig, solve_cot
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is six times seven?"
# exits only where the last \boxed{} the model wrote equals the observed answer
BOX_RULE = {"schedule": "bx+g10", "threshold": 0.9,
            "model": {"features": ["box_agree"], "mean": [0.0], "scale": [1.0], "coef": [10.0], "intercept": -5.0}}


def script(n: int, box_at: int, box: str) -> list[str]:
    return [f"t{i} " if i != box_at else f"so \\boxed{{{box}}} " for i in range(n)]


@pytest.mark.parametrize("streaming", [False, True])
async def test_score_rule_exits_once_probe_and_box_agree(streaming) -> None:
    # probes say 41 until token 30, then 42; the model boxes 42 at token 45: the score fires at the
    # first decision point after the box (token 50), not when probes merely agree (k would have fired
    # at 30); the exit is placed at the box (46 tokens written), the 4 tokens after it are overrun
    engine = ScriptedFakeEngine(reasoning=script(400, 45, "42"), probe_reply=lambda n: ["41" if n < 30 else "42", "}"],
                                streaming=streaming)
    config = CoTConfig(budget=400, probe_interval=10, k=2, certainty=BOX_RULE)
    result = await solve_cot(engine, QUESTION, config)
    assert result.stop_reason == "certain" and result.answer == "42"
    assert result.reasoning_tokens == 46 and result.overrun_tokens >= 4  # the one stream may run on further
    assert streaming or result.overrun_tokens == 4
    assert result.probe_tokens == 4 * 2  # four probes of two tokens: the box settles it before the fifth


async def test_score_rule_without_threshold_is_full_reasoning_with_probes() -> None:
    engine = ScriptedFakeEngine(reasoning=script(100, 45, "42"), probe_reply=lambda n: ["42", "}"])
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=400, probe_interval=10,
                                                          certainty=dict(BOX_RULE, threshold=None)))
    assert result.stop_reason == "finished" and result.reasoning_tokens == 100


async def test_shipped_conservative_profile_runs_live() -> None:
    conservative = next(p for p in shipped_profiles() if p.name == "conservative")
    engine = ScriptedFakeEngine(reasoning=script(1500, 600, "42"), probe_reply=lambda n: ["42", "}"])
    config = CoTConfig(budget=2048, probe_interval=conservative.probe_interval, certainty=conservative.rule)
    result = await solve_cot(engine, QUESTION, config)
    assert result.answer == "42"
    assert result.total_tokens == result.reasoning_tokens + result.probe_tokens + result.answer_tokens + result.overrun_tokens
    assert all(p.at_tokens % conservative.probe_interval == 0 for p in result.probes)


@pytest.mark.parametrize("per_delta", [1, 3, 7])
async def test_grid_probes_are_taken_when_the_stream_delivers_several_tokens_at_once(per_delta) -> None:
    # a stream whose pieces carry several tokens lands its decision points past the multiples of
    # the grid: every multiple still gets its one probe, at the first point at or past it
    engine = ScriptedFakeEngine(reasoning=[f"t{i} " for i in range(200)], probe_reply=lambda n: ["41", "}"],
                                streaming=True, tokens_per_delta=per_delta)
    rule = dict(BOX_RULE, schedule="g20", threshold=None)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=400, probe_interval=20, certainty=rule))
    assert result.stop_reason == "finished" and result.reasoning_tokens == 200
    grid = [p.at_tokens for p in result.probes]
    assert [at // 20 for at in grid] == list(range(1, 10))  # one probe per multiple of 20 before the end, none skipped
    assert all(0 <= at - 20 * (at // 20) < per_delta for at in grid)
