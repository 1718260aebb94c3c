"""The proxy against a fake upstream written for these tests: behaviour, faults, bad input, limits.

The official ``openai`` client is the caller wherever a user would use one. The real-engine tests
are in test_server_e2e.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
from dataclasses import replace

import httpx
import openai
import psutil
import pytest

from certaindex.engines.http import HTTPEngine
from certaindex.programs.cot import CoTConfig
from certaindex.server.app import create_app
from certaindex.server.settings import ServerSettings
from tests.misbehaving_upstream import FakeUpstream, free_port, serve_in_thread

COT = CoTConfig(budget=64, probe_interval=4, k=2, probe_tokens=8)
QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]


class Stack:
    """A FakeUpstream and the proxy in front of it, both on loopback."""

    def __init__(self, upstream: FakeUpstream, proxy_url: str, app) -> None:
        self.upstream = upstream
        self.url = proxy_url
        self.app = app

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=kwargs.pop("api_key", "unused"),
                             max_retries=0, timeout=kwargs.pop("timeout", 30), **kwargs)

    @property
    def admission(self):
        return self.app.state.admission


def start_stack(upstream: FakeUpstream, **settings_changes):
    upstream_ctx = serve_in_thread(upstream.app())
    upstream_url = upstream_ctx.__enter__()
    settings = ServerSettings(upstream=upstream_url, policy="cot", cot=COT, upstream_timeout_s=2.0)
    settings = replace(settings, **settings_changes)
    engine = HTTPEngine(upstream_url, backoff_s=0.01, max_retries=1, timeout_s=settings.upstream_timeout_s)
    app = create_app(settings, engine=engine)
    proxy_ctx = serve_in_thread(app)
    proxy_url = proxy_ctx.__enter__()
    return Stack(upstream, proxy_url, app), (proxy_ctx, upstream_ctx)


@pytest.fixture
def stack(request):
    marker = request.node.get_closest_marker("stack")
    kwargs = dict(marker.kwargs) if marker else {}
    upstream = FakeUpstream(**kwargs.pop("upstream", {}))
    built, contexts = start_stack(upstream, **kwargs)
    try:
        yield built
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- early exit through an unmodified OpenAI client --------------------------------------------


@pytest.mark.stack(upstream={"token_delay_s": 0.01})
def test_chat_exits_early_and_reports_every_token(stack):
    reply = stack.client().chat.completions.create(model="fake-reasoner", messages=QUESTION)
    choice = reply.choices[0]
    assert "\\boxed{42}" in choice.message.content
    assert choice.finish_reason == "stop"
    info = reply.model_extra["certaindex"]
    assert info["stop_reason"] == "certain"
    assert info["probes"] == COT.k
    # One upstream stream carried the reasoning; it was closed once the k-th probe agreed.
    chunks = [r for r in stack.upstream.requests if r["kind"] == "chunk"]
    assert len(chunks) == 1 and chunks[0]["stream"] and chunks[0]["max_tokens"] == COT.budget
    assert wait_until(lambda: stack.upstream.active_streams == 0)
    assert stack.upstream.streams_closed_early == 1
    assert choice.message.model_extra["reasoning_content"] == "step " * (COT.k * COT.probe_interval)
    usage = reply.usage
    details = usage.model_extra["certaindex"]
    assert details["reasoning_tokens"] == COT.k * COT.probe_interval  # judged at the probe's position
    assert 0 < details["overrun_tokens"] <= COT.budget - details["reasoning_tokens"]  # streamed meanwhile
    assert details["probe_tokens"] == 2 * COT.k  # each probe answered "42", "}"
    assert usage.completion_tokens == (details["reasoning_tokens"] + details["overrun_tokens"]
                                       + details["probe_tokens"] + details["answer_tokens"])
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_relays_reasoning_then_answer(stack):
    stream = stack.client().chat.completions.create(
        model="fake-reasoner", messages=QUESTION, stream=True, stream_options={"include_usage": True})
    reasoning, content, finish, usage = [], [], None, None
    for piece in stream:
        if piece.usage is not None:
            usage = piece.usage
        for choice in piece.choices:
            extra = choice.delta.model_extra or {}
            if extra.get("reasoning_content"):
                assert not content, "reasoning arrived after the answer"
                reasoning.append(extra["reasoning_content"])
            if choice.delta.content:
                content.append(choice.delta.content)
            finish = choice.finish_reason or finish
    # Token by token, as generated: the reasoning up to the deciding probe, then what the stream
    # generated before it was closed (its overrun, relayed live and counted).
    overrun = usage.model_extra["certaindex"]["overrun_tokens"]
    assert "".join(reasoning) == "step " * (COT.k * COT.probe_interval + overrun)
    assert len(reasoning) == COT.k * COT.probe_interval + overrun
    assert "\\boxed{42}" in "".join(content)
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == COT.k * COT.probe_interval + overrun + 2 * COT.k
    # Reasoning chunks were streamed from the upstream, probes were not.
    assert all(r["stream"] for r in stack.upstream.requests if r["kind"] == "chunk")


@pytest.mark.stack(upstream={"finish_after": 6})
def test_model_that_finishes_by_itself_keeps_its_own_answer(stack):
    reply = stack.client().chat.completions.create(
        model="fake-reasoner", messages=QUESTION, extra_body={"certaindex": {"k": 5}})
    assert reply.model_extra["certaindex"]["stop_reason"] == "finished"
    assert "\\boxed{7}" in reply.choices[0].message.content


def test_request_budget_and_max_tokens_bound_the_reasoning(stack):
    reply = stack.client().chat.completions.create(
        model="fake-reasoner", messages=QUESTION, max_tokens=6, extra_body={"certaindex": {"k": 50}})
    info = reply.model_extra["certaindex"]
    assert info["stop_reason"] == "budget" and info["budget"] == 6
    assert reply.choices[0].finish_reason == "length"  # cut by the budget, and the client is told
    assert reply.usage.model_extra["certaindex"]["reasoning_tokens"] == 6


def test_policy_full_reasons_without_probing(stack):
    reply = stack.client().chat.completions.create(
        model="fake-reasoner", messages=QUESTION, extra_body={"certaindex": {"policy": "full", "budget": 12}})
    assert reply.model_extra["certaindex"]["probes"] == 1  # only the final forced answer
    assert reply.usage.model_extra["certaindex"]["reasoning_tokens"] == 12


# -- passthrough -------------------------------------------------------------------------------


def test_policy_off_passes_the_request_through_untouched(stack):
    reply = stack.client().chat.completions.create(
        model="fake-reasoner", messages=QUESTION, temperature=0.3, max_tokens=77,
        extra_body={"certaindex": {"policy": "off"}, "top_k": 5})
    assert reply.id == "chatcmpl-upstream"
    assert reply.choices[0].message.content == "plain upstream answer"
    sent = stack.upstream.chat_bodies[-1]
    assert sent["messages"] == QUESTION and sent["temperature"] == 0.3 and sent["max_tokens"] == 77
    assert sent["top_k"] == 5 and "certaindex" not in sent
    assert not stack.upstream.requests  # no certaindex program ran


def test_tools_and_images_are_passed_through(stack):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    reply = stack.client().chat.completions.create(model="fake-reasoner", messages=QUESTION, tools=tools)
    assert reply.id == "chatcmpl-upstream"
    image = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                          {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]
    reply = stack.client().chat.completions.create(model="fake-reasoner", messages=image)
    assert reply.id == "chatcmpl-upstream"
    assert stack.upstream.chat_bodies[-1]["messages"] == image


def test_other_endpoints_are_passed_through(stack):
    response = httpx.post(f"{stack.url}/v1/embeddings", json={"input": "x"})
    assert response.status_code == 200 and response.json() == {"path": "/v1/embeddings", "method": "POST"}
    models = stack.client().models.list()
    assert [m.id for m in models.data] == ["fake-reasoner"]


def test_auto_policy_runs_early_exit_only_for_reasoning_models():
    for model, expected_policy in (("deepseek-r1-distill-fake", "cot"), ("plain-chat-model", "off")):
        built, contexts = start_stack(FakeUpstream(model=model), policy="auto")
        try:
            reply = built.client().chat.completions.create(model=model, messages=QUESTION)
            if expected_policy == "cot":
                assert reply.model_extra["certaindex"]["policy"] == "cot"
            else:
                assert reply.id == "chatcmpl-upstream"
        finally:
            for ctx in contexts:
                ctx.__exit__(None, None, None)


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.stack(upstream={"faults": {"chunk": "500"}})
def test_upstream_5xx_gives_a_clean_error(stack):
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(model="m", messages=QUESTION)
    assert info.value.status_code == 502
    assert "HTTP 500" in info.value.message and info.value.body["type"] == "upstream_error"
    assert wait_until(lambda: stack.admission.active == 0)


@pytest.mark.stack(upstream={"faults": {"chunk": "hang"}}, upstream_timeout_s=0.5)
def test_upstream_timeout_gives_504_not_a_hang(stack):
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        stack.client().chat.completions.create(model="m", messages=QUESTION)
    assert info.value.status_code == 504
    assert time.monotonic() - started < 10


def test_refused_connection_gives_502():
    port = free_port()  # nothing listens there
    settings = ServerSettings(upstream=f"http://127.0.0.1:{port}", policy="cot", cot=COT)
    app = create_app(settings, engine=HTTPEngine(f"http://127.0.0.1:{port}", max_retries=0))
    with serve_in_thread(app) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="m", messages=QUESTION)
        assert info.value.status_code == 502 and "cannot reach" in info.value.message
        with pytest.raises(openai.APIStatusError) as info:  # passthrough too
            client.chat.completions.create(model="m", messages=QUESTION, extra_body={"certaindex": {"policy": "off"}})
        assert info.value.status_code == 502
        assert httpx.get(f"{url}/health").status_code == 503


@pytest.mark.parametrize("fault", ["break", "malformed"])
def test_broken_or_malformed_stream_is_an_error_not_an_answer(fault):
    built, contexts = start_stack(FakeUpstream(faults={"chunk": fault}))
    try:
        stream = built.client().chat.completions.create(model="m", messages=QUESTION, stream=True)
        content = []
        with pytest.raises(openai.APIError) as info:
            for piece in stream:
                content += [c.delta.content for c in piece.choices if c.delta.content]
        assert not content  # no answer was presented
        assert "stream" in str(info.value.message)
        assert wait_until(lambda: built.admission.active == 0)
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


@pytest.mark.stack(upstream={"faults": {"probe": "500"}, "finish_after": 10})
def test_failed_probes_fall_back_to_the_full_reasoning_answer(stack):
    reply = stack.client().chat.completions.create(model="m", messages=QUESTION)
    info = reply.model_extra["certaindex"]
    assert info["stop_reason"] == "finished" and info["probe_failures"] == 1
    assert "\\boxed{7}" in reply.choices[0].message.content
    # The main stream went on to the model's end: it was neither waited on nor restarted.
    assert len([r for r in stack.upstream.requests if r["kind"] == "chunk"]) == 1


@pytest.mark.stack(upstream={"faults": {"chunk": "break-once"}, "token_delay_s": 0.01})
def test_a_main_stream_that_breaks_is_resumed_from_its_prefix(stack):
    reply = stack.client().chat.completions.create(model="m", messages=QUESTION)
    info = reply.model_extra["certaindex"]
    assert info["stop_reason"] == "certain" and info["stream_resumes"] == 1
    chunks = [r for r in stack.upstream.requests if r["kind"] == "chunk"]
    assert len(chunks) == 2 and chunks[1]["prompt"] == chunks[0]["prompt"] + "step " * 2  # it broke after 2
    assert chunks[1]["max_tokens"] == COT.budget - 2
    assert reply.choices[0].message.model_extra["reasoning_content"] == "step " * (COT.k * COT.probe_interval)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"model": "m"}).encode(), "'messages' is required"),
        (json.dumps({"model": "m", "messages": []}).encode(), "non-empty"),
        (json.dumps({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}).encode(), "role"),
        (json.dumps({"model": "m", "messages": QUESTION, "max_tokens": 10**9}).encode(), "max_tokens"),
        (json.dumps({"model": "m", "messages": QUESTION, "max_tokens": 0}).encode(), "max_tokens"),
        (json.dumps({"model": "m", "messages": QUESTION, "temperature": "hot"}).encode(), "temperature"),
        (json.dumps({"model": "m", "messages": QUESTION, "frobnicate": 1}).encode(), "frobnicate"),
        (json.dumps({"model": "m", "messages": QUESTION, "certaindex": {"probe_intervall": 8}}).encode(),
         "probe_intervall"),
        (json.dumps({"model": "m", "messages": QUESTION, "certaindex": {"policy": "fast"}}).encode(), "policy"),
        (json.dumps({"model": "m", "messages": QUESTION, "certaindex": {"budget": 0}}).encode(), "budget"),
        (json.dumps({"model": "m", "messages": QUESTION, "tools": [{"type": "function"}],
                     "certaindex": {"policy": "cot"}}).encode(), "tools"),
    ],
)
def test_bad_input_gets_a_400_with_a_reason(stack, body, needle):
    response = httpx.post(f"{stack.url}/v1/chat/completions", content=body,
                          headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert not stack.upstream.requests and not stack.upstream.chat_bodies


@pytest.mark.stack(max_body_bytes=1000)
def test_oversized_body_is_refused(stack):
    response = httpx.post(f"{stack.url}/v1/chat/completions",
                          json={"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]})
    assert response.status_code == 413


# -- security ----------------------------------------------------------------------------------


@pytest.mark.stack(api_key="s3cret")
def test_api_key_is_required_when_set(stack):
    with pytest.raises(openai.AuthenticationError):
        stack.client(api_key="wrong").chat.completions.create(model="m", messages=QUESTION)
    assert httpx.get(f"{stack.url}/metrics").status_code == 401
    reply = stack.client(api_key="s3cret").chat.completions.create(model="m", messages=QUESTION)
    assert "\\boxed{42}" in reply.choices[0].message.content
    assert httpx.get(f"{stack.url}/health").status_code == 200  # health stays open for probes
    # The proxy's key is its own: it is not sent on to the upstream's passthrough.
    stack.client(api_key="s3cret").chat.completions.create(
        model="m", messages=QUESTION, extra_body={"certaindex": {"policy": "off"}})


def test_prompts_are_not_logged_unless_asked(stack, caplog):
    secret = "my-private-question-about-7-times-6"
    with caplog.at_level("DEBUG", logger="certaindex"):
        stack.client().chat.completions.create(model="m", messages=[{"role": "user", "content": secret}])
    assert any("chat policy=cot" in r.getMessage() for r in caplog.records)
    assert not any(secret in r.getMessage() for r in caplog.records)


# -- cancellation, backpressure, load ---------------------------------------------------------


@pytest.mark.stack(upstream={"token_delay_s": 0.05}, cot=replace(COT, probe_interval=40, budget=400))
def test_client_disconnect_aborts_the_upstream_generation(stack):
    with httpx.Client(timeout=30) as client:
        with client.stream("POST", f"{stack.url}/v1/chat/completions",
                           json={"model": "m", "messages": QUESTION, "stream": True}) as response:
            for line in response.iter_lines():
                if "reasoning_content" in line:
                    break  # one reasoning token arrived; now the client goes away
    assert wait_until(lambda: stack.upstream.active_streams == 0)
    assert stack.upstream.streams_closed_early == 1  # the upstream saw its stream closed mid-way
    assert wait_until(lambda: stack.admission.active == 0)
    chunks = [r for r in stack.upstream.requests if r["kind"] == "chunk"]
    assert len(chunks) == 1  # nothing more was asked of the upstream


@pytest.mark.stack(upstream={"token_delay_s": 0.05}, max_concurrency=1, max_queue=0,
                   cot=replace(COT, probe_interval=20, k=2))
def test_full_proxy_answers_429_with_retry_after(stack):
    results = {}

    def slow() -> None:
        results["slow"] = stack.client().chat.completions.create(model="m", messages=QUESTION)

    thread = threading.Thread(target=slow)
    thread.start()
    assert wait_until(lambda: stack.admission.active == 1)
    response = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": "m", "messages": QUESTION})
    assert response.status_code == 429 and response.headers["retry-after"] == "1"
    thread.join(timeout=30)
    assert "\\boxed{42}" in results["slow"].choices[0].message.content
    assert stack.admission.active == 0


def test_metrics_count_requests_tokens_and_stops(stack):
    stack.client().chat.completions.create(model="m", messages=QUESTION)
    text = httpx.get(f"{stack.url}/metrics").text
    assert 'certaindex_requests_total{endpoint="chat",policy="cot",status="200"} 1.0' in text
    assert f'certaindex_tokens_total{{kind="reasoning"}} {float(COT.k * COT.probe_interval)}' in text
    assert 'certaindex_stops_total{reason="certain"} 1.0' in text
    assert "certaindex_requests_in_flight 0.0" in text


@pytest.mark.stack(max_concurrency=64, max_queue=1000, cot=replace(COT, probe_interval=8, k=2))
def test_bounded_load_many_concurrent_streams(stack):
    """300 streaming requests at once: all answered, none lost, slots and memory given back."""
    process = psutil.Process()
    concurrent_requests = 300

    async def one(client: httpx.AsyncClient) -> str:
        async with client.stream("POST", f"{stack.url}/v1/chat/completions",
                                 json={"model": "m", "messages": QUESTION, "stream": True}) as response:
            assert response.status_code == 200
            body = "".join([line async for line in response.aiter_lines()])
        return body

    async def load() -> list[str]:
        limits = httpx.Limits(max_connections=concurrent_requests)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client) for _ in range(concurrent_requests)))

    gc.collect()
    rss_before = process.memory_info().rss
    bodies = asyncio.run(load())
    gc.collect()
    rss_after = process.memory_info().rss
    assert all("[DONE]" in body and "\\\\boxed{42}" in body for body in bodies)
    assert wait_until(lambda: stack.admission.active == 0 and stack.admission.waiting == 0)
    metrics = httpx.get(f"{stack.url}/metrics").text
    assert f'certaindex_requests_total{{endpoint="chat",policy="cot",status="200"}} {float(concurrent_requests)}' in metrics
    # Memory is bounded: a generous ceiling that a leak of per-stream state would still cross.
    assert rss_after - rss_before < 150 * 2**20


def test_several_upstream_replicas_behind_one_proxy():
    """A comma list of upstreams: a program stays on one replica; passthrough skips a dead one."""
    first, second = FakeUpstream(), FakeUpstream()
    with serve_in_thread(first.app()) as url_a, serve_in_thread(second.app()) as url_b:
        dead = f"http://127.0.0.1:{free_port()}"
        settings = ServerSettings(upstream=f"{url_a}/v1,{url_b}/v1,{dead}/v1", policy="cot", cot=COT)
        with serve_in_thread(create_app(settings)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            reply = client.chat.completions.create(model="m", messages=QUESTION)
            assert reply.model_extra["certaindex"]["stop_reason"] == "certain"
            served = [len(first.requests), len(second.requests)]
            assert sorted(served)[0] == 0 and sum(served) == 1 + COT.k  # the stream and its probes on one replica
            for _ in range(3):  # round-robin passthrough, the dead replica skipped
                reply = client.chat.completions.create(
                    model="m", messages=QUESTION, extra_body={"certaindex": {"policy": "off"}})
                assert reply.id == "chatcmpl-upstream"
            assert len(first.chat_bodies) + len(second.chat_bodies) == 3
            assert first.chat_bodies and second.chat_bodies


@pytest.mark.stack(upstream={"finish_after": 6})
def test_self_consistency_policy_stops_sampling_once_the_vote_is_decided(stack):
    reply = stack.client().chat.completions.create(
        model="m", messages=QUESTION, max_tokens=32, extra_body={"certaindex": {"policy": "sc", "samples": 8}})
    info = reply.model_extra["certaindex"]
    assert info["policy"] == "sc" and info["stop_reason"] == "certain"
    assert info["samples"] == 4 < 8  # the first round agreed: no more samples were drawn
    assert len(stack.upstream.requests) == 4
    assert "\\boxed{7}" in reply.choices[0].message.content
    assert reply.usage.completion_tokens == 4 * 7  # per sample: 6 reasoning tokens and the answer


@pytest.mark.stack(upstream={})
def test_self_consistency_with_no_answer_is_not_presented_as_one(stack):
    reply = stack.client().chat.completions.create(
        model="m", messages=QUESTION, max_tokens=8, extra_body={"certaindex": {"policy": "sc", "samples": 4}})
    assert reply.choices[0].finish_reason == "length" and reply.choices[0].message.content == ""
    assert reply.model_extra["certaindex"]["stop_reason"] == "no-answer"


@pytest.mark.stack(upstream={"token_delay_s": 0.05}, cot=replace(COT, probe_interval=40, budget=400))
def test_non_streaming_client_disconnect_cancels_the_program(stack):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{stack.url}/v1/chat/completions", json={"model": "m", "messages": QUESTION}, timeout=0.5)
    assert wait_until(lambda: stack.admission.active == 0)
    requests_at_cancel = len(stack.upstream.requests)
    time.sleep(3)  # a program still running would have asked for its next chunk (2 s each) by now
    assert len(stack.upstream.requests) == requests_at_cancel <= 2
    assert 'certaindex_client_disconnects_total 1.0' in httpx.get(f"{stack.url}/metrics").text


# -- the program-aware scheduler in the proxy -----------------------------------------------------

SIX_SEVEN = [{"role": "user", "content": "What is 6 * 7?"}]
FIVE_EIGHT = [{"role": "user", "content": "What is 5 * 8?"}]


def _two_programs_at_once(stack) -> list[str]:
    """Send two chat requests together; return which program each upstream request served, in order."""

    def ask(messages) -> None:
        stack.client().chat.completions.create(model="m", messages=messages)

    threads = [threading.Thread(target=ask, args=(m,)) for m in (SIX_SEVEN, FIVE_EIGHT)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return ["6*7" if "6 * 7" in r["prompt"] else "5*8" for r in stack.upstream.requests]


def _switches(order: list[str]) -> int:
    return sum(a != b for a, b in zip(order, order[1:]))


@pytest.mark.stack(capacity=1, upstream={"token_delay_s": 0.01})
def test_scheduler_keeps_one_program_on_the_engine_until_it_ends(stack):
    """certaindex (default), capacity 1: a program's next step goes before the other program's
    first, so the engine keeps one program's cached prefix until that program is done."""
    order = _two_programs_at_once(stack)
    assert len(order) == 2 * 2 * COT.k  # each program: k chunks and k probes
    assert _switches(order) == 1, order


@pytest.mark.stack(capacity=1, scheduler="fcfs", upstream={"token_delay_s": 0.01})
def test_fcfs_scheduler_makes_programs_take_turns(stack):
    order = _two_programs_at_once(stack)
    assert len(order) == 2 * 2 * COT.k
    assert _switches(order) >= 3, order


@pytest.mark.stack(engine_priorities=True)
def test_scheduler_priorities_reach_an_upstream_that_takes_them(stack):
    stack.client().chat.completions.create(model="m", messages=QUESTION, extra_body={"certaindex": {"priority": 2}})
    priorities = [r.get("priority") for r in stack.upstream.requests]
    assert priorities and all(isinstance(p, int) for p in priorities), priorities
    stack.upstream.requests.clear()
    stack.client().chat.completions.create(model="m", messages=QUESTION)
    assert max(r["priority"] for r in stack.upstream.requests) < min(priorities)  # class 0 runs before class 2


def test_without_engine_priorities_no_priority_is_sent(stack):
    stack.client().chat.completions.create(model="m", messages=QUESTION, extra_body={"certaindex": {"priority": 2}})
    assert stack.upstream.requests and all("priority" not in r for r in stack.upstream.requests)


@pytest.mark.parametrize("options", [{"priority": 5000}, {"priority": "high"}, {"deadline_s": 0}, {"deadline_s": -3}])
def test_bad_scheduling_options_get_a_400(stack, options):
    response = httpx.post(f"{stack.url}/v1/chat/completions",
                          json={"model": "m", "messages": QUESTION, "certaindex": options})
    assert response.status_code == 400 and next(iter(options)) in response.json()["error"]["message"]


@pytest.mark.stack(scheduler="off")
def test_scheduler_off_serves_the_same_answer(stack):
    reply = stack.client().chat.completions.create(model="m", messages=QUESTION)
    assert "\\boxed{42}" in reply.choices[0].message.content
    assert "certaindex_scheduler_programs" not in httpx.get(f"{stack.url}/metrics").text


def test_scheduler_metrics_are_exported_and_settle(stack):
    stack.client().chat.completions.create(model="m", messages=QUESTION, extra_body={"certaindex": {"deadline_s": 30}})
    text = httpx.get(f"{stack.url}/metrics").text
    for gauge in ("certaindex_scheduler_programs", "certaindex_scheduler_running", "certaindex_scheduler_waiting"):
        assert f"{gauge} 0.0" in text
