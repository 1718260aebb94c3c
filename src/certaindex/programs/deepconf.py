"""Confidence-weighted voting and trace filtering from token logprobs (DeepConf, arXiv 2508.15260).

Offline: sample traces with top-k logprobs, score each by a trace confidence (mean, lowest sliding
window group, or tail), keep the most confident fraction and vote weighted by confidence.

Online: the first ``warmup`` traces run in full and set a bar, the ``keep_percentile``-th percentile
from the top of their lowest-group confidences. Every later trace is streamed and stopped the moment
its current sliding-window confidence falls below the bar: its remaining tokens are never generated.
Sampling also ends once the weighted vote's certaindex reaches ``threshold``.

A trace the engine cuts short (``length`` before ``max_tokens``: its context filled) votes with what
it wrote. A trace the engine refuses because its context is full ends cut with no confidence (it
does not vote or set the bar) and no later trace is started (``stop_reason: engine_length``; the
same request would be refused again). Every warm-up trace refused: the prompt itself does not fit,
and that error stands.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from certaindex.core.answers import answers_equal, extract_answer
from certaindex.engines.base import Engine, EngineError, GenerationRequest
from certaindex.engines.context_full import cut_by_engine
from certaindex.core.prompting import DEFAULT_SYSTEM_PROMPT
from certaindex.programs.base import open_prompt
from certaindex.programs.self_consistency import NoAnswerError
from certaindex.core.signals import Vote, majority_vote, token_confidence, trace_confidence
from certaindex.core.validation import require

ConfidenceKind = Literal["mean", "lowest_group", "bottom_fraction", "tail"]


@dataclass(frozen=True)
class DeepConfConfig:
    n: int = 16  # most traces
    warmup: int = 4  # traces run in full to set the online bar
    keep_percentile: float = 90.0  # keep traces above this share of warm-up confidence (90: lenient)
    keep_fraction: float = 0.9  # offline filter: vote with the most confident fraction
    window: int = 64  # tokens per sliding-window group
    top_logprobs: int = 5
    confidence: ConfidenceKind = "lowest_group"
    online: bool = True
    threshold: float = 0.95  # stop sampling once the certaindex of kept traces reaches this
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = 0
    concurrency: int = 4
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (1 <= self.warmup <= self.n, f"warmup must be in [1, n], got {self.warmup}"),
            (0 < self.keep_percentile <= 100, f"keep_percentile must be in (0, 100], got {self.keep_percentile}"),
            (0 < self.keep_fraction <= 1, f"keep_fraction must be in (0, 1], got {self.keep_fraction}"),
            (self.window >= 1, f"window must be at least 1, got {self.window}"),
            (self.top_logprobs >= 1, f"top_logprobs must be at least 1, got {self.top_logprobs}"),
            (0 <= self.threshold <= 1, f"threshold must be in [0, 1], got {self.threshold}"),
            (self.concurrency >= 1, f"concurrency must be at least 1, got {self.concurrency}"),
            (self.confidence in ("mean", "lowest_group", "bottom_fraction", "tail"), f"unknown confidence {self.confidence!r}"),
        ]
        require(checks)


@dataclass
class Trace:
    text: str
    answer: str | None
    tokens: int
    confidence: float  # by the configured kind; -inf for traces stopped early
    lowest_group: float  # what the online bar is set from; -inf for traces stopped early
    stopped_early: bool
    # Cut short: ended on ``length`` before ``max_tokens`` (the engine's context filled), or
    # refused because the engine's context is full (no confidence: it neither votes nor sets the bar).
    cut: bool = False

    @property
    def votes(self) -> bool:
        """Ran to its end (the model's, or the engine's cut) with a confidence to weigh it by."""
        return not self.stopped_early and math.isfinite(self.confidence)


@dataclass
class DeepConfResult:
    question: str
    answer: str
    vote: Vote
    traces: list[Trace]
    bar: float | None  # the online confidence bar set by the warm-up traces
    stop_reason: Literal["certain", "budget", "engine_length"]
    # An estimate: for each stopped trace, the mean length of finished traces minus what it wrote.
    estimated_tokens_saved_by_filter: int = field(default=0)

    @property
    def total_tokens(self) -> int:
        return sum(t.tokens for t in self.traces)

    @property
    def samples_used(self) -> int:
        return len(self.traces)

    @property
    def samples_cut(self) -> int:
        """Traces the engine cut short or refused for a full context (see :class:`Trace`)."""
        return sum(t.cut for t in self.traces)


def weighted_vote(traces: list[Trace], keep_fraction: float) -> Vote:
    """Vote among the most confident ``keep_fraction`` of finished traces, weighted by confidence."""
    finished = [t for t in traces if t.votes]
    if not finished:
        return majority_vote([], answers_equal)
    ranked = sorted(finished, key=lambda t: t.confidence, reverse=True)
    kept = ranked[: max(1, int(np.ceil(keep_fraction * len(ranked))))]
    return majority_vote([t.answer for t in kept], answers_equal, weights=[max(t.confidence, 1e-9) for t in kept])


async def _trace(
    engine: Engine, prompt: str, config: DeepConfConfig, index: int, bar: float | None, refusals: list[EngineError]
) -> Trace:
    """One streamed trace, stopped the moment its window confidence falls below ``bar`` (None: run
    in full). A refusal for a full context goes on ``refusals`` and ends the trace cut."""
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=None if config.seed is None else config.seed + index,
        logprobs=config.top_logprobs,
    )
    text, confs, tokens = "", [], 0
    window_sum = 0.0
    finish: str | None = None
    stream = engine.stream(request)
    try:
        async for delta in stream:
            text += delta.text
            tokens += delta.tokens
            finish = delta.finish_reason or finish
            for lp in delta.logprobs or ():
                conf = token_confidence(lp.top or {lp.token: lp.logprob})
                confs.append(conf)
                window_sum += conf
                if len(confs) > config.window:
                    window_sum -= confs[-config.window - 1]
                if bar is not None and len(confs) >= config.window and window_sum / config.window < bar:
                    return Trace(text, None, tokens, float("-inf"), float("-inf"), stopped_early=True)
    except EngineError as exc:
        if not exc.context_full:
            raise
        refusals.append(exc)
        finish = "refused"
    finally:
        await stream.aclose()
    cut = finish == "refused" or cut_by_engine(finish, tokens, config.max_tokens)
    if not confs:
        if cut and (finish == "refused" or tokens == 0):  # nothing to weigh it by
            return Trace(text, None, tokens, float("-inf"), float("-inf"), stopped_early=False, cut=True)
        raise ValueError("the engine returned no logprobs; DeepConf needs an engine with logprobs enabled")
    tc = trace_confidence(confs, window=config.window, tail_tokens=config.window * 4)
    return Trace(
        text, extract_answer(text), tokens, float(getattr(tc, config.confidence)), tc.lowest_group,
        stopped_early=False, cut=cut,
    )


async def deepconf(engine: Engine, question: str, config: DeepConfConfig = DeepConfConfig()) -> DeepConfResult:
    question, prompt = await open_prompt(engine, question, config.system_prompt)
    traces: list[Trace] = []
    bar: float | None = None
    refusals: list[EngineError] = []  # the engine's refusals for a full context

    # Warm-up: full traces, concurrently, then the bar from their lowest-group confidences.
    warm = await asyncio.gather(*(_trace(engine, prompt, config, i, None, refusals) for i in range(config.warmup)))
    if refusals and not any(t.tokens for t in warm):
        raise refusals[0]  # refused before anything was written: the prompt itself does not fit
    traces.extend(warm)
    lowest = [t.lowest_group for t in warm if t.votes]
    if config.online and lowest:
        bar = float(np.percentile(lowest, 100.0 - config.keep_percentile))
    stop_reason: Literal["certain", "budget", "engine_length"] = "budget"
    vote = weighted_vote(traces, config.keep_fraction)
    next_index = config.warmup
    while next_index < config.n and not refusals:  # no trace after a refusal: it would be refused again
        if vote.answer is not None and vote.certaindex >= config.threshold:
            break
        batch = range(next_index, min(config.n, next_index + config.concurrency))
        traces.extend(await asyncio.gather(*(_trace(engine, prompt, config, i, bar, refusals) for i in batch)))
        next_index = batch.stop
        vote = weighted_vote(traces, config.keep_fraction)
    if vote.answer is not None and vote.certaindex >= config.threshold:
        stop_reason = "certain"
    elif refusals:
        stop_reason = "engine_length"
    if vote.answer is None:
        cut = sum(t.cut for t in traces)
        raise NoAnswerError(
            f"none of the {len(traces)} traces gave an answer",
            total_tokens=sum(t.tokens for t in traces),
            samples_used=len(traces),
            cut=cut,
        )
    voted = [t.tokens for t in traces if t.votes]
    mean_full = np.mean(voted) if voted else 0
    saved = int(sum(max(0.0, mean_full - t.tokens) for t in traces if t.stopped_early))
    return DeepConfResult(question, vote.answer, vote, traces, bar, stop_reason, saved)
