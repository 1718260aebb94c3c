"""The one small interface every engine implements.

Programs only ever continue a raw prompt (the chat template already applied), because probing a
chain of thought means continuing *prompt + reasoning so far + probe suffix*, which chat endpoints
cannot express. Engines therefore take text in and give text, token counts and optional top-k
logprobs out.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

from certaindex.engines.context_full import is_context_full


class EngineError(RuntimeError):
    """The engine could not produce a completion (unreachable, failing, misconfigured).

    ``status`` and ``body``: the HTTP status and response text of a server that refused the
    request (None otherwise), so a caller can tell a full context from other failures."""

    def __init__(self, message: str = "", *, status: int | None = None, body: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body

    @property
    def context_full(self) -> bool:
        """The engine refused because its context cannot hold the request (see
        :mod:`certaindex.engines.context_full`)."""
        return is_context_full(f"{self} {self.body or ''}", self.status)


class EngineConfigError(EngineError, ValueError):
    """The engine was named or configured wrongly: a user mistake rather than a failure."""


class BudgetExhausted(EngineError):
    """A scheduler refused the request: the program has no tokens left (programs treat it as their
    own budget running out)."""


@dataclass(frozen=True)
class GenerationRequest:
    """One continuation of a raw prompt.

    ``n`` samples share the prompt, so engines with prefix caching compute it once.
    ``logprobs`` asks for the top-k alternatives of every generated token (None: none).
    """

    prompt: str
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    priority: int | None = None  # for engines that order requests (vLLM: lower runs sooner); others ignore it
    # The prompt as the model's token ids, for engines that take them (``Engine.token_ids``): they
    # continue exactly these tokens instead of re-tokenizing ``prompt`` (which stays, for the rest).
    prompt_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.logprobs is not None and self.logprobs < 1:
            raise ValueError(f"logprobs must be >= 1 or None, got {self.logprobs}")


@dataclass(frozen=True)
class TokenLogprobs:
    """A generated token, its logprob, and the top-k alternatives (token text -> logprob)."""

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Choice:
    text: str
    finish_reason: str  # "stop" (model ended or a stop string hit) or "length" (max_tokens reached)
    completion_tokens: int
    logprobs: tuple[TokenLogprobs, ...] | None = None


@dataclass(frozen=True)
class Completion:
    choices: tuple[Choice, ...]
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        return sum(c.completion_tokens for c in self.choices)

    @property
    def first(self) -> Choice:
        return self.choices[0]


@dataclass(frozen=True)
class StreamDelta:
    """A piece of a streamed completion. ``finish_reason`` is set on the last piece only, and
    ``prompt_tokens`` where the engine reports it (usually on the last piece)."""

    text: str
    tokens: int
    logprobs: tuple[TokenLogprobs, ...] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    token_ids: tuple[int, ...] | None = None  # the ids of this piece's tokens, where the engine reports them
    prompt_ids: tuple[int, ...] | None = None  # the prompt's ids, on the piece that reports them


class Engine(abc.ABC):
    """An inference engine: continue raw prompts, and render chat messages into a raw prompt."""

    #: Human-readable identity, e.g. ``embedded:SmolLM2-135M-Instruct.Q4_1.gguf``.
    name: str = "engine"
    #: True when :meth:`stream` yields tokens as they are generated *and* the engine serves other
    #: requests while a stream is open (HTTP servers): a chain of thought then reasons in one open
    #: stream with probes on the side. False: it reasons in chunks and probes between them.
    concurrent_streams: bool = False
    #: True when :meth:`stream` yields tokens as they are generated (HTTP servers). Full reasoning
    #: (no probes, so no side requests) is then one stream even where requests run one at a time.
    streams_tokens: bool = False
    #: True when the engine reports the token ids it streams and takes token-id prompts
    #: (``GenerationRequest.prompt_ids``, :meth:`tokenize`): probes then continue exactly the
    #: model's tokens rather than re-tokenized text.
    token_ids: bool = False
    #: True when the engine returns per-token logprobs for a request that asks for them
    #: (``GenerationRequest.logprobs``): DEER-style trials read their confidence from them.
    returns_logprobs: bool = False

    async def tokenize(self, text: str) -> tuple[int, ...]:
        """``text``'s token ids, without special tokens (engines with ``token_ids`` only)."""
        raise EngineError(f"{self.name} does not tokenize")

    @abc.abstractmethod
    async def generate(self, request: GenerationRequest) -> Completion:
        """Continue ``request.prompt``. Raises :class:`EngineError` when the engine fails."""

    async def prepare(self) -> None:
        """Resolve what rendering needs (a server's model and chat template) before the first prompt."""

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Stream one completion (``n`` must be 1). Closing the iterator early stops the generation.

        The default streams nothing until the whole completion is ready; engines override it.
        """
        if request.n != 1:
            raise ValueError("stream() takes n=1; start one stream per sample")
        choice = (await self.generate(request)).first
        yield StreamDelta(choice.text, choice.completion_tokens, choice.logprobs, choice.finish_reason)

    @abc.abstractmethod
    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """Apply the model's chat template, ending with the assistant turn opened."""

    async def aclose(self) -> None:
        """Release connections or model memory. Safe to call twice."""

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class EngineView(Engine):
    """One user's view of an engine that many share (a proxied request's meter, a program's
    scheduler session): capabilities, tokenizing and rendering are the inner engine's, and closing
    the view closes nothing. Subclasses add what the view does to generation."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    @property
    def concurrent_streams(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "concurrent_streams", False))

    @property
    def token_ids(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "token_ids", False))

    @property
    def streams_tokens(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "streams_tokens", False))

    @property
    def returns_logprobs(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "returns_logprobs", False))

    async def tokenize(self, text: str) -> tuple[int, ...]:
        return await self.inner.tokenize(text)  # no generation: neither metered nor scheduled

    async def prepare(self) -> None:
        await self.inner.prepare()

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.inner.render_chat(messages)

    async def aclose(self) -> None:
        """The inner engine is shared: its owner closes it, not a view."""
