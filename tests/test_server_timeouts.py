"""A request is answered by its deadline however the upstream misbehaves, and every failure ends
with a complete response on a connection that survives (server/guard.py). Real sockets: a hung
upstream that accepts connections and never answers, and small Starlette apps behind the guard.
No timing assertions: outcomes, with bounds far above the deadlines."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from certaindex.engines.deadline import remaining_s
from certaindex.engines.http import HTTPEngine
from certaindex.server.app import create_app
from certaindex.server.guard import RequestGuard
from certaindex.server.settings import ServerSettings
from tests.misbehaving_upstream import HungUpstream, serve_in_thread

QUESTION = [{"role": "user", "content": "What is 6 * 7?"}]
GENEROUS_S = 30.0  # far above every deadline here: passing means "answered", not "fast"


def events(text: str) -> list[str]:
    return [line[len("data: "):] for line in text.splitlines() if line.startswith("data: ")]


# -- the guard on its own -------------------------------------------------------------------------

async def boom(request):
    raise ZeroDivisionError("a bug")


async def sleepy(request):
    await asyncio.sleep(3600)


async def deadline_seen(request):
    return JSONResponse({"remaining": remaining_s()})


async def stream_then_hang(request):
    async def body():
        yield b'data: {"choices": []}\n\n'
        await asyncio.sleep(3600)
    return StreamingResponse(body(), media_type="text/event-stream")


async def stream_then_fail(request):
    async def body():
        yield b'data: {"choices": []}\n\n'
        raise ZeroDivisionError("a bug mid-stream")
    return StreamingResponse(body(), media_type="text/event-stream")


def guarded(timeout_s: float) -> Starlette:
    """Routes behind the guard, placed as the proxy places it (inside Starlette's error middleware)."""
    return Starlette(routes=[Route(path, handler) for path, handler in (
        ("/boom", boom), ("/sleepy", sleepy), ("/deadline", deadline_seen),
        ("/stream-hang", stream_then_hang), ("/stream-fail", stream_then_fail))],
        middleware=[Middleware(RequestGuard, timeout_s=timeout_s, grace_s=0.1)])


def test_a_bug_gives_a_500_and_the_connection_survives():
    with serve_in_thread(guarded(60)) as url, httpx.Client(timeout=GENEROUS_S) as client:
        first = client.get(f"{url}/boom")
        port = first.extensions["network_stream"].get_extra_info("client_addr")[1]
        assert first.status_code == 500
        assert first.json()["error"] == {"message": "internal error: ZeroDivisionError", "type": "server_error",
                                         "param": None, "code": None}
        second = client.get(f"{url}/deadline")
        assert second.status_code == 200
        assert second.extensions["network_stream"].get_extra_info("client_addr")[1] == port
        assert 0 < second.json()["remaining"] <= 60  # the handler sees its request's deadline


def test_a_request_past_its_deadline_gets_a_504():
    with serve_in_thread(guarded(0.5)) as url, httpx.Client(timeout=GENEROUS_S) as client:
        response = client.get(f"{url}/sleepy")
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "request_timeout"
        assert client.get(f"{url}/deadline").status_code == 200  # same client, still served


@pytest.mark.parametrize("path, code", [("/stream-hang", "request_timeout"), ("/stream-fail", None)])
def test_a_started_event_stream_ends_with_an_error_event(path, code):
    with serve_in_thread(guarded(0.5)) as url, httpx.Client(timeout=GENEROUS_S) as client:
        response = client.get(f"{url}{path}")  # a cut chunked body would raise here
        assert response.status_code == 200
        data = events(response.text)
        assert json.loads(data[0]) == {"choices": []}
        assert json.loads(data[-1])["error"]["code"] == code
        assert client.get(f"{url}/deadline").status_code == 200


# -- a hung upstream behind the proxy -------------------------------------------------------------

@pytest.fixture
def hung():
    with HungUpstream() as upstream:
        yield upstream


@pytest.mark.parametrize("extra", [
    {},  # policy auto: the proxy asks the upstream what it serves, and hangs there
    {"stream": True},
    {"certaindex": {"policy": "cot"}},
    {"certaindex": {"policy": "cot"}, "stream": True},
    {"certaindex": {"policy": "off"}},
])
def test_a_hung_upstream_is_answered_by_the_request_deadline(hung, extra):
    settings = ServerSettings(upstream=hung.url, request_timeout_s=1.0)
    with serve_in_thread(create_app(settings)) as url, httpx.Client(timeout=GENEROUS_S) as client:
        started = time.monotonic()
        response = client.post(f"{url}/v1/chat/completions", json={"messages": QUESTION, **extra})
        elapsed = time.monotonic() - started
    assert elapsed < GENEROUS_S
    if response.status_code == 200:  # an event stream had begun: it ends with the error
        error = json.loads(events(response.text)[-1])["error"]
    else:
        assert response.status_code == 504, response.text
        error = response.json()["error"]
    assert error["code"] in ("request_timeout", "upstream_timeout")
    # No retries stacking up connections to a server that hangs: the request's own (setup, then the
    # request) and the proxy's background reads of /v1/models (server/upstream_watch.py) at most.
    assert hung.connections <= 5


@pytest.mark.parametrize("extra, waited_on", [
    # policy auto: the setup read (what the upstream serves) times out, and that is the answer: the
    # request is not then passed through to wait a second header timeout
    ({"stream": True}, "timed out on /v1/models"),
    ({"certaindex": {"policy": "off"}, "stream": True}, "no response headers"),  # straight through
])
def test_a_hung_upstream_gives_a_504_at_the_headers_timeout_well_before_the_request_deadline(hung, extra, waited_on):
    settings = ServerSettings(upstream=hung.url, request_timeout_s=600.0, upstream_headers_timeout_s=0.5)
    with serve_in_thread(create_app(settings)) as url, httpx.Client(timeout=GENEROUS_S) as client:
        response = client.post(f"{url}/v1/chat/completions", json={"messages": QUESTION, **extra})
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "upstream_timeout"
    message = response.json()["error"]["message"]
    assert waited_on in message and ("no response headers" in message) == (waited_on == "no response headers")


def test_a_request_naming_its_policy_does_not_wait_for_the_default_policy_read(hung, monkeypatch):
    from certaindex.server.state import ProxyState

    resolved: list[bool] = []
    original = ProxyState.default_policy

    async def counted(self):
        resolved.append(True)
        return await original(self)

    monkeypatch.setattr(ProxyState, "default_policy", counted)
    settings = ServerSettings(upstream=hung.url, request_timeout_s=600.0, upstream_headers_timeout_s=0.5)
    with serve_in_thread(create_app(settings)) as url, httpx.Client(timeout=GENEROUS_S) as client:
        for policy in ("cot", "off"):
            response = client.post(f"{url}/v1/chat/completions",
                                   json={"messages": QUESTION, "certaindex": {"policy": policy}, "stream": True})
            assert response.status_code in (200, 504), response.text  # 200: a begun stream ends with the error
        assert not resolved
        client.post(f"{url}/v1/chat/completions", json={"messages": QUESTION})
    assert resolved == [True]


def test_retries_stop_at_the_request_deadline():
    """An unreachable engine is retried with backoff only while the deadline leaves time for it."""
    from certaindex.engines.deadline import REQUEST_DEADLINE
    from certaindex.engines.base import EngineError
    from tests.misbehaving_upstream import free_port

    engine = HTTPEngine(f"http://127.0.0.1:{free_port()}", model="m", chat_template="chatml",
                        max_retries=50, backoff_s=0.2)

    async def attempt() -> float:
        REQUEST_DEADLINE.set(time.monotonic() + 0.5)
        started = time.monotonic()
        with pytest.raises(EngineError, match="cannot reach"):
            await engine._request_json("GET", "/v1/models")
        await engine.aclose()
        return time.monotonic() - started

    assert asyncio.run(attempt()) < GENEROUS_S  # 50 retries with doubling backoff would take hours
