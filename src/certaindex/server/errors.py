"""OpenAI-style errors: every failure reaches the client as ``{"error": {...}}`` with a reason."""

from __future__ import annotations

import re
from typing import Any


class ProxyError(Exception):
    """A failure the client must be told about, with the HTTP status and OpenAI error type to use."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> ProxyError:
    return ProxyError(400, message, "invalid_request_error", param=param)


def upstream_failed(message: str) -> ProxyError:
    """The engine behind the proxy failed (unreachable, 5xx after retries, a broken stream)."""
    timed_out = "timed out" in message
    return ProxyError(504 if timed_out else 502, message, "upstream_error",
                      code="upstream_timeout" if timed_out else "upstream_error")


def engine_failure(message: str) -> ProxyError:
    """An engine's failure as the client's error: a request the engine refused (too long, invalid, an
    upstream 4xx) is the client's (400), anything else the upstream's (502, or 504 when it timed out)."""
    if "does not fit the context window" in message:
        return ProxyError(400, f"the prompt is too long for the model: {message}", "invalid_request_error",
                          param="messages", code="context_length_exceeded")
    if _REQUEST_REFUSED.search(message):
        return ProxyError(400, f"the upstream refused the request: {message}", "invalid_request_error")
    return upstream_failed(message)


# An upstream's 4xx blames the request (too long, unknown to a replay server), except 401/403 (the
# proxy's own upstream key), 408 and 429 (the upstream's load): those stay the upstream's failure.
_REQUEST_REFUSED = re.compile(r"HTTP (?!401|403|408|429)4\d\d\b")
