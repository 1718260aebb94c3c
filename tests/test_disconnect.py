"""A client that leaves cancels its generation, on every path of ``certaindex serve``: policies off,
full, cot and sc; streaming or not; an HTTP upstream or the embedded engine.

The client is a raw socket that sends its request, waits until the engine is generating for it,
and closes: nothing here depends on how fast the engine is. What must follow:
- HTTP upstream (tests/misbehaving_upstream.py's FakeUpstream, a fake that sees its client leave):
  the upstream sees the proxy leave mid-generation, nothing is left in flight, the proxy frees the
  request's slot, and the next request is served;
- embedded engine (the real model): llama.cpp's run is cut short (the engine counts it), nothing is
  left generating, and the next request is served. Only what holds for any text the model writes.
The bounds on waiting (30-60 s) are generous: a broken path keeps generating for minutes.
"""

from __future__ import annotations

import json
import socket
from dataclasses import replace
from urllib.parse import urlparse

import httpx
import pytest

from certaindex.programs.cot import CoTConfig
from tests.misbehaving_upstream import FakeUpstream, serve_in_thread
from tests.test_server import COT, start_stack, wait_until
from tests.conftest import UTF8_SLACK

POLICIES = ["off", "full", "cot", "sc"]
LONG_STORY = [{"role": "user", "content": "Write a very long story about a dragon who learns to count."}]


def send_and_leave(url: str, body: dict, generating) -> None:
    """POST a chat request from a raw socket, wait until ``generating()`` is true, then hang up."""
    parsed = urlparse(url)
    data = json.dumps(body).encode()
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parsed.hostname}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n").encode()
    with socket.create_connection((parsed.hostname, parsed.port)) as sock:
        sock.sendall(head + data)
        assert wait_until(generating, timeout=60), "the engine never started generating for the request"


def body(policy: str, stream: bool, max_tokens: int) -> dict:
    return {"model": "m", "messages": LONG_STORY, "stream": stream, "max_tokens": max_tokens,
            "certaindex": {"policy": policy}}


# -- an HTTP upstream ------------------------------------------------------------------------------


@pytest.fixture
def http_stack():
    upstream = FakeUpstream(token_delay_s=0.05, chat_tokens=4000)  # 200 s of generation for nobody
    built, contexts = start_stack(upstream, cot=replace(COT, budget=4000, probe_interval=2000),
                                  upstream_timeout_s=600.0)
    try:
        yield built
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_client_that_leaves_cancels_the_upstream_generation(http_stack, policy: str, stream: bool) -> None:
    upstream = http_stack.upstream
    send_and_leave(http_stack.url, body(policy, stream, 3000), lambda: upstream.in_flight >= 1)
    assert wait_until(lambda: upstream.abandoned >= 1 and upstream.in_flight == 0, timeout=30), (
        f"the upstream is still generating ({upstream.in_flight} in flight, {upstream.abandoned} abandoned)")
    # The slot is freed only once the program task has ended: it can send nothing more upstream.
    assert wait_until(lambda: http_stack.admission.active == 0, timeout=30)
    sent = len(upstream.requests) + len(upstream.chat_bodies)
    reply = httpx.post(f"{http_stack.url}/v1/chat/completions", timeout=60, json={
        "model": "m", "messages": LONG_STORY, "max_tokens": 8,
        "certaindex": {"policy": "cot", "budget": 8, "probe_interval": 4}})
    assert reply.status_code == 200
    assert len(upstream.requests) + len(upstream.chat_bodies) > sent  # served by the upstream
    assert "certaindex_client_disconnects_total 1.0" in httpx.get(f"{http_stack.url}/metrics").text


# -- the embedded engine -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded_stack(embedded_engine):
    from certaindex.server.app import create_app
    from certaindex.server.settings import ServerSettings

    # Long reasoning chunks and samples, so a request is mid-generation when its client leaves.
    settings = ServerSettings(cot=CoTConfig(budget=3000, probe_interval=1000, k=2))
    with serve_in_thread(create_app(settings, engine=embedded_engine)) as url:
        yield url, embedded_engine


@pytest.mark.model
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_client_that_leaves_cancels_the_embedded_generation(embedded_stack, policy: str, stream: bool) -> None:
    url, engine = embedded_stack
    assert wait_until(lambda: engine.generating == 0, timeout=60)
    before = engine.stopped_early
    send_and_leave(url, body(policy, stream, 3000), lambda: engine.generating >= 1)
    assert wait_until(lambda: engine.generating == 0 and engine.stopped_early > before, timeout=60), (
        f"llama.cpp is still generating for a client that left ({engine.generating} running)")
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=120, json={
        "model": "m", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
        "certaindex": {"policy": "off"}})
    assert reply.status_code == 200
    assert reply.json()["usage"]["completion_tokens"] <= 4 + UTF8_SLACK


# -- policy off on the embedded engine without max_tokens ------------------------------------------


def test_policy_off_on_the_embedded_engine_caps_a_request_without_max_tokens() -> None:
    """Not to the end of the context window: ServerSettings.plain_max_tokens (docs/server.md)."""
    from certaindex.server.app import create_app
    from certaindex.server.settings import ServerSettings
    from tests.fakes import ScriptedFakeEngine

    fake = ScriptedFakeEngine(reasoning=["hello "] * 3, name="embedded:fake")
    settings = ServerSettings(plain_max_tokens=77)
    with serve_in_thread(create_app(settings, engine=fake)) as url:
        for extra, cap in (({}, 77), ({"max_tokens": 5}, 5)):
            reply = httpx.post(f"{url}/v1/chat/completions", timeout=30, json={
                "model": "m", "messages": LONG_STORY, "certaindex": {"policy": "off"}, **extra})
            assert reply.status_code == 200, reply.text
            assert fake.calls[-1].max_tokens == cap
