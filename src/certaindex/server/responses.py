"""OpenAI chat completion objects and server-sent-event chunks."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from certaindex.server.chat_programs import ChatOutcome


def new_id() -> str:
    return f"chatcmpl-cdx-{uuid.uuid4().hex[:24]}"


def completion_object(request_id: str, model: str, outcome: ChatOutcome) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": outcome.content, "reasoning_content": outcome.reasoning},
            "finish_reason": outcome.finish_reason,
            "logprobs": None,
        }],
        "usage": outcome.usage(),
        "certaindex": outcome.details,
    }


def chunk(request_id: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
          **extra: Any) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
        **extra,
    }


def usage_chunk(request_id: str, model: str, outcome: ChatOutcome) -> dict[str, Any]:
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": outcome.usage(),
    }


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()
