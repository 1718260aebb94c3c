"""A fallback named in a relayed upstream answer: chat completions and their chunks get the note,
everything else passes byte for byte, and a stream is passed on event by event."""

from __future__ import annotations

import asyncio
import json

from certaindex.server.annotate import annotate_body, annotate_event, annotate_events

NOTE = {"policy": "off", "fallback": "the request uses stop"}


def test_a_completion_gets_the_note_at_the_top_and_in_its_usage():
    body = json.dumps({"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2}}).encode()
    out = json.loads(annotate_body(body, NOTE))
    assert out["certaindex"] == NOTE and out["usage"]["certaindex"] == NOTE
    assert out["usage"]["prompt_tokens"] == 3


def test_anything_but_a_chat_completion_passes_unchanged():
    for body in (b'{"error": {"message": "no"}}', b"not json", b"[1, 2]", b'{"a": 1}'):
        assert annotate_body(body, NOTE) == body


def test_only_the_finishing_chunk_and_the_usage_chunk_of_a_stream_get_the_note():
    middle = b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"},"finish_reason":null}]}\r\n\r\n'
    assert annotate_event(middle, NOTE) == middle
    last = annotate_event(b'data: {"object":"chat.completion.chunk","choices":[{"finish_reason":"stop"}]}\n\n', NOTE)
    assert last.endswith(b"\n\n") and json.loads(last[6:])["certaindex"] == NOTE
    usage = annotate_event(b'data: {"object":"chat.completion.chunk","choices":[],"usage":{"total_tokens":5}}\n\n', NOTE)
    assert json.loads(usage[6:])["usage"]["certaindex"] == NOTE
    for other in (b"data: [DONE]\n\n", b": keep-alive\n\n", b'data: {"error": {"message": "x"}}\n\n'):
        assert annotate_event(other, NOTE) == other


def test_a_stream_is_passed_on_event_by_event_across_piece_boundaries():
    events = [b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n',
              b'data: {"object":"chat.completion.chunk","choices":[{"delta":{},"finish_reason":"stop"}]}\n\n',
              b"data: [DONE]\n\n"]
    raw = b"".join(events)

    async def pieces():
        for i in range(0, len(raw), 7):  # cut anywhere, even inside an event
            yield raw[i:i + 7]

    async def collect() -> list[bytes]:
        return [out async for out in annotate_events(pieces(), NOTE)]

    out = asyncio.run(collect())
    assert len(out) == 3 and out[0] == events[0] and out[2] == events[2]
    assert json.loads(out[1][6:])["certaindex"] == NOTE
