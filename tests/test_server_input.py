"""Client input never gives a 5xx: hostile bodies get a 400 naming the problem, requests the
certaindex programs cannot take are served plainly and say so, and the keep-alive connection
survives every error. Real sockets: the proxy in front of the fake upstream of test_server.py."""

from __future__ import annotations

import json

import httpx
import pytest

from certaindex.programs.cot import CoTConfig
from certaindex.server.app import create_app
from certaindex.server.settings import ServerSettings
from tests.fakes import ScriptedFakeEngine
from tests.misbehaving_upstream import FakeUpstream, serve_in_thread
from tests.test_server import start_stack

GOOD = {"messages": [{"role": "user", "content": "What is 6 * 7?"}]}


@pytest.fixture
def stack():
    built, contexts = start_stack(FakeUpstream(chat_tokens=3))
    try:
        yield built
    finally:
        for ctx in contexts:
            ctx.__exit__(None, None, None)


def local_port(response: httpx.Response) -> int:
    """The client-side port of the connection a response came on (same port: same connection)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("messages, why", [
    ([{"role": "user", "content": "???"}], "no letters or digits"),
    ([{"role": "user", "content": "😀😀"}], "no letters or digits"),
    ([{"role": "user", "content": "   \n"}], "no user message with text"),
    ([{"role": "system", "content": "Be brief."}], "no user message with text"),
    ([{"role": "user", "content": "a" * 100_001}], "the limit is 100000"),
])
def test_a_request_without_a_question_is_served_plainly_and_says_why(stack, messages, why):
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{stack.url}/v1/chat/completions", json={"messages": messages})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "plain upstream answer"
    assert body["certaindex"]["policy"] == "off" and why in body["certaindex"]["fallback"]
    assert body["usage"]["certaindex"]["fallback"].startswith("no question found")
    assert stack.upstream.chat_bodies[-1]["messages"] == messages  # passed on as the client sent it


def test_a_streamed_request_without_a_question_is_relayed_whole_and_says_why(stack):
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{stack.url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "😀😀"}], "stream": True})
    assert response.status_code == 200
    data = events(response.text)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "word word word "
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["certaindex"] == {"policy": "off", "fallback": "no question found: the question has no letters or digits"}
    assert all("certaindex" not in c for c in chunks[:-1])


def test_stop_through_an_upstream_names_the_fallback(stack):
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{stack.url}/v1/chat/completions", json={**GOOD, "stop": ["\n\n"]})
    assert response.status_code == 200
    assert response.json()["usage"]["certaindex"] == {"policy": "off", "fallback": "the request uses stop"}
    assert stack.upstream.chat_bodies[-1]["stop"] == ["\n\n"]


def test_a_request_that_asks_for_early_exit_without_a_question_is_refused(stack):
    with httpx.Client(timeout=30) as client:
        response = client.post(f"{stack.url}/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "???"}], "certaindex": {"policy": "cot"}})
    assert response.status_code == 400
    assert "no question found" in response.json()["error"]["message"]


HOSTILE = {
    "lone surrogate": (b'{"messages": [{"role": "user", "content": "\\ud800 What is 6 * 7?"}]}', "lone surrogate"),
    "surrogate in a key": (b'{"messages": [{"role": "user", "content": "hi"}], "\\udfff": 1}', "lone surrogate"),
    "deep nesting": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested deeper than"),
    "nesting over the limit": (b'{"messages": ' + b"[" * 200 + b"]" * 200 + b"}", "nested deeper than"),
    "huge integer": (b'{"messages": [], "max_tokens": 1' + b"0" * 5000 + b"}", "cannot be read"),
    "malformed deep inside": (b'{"messages": [{"role": "user", "content": "hi"}, {"role": ]}', "not valid JSON"),
    "not utf-8": (b'{"messages": "\xff\xfe"}', "not valid JSON"),
    "not an object": (b"[1, 2]", "must be a JSON object"),
    "messages not a list": (b'{"messages": {"role": "user"}}', "non-empty list"),
    "role an object": (b'{"messages": [{"role": {"x": 1}, "content": "hi"}]}', "messages[0].role must be one of"),
    "role a list": (b'{"messages": [{"role": ["user"], "content": "hi"}]}', "messages[0].role must be one of"),
    "bad stop": (b'{"messages": [{"role": "user", "content": "hi"}], "stop": [1]}', "'stop' must be"),
}


def test_hostile_bodies_get_a_400_and_the_connection_survives(stack):
    with httpx.Client(timeout=30) as client:
        first = client.post(f"{stack.url}/v1/chat/completions", json=GOOD)
        assert first.status_code == 200
        port = local_port(first)
        for name, (raw, message) in HOSTILE.items():
            response = client.post(f"{stack.url}/v1/chat/completions", content=raw,
                                   headers={"content-type": "application/json"})
            assert response.status_code == 400, (name, response.text)
            assert message in response.json()["error"]["message"], name
            assert local_port(response) == port, f"{name}: the connection was closed"
        oversize = client.post(f"{stack.url}/v1/chat/completions", content=b'{"messages": "' + b"a" * (9 << 20) + b'"}',
                               headers={"content-type": "application/json"})
        assert oversize.status_code == 413 and local_port(oversize) == port
        wrong_method = client.get(f"{stack.url}/v1/chat/completions")
        assert wrong_method.status_code == 405 and local_port(wrong_method) == port
        after = client.post(f"{stack.url}/v1/chat/completions", json=GOOD)
        assert after.status_code == 200 and local_port(after) == port


def test_the_embedded_plain_path_honours_stop_and_refuses_n():
    engine = ScriptedFakeEngine(["step "] * 4, final_reply=("plain answer",))
    settings = ServerSettings(policy="off", cot=CoTConfig(budget=16, probe_interval=4, k=2))
    with serve_in_thread(create_app(settings, engine=engine)) as url, httpx.Client(timeout=30) as client:
        ok = client.post(f"{url}/v1/chat/completions", json={**GOOD, "stop": "\n\n"})
        assert ok.status_code == 200, ok.text
        assert engine.calls[-1].stop == ("\n\n",)
        two = client.post(f"{url}/v1/chat/completions", json={**GOOD, "n": 2})
        assert two.status_code == 400 and two.json()["error"]["param"] == "n"
        assert "one choice per request" in two.json()["error"]["message"]
        tools = client.post(f"{url}/v1/chat/completions", json={**GOOD, "tools": [{"type": "function"}]})
        assert tools.status_code == 400 and tools.json()["error"]["param"] == "tools"
        plain = client.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "???"}],
                                                                  "certaindex": {"policy": "off"}})
        assert plain.status_code == 200 and "fallback" not in plain.json()["usage"]["certaindex"]
