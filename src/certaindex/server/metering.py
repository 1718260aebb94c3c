"""Count what the proxy really asks of its engine, so ``usage`` and ``/metrics`` are honest."""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from certaindex.engines.base import Completion, Engine, GenerationRequest, StreamDelta


@dataclass
class UpstreamUsage:
    """What one proxied request cost the engine: requests sent, prompt tokens sent (re-sent
    prefixes included: engines with prefix caching do not recompute them) and tokens generated."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0


class MeteredEngine(Engine):
    """Wraps an engine and adds up every request and token that passes through it."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.usage = UpstreamUsage()
        self.name = inner.name

    @property
    def concurrent_streams(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "concurrent_streams", False))

    @property
    def token_ids(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "token_ids", False))

    @property
    def streams_tokens(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.inner, "streams_tokens", False))

    async def tokenize(self, text: str) -> tuple[int, ...]:
        return await self.inner.tokenize(text)

    async def prepare(self) -> None:
        await self.inner.prepare()

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.inner.render_chat(messages)

    async def generate(self, request: GenerationRequest) -> Completion:
        self.usage.requests += request.n
        completion = await self.inner.generate(request)
        self.usage.prompt_tokens += completion.prompt_tokens * request.n
        self.usage.generated_tokens += completion.completion_tokens
        return completion

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        self.usage.requests += 1
        async with aclosing(self.inner.stream(request)) as deltas:
            async for delta in deltas:
                self.usage.generated_tokens += delta.tokens
                self.usage.prompt_tokens += delta.prompt_tokens or 0
                yield delta

    async def aclose(self) -> None:
        """The inner engine is shared by every request; it is closed by the server, not here."""
