"""No silent cut-off (issue 18 item 2): the answer a model writes after ``</think>`` is bounded by
the client's ``max_tokens`` or a generous default, a cut answer says so (``stop_reason``
``answer_length``, ``finish_reason`` ``length``), and ``answer: "model"`` lets the model write its own
answer after an early exit. On scripted fakes, through the proxy's programs, and over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from certaindex.core.prompting import THINK_CLOSE, format_answer
from certaindex.programs.cot import DEFAULT_ANSWER_TOKENS, CoTConfig, solve_cot
from certaindex.programs.self_consistency import SCConfig
from certaindex.server.chat_programs import run_chat_program
from certaindex.server.errors import ProxyError
from certaindex.server.metrics import ProxyMetrics
from certaindex.server.schema import plan_chat
from certaindex.server.shadow import ShadowRecorder, run_shadow_program, shadow_plan
from tests.fakes import ScriptedFakeEngine

QUESTION = "What is six times seven?"
LONG_ANSWER = tuple(["word "] * 999 + ["\\boxed{42}"])  # 1,000 tokens, far past the old 256


def thinker(n: int = 10, final=LONG_ANSWER, **kw) -> ScriptedFakeEngine:
    return ScriptedFakeEngine(reasoning=[f"t{i} " for i in range(n)], thinking=True, final_reply=final, **kw)


def answer_request(engine: ScriptedFakeEngine):
    [request] = [r for r in engine.calls if r.prompt.endswith(THINK_CLOSE + "\n\n")]
    return request


async def test_a_long_answer_after_think_is_not_cut_by_default() -> None:
    engine = thinker()
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=64, probe_interval=4, k=50))
    assert result.stop_reason == "finished" and result.answer == "42"
    assert result.answer_tokens == len(LONG_ANSWER)
    assert answer_request(engine).max_tokens == DEFAULT_ANSWER_TOKENS


async def test_an_answer_cut_at_its_limit_says_so() -> None:
    engine = thinker()
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=64, probe_interval=4, k=50, answer_tokens=5))
    assert result.stop_reason == "answer_length"
    assert result.answer_tokens == 5 and result.answer_text == "word word word word word".strip()
    assert result.answer != "42"  # the box past the cut was never written: it is not the answer


@pytest.mark.parametrize("max_tokens, room", [(13, 3), (10, 0)])
async def test_max_tokens_bounds_the_reasoning_and_the_answer_together(max_tokens, room) -> None:
    # 10 reasoning tokens: the answer gets what max_tokens leaves (none at all: no request is sent)
    engine = thinker()
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=64, probe_interval=4, k=50, max_tokens=max_tokens))
    assert result.reasoning_tokens == 10 and result.stop_reason == "answer_length"
    assert result.answer_tokens == room
    if room:
        assert answer_request(engine).max_tokens == room
    else:
        assert not [r for r in engine.calls if r.prompt.endswith(THINK_CLOSE + "\n\n")]


async def test_a_short_answer_within_max_tokens_is_whole() -> None:
    engine = thinker(final=("The answer is ", "\\boxed{42}", "."))
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=64, probe_interval=4, k=50, max_tokens=13))
    assert result.stop_reason == "finished" and result.answer_tokens == 3 and result.answer == "42"


@pytest.mark.parametrize("streaming", [False, True])
async def test_answer_model_lets_the_model_answer_after_an_early_exit(streaming) -> None:
    engine = thinker(n=200, final=("So ", "it is ", "\\boxed{42}", "."), streaming=streaming)
    config = CoTConfig(budget=200, probe_interval=10, k=2, answer="model")
    result = await solve_cot(engine, QUESTION, config)
    assert result.stop_reason == "certain" and result.reasoning_tokens == 20
    assert result.answer == "42" and result.answer_text == "So it is \\boxed{42}."
    assert result.answer_tokens == 4
    assert result.total_tokens == result.reasoning_tokens + result.overrun_tokens + result.probe_tokens + 4
    request = answer_request(engine)
    assert request.prompt.endswith(result.reasoning + THINK_CLOSE + "\n\n")
    boxed = await solve_cot(thinker(n=200, streaming=streaming), QUESTION, CoTConfig(budget=200, probe_interval=10, k=2))
    assert boxed.answer_text == format_answer("42") and boxed.answer_tokens == 0  # the default stays the boxed answer


async def test_answer_model_cut_after_an_early_exit_says_so_and_keeps_the_settled_answer() -> None:
    engine = thinker(n=200)
    config = CoTConfig(budget=200, probe_interval=10, k=2, answer="model", answer_tokens=3)
    result = await solve_cot(engine, QUESTION, config)
    assert result.stop_reason == "answer_length" and result.answer_tokens == 3
    assert result.answer == "42"  # the settled answer: the cut text boxes none


def test_answer_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="answer must be boxed or model"):
        CoTConfig(answer="prose")  # type: ignore[arg-type]


# -- through the proxy's programs ------------------------------------------------------------------

BODY = {"model": "m", "messages": [{"role": "user", "content": QUESTION}]}
COT = CoTConfig(budget=64, probe_interval=4, k=50, probe_tokens=8)


def plan(policy: str, **body):
    return plan_chat({**BODY, **body}, policy, COT, SCConfig(), 10**5)


@pytest.mark.parametrize("policy", ["cot", "full", "shadow"])
@pytest.mark.parametrize("max_tokens", [None, 400])
def test_policies_report_a_cut_answer_as_length(tmp_path, policy, max_tokens) -> None:
    body = {} if max_tokens is None else {"max_tokens": max_tokens}
    engine = thinker()

    async def go():
        if policy != "shadow":
            return await run_chat_program(engine, plan(policy, **body))
        recorder = ShadowRecorder(str(tmp_path), ProxyMetrics(lambda: 0, lambda: 0))
        try:
            return await run_shadow_program(engine, shadow_plan(plan("full", **body), COT), recorder, "m", engine.name)
        finally:
            await recorder.drain()

    outcome = asyncio.run(go())
    if max_tokens is None:  # the default room holds the whole 1,000-token answer
        assert outcome.finish_reason == "stop" and outcome.details["stop_reason"] == "finished"
        assert outcome.answer_tokens == len(LONG_ANSWER) and outcome.content.endswith("\\boxed{42}")
    else:  # 10 tokens of reasoning leave 390 for the answer: cut, and the client is told
        assert outcome.finish_reason == "length" and outcome.details["stop_reason"] == "answer_length"
        assert outcome.answer_tokens == 390 and outcome.reasoning_tokens == 10
        assert outcome.content == ("word " * 390).strip()


def test_the_answer_option_reaches_the_program_and_a_bad_one_is_refused() -> None:
    assert plan("cot", certaindex={"answer": "model"}).cot.answer == "model"
    assert plan("cot").cot.answer == "boxed"
    assert plan("cot", max_tokens=77).cot.max_tokens == 77
    with pytest.raises(ProxyError) as refused:
        plan("cot", certaindex={"answer": "essay"})
    assert refused.value.status == 400 and "certaindex.answer" in str(refused.value.message)


# -- over HTTP: the fake upstream, and the replay server's recorded answers -----------------------


def test_answer_model_through_the_proxy() -> None:
    from tests.misbehaving_upstream import FakeUpstream
    from tests.test_server import QUESTION as CHAT, start_stack

    stack, contexts = start_stack(FakeUpstream())
    try:
        client = stack.client()
        reply = client.chat.completions.create(model="fake-reasoner", messages=CHAT,
                                               extra_body={"certaindex": {"answer": "model"}})
        info, parts = reply.model_extra["certaindex"], reply.usage.model_extra["certaindex"]
        assert info["stop_reason"] == "certain" and reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].message.content == "The answer is \\boxed{42}."
        assert parts["answer_tokens"] == 4 and reply.usage.completion_tokens == sum(parts.values())
        [asked] = [r for r in stack.upstream.requests if r["kind"] == "answer"]
        assert asked["max_tokens"] == DEFAULT_ANSWER_TOKENS
        cut = client.chat.completions.create(model="fake-reasoner", messages=CHAT,
                                             extra_body={"certaindex": {"answer": "model", "answer_tokens": 2}})
        assert cut.choices[0].finish_reason == "length"
        assert cut.model_extra["certaindex"]["stop_reason"] == "answer_length"
        assert cut.choices[0].message.content == "The answer is"
        stream = client.chat.completions.create(model="fake-reasoner", messages=CHAT, stream=True,
                                                extra_body={"certaindex": {"answer": "model", "answer_tokens": 2}})
        pieces = [c for event in stream for c in event.choices]
        assert "".join(c.delta.content or "" for c in pieces) == "The answer is"
        assert [c.finish_reason for c in pieces if c.finish_reason] == ["length"]
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


def test_a_long_recorded_answer_comes_through_the_proxy_whole(tmp_path) -> None:
    # serve in front of replay-server, policy full, on a recorded R1-7B trajectory whose answer after
    # </think> is 319 tokens (the old 256-token room cut it and still said "stop")
    import sys
    from pathlib import Path

    import httpx

    from certaindex.traces.governor import read_governor
    from certaindex.traces.tokenmap import quicktok_available
    from tests.conftest import free_port, server_process

    if not quicktok_available("qwen3"):
        pytest.skip("quicktok-v1 not installed (tokenizer extra)")
    root = Path(__file__).resolve().parents[1]
    sample = root / "src" / "certaindex" / "data" / "governor_sample"
    cost = root / "benchmarks" / "results" / "gpu" / "cost-model-h100-qwen2.5-7b.json"
    traj = [t for run in read_governor(sample) for t in run.trajectories][46]
    recorded = traj.full_text.split("</think>", 1)[1].strip()
    replay_port, proxy_port = free_port(), free_port()
    replay_url, url = f"http://127.0.0.1:{replay_port}", f"http://127.0.0.1:{proxy_port}"
    replay_args = [sys.executable, "-m", "certaindex.cli", "replay-server", str(sample), "--port", str(replay_port),
                   "--speed", "10", "--cost-model", str(cost)]
    serve_args = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"{replay_url}/v1",
                  "--port", str(proxy_port), "--budget", "16384", "--log-level", "warning",
                  "--model", traj.model_name]
    with server_process(replay_args, tmp_path / "replay.log", f"{replay_url}/health", "certaindex replay-server"), \
            server_process(serve_args, tmp_path / "proxy.log", f"{url}/health", "certaindex serve"):
        def ask(**body) -> dict:
            return httpx.post(f"{url}/v1/chat/completions", timeout=300, json={
                "model": traj.model_name, "messages": [{"role": "user", "content": traj.problem}],
                "certaindex": {"policy": "full"}, **body}).json()

        whole = ask()
        parts = whole["usage"]["certaindex"]
        assert whole["certaindex"]["stop_reason"] == "finished" and whole["choices"][0]["finish_reason"] == "stop"
        assert parts["answer_tokens"] > 256
        assert whole["choices"][0]["message"]["content"] == recorded
        cut = ask(max_tokens=parts["reasoning_tokens"] + 100)
        assert cut["certaindex"]["stop_reason"] == "answer_length" and cut["choices"][0]["finish_reason"] == "length"
        assert cut["usage"]["certaindex"]["answer_tokens"] == 100
        assert recorded.startswith(cut["choices"][0]["message"]["content"])


def test_a_programs_scheduler_budget_holds_its_answer_within_max_tokens() -> None:
    from certaindex.scheduler.budgets import program_budget

    free = CoTConfig(budget=100, probe_interval=10, probe_tokens=20)
    bounded = CoTConfig(budget=100, probe_interval=10, probe_tokens=20, max_tokens=100)
    assert program_budget(free) == 100 + free.max_side_tokens + DEFAULT_ANSWER_TOKENS
    assert program_budget(bounded) == 100 + bounded.max_side_tokens + 100
