"""The proxy in front of a real engine: llama-cpp-python's OpenAI server with the real model, and
``certaindex serve`` started as a user would, called with the official ``openai`` client."""

from __future__ import annotations

import sys

import httpx
import openai
import pytest

from tests.conftest import UTF8_SLACK, free_port, server_process

pytestmark = pytest.mark.model

GREEDY = '{"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}'
QUESTION = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have? "
             "Put the final answer in \\boxed{}."}]


@pytest.fixture(scope="module")
def proxy(llama_server: str, tmp_path_factory: pytest.TempPathFactory):
    """``certaindex serve`` in front of the real server, as its own process."""
    port = free_port()
    log = tmp_path_factory.mktemp("proxy") / "proxy.log"
    args = [sys.executable, "-m", "certaindex.cli", "serve", "--upstream", f"{llama_server}/v1",
            "--port", str(port), "--policy", "cot", "--budget", "96", "--probe-interval", "16", "--k", "2",
            "--extra-body", GREEDY]
    url = f"http://127.0.0.1:{port}"
    with server_process(args, log, f"{url}/health", "certaindex serve"):
        yield url, log


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_openai_client_gets_an_early_exit_answer_from_a_real_engine(proxy):
    url, _ = proxy
    reply = client(url).chat.completions.create(model="smollm2-135m-instruct", messages=QUESTION, temperature=0)
    info = reply.model_extra["certaindex"]
    usage = reply.usage
    details = usage.model_extra["certaindex"]
    assert info["policy"] == "cot" and info["stop_reason"] in ("certain", "finished", "budget")
    # Only what holds for any text the model writes (it moves with the CPU and the cache state).
    assert 0 <= details["reasoning_tokens"] <= 96 + UTF8_SLACK
    assert usage.completion_tokens == (details["reasoning_tokens"] + details["overrun_tokens"]
                                       + details["probe_tokens"] + details["trial_tokens"] + details["answer_tokens"])
    assert usage.prompt_tokens > 10  # counted by the real engine
    if info["stop_reason"] == "certain":  # k=2: two agreeing probes, before the budget ran out
        assert details["reasoning_tokens"] < 96 and info["probes"] >= 2
    assert isinstance(reply.choices[0].message.content, str)
    assert isinstance(reply.choices[0].message.model_extra["reasoning_content"], str)


def test_streaming_from_a_real_engine(proxy):
    url, _ = proxy
    stream = client(url).chat.completions.create(
        model="smollm2-135m-instruct", messages=QUESTION, temperature=0, stream=True,
        stream_options={"include_usage": True})
    reasoning_pieces, finish, usage, info = 0, None, None, None
    for piece in stream:
        usage = piece.usage or usage
        for choice in piece.choices:
            if (choice.delta.model_extra or {}).get("reasoning_content"):
                reasoning_pieces += 1
            if choice.finish_reason:
                finish, info = choice.finish_reason, piece.model_extra.get("certaindex")
    reasoning_tokens = usage.model_extra["certaindex"]["reasoning_tokens"]
    # Relayed token by token while the engine generated (a piece per reasoning token, give or take
    # the pieces that carry no text).
    assert reasoning_pieces > 3 or reasoning_tokens <= 3
    assert finish in ("stop", "length") and info["stop_reason"] in ("certain", "finished", "budget")
    assert usage.completion_tokens >= reasoning_tokens >= 0
    # llama-cpp-python's streams carry no usage: the prompt is counted by the server's tokenizer.
    assert usage.prompt_tokens > 10


def test_policy_off_reaches_the_real_engine_untouched(proxy):
    url, _ = proxy
    reply = client(url).chat.completions.create(
        model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
        extra_body={"certaindex": {"policy": "off"}})
    assert not reply.id.startswith("chatcmpl-cdx")  # the engine's own response object
    assert reply.usage.completion_tokens <= 8 + UTF8_SLACK
    assert "certaindex" not in (reply.model_extra or {})


def test_metrics_and_health_of_a_real_stack(proxy):
    url, log = proxy
    assert httpx.get(f"{url}/health").json()["upstream_reachable"] is True
    metrics = httpx.get(f"{url}/metrics").text
    assert "certaindex_requests_total" in metrics and "certaindex_tokens_total" in metrics
    assert QUESTION[0]["content"][:20] not in log.read_text()  # prompts are not logged by default


@pytest.fixture(scope="module")
def embedded_proxy(embedded_engine):
    """The proxy with no upstream: the embedded engine serves the chat requests in process."""
    from certaindex.programs.cot import CoTConfig
    from certaindex.server.app import create_app
    from certaindex.server.settings import ServerSettings
    from tests.misbehaving_upstream import serve_in_thread

    settings = ServerSettings(policy="cot", cot=CoTConfig(budget=64, probe_interval=16, k=2))
    with serve_in_thread(create_app(settings, engine=embedded_engine)) as url:
        yield url


def test_embedded_engine_serves_early_exit_and_plain_chat(embedded_proxy):
    chat = client(embedded_proxy).chat.completions
    reply = chat.create(model="any", messages=QUESTION, temperature=0)
    info = reply.model_extra["certaindex"]
    assert info["policy"] == "cot" and info["stop_reason"] in ("certain", "finished", "budget")
    details = reply.usage.model_extra["certaindex"]
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.completion_tokens == (details["reasoning_tokens"] + details["probe_tokens"]
                                              + details["trial_tokens"] + details["answer_tokens"])
    stream = chat.create(model="any", messages=QUESTION, temperature=0, stream=True,
                         stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c for piece in chunks for c in piece.choices]
    reasoning_tokens = next(p.usage for p in chunks if p.usage).model_extra["certaindex"]["reasoning_tokens"]
    assert sum(1 for c in pieces if (c.delta.model_extra or {}).get("reasoning_content")) > 3 or reasoning_tokens <= 3
    assert pieces[-1].finish_reason in ("stop", "length")
    plain = chat.create(model="any", messages=[{"role": "user", "content": "Say hello."}], max_tokens=5,
                        temperature=0, extra_body={"certaindex": {"policy": "off"}})
    assert plain.model_extra["certaindex"]["policy"] == "off" and plain.usage.completion_tokens <= 5 + UTF8_SLACK
    # Streamed, policy off: the tokens arrive as llama.cpp generates them, not gathered into one chunk.
    stream = chat.create(model="any", messages=[{"role": "user", "content": "Count from 1 to 30."}], max_tokens=24,
                         temperature=0, stream=True, stream_options={"include_usage": True},
                         extra_body={"certaindex": {"policy": "off"}})
    content_pieces, usage, finish = 0, None, None
    for piece in stream:
        usage = piece.usage or usage
        for c in piece.choices:
            content_pieces += bool(c.delta.content)
            finish = c.finish_reason or finish
    assert usage is not None and 0 < usage.completion_tokens <= 24 + UTF8_SLACK and finish in ("stop", "length")
    assert content_pieces <= usage.completion_tokens
    if usage.completion_tokens >= 4:
        assert content_pieces >= 2
    models = client(embedded_proxy).models.list()
    assert len(models.data) == 1
    assert httpx.post(f"{embedded_proxy}/v1/completions", json={"prompt": "x"}).status_code == 404


def test_embedded_proxy_with_a_trial_profile_gets_logprobs(model_path, monkeypatch):
    """``serve`` with no upstream and a profile that reads DEER trials (as solve does): the engine
    the app builds itself keeps token logprobs, early-exit chat runs with that profile, and a trial
    (the reasoning plus the profile's suffix, greedy, logprobs=1) gets its logprobs back."""
    import argparse
    import asyncio

    from certaindex.cli.serve import add_serve_subcommand, settings_from_args
    from certaindex.core.answers import canonical_answer
    from certaindex.core.exit_score import LiveScore, read_trial
    from certaindex.engines.base import GenerationRequest
    from certaindex.server import app as app_module
    from tests.misbehaving_upstream import serve_in_thread

    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    args = parser.parse_args(["serve", "--model", str(model_path), "--profile", "r1-distill-qwen",
                              "--policy", "cot", "--budget", "64"])
    settings = settings_from_args(args)
    assert settings.embedded_logprobs and settings.cot.reads_trials
    built = []
    real_make_engine = app_module.make_engine

    def recording_make_engine(*a, **kw):
        built.append(real_make_engine(*a, **kw))
        return built[-1]

    monkeypatch.setattr(app_module, "make_engine", recording_make_engine)
    with serve_in_thread(app_module.create_app(settings)) as url:
        (engine,) = built
        assert engine.returns_logprobs is True
        reply = client(url).chat.completions.create(model="any", messages=QUESTION, temperature=0)
        info = reply.model_extra["certaindex"]
        details = reply.usage.model_extra["certaindex"]
        assert info["policy"] == "cot" and info["stop_reason"] in ("certain", "finished", "budget")
        assert 0 <= details["reasoning_tokens"] <= 64 + UTF8_SLACK
        assert reply.usage.completion_tokens == (details["reasoning_tokens"] + details["overrun_tokens"]
                                                 + details["probe_tokens"] + details["trial_tokens"] + details["answer_tokens"])
        live = LiveScore(settings.cot.certainty, canonical_answer)
        trial = asyncio.run(engine.generate(GenerationRequest(
            prompt=engine.render_chat(QUESTION) + "Tom has 7 apples." + live.trial_suffix,
            max_tokens=live.trial_tokens, temperature=0.0, logprobs=1)))
    choice = trial.first
    assert choice.logprobs is not None and 0 <= choice.completion_tokens <= live.trial_tokens
    assert len(choice.logprobs) <= choice.completion_tokens + UTF8_SLACK
    assert len(choice.logprobs) >= 1 or choice.completion_tokens == 0  # a token each, unless the model ended at once
    assert all(isinstance(t.token, str) and t.logprob <= 0.0 for t in choice.logprobs)
    reading = read_trial([t.token for t in choice.logprobs], [t.logprob for t in choice.logprobs])
    assert 0.0 <= reading.confidence <= 1.0 and 0.0 <= reading.min_prob <= 1.0
