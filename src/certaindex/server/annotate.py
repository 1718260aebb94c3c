"""Naming a fallback in an answer relayed from the upstream.

A chat request certaindex would have taken over but passes through instead (it uses ``stop``,
``n`` or tools; it holds no question the programs can take) is answered by the upstream. So that
the fallback is never silent, the relayed chat completion says so as the proxy's own answers do:
a top-level ``certaindex`` object and ``usage.certaindex`` (``{"policy": "off", "fallback": why}``).
In a stream, the chunk with a ``finish_reason`` carries ``certaindex`` and a usage chunk carries
``usage.certaindex``. Anything that is not a chat completion (an error, other JSON) is relayed as it is.
"""

from __future__ import annotations

import json
import re
from typing import Any, AsyncIterator

_EVENT_END = re.compile(rb"\r?\n\r?\n")


def annotate_completion(obj: Any, note: dict[str, Any]) -> bool:
    """Add ``note`` to one chat completion (or chunk) object in place; False if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("choices"), list):
        return False
    changed = False
    if obj.get("object") != "chat.completion.chunk" or any(
            isinstance(c, dict) and c.get("finish_reason") for c in obj["choices"]):
        obj["certaindex"] = {**note}
        changed = True
    usage = obj.get("usage")
    if isinstance(usage, dict):
        extra = usage.get("certaindex") if isinstance(usage.get("certaindex"), dict) else {}
        usage["certaindex"] = {**extra, **note}
        changed = True
    return changed


def annotate_body(body: bytes, note: dict[str, Any]) -> bytes:
    """A whole JSON chat completion with ``note`` added (any other body unchanged)."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return body
    return json.dumps(obj).encode() if annotate_completion(obj, note) else body


def annotate_event(event: bytes, note: dict[str, Any]) -> bytes:
    """One server-sent event (with its blank-line end) with ``note`` added to a chat chunk in it."""
    text = event.rstrip(b"\r\n")
    if not text.startswith(b"data:") or b"\n" in text:
        return event
    try:
        obj = json.loads(text[len(b"data:"):])
    except (ValueError, RecursionError):
        return event
    if not annotate_completion(obj, note):
        return event
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + event[len(text):]


async def annotate_events(pieces: AsyncIterator[bytes], note: dict[str, Any]) -> AsyncIterator[bytes]:
    """An event stream with ``note`` added, passed on event by event as each one completes."""
    buffer = b""
    async for piece in pieces:
        buffer += piece
        while (end := _EVENT_END.search(buffer)) is not None:
            event, buffer = buffer[:end.end()], buffer[end.end():]
            yield annotate_event(event, note)
    if buffer:
        yield buffer


async def annotate_whole(pieces: AsyncIterator[bytes], note: dict[str, Any]) -> AsyncIterator[bytes]:
    """A JSON body, read whole (a chat completion is small), with ``note`` added."""
    body = b"".join([piece async for piece in pieces])
    yield annotate_body(body, note)
