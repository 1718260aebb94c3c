"""Fakes for unit tests only: a scripted engine whose reasoning and probe replies are fixed in advance."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

from certaindex.engines.chat_template import ChatTemplate
from certaindex.engines.base import Choice, Completion, Engine, EngineError, GenerationRequest, StreamDelta, TokenLogprobs
from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, THINK_CLOSE


@dataclass
class ScriptedFakeEngine(Engine):
    """Continues prompts from a script. A token is one list element of ``reasoning``.

    ``probe_reply(n)`` gives the probe completion (as tokens) after ``n`` reasoning tokens.
    ``final_reply`` is what a reasoning model writes after ``</think>``.
    ``ends_naturally``: the model stops by itself at the end of the script (else it runs on, "length").
    ``context_tokens``: the engine's own limit (a full context): the reasoning ends on "length" at this
    many tokens and a continuation from there gets no token ("length" again) or, with
    ``context_refusal`` (an engine's error text), is refused with that text and HTTP 400 (as llama.cpp's
    server, vLLM and SGLang refuse a prompt their context cannot hold); so is an answer after
    ``</think>`` asked for from there.
    ``trial_reply(n)`` gives a DEER-style trial's completion (prompt ending in ``trial_suffix``) as
    (token, logprob) pairs after ``n`` reasoning tokens (a "Wait" starts script token ``n``).
    Logprobs are returned when asked for (0.0 per token where the script gives none), unless
    ``logprobs`` is False (an engine without them).
    """

    reasoning: Sequence[str]
    probe_reply: Callable[[int], Sequence[str]] = lambda n: ["42", "}", " \\]"]
    final_reply: Sequence[str] = ("The answer is ", "\\boxed{42}", ".")
    ends_naturally: bool = True
    context_tokens: int | None = None
    context_refusal: str | None = None
    thinking: bool = False
    fail_after_calls: int | None = None
    streaming: bool = False  # stream token by token and serve probes meanwhile (like an HTTP server)
    token_delay_s: float = 0.0  # per streamed token
    tokens_per_delta: int = 1  # a streamed piece carries this many tokens (vLLM's stream interval)
    probe_delay_s: float = 0.0  # per probe
    fail_probes: bool = False
    probe_suffix: str = DEFAULT_PROBE_SUFFIX  # what a probe prompt ends with (a profile's own suffix)
    trial_suffix: str = "\n**Final Answer**\n\\boxed"
    trial_reply: Callable[[int], Sequence[tuple[str, float]]] = lambda n: [("{", -0.01), ("42", -0.01), ("}\n", -0.01)]
    trial_delay_s: float = 0.0
    fail_trials: bool = False
    logprobs: bool = True
    break_stream_at: int | None = None  # a stream breaks off after this many streamed tokens in all
    breaks_left: int = 1  # ... this many times
    probes_in_flight: int = 0
    calls: list[GenerationRequest] = field(default_factory=list)
    open_streams: int = 0
    streamed: int = 0
    name: str = "fake:scripted"
    _base: str = ""

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        self._base = ChatTemplate.named("raw").render(messages) + ("<think>\n" if self.thinking else "")
        return self._base

    @property
    def returns_logprobs(self) -> bool:  # type: ignore[override]
        return self.logprobs

    def _token(self, i: int) -> str:
        """Script token i; a model that does not end by itself runs on with filler."""
        return self.reasoning[i] if i < len(self.reasoning) else "more "

    def _consumed(self, prompt: str) -> tuple[str, int]:
        """Split the prompt after the rendered question into (script tokens already there, the rest)."""
        if not prompt.startswith(self._base):
            raise EngineError("prompt does not extend the rendered question")
        text = prompt[len(self._base) :]
        n, acc = 0, ""
        limit = len(self.reasoning) if self.ends_naturally else 10**6
        while n < limit and text.startswith(acc + self._token(n)):
            acc += self._token(n)
            n += 1
        return text[len(acc) :], n

    async def generate(self, request: GenerationRequest) -> Completion:
        self.calls.append(request)
        self._maybe_fail()
        if self._is_probe(request) or self._is_trial(request):
            self.probes_in_flight += 1
            try:
                await asyncio.sleep(self.trial_delay_s if self._is_trial(request) else self.probe_delay_s)
            finally:
                self.probes_in_flight -= 1
        pieces, finish, lps = self._reply(request)
        text, used = "".join(pieces), len(pieces)
        logprobs = None
        if request.logprobs is not None and self.logprobs:
            logprobs = tuple(TokenLogprobs(token=t, logprob=lp) for t, lp in lps)
        choices = tuple(Choice(text=text, finish_reason=finish, completion_tokens=used, logprobs=logprobs)
                        for _ in range(request.n))
        return Completion(choices=choices, prompt_tokens=len(request.prompt.split()))

    @property
    def concurrent_streams(self) -> bool:  # type: ignore[override]
        return self.streaming

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """Token by token (``streaming=True`` makes solve_cot reason in one stream with side probes)."""
        self.calls.append(request)
        self._maybe_fail()
        pieces, finish, _ = self._reply(request)
        self.open_streams += 1
        try:
            step = max(1, self.tokens_per_delta)
            for i in range(0, len(pieces), step):
                group = pieces[i:i + step]
                await asyncio.sleep(self.token_delay_s * len(group))
                if self.breaks_left and self.break_stream_at is not None and self.streamed >= self.break_stream_at:
                    self.breaks_left -= 1
                    raise EngineError("scripted: the stream breaks off")
                self.streamed += len(group)
                yield StreamDelta("".join(group), len(group), finish_reason=finish if i + step >= len(pieces) else None)
            if not pieces:
                yield StreamDelta("", 0, finish_reason=finish)
        finally:
            self.open_streams -= 1

    def _is_probe(self, request: GenerationRequest) -> bool:
        return request.prompt.endswith(self.probe_suffix)

    def _is_trial(self, request: GenerationRequest) -> bool:
        return request.prompt.endswith(self.trial_suffix)

    @property
    def trials(self) -> list[GenerationRequest]:
        """The trial requests received so far."""
        return [r for r in self.calls if self._is_trial(r)]

    def _maybe_fail(self) -> None:
        if self.fail_after_calls is not None and len(self.calls) > self.fail_after_calls:
            raise EngineError("scripted failure")

    def _reply(self, request: GenerationRequest) -> tuple[list[str], str, list[tuple[str, float]]]:
        """The tokens the script continues ``request`` with (the last cut at a stop string), why it
        ends, and every generated token with its logprob."""
        rest, consumed = self._consumed(request.prompt)
        lps: list[tuple[str, float]] | None = None
        full = self.context_tokens is not None and consumed >= self.context_tokens
        if full and self.context_refusal is not None and rest in ("", THINK_CLOSE + "\n\n"):
            raise EngineError(f"fake answered HTTP 400: {self.context_refusal}", status=400,
                              body=json.dumps({"error": {"code": 400, "message": self.context_refusal}}))
        if rest.endswith(self.trial_suffix):
            if self.fail_trials:
                raise EngineError("scripted trial failure")
            pairs = list(self.trial_reply(consumed))[: request.max_tokens]
            lps = [(t, float(lp)) for t, lp in pairs]
            out = [t for t, _ in pairs]
            finish = "length" if len(list(self.trial_reply(consumed))) > request.max_tokens else "stop"
        elif rest.endswith(self.probe_suffix):
            if self.fail_probes:
                raise EngineError("scripted probe failure")
            tokens = list(self.probe_reply(consumed))
            out = tokens[: request.max_tokens]
            finish = "length" if len(tokens) > request.max_tokens else "stop"
        elif rest.endswith(THINK_CLOSE + "\n\n"):
            out = list(self.final_reply)[: request.max_tokens]
            finish = "length" if len(self.final_reply) > request.max_tokens else "stop"
        elif rest:
            raise EngineError(f"unexpected prompt tail {rest[-40:]!r}")
        else:
            available = (len(self.reasoning) - consumed) if self.ends_naturally else 10**6
            room = max(0, self.context_tokens - consumed) if self.context_tokens is not None else 10**9
            count = min(request.max_tokens, available, room)
            out = [self._token(consumed + i) for i in range(count)]
            finish = "length" if available > count else "stop"
        if lps is None:
            lps = [(t, 0.0) for t in out]
        pieces: list[str] = []
        text = ""
        for token in out:  # honour stop strings as servers do: cut before them, finish "stop"
            text += token
            pieces.append(token)
            hits = [text.find(s) for s in request.stop if s in text]
            if hits:
                excess = len(text) - min(hits)
                while excess > 0:  # trim the text from the end, keeping one piece per token
                    i = _last_nonempty(pieces)
                    take = min(excess, len(pieces[i]))
                    pieces[i] = pieces[i][: len(pieces[i]) - take]
                    excess -= take
                return pieces, "stop", lps[: len(pieces)]
        return pieces, finish, lps


def _last_nonempty(pieces: list[str]) -> int:
    return max(i for i, p in enumerate(pieces) if p)


def cut_fake_engine(context_tokens: int, streaming: bool = False, **kwargs) -> ScriptedFakeEngine:
    """A scripted model that reasons on without end and whose probes never agree (each answers the
    position it was sent at), so only its engine's cut at ``context_tokens`` ends the run."""
    return ScriptedFakeEngine(reasoning=[], ends_naturally=False, context_tokens=context_tokens,
                              streaming=streaming, probe_reply=lambda n: [str(n), "}"], **kwargs)


def refuse_fake_probes_from(engine: ScriptedFakeEngine, tokens: int, message: str) -> None:
    """Make the scripted ``engine`` refuse every probe sent after ``tokens`` or more reasoning tokens
    with ``message`` (a probe the full context refuses, as the embedded engine does)."""
    original = engine._reply

    def refuse_probes_at_the_end(request: GenerationRequest):
        if engine._is_probe(request) and engine._consumed(request.prompt[: -len(engine.probe_suffix)])[1] >= tokens:
            raise EngineError(f"fake: {message}")
        return original(request)

    engine._reply = refuse_probes_at_the_end  # type: ignore[method-assign]


@dataclass
class SamplingFakeEngine(Engine):
    """Samples answers from a fixed categorical distribution, seeded per sample, for parallel programs.

    Every sample is ``tokens_per_sample`` tokens long and ends with ``\\boxed{answer}`` (``None`` in
    the distribution means a sample that gives no answer). Streams one token per delta.
    """

    distribution: dict[str | None, float]
    tokens_per_sample: int = 10
    token_delay_s: float = 0.0
    lengths: dict[int, int] = field(default_factory=dict)  # seed -> length override
    logprob_of: dict[str | None, float] = field(default_factory=dict)  # answer -> each token's logprob
    calls: list[GenerationRequest] = field(default_factory=list)
    streamed_tokens: int = 0
    name: str = "fake:sampling"

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return ChatTemplate.named("raw").render(messages)

    def _sample(self, seed: int | None) -> tuple[str, int]:
        text, length, _ = self._sample_with_answer(seed)
        return text, length

    def _sample_with_answer(self, seed: int | None) -> tuple[str, int, str | None]:
        import random

        rng = random.Random(seed)
        answers, weights = zip(*self.distribution.items())
        answer = rng.choices(answers, weights=weights)[0]
        length = self.lengths.get(seed if seed is not None else -1, self.tokens_per_sample)
        text = "x " * (length - 1) + ("no idea" if answer is None else f"\\boxed{{{answer}}}")
        return text, length, answer

    def _logprobs(self, answer: str | None, count: int, want: int | None):
        from certaindex.engines.base import TokenLogprobs

        if want is None:
            return None
        import math

        lp = self.logprob_of.get(answer, -0.1)
        rest = math.log(max(1e-9, 1.0 - math.exp(lp)))  # the alternative takes the remaining mass
        return tuple(TokenLogprobs(token="x", logprob=lp, top={"x": lp, "y": rest}) for _ in range(count))

    async def generate(self, request: GenerationRequest) -> Completion:
        self.calls.append(request)
        choices = []
        for i in range(request.n):
            text, length, answer = self._sample_with_answer(None if request.seed is None else request.seed + i)
            logprobs = self._logprobs(answer, length, request.logprobs)
            choices.append(Choice(text=text, finish_reason="stop", completion_tokens=length, logprobs=logprobs))
        return Completion(choices=tuple(choices), prompt_tokens=7)

    async def stream(self, request: GenerationRequest):
        import asyncio

        from certaindex.engines.base import StreamDelta

        self.calls.append(request)
        text, length, answer = self._sample_with_answer(request.seed)
        pieces = text.split(" ")
        for i, piece in enumerate(pieces):
            if self.token_delay_s:
                await asyncio.sleep(self.token_delay_s)
            else:
                await asyncio.sleep(0)
            self.streamed_tokens += 1
            last = i == len(pieces) - 1
            yield StreamDelta(
                text=piece + ("" if last else " "),
                tokens=1,
                logprobs=self._logprobs(answer, 1, request.logprobs),
                finish_reason="stop" if last else None,
            )


@dataclass
class StepFakeEngine(Engine):
    """Writes solutions step by step for search tests: ``steps_to_answer`` reasoning steps, then a
    boxed answer. Which answer a path reaches depends on its first step (seeded), so rewards can
    tell paths apart."""

    answers: Sequence[str] = ("7", "9")
    steps_to_answer: int = 2
    tokens_per_step: int = 4
    calls: list[GenerationRequest] = field(default_factory=list)
    name: str = "fake:steps"
    _base: str = ""

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        self._base = ChatTemplate.named("raw").render(messages)
        return self._base

    async def generate(self, request: GenerationRequest) -> Completion:
        self.calls.append(request)
        done_steps = request.prompt[len(self._base) :].split("\n\n")[:-1]
        choices = []
        for i in range(request.n):
            seed = (request.seed or 0) + i
            if not done_steps:
                text = f"path {self.answers[seed % len(self.answers)]} begins"
            elif len(done_steps) < self.steps_to_answer:
                text = f"{done_steps[0]} continues"
            else:
                text = f"so \\boxed{{{done_steps[0].split()[1]}}}"
            choices.append(Choice(text=text, finish_reason="stop", completion_tokens=self.tokens_per_step))
        return Completion(choices=tuple(choices), prompt_tokens=3)


LLAMA_CPP_CONTEXT_FULL = "request (4476 tokens) exceeds the available context size (4096 tokens), try increasing it"


class ContextFullFakeEngine(Engine):
    """Wraps a fake as a server whose context is full, for the parallel programs' tests.

    A request ``refuse(request)`` selects is refused as llama.cpp's server refuses it (HTTP 400,
    ``exceed_context_size_error``), streamed or not; a sample whose seed is in ``cut_seeds`` ends on
    ``length`` after ``cut_at`` tokens (the context filled while it was generated), losing the rest.
    """

    def __init__(self, inner: Engine, refuse: Callable[[GenerationRequest], bool] = lambda request: False,
                 cut_seeds: Sequence[int] = (), cut_at: int = 2, message: str = LLAMA_CPP_CONTEXT_FULL) -> None:
        self.inner = inner
        self.refuse = refuse
        self.message = message  # another refusal's text (e.g. "model 'x' not found"): not a full context
        self.cut_seeds = set(cut_seeds)
        self.cut_at = cut_at
        self.refused: list[GenerationRequest] = []
        self.name = f"fake:context-full({inner.name})"

    @property
    def returns_logprobs(self) -> bool:  # type: ignore[override]
        return self.inner.returns_logprobs

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        return self.inner.render_chat(messages)

    def _check(self, request: GenerationRequest) -> None:
        if self.refuse(request):
            self.refused.append(request)
            kind = "exceed_context_size_error" if self.message == LLAMA_CPP_CONTEXT_FULL else "invalid_request_error"
            body = {"error": {"code": 400, "message": self.message, "type": kind}}
            raise EngineError(f"fake answered HTTP 400: {self.message}", status=400, body=json.dumps(body))

    def _cut(self, choice: Choice) -> Choice:
        pieces = choice.text.split(" ")[: self.cut_at]
        logprobs = choice.logprobs[: self.cut_at] if choice.logprobs is not None else None
        return Choice(" ".join(pieces) + " ", "length", len(pieces), logprobs)

    async def generate(self, request: GenerationRequest) -> Completion:
        self._check(request)
        completion = await self.inner.generate(request)
        seeds = [None if request.seed is None else request.seed + i for i in range(request.n)]
        choices = tuple(self._cut(c) if s in self.cut_seeds else c for c, s in zip(completion.choices, seeds))
        return Completion(choices=choices, prompt_tokens=completion.prompt_tokens)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        self._check(request)
        count = 0
        inner = self.inner.stream(request)
        try:
            async for delta in inner:
                count += delta.tokens
                if request.seed in self.cut_seeds and count >= self.cut_at:
                    yield StreamDelta(delta.text, delta.tokens, delta.logprobs, finish_reason="length")
                    return
                yield delta
        finally:
            await inner.aclose()  # type: ignore[attr-defined]
