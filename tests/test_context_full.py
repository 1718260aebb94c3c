"""An engine that refuses to go on because its context is full (llama.cpp's server, vLLM, SGLang,
the embedded engine) ends the run as ``engine_length`` with the answer written so far, as a
continuation that gives no token does; refused before any reasoning, the prompt itself does not fit
and the error stands."""

from __future__ import annotations

import pytest

from certaindex.engines.base import EngineError, GenerationRequest
from certaindex.engines.http import HTTPEngine
from certaindex.engines.context_full import is_context_full
from certaindex.programs.cot import CoTConfig, solve_cot
from tests.fakes import ScriptedFakeEngine, cut_fake_engine, refuse_fake_probes_from
from tests.misbehaving_upstream import FakeUpstream, serve_in_thread
from tests.test_engine_length import BOXED_THEN_ON, QUESTION, answer_requests, chat_cut, script, solve_cut

# The engines' own words (from their sources and the replies users quote).
CONTEXT_FULL_MESSAGES = [
    # llama.cpp's server, current and older builds
    "request (4476 tokens) exceeds the available context size (4096 tokens), try increasing it",
    "the request exceeds the available context size, try increasing it",
    # vLLM, older and newer wordings
    "This model's maximum context length is 4096 tokens. However, you requested 10778 tokens "
    "(2778 in the messages, 8000 in the completion). Please reduce the length of the messages or completion.",
    "This model's maximum context length is 1536 tokens. However, your request has 4176 input tokens. "
    "Please reduce the length of the input messages.",
    "'max_tokens' or 'max_completion_tokens' is too large: 8000. This model's maximum context length is 4096 "
    "tokens and your request has 2778 input tokens (8000 > 4096 - 2778). None",
    "The decoder prompt (length 40000) is longer than the maximum model length of 32768. Make sure that "
    "`max_model_len` is no smaller than the number of text tokens.",
    # SGLang
    "The input (691793 tokens) is longer than the model's context length (540000 tokens).",
    "Requested token count exceeds the model's maximum context length of 131072 tokens. You requested a total "
    "of 140000 tokens: 8000 tokens from the input messages and 132000 tokens for the completion.",
    # the embedded engine and llama-cpp-python
    "prompt of 4100 tokens does not fit the context window of 4096",
    "llama.cpp: Requested tokens (4100) exceed context window of 4096",
]
OTHER_MESSAGES = [
    "prompt is too long",  # a refusal that names no context: not read as one
    "model 'x' not found",
    "injected failure",
    "'temperature' must be >= 0",
    "cannot reach the engine at http://127.0.0.1:1: All connection attempts failed",
]
LLAMA_CPP_BODY = {"error": {"code": 400, "message": CONTEXT_FULL_MESSAGES[0], "type": "exceed_context_size_error",
                            "n_prompt_tokens": 4476, "n_ctx": 4096}}


@pytest.mark.parametrize("message", CONTEXT_FULL_MESSAGES)
def test_the_engines_context_full_refusals_are_recognised(message: str) -> None:
    assert is_context_full(message)
    assert is_context_full(message, 400)
    assert not is_context_full(message, 500)  # only a refusal (4xx) refuses the request
    assert EngineError(f"http://x/v1/completions answered HTTP 400: {message}", status=400).context_full


@pytest.mark.parametrize("message", OTHER_MESSAGES)
def test_other_failures_are_not_a_full_context(message: str) -> None:
    assert not is_context_full(message)
    assert not EngineError(message, status=400, body=message).context_full


def test_the_error_type_in_the_body_counts() -> None:
    error = EngineError("http://x/v1/completions answered HTTP 400: cut", status=400,
                        body='{"error": {"message": "cut", "type": "exceed_context_size_error"}}')
    assert error.context_full and error.status == 400


def refusing(**kwargs) -> ScriptedFakeEngine:
    return ScriptedFakeEngine(context_refusal=CONTEXT_FULL_MESSAGES[0], **kwargs)


@pytest.mark.parametrize("streaming", [False, True])
async def test_cot_refused_by_a_full_context_is_engine_length(streaming: bool) -> None:
    engine = cut_fake_engine(45, streaming, context_refusal=CONTEXT_FULL_MESSAGES[0])
    result = await solve_cut(engine, CoTConfig(budget=500, probe_interval=10, k=3))
    assert [p.at_tokens for p in result.probes] == [10, 20, 30, 40]  # none after the cut
    assert result.answer == "40"
    assert result.probe_failures == 0


@pytest.mark.parametrize("streaming", [False, True])
async def test_full_reasoning_refused_by_a_full_context_answers_from_its_reasoning(streaming: bool) -> None:
    engine = refusing(reasoning=BOXED_THEN_ON, thinking=True, context_tokens=30, streaming=streaming)
    result = await solve_cut(engine, CoTConfig(budget=1000, probe_interval=10, early_exit=False))
    assert result.answer == "7"
    assert answer_requests(engine) == []


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_prompt_the_context_cannot_hold_is_still_an_error(streaming: bool) -> None:
    engine = refusing(reasoning=script(50), context_tokens=0, streaming=streaming)
    with pytest.raises(EngineError) as caught:
        await solve_cot(engine, QUESTION, CoTConfig(budget=100, probe_interval=10, early_exit=False))
    assert caught.value.context_full and caught.value.status == 400


async def test_an_answer_the_full_context_refuses_is_answer_length_with_the_reasonings_answer() -> None:
    """The reasoning ended by itself right at the context's end; the answer after </think> is refused
    (vLLM refuses a prompt plus max_tokens over its context): no failure, the reasoning's answer."""
    reasoning = script(20) + ["so \\boxed{7} "] + script(29)[21:]
    engine = refusing(reasoning=reasoning, thinking=True, context_tokens=29)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=100, probe_interval=10, early_exit=False))
    assert len(answer_requests(engine)) == 1
    assert result.stop_reason == "answer_length"
    assert (result.answer, result.answer_tokens) == ("7", 0)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("policy", ["cot", "full"])
def test_the_proxy_reports_a_context_full_refusal_as_length(stream: bool, policy: str) -> None:
    upstream = FakeUpstream(context_tokens=22, disagreeing_probes=True, context_refusal=LLAMA_CPP_BODY)
    reply, _, _ = chat_cut(upstream, stream, policy=policy)
    assert reply["details"]["stream_resumes"] == 0  # the refusal is no broken stream to resume


@pytest.mark.parametrize("stream", [False, True])
def test_shadow_reports_a_context_full_refusal_as_length(tmp_path, stream: bool) -> None:
    upstream = FakeUpstream(context_tokens=22, disagreeing_probes=True, context_refusal=LLAMA_CPP_BODY)
    chat_cut(upstream, stream, policy="full", shadow_dir=str(tmp_path))


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_probe_the_full_context_refuses_does_not_fail_the_run(streaming: bool) -> None:
    """The chunk filled its tokens right at the context's end, so the probe there is sent and refused
    (the embedded engine: "prompt of N tokens does not fit"): even under ``probe_failures="raise"``
    the run ends as the engine's limit, with early exit given up."""
    engine = cut_fake_engine(40, streaming, context_refusal=CONTEXT_FULL_MESSAGES[-2])
    refuse_fake_probes_from(engine, 40, CONTEXT_FULL_MESSAGES[-2])
    result = await solve_cut(engine, CoTConfig(budget=500, probe_interval=10, k=9), probe_failures="raise")
    assert result.probe_failures == (0 if streaming else 1)  # the one stream's last point is its end: no probe there


@pytest.mark.parametrize("stream", [False, True])
async def test_the_http_engine_carries_the_refusals_status_and_body(stream: bool) -> None:
    upstream = FakeUpstream(context_tokens=3, context_refusal=LLAMA_CPP_BODY)
    with serve_in_thread(upstream.app()) as url:
        engine = HTTPEngine(url, max_retries=0)
        try:
            request = GenerationRequest(prompt="Q: step step step ", max_tokens=5)
            with pytest.raises(EngineError) as caught:
                if stream:
                    async for _ in engine.stream(request):
                        pass
                else:
                    await engine.generate(request)
        finally:
            await engine.aclose()
    error = caught.value
    assert error.status == 400 and error.context_full
    assert "exceed_context_size_error" in (error.body or "")
    assert "exceeds the available context size" in str(error)
