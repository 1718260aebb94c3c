"""Whether an engine's refusal says its context is full.

A server whose context cannot hold the continuation refuses it with a 4xx and its own words
rather than cutting a stream on ``length``; programs treat that refusal, once reasoning was
written, as the engine's own limit (``stop_reason: engine_length``) instead of a failure. Pure
text matching on the messages the engines send (kept as written in their sources):

- llama.cpp's server: ``request (N tokens) exceeds the available context size (M tokens), try
  increasing it`` (type ``exceed_context_size_error``); older builds: ``the request exceeds the
  available context size, try increasing it``
- vLLM: ``This model's maximum context length is M tokens. However, you requested N tokens ...``,
  ``... However, your request has N input tokens ...``, ``'max_tokens' or 'max_completion_tokens'
  is too large: K. This model's maximum context length is M tokens and your request has N input
  tokens ...``, ``The decoder prompt (length N) is longer than the maximum model length of M``
- SGLang: ``The input (N tokens) is longer than the model's context length (M tokens).``,
  ``Requested token count exceeds the model's maximum context length of M tokens ...``
- the embedded engine: ``prompt of N tokens does not fit the context window of M``;
  llama-cpp-python: ``Requested tokens (N) exceed context window of M``
"""

from __future__ import annotations

import re

CONTEXT_FULL = re.compile(
    r"exceeds? the available context size"
    r"|exceed_context_size_error"
    r"|maximum context length"
    r"|longer than the model's context length"
    r"|longer than the maximum model length"
    r"|does not fit the context window"
    r"|exceeds? context window"
    r"|context_length_exceeded",
    re.IGNORECASE,
)


def cut_by_engine(finish_reason: str | None, tokens: int, asked: int) -> bool:
    """True when a generation ended on ``length`` with fewer than the ``asked`` tokens: the engine's
    own limit (its context filled, or a scheduler's allowance capped it), not the request's."""
    return finish_reason == "length" and tokens < asked


def is_context_full(message: str, status: int | None = None) -> bool:
    """True when ``message`` (an engine's error text) says the request does not fit the engine's
    context. ``status``: the HTTP status where one came (only a 4xx refuses a request; None: an
    engine in this process)."""
    if status is not None and not 400 <= status < 500:
        return False
    return CONTEXT_FULL.search(message) is not None


__all__ = ["CONTEXT_FULL", "cut_by_engine", "is_context_full"]
