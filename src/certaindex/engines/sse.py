"""Reading an OpenAI completions event stream in batches.

At a full batch an upstream sends about 19k tokens/s of server-sent events to one proxy (a 7B
replica on an H100, ~128 streams). Reading them line by line (a ``json.loads`` and a piece handed
up the program per event) costs more Python than one process has, so the proxy falls behind the
stream and its exit decisions land thousands of tokens late. Here whatever the socket delivered is
read at once: its complete lines are split in one pass, their JSON payloads decoded by one
``json.loads`` call, and consecutive text pieces of the same shape merged into one
:class:`StreamDelta`. A reader keeping up gets one event per piece as before; one that fell behind
catches up in few large pieces (as vLLM's several tokens an event do), its cost per token falling
as its lag grows.

Token counts: ``token_ids`` where the server reports them, else the logprobs' tokens, else one per
non-empty piece; corrected by the final usage report (a tokens-only piece). Pure logic, no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from certaindex.engines.base import StreamDelta, TokenLogprobs

__all__ = ["SSEError", "SSEReader", "parse_logprobs", "token_ids"]


class SSEError(ValueError):
    """A malformed event, or an error the server reported in the stream."""


def token_ids(raw: Any) -> tuple[int, ...] | None:
    """A list of token ids from a server, or None when it sent none (or something else)."""
    if isinstance(raw, list) and raw and all(isinstance(i, int) for i in raw):
        return tuple(raw)
    return None


def parse_logprobs(raw: Any) -> tuple[TokenLogprobs, ...] | None:
    """Completions logprobs: the legacy parallel lists tokens / token_logprobs / top_logprobs (vLLM,
    SGLang), or a ``content`` list of {token, logprob, top_logprobs: [{token, logprob}]} (llama.cpp's
    server answers /v1/completions in the chat format)."""
    if not raw:
        return None
    if isinstance(raw.get("content"), list):
        return tuple(
            TokenLogprobs(
                token=str(item.get("token", "")),
                logprob=float(item["logprob"]) if item.get("logprob") is not None else 0.0,
                top={str(t.get("token", "")): float(t["logprob"]) for t in item.get("top_logprobs") or []
                     if isinstance(t, dict) and t.get("logprob") is not None},
            )
            for item in raw["content"] if isinstance(item, dict)
        )
    tokens = raw.get("tokens") or []
    token_lps = raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprobs(token=str(token), logprob=float(lp) if lp is not None else 0.0,
                      top={str(k): float(v) for k, v in (top or {}).items()})
        for token, lp, top in zip(tokens, token_lps, tops)
    )


@dataclass
class _Merge:
    """Consecutive text pieces of one shape (with or without ids, with or without logprobs)."""

    texts: list[str] = field(default_factory=list)
    tokens: int = 0
    ids: list[int] | None = None
    logprobs: list[TokenLogprobs] | None = None
    prompt_ids: tuple[int, ...] | None = None

    def fits(self, ids: tuple[int, ...] | None, logprobs: tuple[TokenLogprobs, ...] | None) -> bool:
        return not self.texts or ((self.ids is None) == (ids is None) and (self.logprobs is None) == (logprobs is None))

    def add(self, text: str, tokens: int, ids: tuple[int, ...] | None,
            logprobs: tuple[TokenLogprobs, ...] | None) -> None:
        if not self.texts:
            self.ids = [] if ids is not None else None
            self.logprobs = [] if logprobs is not None else None
        self.texts.append(text)
        self.tokens += tokens
        if self.ids is not None and ids is not None:
            self.ids.extend(ids)
        if self.logprobs is not None and logprobs is not None:
            self.logprobs.extend(logprobs)

    def delta(self) -> StreamDelta:
        return StreamDelta(text="".join(self.texts), tokens=self.tokens,
                           logprobs=tuple(self.logprobs) if self.logprobs is not None else None,
                           token_ids=tuple(self.ids) if self.ids is not None else None, prompt_ids=self.prompt_ids)


class SSEReader:
    """Feed it the bytes of a completions stream as they come; it hands back the pieces they hold.

    ``done`` once ``data: [DONE]`` was read (what follows is ignored); ``finish`` and
    ``prompt_tokens`` as the events reported them; ``counted`` tokens handed out so far."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False
        self.finish: str | None = None
        self.prompt_tokens: int | None = None
        self.counted = 0
        self._prompt_ids: tuple[int, ...] | None = None  # passed on with the next piece
        self._out: list[StreamDelta] = []
        self._merge = _Merge()

    def feed(self, data: bytes) -> list[StreamDelta]:
        """The pieces of every complete line in what was read so far."""
        if self.done:
            return []
        self._buffer += data
        cut = max(self._buffer.rfind(b"\n"), self._buffer.rfind(b"\r"))
        if cut < 0:
            return []
        lines, self._buffer = self._buffer[:cut], self._buffer[cut + 1:]
        return self._read(lines)

    def close(self) -> list[StreamDelta]:
        """The pieces of a last line the stream did not end with a newline."""
        lines, self._buffer = self._buffer, b""
        return [] if self.done or not lines.strip() else self._read(lines)

    def _read(self, lines: bytes) -> list[StreamDelta]:
        payloads = []
        for line in lines.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                break
            payloads.append(payload)
        return self._deltas(_decode(payloads)) if payloads else []

    def _deltas(self, events: list[dict[str, Any]]) -> list[StreamDelta]:
        self._out: list[StreamDelta] = []
        self._merge = _Merge()
        for event in events:
            if event.get("error"):
                raise SSEError(f"reported an error mid-stream: {event['error']}")
            usage = event.get("usage") or {}
            if usage.get("prompt_tokens") is not None:
                self.prompt_tokens = int(usage["prompt_tokens"])
            for raw in event.get("choices") or []:
                self._choice(raw)
            if usage.get("completion_tokens") is not None and int(usage["completion_tokens"]) > self.counted:
                extra = int(usage["completion_tokens"]) - self.counted
                self.counted += extra
                self._flush()
                self._out.append(StreamDelta(text="", tokens=extra))
        self._flush()
        return self._out

    def _flush(self) -> None:
        if self._merge.texts:
            self._out.append(self._merge.delta())
            self._merge = _Merge()

    def _choice(self, raw: dict[str, Any]) -> None:
        text = raw.get("text") or ""
        logprobs = parse_logprobs(raw.get("logprobs"))
        ids = token_ids(raw.get("token_ids"))
        self._prompt_ids = token_ids(raw.get("prompt_token_ids")) or self._prompt_ids
        tokens = len(ids) if ids is not None else len(logprobs) if logprobs is not None else (1 if text else 0)
        self.counted += tokens
        self.finish = raw.get("finish_reason") or self.finish
        if not (text or logprobs or ids):
            return
        if not self._merge.fits(ids, logprobs) or self._prompt_ids is not None:
            self._flush()  # a piece carrying the prompt's ids starts a delta of its own
        if self._prompt_ids is not None:
            self._merge.prompt_ids, self._prompt_ids = self._prompt_ids, None
        self._merge.add(text, tokens, ids, logprobs)


def _decode(payloads: list[bytes]) -> list[dict[str, Any]]:
    """Every payload's JSON object, by one ``json.loads`` of them all; the first bad one named."""
    try:
        events = json.loads(b"[" + b",".join(payloads) + b"]")
    except (json.JSONDecodeError, UnicodeDecodeError):
        events = None
    if not isinstance(events, list) or len(events) != len(payloads) or not all(isinstance(e, dict) for e in events):
        for payload in payloads:  # which one: the slow way, only on a bad batch
            try:
                event = json.loads(payload)
            except (json.JSONDecodeError, UnicodeDecodeError):
                event = None
            if not isinstance(event, dict):
                raise SSEError(f"malformed stream event: {payload[:200].decode(errors='replace')!r}")
        raise SSEError("malformed stream events")
    return events
