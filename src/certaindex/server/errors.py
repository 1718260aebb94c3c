"""OpenAI-style errors: every failure reaches the client as ``{"error": {...}}`` with a reason."""

from __future__ import annotations

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
