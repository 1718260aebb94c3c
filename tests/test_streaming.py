"""Streaming on the real engines, and the SSE parser's handling of broken streams."""

from __future__ import annotations

import json

import httpx
import pytest

from certaindex.engines.base import EngineError, GenerationRequest
from certaindex.engines.http import HTTPEngine
from tests.conftest import UTF8_SLACK

SAME_SAMPLING = {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0}


async def collect(stream, limit: int | None = None):
    text, tokens, finish, pieces = "", 0, None, 0
    try:
        async for delta in stream:
            text += delta.text
            tokens += delta.tokens
            finish = delta.finish_reason or finish
            pieces += 1
            if limit is not None and pieces >= limit:
                break
    finally:
        await stream.aclose()
    return text, tokens, finish


@pytest.mark.model
def assert_well_formed(tokens: int, finish: str | None, max_tokens: int) -> None:
    """What holds for any text the model writes: the limit, a finish reason, and "length" only at
    the limit (give or take the bytes of a cut UTF-8 character). (Stream and generate are not compared as text: llama.cpp's greedy output moves with
    its KV-cache state, and the second call reuses the first one's prefix.)"""
    assert 0 <= tokens <= max_tokens + UTF8_SLACK and finish in ("stop", "length")
    if finish == "length":
        assert tokens >= max_tokens


async def test_embedded_stream_is_well_formed_and_stops_when_closed(embedded_engine) -> None:
    prompt = embedded_engine.render_chat([{"role": "user", "content": "Name three colours."}])
    request = GenerationRequest(prompt=prompt, max_tokens=24)
    whole = (await embedded_engine.generate(request)).first
    assert_well_formed(whole.completion_tokens, whole.finish_reason, 24)
    text, tokens, finish = await collect(embedded_engine.stream(request))
    assert_well_formed(tokens, finish, 24)
    assert isinstance(text, str)
    # Closing after three pieces stops llama.cpp and releases the engine for the next call.
    _partial, partial_tokens, _ = await collect(embedded_engine.stream(request), limit=3)
    assert partial_tokens <= 3
    again = (await embedded_engine.generate(request)).first
    assert_well_formed(again.completion_tokens, again.finish_reason, 24)


@pytest.mark.model
async def test_http_stream_against_the_real_server(llama_server: str) -> None:
    async with HTTPEngine(llama_server, chat_template="chatml", extra_body=SAME_SAMPLING) as engine:
        prompt = engine.render_chat([{"role": "user", "content": "Name three colours."}])
        request = GenerationRequest(prompt=prompt, max_tokens=16, logprobs=2)
        whole = (await engine.generate(request)).first
        assert_well_formed(whole.completion_tokens, whole.finish_reason, 16)
        text, tokens, finish = await collect(engine.stream(request))
        assert_well_formed(tokens, finish, 16)
        assert isinstance(text, str)
        _partial, partial_tokens, _ = await collect(engine.stream(request), limit=2)
        assert partial_tokens <= 4


def sse(*events: str) -> bytes:
    return "".join(f"data: {e}\n\n" for e in events).encode()


def mock_engine(body: bytes, status: int = 200) -> HTTPEngine:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m"}]})
        return httpx.Response(status, content=body, headers={"content-type": "text/event-stream"})

    engine = HTTPEngine("http://test", chat_template="chatml")
    engine._client = httpx.AsyncClient(base_url="http://test", transport=httpx.MockTransport(handler))
    return engine


def chunk(text: str, finish: str | None = None) -> str:
    return json.dumps({"choices": [{"text": text, "finish_reason": finish}]})


async def test_stream_parser_counts_tokens_and_uses_the_usage_report() -> None:
    usage = json.dumps({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
    engine = mock_engine(sse(chunk("a"), chunk("b"), chunk("c", "length"), usage, "[DONE]"))
    text, tokens, finish = await collect(engine.stream(GenerationRequest(prompt="p", max_tokens=5)))
    assert (text, tokens, finish) == ("abc", 5, "length")  # two tokens arrived with no text


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (sse(chunk("a"), "{not json"), 200, "malformed stream event"),
        (sse(chunk("a")), 200, "ended before the completion finished"),
        (sse(json.dumps({"error": {"message": "boom"}})), 200, "error mid-stream"),
        (b'{"error": {"message": "model overloaded"}}', 503, "HTTP 503: model overloaded"),
    ],
)
async def test_broken_streams_are_clear_engine_errors(body: bytes, status: int, fragment: str) -> None:
    engine = mock_engine(body, status)
    with pytest.raises(EngineError, match=fragment):
        await collect(engine.stream(GenerationRequest(prompt="p", max_tokens=5)))
