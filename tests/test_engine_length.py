"""A run the engine cut before the reasoning budget (its context full, vLLM's max-model-len, a
recording's cut) is reported as cut: ``stop_reason: engine_length`` and ``finish_reason: length``,
never as finished; the answer written so far is still given and nothing more is asked of the engine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

from certaindex.core.prompting import THINK_CLOSE
from certaindex.programs.cot import CoTConfig, CoTResult, solve_cot
from tests.fakes import ScriptedFakeEngine, cut_fake_engine
from tests.misbehaving_upstream import FakeUpstream
from tests.test_server import Stack, start_stack
from tests.test_shadow import chat, close

QUESTION = "What is six times seven?"
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "certaindex" / "data" / "governor_sample"


def script(n: int) -> list[str]:
    return [f"t{i} " for i in range(n)]


def answer_requests(engine: ScriptedFakeEngine) -> list:
    return [c for c in engine.calls if c.prompt.endswith(THINK_CLOSE + "\n\n")]


# Reasoning that boxes 7 at token 20 and runs on (past any engine's cut at 30).
BOXED_THEN_ON = script(20) + ["so \\boxed{7} ", "then "] + script(200)[22:]


async def solve_cut(engine: ScriptedFakeEngine, config: CoTConfig, **kwargs) -> CoTResult:
    """Solve QUESTION on a scripted engine cut at its ``context_tokens``: the run ends there, as cut."""
    result = await solve_cot(engine, QUESTION, config, **kwargs)
    assert result.stop_reason == "engine_length"
    assert result.reasoning_tokens == engine.context_tokens
    return result


def chat_cut(upstream: FakeUpstream, stream: bool, **settings) -> tuple[dict, Stack, str]:
    """One chat through the proxy to an upstream that cuts at 22 tokens: the reply, the stack and
    the proxy's metrics; the run is reported cut there and no answer is asked of the upstream."""
    stack, contexts = start_stack(upstream, **settings)
    try:
        reply = chat(stack.url, stream=stream)
        metrics = httpx.get(f"{stack.url}/metrics").text
    finally:
        close(contexts)
    assert reply["finish"] == "length"
    assert reply["details"]["stop_reason"] == "engine_length"
    assert reply["usage"]["certaindex"]["reasoning_tokens"] == 22
    assert not [r for r in stack.upstream.requests if r["kind"] == "answer"]
    return reply, stack, metrics


@pytest.mark.parametrize("streaming", [False, True])
async def test_cot_cut_by_the_engine_is_engine_length_with_the_last_probes_answer(streaming: bool) -> None:
    # The probes never agree (each says its position), the engine stops giving tokens at 45.
    result = await solve_cut(cut_fake_engine(45, streaming), CoTConfig(budget=500, probe_interval=10, k=3))
    # no box in the reasoning: the last probe's answer, at the last point before the cut (the
    # chunked path does not probe the end of the chunk the engine cut short at 45 either)
    assert result.probes and result.probes[-1].at_tokens == 40
    assert result.answer == result.probes[-1].answer
    assert f"boxed{{{result.answer}}}" in result.answer_text
    assert result.answer_tokens == 0
    assert len(result.probes) == 4  # no probe after the cut, forced or not


@pytest.mark.parametrize("streaming", [False, True])
async def test_full_reasoning_cut_by_the_engine_answers_from_its_reasoning_and_asks_nothing_more(streaming: bool) -> None:
    engine = ScriptedFakeEngine(reasoning=BOXED_THEN_ON, thinking=True, context_tokens=30, streaming=streaming)
    result = await solve_cut(engine, CoTConfig(budget=1000, probe_interval=10, early_exit=False))
    assert result.answer == "7"
    assert answer_requests(engine) == []  # the context is full: no answer after </think> is asked for
    assert not result.probes  # nor a forced probe
    assert result.total_tokens == 30


async def test_a_cut_the_engine_continues_is_not_its_limit() -> None:
    """A stream cut on length before the budget whose continuation gives tokens (a scheduler's
    allowance) goes on: only a continuation that gives nothing is the engine's limit."""
    engine = ScriptedFakeEngine(reasoning=script(30), thinking=True, streaming=True)
    result = await solve_cot(engine, QUESTION, CoTConfig(budget=1000, probe_interval=10, early_exit=False))
    assert result.stop_reason == "finished"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("policy", ["cot", "full"])
def test_the_proxy_reports_an_engine_cut_as_length(stream: bool, policy: str) -> None:
    chat_cut(FakeUpstream(context_tokens=22, disagreeing_probes=True), stream, policy=policy)


@pytest.mark.parametrize("stream", [False, True])
def test_shadow_reports_an_engine_cut_as_length_and_writes_no_trace(tmp_path, stream: bool) -> None:
    _, _, metrics = chat_cut(FakeUpstream(context_tokens=22, disagreeing_probes=True), stream, policy="full",
                             shadow_dir=str(tmp_path))
    assert 'outcome="written"' not in metrics


def test_replay_server_sample_cut_at_16384_is_reported_cut(tmp_path) -> None:
    """Problem 96 of the shipped sample was recorded cut at 16,384 tokens; behind the replay server
    with serve's default budget (32,768) it is reported cut, with the answer the recording wrote."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from live_vs_offline import free_port, start, stop  # noqa: PLC0415 - the benchmarks' server helpers

    from certaindex.traces.governor import read_governor  # noqa: PLC0415

    traj = next(t for run in read_governor(SAMPLE) for t in run.trajectories if t.problem_id == 96)
    assert traj.finish_reason == "length"
    rport, sport = free_port(), free_port()
    replay = start(["replay-server", str(SAMPLE), "--port", str(rport), "--speed", "1000", "--flush-ms", "0"],
                   tmp_path / "replay.log", f"http://127.0.0.1:{rport}/health")
    try:
        proxy = start(["serve", "--upstream", f"http://127.0.0.1:{rport}/v1", "--port", str(sport),
                       "--policy", "full", "--log-level", "warning"],
                      tmp_path / "serve.log", f"http://127.0.0.1:{sport}/health")
        try:
            body = {"messages": [{"role": "user", "content": traj.problem.strip()}]}
            whole = httpx.post(f"http://127.0.0.1:{sport}/v1/chat/completions", json=body, timeout=300).json()
            streamed = httpx.post(f"http://127.0.0.1:{sport}/v1/chat/completions", json={**body, "stream": True},
                                  timeout=300).text
        finally:
            stop(proxy)
    finally:
        stop(replay)
    assert whole["choices"][0]["finish_reason"] == "length"
    assert whole["certaindex"]["stop_reason"] == "engine_length"
    assert whole["certaindex"]["budget"] == 32768
    assert whole["certaindex"]["answer"] == "2/13"  # what the recorded reasoning wrote last
    assert "boxed{2/13}" in whole["choices"][0]["message"]["content"]
    events = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    finishes = [c["finish_reason"] for e in events for c in e.get("choices", []) if c.get("finish_reason")]
    assert finishes == ["length"]
    assert [e["certaindex"]["stop_reason"] for e in events if "certaindex" in e][-1] == "engine_length"
