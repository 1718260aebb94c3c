"""Shadow traces: a served full-reasoning program, with the probes taken beside it, as a trace.

``certaindex serve --shadow DIR`` answers every chat request with full reasoning and probes on the
side every ``probe_interval`` tokens (the probes never decide anything). This module turns one
such run into a :class:`~certaindex.traces.format.TraceRecord` of the project's trace format, with
granularity g = the probe interval, so ``certaindex calibrate DIR`` can replay early-exit rules on
the user's own traffic.

Shadow traffic has no gold answer: ``gold`` is ``""`` and ``correct`` is false; the header's
``dataset`` is :data:`SHADOW_DATASET`. Calibration compares an early answer with the model's own
full-reasoning answer (``final.answer``) instead. A run whose probes cannot be laid out as the
format's chunks (an engine that streamed several tokens across a probe point, or a probe that
failed) raises :class:`SkippedTrace`: it is counted, never written half right.
"""

from __future__ import annotations

from typing import Mapping

from certaindex.core.prompting import THINK_OPEN
from certaindex.programs.cot import CoTConfig, CoTResult
from certaindex.traces.format import (
    Chunk, FieldError, FinalAnswer, ProbeRecord, TraceRecord, TraceSettings, parse_record,
)

__all__ = ["SHADOW_DATASET", "SkippedTrace", "shadow_trace", "shadow_trace_settings"]

SHADOW_DATASET = "shadow"


class SkippedTrace(Exception):
    """A run that cannot be written as a trace of the format; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def shadow_trace_settings(config: CoTConfig) -> TraceSettings:
    """The trace settings of runs made with ``config`` (one trace file per distinct settings).
    The seed is per record (clients send their own), so the header's is null."""
    return TraceSettings(
        granularity=config.probe_interval, budget=config.budget, probe_suffix=config.probe_suffix,
        probe_tokens=config.probe_tokens, answer_tokens=config.answer_tokens, temperature=config.temperature,
        top_p=config.top_p, seed=None, samples=1, system_prompt=None, logprobs=None,
    )


def shadow_trace(
    trace_id: str,
    question: str,
    prompt: str,
    prompt_tokens: int,
    result: CoTResult,
    offsets: Mapping[int, int],
    config: CoTConfig,
) -> TraceRecord:
    """The trace of one full-reasoning run with side probes every ``config.probe_interval`` tokens.

    ``offsets`` maps a reasoning position in tokens to the length in characters of the reasoning
    at that position (from the program's chunk events), so the text is cut exactly where each
    probe was forked. Raises :class:`SkippedTrace` when the run does not fit the format."""
    g = config.probe_interval
    if result.reasoning_tokens > config.budget:  # llama.cpp may finish a UTF-8 character past max_tokens
        raise SkippedTrace("over-budget", f"{result.reasoning_tokens} reasoning tokens, over the budget of {config.budget}")
    if result.stop_reason == "engine_length":
        raise SkippedTrace("engine-length", f"the engine cut the reasoning at {result.reasoning_tokens} tokens, before "
                           f"the budget of {config.budget}: the format holds runs that finished or reached the budget")
    if result.stop_reason not in ("finished", "budget", "answer_length"):
        raise SkippedTrace("early-exit", f"the run stopped by {result.stop_reason!r}, not by full reasoning")
    reasoning, total = result.reasoning, result.reasoning_tokens
    probes = result.probes
    chunks: list[Chunk] = []
    prev_at = prev_off = 0
    for i, probe in enumerate(probes):
        forced = result.stop_reason == "budget" and i == len(probes) - 1 and probe.at_tokens == total
        step = probe.at_tokens - prev_at
        if not (step == g or (forced and 0 < step <= g)):
            raise SkippedTrace("misaligned", f"probe {i} at {probe.at_tokens} tokens, {step} after the one "
                               f"before it (the interval is {g}): the engine streamed several tokens across a probe point")
        offset = len(reasoning) if forced else offsets.get(probe.at_tokens)
        if offset is None or offset < prev_off:
            raise SkippedTrace("misaligned", f"no text position recorded for the probe at {probe.at_tokens} tokens")
        record = ProbeRecord(
            at_tokens=probe.at_tokens, text=probe.text, tokens=probe.tokens,
            # The run keeps no finish reason for a probe: one that used its whole allowance was cut.
            finish_reason="length" if probe.tokens >= config.probe_tokens else "stop",
            answer=probe.answer, hesitant=probe.hesitant,
        )
        chunks.append(Chunk(reasoning[prev_off:offset], step, "length", probe=record))
        prev_at, prev_off = probe.at_tokens, offset
    if result.stop_reason == "budget":
        if not chunks or prev_at != total:
            raise SkippedTrace("probe-failed", "the probe that forces an answer at the budget is missing")
        last = chunks[-1].probe
        assert last is not None
        final = FinalAnswer("budget-probe", last.answer, last.text, last.tokens, last.finish_reason)
    else:
        rest = total - prev_at
        if rest > g:
            raise SkippedTrace("probe-failed", f"no probe after {prev_at} of {total} reasoning tokens (a probe failed)")
        chunks.append(Chunk(reasoning[prev_off:], rest, "stop"))
        if result.answer_tokens > 0 or prompt.rstrip().endswith(THINK_OPEN):
            cut = "length" if result.stop_reason == "answer_length" else "stop"
            final = FinalAnswer("after-think", result.answer, result.answer_text, result.answer_tokens, cut)
        else:
            final = FinalAnswer("reasoning", result.answer)
    record = TraceRecord(
        id=trace_id, sample=0, seed=config.seed, question=question, gold="", prompt=prompt,
        prompt_tokens=prompt_tokens, thinking=prompt.rstrip().endswith(THINK_OPEN), chunks=tuple(chunks),
        finish_reason=chunks[-1].finish_reason, final=final, correct=False,
        stop="finished" if result.stop_reason == "answer_length" else result.stop_reason,  # the reasoning's end
    )
    try:  # a line the reader would refuse is never written: it would stop `calibrate DIR` at that line
        parse_record(record.to_dict(), shadow_trace_settings(config))
    except FieldError as exc:
        raise SkippedTrace("invalid", str(exc)) from None
    return record
