"""Recording traces from a live engine: exactly the requests an early-exit chain of thought sends,
so :mod:`certaindex.traces.replay` can answer them offline."""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Callable, Sequence

from certaindex.core.answers import answers_equal, extract_answer, is_hesitant
from certaindex.core.datasets import Problem
from certaindex.core.prompting import PROBE_STOPS, THINK_CLOSE, THINK_OPEN, opens_box, read_probe_answer
from certaindex.core.signals import token_confidence, token_entropy, trace_confidence
from certaindex.engines.base import Choice, Engine, EngineError, GenerationRequest, TokenLogprobs
from certaindex.engines.context_full import cut_by_engine
from certaindex.programs.base import open_prompt
from certaindex.traces.format import (
    Chunk,
    FinalAnswer,
    ProbeRecord,
    TraceHeader,
    TraceRecord,
    TraceSet,
    TraceSettings,
    TraceWriter,
)




def logprob_stats(logprobs: Sequence[TokenLogprobs] | None, window: int) -> tuple[float | None, float | None, float | None]:
    """(mean token entropy, mean DeepConf token confidence, lowest window mean confidence) of a
    generated piece, from its top-k logprobs; Nones when none were returned. Tokens whose top-k
    cannot be scored (empty, non-finite) are skipped."""
    if not logprobs:
        return None, None, None
    entropies, confidences = [], []
    for token in logprobs:
        top = {k: v for k, v in token.top.items() if v is not None and math.isfinite(v)}
        if not top:
            continue
        try:
            entropies.append(token_entropy(top))
            confidences.append(token_confidence(top))
        except ValueError:
            continue
    if not entropies:
        return None, None, None
    summary = trace_confidence(confidences, window=window, tail_tokens=len(confidences))
    return math.fsum(entropies) / len(entropies), summary.mean, summary.lowest_group


ProgressFn = Callable[[int, int, TraceRecord], None]


async def record_one(engine: Engine, problem: Problem, settings: TraceSettings, sample: int = 0) -> TraceRecord:
    """Record one trace: chunks of g tokens, a probe after each, until the model ends or the budget does.

    The requests are exactly those :func:`certaindex.programs.cot.solve_cot` sends with
    ``probe_interval = g`` (plus logprobs), so replaying with any multiple of g reproduces it.

    A run the engine cuts before the budget (a chunk ended on ``length`` short of its g tokens, or a
    continuation or probe the engine refuses because its context is full) is refused with an
    :class:`EngineError` saying so, not recorded: a trace holds a run that finished or reached the
    recording's budget, and replay, ``evaluate`` and ``calibrate`` read it as the model's full
    reasoning at that budget (a cut run recorded as ``finished`` would stand for an answer the model
    never finished; one recorded as ``budget`` for a budget it never had). The fix is a budget the
    engine's context holds, or a longer context. An answer after ``</think>`` the full context refuses
    is recorded truthfully: ``final.finish_reason`` ``length``, 0 tokens, the reasoning's answer.
    """
    seed = settings.sample_seed(sample)
    config = settings.cot_config(seed=seed)
    question, prompt = await open_prompt(engine, problem.question, config.system_prompt)
    thinking = prompt.rstrip().endswith(THINK_OPEN)
    box = opens_box(settings.probe_suffix)
    g = settings.granularity
    reasoning = ""
    tokens = 0
    prompt_tokens = 0
    chunks: list[Chunk] = []
    stop = "budget"
    while tokens < settings.budget:
        want = min(g, settings.budget - tokens)
        try:
            completion = await engine.generate(
                GenerationRequest(
                    prompt=prompt + reasoning,
                    max_tokens=want,
                    stop=(THINK_CLOSE,) if thinking else (),
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    seed=None if seed is None else seed + tokens,
                    logprobs=settings.logprobs,
                )
            )
        except EngineError as exc:
            if tokens and exc.context_full:
                raise engine_cut(engine, problem, tokens, settings.budget, str(exc)) from exc
            raise
        choice = completion.first
        if choice.completion_tokens > want:
            raise EngineError(f"{engine.name} returned {choice.completion_tokens} tokens for max_tokens={want}")
        if cut_by_engine(choice.finish_reason, choice.completion_tokens, want):
            raise engine_cut(engine, problem, tokens + choice.completion_tokens, settings.budget,
                             f"a chunk asked for {want} tokens ended on length after {choice.completion_tokens}")
        prompt_tokens = prompt_tokens or completion.prompt_tokens
        reasoning += choice.text
        tokens += choice.completion_tokens
        entropy, confidence, lowest = logprob_stats(choice.logprobs, settings.confidence_window)
        finished = choice.finish_reason != "length" or choice.completion_tokens == 0
        try:
            probe = None if finished else await _probe(engine, prompt + reasoning, tokens, settings, seed, box)
        except EngineError as exc:
            if not exc.context_full:
                raise
            raise engine_cut(engine, problem, tokens, settings.budget, f"its probe was refused: {exc}") from exc
        chunks.append(Chunk(choice.text, choice.completion_tokens, choice.finish_reason, entropy, confidence, lowest, probe))
        if finished:
            stop = "finished"
            break
    if stop == "budget":
        last = chunks[-1].probe
        assert last is not None
        final = FinalAnswer("budget-probe", last.answer, last.text, last.tokens, last.finish_reason)
    elif thinking:
        final = await _after_think(engine, prompt + reasoning, reasoning, settings, seed)
    else:
        final = FinalAnswer("reasoning", extract_answer(reasoning))
    return TraceRecord(
        id=problem.id,
        sample=sample,
        seed=seed,
        question=question,
        gold=problem.answer,
        prompt=prompt,
        prompt_tokens=prompt_tokens,
        thinking=thinking,
        chunks=tuple(chunks),
        finish_reason=chunks[-1].finish_reason,
        stop=stop,
        final=final,
        correct=answers_equal(final.answer, problem.answer),
    )


async def _after_think(engine: Engine, prefix: str, reasoning: str, settings: TraceSettings,
                       seed: int | None) -> FinalAnswer:
    """The answer a reasoning model writes after ``</think>``; one the full context refuses is an
    answer cut at 0 tokens (``finish_reason`` ``length``) that the reasoning's answer stands for."""
    try:
        completion = await engine.generate(
            GenerationRequest(
                prompt=prefix + THINK_CLOSE + "\n\n",
                max_tokens=settings.answer_tokens,
                temperature=settings.temperature,
                top_p=settings.top_p,
                seed=seed,
            )
        )
    except EngineError as exc:
        if not exc.context_full:
            raise
        return FinalAnswer("after-think", extract_answer(reasoning), "", 0, "length")
    choice = completion.first
    text = choice.text.strip()
    return FinalAnswer("after-think", extract_answer(text) or extract_answer(reasoning), choice.text,
                       choice.completion_tokens, choice.finish_reason)


def engine_cut(engine: Engine, problem: Problem, tokens: int, budget: int, why: str) -> EngineError:
    """The error for a reasoning the engine cut before the recording's budget (see :func:`record_one`)."""
    return EngineError(
        f"{engine.name} cut the reasoning of problem {problem.id!r} at {tokens} tokens, before the budget of "
        f"{budget} ({why}): its context is full. A trace records a run that finished or reached the budget, "
        "so this one is not recorded; record with a budget the engine's context holds (its context minus the "
        "prompt and the answer after </think>), or give the engine a longer context"
    )


async def _probe(engine: Engine, prefix: str, at: int, settings: TraceSettings, seed: int | None, box: bool) -> ProbeRecord:
    completion = await engine.generate(
        GenerationRequest(
            prompt=prefix + settings.probe_suffix,
            max_tokens=settings.probe_tokens,
            stop=PROBE_STOPS if box else (),
            temperature=0.0,
            seed=seed,
            logprobs=settings.logprobs,
        )
    )
    choice: Choice = completion.first
    hit_stop = choice.finish_reason == "stop" and box
    entropy, confidence, _ = logprob_stats(choice.logprobs, settings.confidence_window)
    return ProbeRecord(
        at_tokens=at,
        text=choice.text,
        tokens=choice.completion_tokens,
        finish_reason=choice.finish_reason,
        answer=read_probe_answer(settings.probe_suffix, choice.text, hit_stop),
        hesitant=is_hesitant(choice.text),
        entropy=entropy,
        confidence=confidence,
    )


def engine_model_name(engine: Engine) -> str:
    for attr in ("model", "model_path"):
        value = getattr(engine, attr, None)
        if value:
            return Path(str(value)).name if attr == "model_path" else str(value)
    return engine.name


async def record_traces(
    engine: Engine,
    problems: Sequence[Problem],
    settings: TraceSettings,
    path: str | os.PathLike[str],
    on_progress: ProgressFn | None = None,
    *,
    model: str | None = None,
    dataset: str | None = None,
) -> TraceSet:
    """Record ``settings.samples`` traces per problem into ``path`` (written as it goes) and return them.

    Works with any engine: embedded llama.cpp, or an OpenAI-compatible HTTP server (a GPU box).
    ``on_progress(done, total, record)`` is called after every trace.
    """
    await engine.prepare()  # an HTTP engine resolves its model name (for the header) and chat template
    header = TraceHeader(
        model=model or engine_model_name(engine),
        engine=engine.name,
        settings=settings,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        dataset=dataset,
    )
    total = len(problems) * settings.samples
    records: list[TraceRecord] = []
    with TraceWriter(path, header) as writer:
        for problem in problems:
            for sample in range(settings.samples):
                record = await record_one(engine, problem, settings, sample)
                writer.write(record)
                records.append(record)
                if on_progress is not None:
                    on_progress(len(records), total, record)
    return TraceSet(header=header, records=records, path=str(path))
