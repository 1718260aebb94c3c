"""Reading a completions event stream in batches (engines/sse.py): what the socket delivered is
parsed at once and consecutive pieces merged, without changing what the stream says."""

from __future__ import annotations

import json

import pytest

from certaindex.engines.sse import SSEError, SSEReader


def event(text: str = "", ids: list[int] | None = None, finish: str | None = None, **extra) -> bytes:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    choice.update(extra)
    return f"data: {json.dumps({'choices': [choice]})}\n\n".encode()


def usage(completion: int, prompt: int = 7) -> bytes:
    return f"data: {json.dumps({'choices': [], 'usage': {'prompt_tokens': prompt, 'completion_tokens': completion}})}\n\n".encode()


STREAM = (event("Hello", [1], prompt_token_ids=[9, 9]) + event(" wor", [2]) + event("ld", [3]) + event(" again", [4, 5])
          + event("", finish="stop") + usage(5) + b"data: [DONE]\n\n")


def read(chunks: list[bytes]) -> tuple[SSEReader, list]:
    reader, deltas = SSEReader(), []
    for chunk in chunks:
        deltas += reader.feed(chunk)
    deltas += reader.close()
    return reader, deltas


def test_events_read_at_once_merge_into_one_piece_with_every_token_id() -> None:
    reader, deltas = read([STREAM])
    assert reader.done and reader.finish == "stop" and reader.prompt_tokens == 7 and reader.counted == 5
    assert [(d.text, d.tokens, d.token_ids) for d in deltas] == [("Hello world again", 5, (1, 2, 3, 4, 5))]
    assert deltas[0].prompt_ids == (9, 9)  # the prompt's ids ride on the first piece, as one event at a time


@pytest.mark.parametrize("size", [1, 3, 17, 64])
def test_a_stream_cut_anywhere_reads_the_same_text_tokens_and_ids(size: int) -> None:
    reader, deltas = read([STREAM[i:i + size] for i in range(0, len(STREAM), size)])
    assert "".join(d.text for d in deltas) == "Hello world again"
    assert sum(d.tokens for d in deltas) == 5 and [i for d in deltas for i in d.token_ids or ()] == [1, 2, 3, 4, 5]
    assert reader.finish == "stop" and reader.done


def test_pieces_of_another_shape_are_not_merged_and_usage_adds_the_tokens_not_seen() -> None:
    _, deltas = read([event("a", [1]) + event("b") + event("c") + usage(9)])
    assert [(d.text, d.tokens, d.token_ids) for d in deltas] == [("a", 1, (1,)), ("bc", 2, None), ("", 6, None)]


def test_crlf_lines_a_missing_last_newline_and_what_follows_done() -> None:
    raw = event("x", [1]).replace(b"\n", b"\r\n") + b"data: " + json.dumps(
        {"choices": [{"text": "y", "token_ids": [2], "finish_reason": "length"}]}).encode()
    reader, deltas = read([raw])
    assert "".join(d.text for d in deltas) == "xy" and reader.finish == "length" and not reader.done
    reader, deltas = read([event("x", [1]) + b"data: [DONE]\n\n" + event("late", [2])])
    assert [d.text for d in deltas] == ["x"] and reader.done


def test_a_malformed_event_is_named_and_an_error_event_raises() -> None:
    with pytest.raises(SSEError, match=r"malformed stream event: '\{not json'"):
        read([event("a", [1]) + b"data: {not json\n\n"])
    with pytest.raises(SSEError, match="malformed stream event"):
        read([b"data: [1, 2]\n\n"])
    with pytest.raises(SSEError, match="error mid-stream: .*boom"):
        read([event("a", [1]) + f"data: {json.dumps({'error': {'message': 'boom'}})}\n\n".encode()])
