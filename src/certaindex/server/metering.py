"""Count what the proxy really asks of its engine, so ``usage`` and ``/metrics`` are honest."""

from __future__ import annotations

from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator

from certaindex.engines.base import Completion, Engine, EngineView, GenerationRequest, StreamDelta


@dataclass
class UpstreamUsage:
    """What one proxied request cost the engine: requests sent, prompt tokens sent (re-sent
    prefixes included: engines with prefix caching do not recompute them) and tokens generated."""

    requests: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0


class MeteredEngine(EngineView):
    """Wraps an engine and adds up every request and token that passes through it."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.usage = UpstreamUsage()
        self.name = inner.name

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
