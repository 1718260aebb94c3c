"""The deadline of the request being served, visible to every engine call made on its behalf.

The proxy sets it when a request arrives (``server/guard.py``); an engine reads it to cap each
upstream attempt's timeout and to retry only while time is left, so retries cannot stretch a
request past its ``--request-timeout``. A context variable, because engines are shared by all
requests while each request's tasks carry their own context. Outside a request it is unset.
"""

from __future__ import annotations

import time
from contextvars import ContextVar

REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("certaindex_request_deadline", default=None)


def remaining_s() -> float | None:
    """Seconds left (``time.monotonic`` based) before the current request's deadline; None if unset."""
    deadline = REQUEST_DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


def capped(timeout_s: float) -> float:
    """``timeout_s``, shortened to the time left before the current request's deadline (at least 1 ms)."""
    left = remaining_s()
    return timeout_s if left is None else max(0.001, min(timeout_s, left))
