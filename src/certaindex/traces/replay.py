"""An engine that replays recorded traces, exactly and offline.

A trace set (:mod:`certaindex.traces`) holds each problem's reasoning in chunks of g tokens and the
probe at every chunk boundary. :class:`ReplayEngine` answers the requests that
:func:`certaindex.programs.cot.solve_cot` sends with ``probe_interval = m * g``:

* ``render_chat`` returns the recorded prompt of a recorded question (looked up by the user message);
* a continuation of ``prompt + reasoning so far`` (at a chunk boundary) returns the next recorded
  chunks, up to ``max_tokens`` (exact when it is a multiple of g, or when the reasoning ends first);
* a probe (``prompt + reasoning + probe suffix`` at a boundary) returns the recorded probe;
* the answer after ``</think>`` of a reasoning model returns the recorded answer;

all with the recorded token counts, so an early-exit run on the replay gives the same answer, stop
reason and token counts as the same run on the engine that was recorded (exactly so for any engine
whose output does not depend on how the reasoning was split into requests, and in any case for
``probe_interval = g``). Anything else raises :class:`EngineError` saying why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from certaindex.engines.base import Choice, Completion, Engine, EngineError, GenerationRequest, StreamDelta
from certaindex.core.prompting import PROBE_STOPS, THINK_CLOSE, build_prompt_messages, opens_box
from certaindex.traces.format import TraceRecord, TraceSet, read_traces

__all__ = ["ReplayEngine"]

AFTER_THINK = THINK_CLOSE + "\n\n"


@dataclass
class _Indexed:
    record: TraceRecord
    cum_tokens: list[int]  # boundary i: tokens before chunk i (i = 0 .. len(chunks))
    cum_text: list[str]
    by_text: dict[str, list[int]]
    reasoning: str


@dataclass(frozen=True)
class _Match:
    item: _Indexed
    kind: str  # "continue", "probe" or "after-think"
    boundary: int


def _index(record: TraceRecord) -> _Indexed:
    cum_tokens, cum_text = [0], [""]
    for chunk in record.chunks:
        cum_tokens.append(cum_tokens[-1] + chunk.tokens)
        cum_text.append(cum_text[-1] + chunk.text)
    by_text: dict[str, list[int]] = {}
    for i, text in enumerate(cum_text):
        if i > 0 and record.chunks[i - 1].tokens == 0:
            continue  # after a final chunk of no tokens (the model ended exactly at a boundary): same position
        by_text.setdefault(text, []).append(i)
    return _Indexed(record, cum_tokens, cum_text, by_text, cum_text[-1])


class ReplayEngine(Engine):
    """Serve a recorded trace set (a :class:`TraceSet` or the path of a trace file) as an engine."""

    def __init__(self, traces: TraceSet | str | os.PathLike[str]) -> None:
        if not isinstance(traces, TraceSet):
            traces = read_traces(traces)
        if not traces.records:
            raise EngineError(f"the trace set {traces.path or ''} holds no traces".replace("  ", " "))
        self.traces = traces
        self.settings = traces.settings
        self._by_question: dict[str, str] = {}
        self._by_prompt: dict[str, list[_Indexed]] = {}
        for record in traces.records:
            self._by_question.setdefault(record.question.strip(), record.prompt)
            self._by_prompt.setdefault(record.prompt, []).append(_index(record))
        self.requests = 0  # requests served, for tests and reports

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"replay:{self.traces.header.engine}"

    # -- chat -------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        if not users:
            raise EngineError("no user message to look up in the recorded traces")
        question = users[-1].strip()
        prompt = self._by_question.get(question)
        if prompt is None:
            raise EngineError(f"no recorded trace for the question {question[:80]!r}")
        expected = build_prompt_messages(question, self.settings.system_prompt)
        actual = [
            {"role": m.get("role"), "content": (m.get("content") or "").strip() if m.get("role") == "user" else m.get("content")}
            for m in messages
        ]
        if actual != expected:
            raise EngineError(
                "the messages differ from the recorded ones (the traces were recorded with system prompt "
                f"{self.settings.system_prompt!r:.80}); replay needs the recorded system prompt"
            )
        return prompt

    # -- generation -------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> Completion:
        if request.n > 1:
            choices: list[Choice] = []
            prompt_tokens = 0
            for i in range(request.n):
                seed = None if request.seed is None else request.seed + i
                one = await self.generate(_with(request, n=1, seed=seed))
                choices.extend(one.choices)
                prompt_tokens = one.prompt_tokens
            return Completion(choices=tuple(choices), prompt_tokens=prompt_tokens)
        if request.logprobs is not None:
            raise EngineError("replayed traces hold per-chunk statistics, not per-token logprobs; request logprobs=None")
        match = self._match(request)
        self.requests += 1
        record = match.item.record
        prompt_tokens = record.prompt_tokens + match.item.cum_tokens[match.boundary]
        if match.kind == "probe":
            choice = self._serve_probe(match, request)
        elif match.kind == "after-think":
            choice = self._serve_after_think(match, request)
        else:
            choice = self._serve_chunks(match, request)
        return Completion(choices=(choice,), prompt_tokens=prompt_tokens)

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        """The recorded reasoning chunk by chunk (a piece per recorded chunk of g tokens), so
        ``solve_cot(..., main_stream=True)`` runs its one-stream path on recorded traces; other
        requests come whole. Not ``concurrent_streams``: replays use the chunked path unless asked."""
        if request.n != 1:
            raise ValueError("stream() takes n=1; start one stream per sample")
        match = self._match(request)
        if match.kind != "continue":
            choice = (await self.generate(request)).first
            yield StreamDelta(choice.text, choice.completion_tokens, finish_reason=choice.finish_reason)
            return
        whole = self._serve_chunks(match, request)  # checks the request as generate() would
        self.requests += 1
        record = match.item.record
        used = 0
        for chunk in record.chunks[match.boundary:]:  # the chunks _serve_chunks joined, one piece each
            used += chunk.tokens
            last = chunk.finish_reason != "length" or used == request.max_tokens
            yield StreamDelta(chunk.text, chunk.tokens, finish_reason=whole.finish_reason if last else None,
                              prompt_tokens=record.prompt_tokens if last else None)
            if last:
                return

    def _match(self, request: GenerationRequest) -> _Match:
        suffix = self.settings.probe_suffix
        candidates: list[_Match] = []
        near: list[str] = []
        owners = [items for prompt, items in self._by_prompt.items() if request.prompt.startswith(prompt)]
        if not owners:
            raise EngineError(f"no recorded trace has the prompt of this request ({request.prompt[:60]!r}...)")
        for items in owners:
            for item in items:
                rest = request.prompt[len(item.record.prompt) :]
                found = False
                if rest.endswith(suffix):
                    head = rest[: -len(suffix)]
                    for b in item.by_text.get(head, []):
                        if b > 0 and item.record.chunks[b - 1].probe is not None:
                            candidates.append(_Match(item, "probe", b))
                            found = True
                    if not found and item.reasoning.startswith(head):
                        near.append(
                            f"a probe after {len(head)} characters of reasoning is not at a recorded chunk boundary "
                            f"(the traces have a probe every g={self.settings.granularity} tokens; use a probe "
                            "interval that is a multiple of g)"
                        )
                if not found and item.record.final.source == "after-think" and rest == item.reasoning + AFTER_THINK:
                    candidates.append(_Match(item, "after-think", len(item.record.chunks)))
                    found = True
                if not found:
                    for b in item.by_text.get(rest, []):
                        candidates.append(_Match(item, "continue", b))
                        found = True
                    if not found and item.reasoning.startswith(rest):
                        near.append(
                            f"the reasoning in this request ({len(rest)} characters) does not end at a recorded "
                            f"chunk boundary (granularity g={self.settings.granularity} tokens)"
                        )
        if not candidates:
            reason = near[0] if near else "its text after the prompt is not a recorded continuation"
            raise EngineError(f"cannot replay this request: {reason}")
        if len(candidates) == 1:
            return candidates[0]
        # Several traces (samples of one problem, or empty chunks) fit: solve_cot's seeds tell them apart.
        consistent = [m for m in candidates if self._seed_fits(m, request.seed)]
        if len(consistent) == 1:
            return consistent[0]
        pool = consistent or candidates
        first = self._response_key(pool[0], request)
        if all(self._response_key(m, request) == first for m in pool[1:]):
            return pool[0]
        raise EngineError(
            f"this request fits {len(pool)} recorded traces that continue differently; "
            "pass the recorded seed (CoTConfig(seed=record.seed)) to choose one"
        )

    @staticmethod
    def _seed_fits(match: _Match, seed: int | None) -> bool:
        base = match.item.record.seed
        if seed is None or base is None:
            return False
        if match.kind == "continue":
            return seed == base + match.item.cum_tokens[match.boundary]
        return seed == base

    def _response_key(self, match: _Match, request: GenerationRequest) -> tuple:
        try:
            if match.kind == "probe":
                c = self._serve_probe(match, request)
            elif match.kind == "after-think":
                c = self._serve_after_think(match, request)
            else:
                c = self._serve_chunks(match, request)
        except EngineError as exc:
            return ("error", str(exc))
        return (c.text, c.finish_reason, c.completion_tokens)

    def _check_sampling(self, request: GenerationRequest, temperature: float, stop: tuple[str, ...], what: str) -> None:
        if request.temperature != temperature:
            raise EngineError(f"{what} was recorded at temperature {temperature}, not {request.temperature}")
        if temperature > 0 and request.top_p != self.settings.top_p:
            raise EngineError(f"{what} was recorded with top_p {self.settings.top_p}, not {request.top_p}")
        if tuple(request.stop) != tuple(stop):
            raise EngineError(f"{what} was recorded with stop strings {list(stop)}, not {list(request.stop)}")

    def _serve_chunks(self, match: _Match, request: GenerationRequest) -> Choice:
        record = match.item.record
        self._check_sampling(request, self.settings.temperature, (THINK_CLOSE,) if record.thinking else (), "the reasoning")
        start = match.boundary
        at = match.item.cum_tokens[start]
        if start >= len(record.chunks):
            if record.stop == "budget":
                raise EngineError(
                    f"the trace of {record.id!r} ends at the recorded budget of {self.settings.budget} reasoning tokens; "
                    "replay budgets must not exceed it"
                )
            raise EngineError(f"the recorded reasoning of {record.id!r} already ended at {at} tokens")
        text, used = "", 0
        for chunk in record.chunks[start:]:
            if used + chunk.tokens > request.max_tokens:
                raise EngineError(
                    f"max_tokens={request.max_tokens} from {at} reasoning tokens does not end at a recorded chunk "
                    f"boundary: the traces have granularity g={self.settings.granularity}, so use probe intervals "
                    "and budgets that are multiples of g"
                )
            text += chunk.text
            used += chunk.tokens
            if chunk.finish_reason != "length":
                return Choice(text=text, finish_reason=chunk.finish_reason, completion_tokens=used)
            if used == request.max_tokens:
                return Choice(text=text, finish_reason="length", completion_tokens=used)
        raise EngineError(
            f"the trace of {record.id!r} ends at the recorded budget of {self.settings.budget} reasoning tokens; "
            f"it cannot serve {request.max_tokens} tokens from {at}"
        )

    def _serve_probe(self, match: _Match, request: GenerationRequest) -> Choice:
        probe = match.item.record.chunks[match.boundary - 1].probe
        assert probe is not None
        stops = PROBE_STOPS if opens_box(self.settings.probe_suffix) else ()
        self._check_sampling(request, 0.0, stops, "a probe")
        return _fitted(probe.text, probe.tokens, probe.finish_reason, self.settings.probe_tokens, request.max_tokens,
                       f"the probe at {probe.at_tokens} tokens")

    def _serve_after_think(self, match: _Match, request: GenerationRequest) -> Choice:
        final = match.item.record.final
        self._check_sampling(request, self.settings.temperature, (), "the answer after </think>")
        return _fitted(final.text, final.tokens, final.finish_reason, self.settings.answer_tokens, request.max_tokens,
                       "the answer after </think>")


def _fitted(text: str, tokens: int, finish: str, recorded_max: int, max_tokens: int, what: str) -> Choice:
    """A recorded completion, if a request with ``max_tokens`` would have produced the same."""
    if finish == "length":
        if max_tokens != recorded_max:
            raise EngineError(
                f"{what} was cut at the recorded limit of {recorded_max} tokens; it cannot be replayed "
                f"with max_tokens={max_tokens}"
            )
    elif tokens > max_tokens:
        raise EngineError(f"{what} took {tokens} tokens, more than max_tokens={max_tokens}; record with that limit")
    return Choice(text=text, finish_reason=finish, completion_tokens=tokens)


def _with(request: GenerationRequest, **changes: object) -> GenerationRequest:
    from dataclasses import replace

    return replace(request, **changes)
