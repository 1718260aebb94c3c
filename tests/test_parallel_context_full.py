"""Self-consistency, DeepConf and reward-guided search when the engine's context is full: a sample
the engine cuts (``length`` before ``max_tokens``) or refuses for a full context ends cut with what
it wrote, the program answers from the other samples and says how many were cut; refused before
anything was written, the prompt itself does not fit and the error stands; other errors still fail."""

from __future__ import annotations

import re

import openai
import pytest

from certaindex.engines.base import EngineError
from certaindex.programs.deepconf import DeepConfConfig, deepconf
from certaindex.programs.search import Node, SearchConfig, best_of_n, rebase_search
from certaindex.programs.self_consistency import NoAnswerError, SCConfig, first_finish, self_consistency
from certaindex.server.chat_programs import sc_outcome
from certaindex.server.metering import MeteredEngine
from tests.fakes import LLAMA_CPP_CONTEXT_FULL, ContextFullFakeEngine, SamplingFakeEngine, StepFakeEngine
from tests.misbehaving_upstream import FakeUpstream
from tests.test_server import QUESTION as CHAT, start_stack

QUESTION = "What is six times seven?"
SC = SCConfig(n=12, first_round=4, round_size=4, rule="fixed", max_tokens=64)


def round_from(seed: int):
    """Refuse every request whose first sample's seed is ``seed`` or later (a round of SC)."""
    return lambda request: request.seed is not None and request.seed >= seed


async def test_sc_answers_from_the_rounds_before_a_refused_one_and_asks_no_more() -> None:
    inner = SamplingFakeEngine({"42": 1.0})
    engine = ContextFullFakeEngine(inner, refuse=round_from(4))
    result = await self_consistency(engine, QUESTION, SC)
    assert result.stop_reason == "engine_length"
    assert (result.samples_used, result.samples_cut) == (8, 4)
    assert [s.cut for s in result.samples] == [False] * 4 + [True] * 4
    assert all(s.text == "" and s.answer is None and s.tokens == 0 for s in result.samples[4:])
    assert result.answer == "42" and (result.vote.count, result.vote.n_samples) == (4, 8)
    assert result.total_tokens == 4 * inner.tokens_per_sample
    assert len(engine.refused) == 1 and len(inner.calls) == 1  # the refused round is not asked again


async def test_sc_sample_cut_by_the_engine_keeps_its_text_and_the_vote_goes_on() -> None:
    inner = SamplingFakeEngine({"42": 1.0})
    engine = ContextFullFakeEngine(inner, cut_seeds=[1, 5], cut_at=3)
    result = await self_consistency(engine, QUESTION, SC)
    assert result.stop_reason == "budget" and result.samples_used == 12  # cut samples do not end sampling
    assert [i for i, s in enumerate(result.samples) if s.cut] == [1, 5]
    cut = result.samples[1]
    assert (cut.text, cut.answer, cut.tokens, cut.finish_reason) == ("x x x ", None, 3, "length")
    assert result.answer == "42" and result.vote.count == 10
    assert result.total_tokens == 10 * inner.tokens_per_sample + 2 * 3


async def test_sc_sample_at_its_own_max_tokens_is_not_cut() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), cut_seeds=[0], cut_at=4)
    result = await self_consistency(engine, QUESTION, SCConfig(n=4, first_round=4, rule="fixed", max_tokens=4))
    assert result.samples[0].finish_reason == "length" and result.samples_cut == 0  # the budget, not the engine


async def test_sc_with_every_sample_cut_or_refused_is_a_clear_no_answer() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=round_from(4), cut_seeds=range(4))
    with pytest.raises(NoAnswerError, match=r"none of the 8 samples gave an answer \(8 cut by the engine\)") as caught:
        await self_consistency(engine, QUESTION, SC)
    assert (caught.value.samples_used, caught.value.cut, caught.value.total_tokens) == (8, 8, 4 * 2)


async def test_sc_refused_before_any_sample_is_still_an_error() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=round_from(0))
    with pytest.raises(EngineError) as caught:
        await self_consistency(engine, QUESTION, SC)
    assert caught.value.context_full and caught.value.status == 400


async def test_sc_other_refusals_still_fail() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=round_from(4), message="model 'x' not found")
    with pytest.raises(EngineError, match="not found") as caught:
        await self_consistency(engine, QUESTION, SC)
    assert not caught.value.context_full


async def test_sc_outcome_reports_the_cut_samples_and_finishes_on_length() -> None:
    engine = MeteredEngine(ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=round_from(4), cut_seeds=[2]))
    result = await self_consistency(engine, QUESTION, SC)
    outcome = sc_outcome(result, engine)
    assert outcome.finish_reason == "length" and "\\boxed{42}" in outcome.content
    assert outcome.details["stop_reason"] == "engine_length"
    assert (outcome.details["samples"], outcome.details["samples_cut"]) == (8, 5)


async def test_first_finish_passes_over_refused_samples() -> None:
    inner = SamplingFakeEngine({"1": 1.0}, tokens_per_sample=20, token_delay_s=0.001)
    engine = ContextFullFakeEngine(inner, refuse=lambda request: request.seed in (0, 1))
    result = await first_finish(engine, QUESTION, n=4, config=SCConfig(seed=0))
    assert result.answer == "1" and result.refused == 2


async def test_first_finish_with_every_sample_refused_raises_the_refusal() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"1": 1.0}), refuse=lambda request: True)
    with pytest.raises(EngineError) as caught:
        await first_finish(engine, QUESTION, n=3, config=SCConfig(seed=0))
    assert caught.value.context_full and len(engine.refused) == 3


SPLIT = {"42": 2.0, "13": 1.0}
DC = DeepConfConfig(n=8, warmup=4, window=4, threshold=1.0, concurrency=4, max_tokens=64)


async def test_deepconf_answers_from_the_traces_beside_a_refused_one_and_starts_no_more() -> None:
    inner = SamplingFakeEngine(SPLIT)  # seeds 0-3 answer 13, 42, 13, 42
    engine = ContextFullFakeEngine(inner, refuse=lambda request: request.seed == 1)
    result = await deepconf(engine, QUESTION, DC)
    assert result.answer == "13" and result.vote.count == 2 and result.stop_reason == "engine_length"
    assert (result.samples_used, result.samples_cut) == (4, 1)  # the warm-up only
    refused = result.traces[1]
    assert refused.cut and not refused.votes and (refused.text, refused.tokens) == ("", 0)
    assert result.bar is not None and result.bar > float("-inf")  # set by the three that ran
    assert result.vote.n_samples == 3 and result.total_tokens == 3 * inner.tokens_per_sample
    assert len(inner.calls) == 3 and len(engine.refused) == 1


async def test_deepconf_refused_in_a_later_batch_keeps_the_warm_up_vote() -> None:
    inner = SamplingFakeEngine(SPLIT)  # seeds 0-4 answer 13, 42, 13, 42, 42
    engine = ContextFullFakeEngine(inner, refuse=lambda request: request.seed >= 5)
    config = DeepConfConfig(n=11, warmup=3, window=4, threshold=1.0, concurrency=2, online=False)
    result = await deepconf(engine, QUESTION, config)
    assert result.answer == "42" and result.vote.count == 3 and result.stop_reason == "engine_length"
    assert (result.samples_used, result.samples_cut) == (7, 2)  # no batch after the refused one
    assert len(engine.refused) == 2 and len(inner.calls) == 5


async def test_deepconf_trace_cut_by_the_engine_keeps_its_text_and_votes_with_it() -> None:
    inner = SamplingFakeEngine({"42": 1.0})
    engine = ContextFullFakeEngine(inner, cut_seeds=[2], cut_at=5)
    result = await deepconf(engine, QUESTION, DeepConfConfig(n=4, warmup=4, window=4, threshold=1.0, max_tokens=64))
    assert result.stop_reason == "budget" and result.samples_cut == 1
    cut = result.traces[2]
    assert cut.cut and cut.votes and (cut.text, cut.tokens, cut.answer) == ("x x x x x ", 5, None)
    assert result.answer == "42" and result.vote.n_samples == 4  # it voted, for no answer
    assert result.total_tokens == 3 * inner.tokens_per_sample + 5


async def test_deepconf_with_every_trace_cut_is_a_clear_no_answer() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), cut_seeds=range(8), cut_at=5)
    with pytest.raises(NoAnswerError, match=r"none of the 8 traces gave an answer \(8 cut by the engine\)") as caught:
        await deepconf(engine, QUESTION, DC)
    assert (caught.value.cut, caught.value.total_tokens) == (8, 8 * 5)


async def test_deepconf_with_every_warm_up_trace_refused_is_still_an_error() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=lambda request: True)
    with pytest.raises(EngineError) as caught:
        await deepconf(engine, QUESTION, DC)
    assert caught.value.context_full and len(engine.refused) == DC.warmup


async def test_deepconf_other_refusals_still_fail() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=lambda request: request.seed == 1,
                                   message="model 'x' not found")
    with pytest.raises(EngineError, match="not found"):
        await deepconf(engine, QUESTION, DC)


async def test_best_of_n_answers_from_the_candidates_beside_one_the_engine_cut() -> None:
    inner = SamplingFakeEngine({"42": 1.0})
    engine = ContextFullFakeEngine(inner, cut_seeds=[2], cut_at=3)
    result = await best_of_n(engine, QUESTION, SearchConfig(width=4, max_tokens=64))
    assert result.answer == "42" and result.samples_cut == 1
    assert [n.cut for n in result.finished] == [False, False, True, False]
    assert result.finished[2].text == "x x x " and result.total_tokens == 3 * inner.tokens_per_sample + 3


async def test_best_of_n_with_every_candidate_cut_is_a_clear_no_answer() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), cut_seeds=range(4), cut_at=3)
    with pytest.raises(NoAnswerError, match=r"none of the 4 candidates gave an answer \(4 cut by the engine\)") as caught:
        await best_of_n(engine, QUESTION, SearchConfig(width=4, max_tokens=64))
    assert (caught.value.cut, caught.value.total_tokens) == (4, 4 * 3)


async def test_best_of_n_refused_is_still_an_error() -> None:
    engine = ContextFullFakeEngine(SamplingFakeEngine({"42": 1.0}), refuse=lambda request: True)
    with pytest.raises(EngineError) as caught:
        await best_of_n(engine, QUESTION, SearchConfig(width=4))
    assert caught.value.context_full


async def even(question: str, node: Node) -> list[float]:
    return [0.5] * len(node.steps)


WORDS = ("seven", "nine")  # answers with no digit, so a cut step's text is no answer
REBASE = SearchConfig(width=4, max_depth=6, threshold=1.0, reject_margin=1.0)


async def test_rebase_ends_a_candidate_whose_step_is_refused_and_finishes_the_others() -> None:
    inner = StepFakeEngine(answers=WORDS, steps_to_answer=2)  # the first steps: paths seven, nine, seven, nine
    engine = ContextFullFakeEngine(inner, refuse=lambda request: "path nine" in request.prompt)
    result = await rebase_search(engine, QUESTION, even, REBASE)
    assert result.answer == "seven" and result.samples_cut == 2
    cut = [n for n in result.finished if n.cut]
    assert [n.text for n in cut] == ["path nine begins\n\n"] * 2 and all(n.done and n.tokens == 4 for n in cut)
    whole = "path seven begins\n\npath seven begins continues\n\nso \\boxed{seven}"
    assert [n.text for n in result.finished if not n.cut] == [whole] * 2
    assert len(engine.refused) == 2  # each refused once, never asked again
    assert result.total_tokens == (4 + 2 + 2) * inner.tokens_per_step


async def test_rebase_step_cut_by_the_engine_ends_its_candidate_with_what_it_wrote() -> None:
    inner = StepFakeEngine(answers=WORDS, steps_to_answer=2)
    engine = ContextFullFakeEngine(inner, cut_seeds=[5], cut_at=2)  # depth 2's second request: path nine's step
    result = await rebase_search(engine, QUESTION, even, REBASE)
    cut = [n for n in result.finished if n.cut]
    assert [(n.text, n.tokens) for n in cut] == [("path nine begins\n\npath nine ", 4 + 2)]
    assert result.answer in WORDS and result.samples_cut == 1 and len(result.finished) == 4
    assert not any(r.prompt.endswith("path nine ") for r in inner.calls)  # nothing asked after the cut


async def test_rebase_with_every_candidate_refused_is_a_clear_no_answer() -> None:
    engine = ContextFullFakeEngine(StepFakeEngine(answers=WORDS), refuse=lambda request: "path" in request.prompt)
    with pytest.raises(NoAnswerError, match=r"none of the 4 finished candidates gave an answer \(4 cut by the engine\)"):
        await rebase_search(engine, QUESTION, even, REBASE)


@pytest.mark.parametrize("message", [LLAMA_CPP_CONTEXT_FULL, "model 'x' not found"])
async def test_rebase_refused_at_the_root_or_for_another_reason_is_still_an_error(message: str) -> None:
    root = ContextFullFakeEngine(StepFakeEngine(), refuse=lambda request: "path" not in request.prompt, message=message)
    with pytest.raises(EngineError, match=re.escape(message)):
        await rebase_search(root, QUESTION, even, REBASE)
    later = ContextFullFakeEngine(StepFakeEngine(), refuse=lambda request: "path 9" in request.prompt,
                                  message="model 'x' not found")
    with pytest.raises(EngineError, match="not found"):
        await rebase_search(later, QUESTION, even, REBASE)


def test_the_proxy_reports_sc_samples_the_engine_cut() -> None:
    """Every sample cut by the upstream's full context (``length`` at 3 tokens of the 8 asked): a
    clear no-answer reply on ``length`` that counts them, not a failure."""
    stack, contexts = start_stack(FakeUpstream(context_tokens=3))
    try:
        reply = stack.client().chat.completions.create(
            model="m", messages=CHAT, max_tokens=8, extra_body={"certaindex": {"policy": "sc", "samples": 4}})
    finally:
        for context in contexts:
            context.__exit__(None, None, None)
    info = reply.model_extra["certaindex"]
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == ""
    assert (info["stop_reason"], info["samples"], info["samples_cut"]) == ("no-answer", 4, 4)
    assert reply.usage.completion_tokens == 4 * 3


def test_the_proxy_passes_on_an_sc_request_the_full_context_refuses_at_once() -> None:
    """Refused on the first round (the prompt with ``max_tokens`` does not fit): the client gets the
    upstream's 400 and reason, as for cot."""
    refusal = {"error": {"code": 400, "message": LLAMA_CPP_CONTEXT_FULL, "type": "exceed_context_size_error"}}
    stack, contexts = start_stack(FakeUpstream(context_tokens=0, context_refusal=refusal))
    try:
        with pytest.raises(openai.BadRequestError, match="exceeds the available context size"):
            stack.client().chat.completions.create(
                model="m", messages=CHAT, max_tokens=8, extra_body={"certaindex": {"policy": "sc", "samples": 4}})
    finally:
        for context in contexts:
            context.__exit__(None, None, None)
