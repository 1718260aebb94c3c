"""The answer phase: what a chain of thought answers once its reasoning stopped.

An early exit answers with the settled answer, boxed (or, with ``CoTConfig.answer="model"``, the
model closes its thinking and writes its own answer). A model that closed its reasoning itself
writes its answer after ``</think>``, as it would without certaindex. A budget spent mid-thought
forces an answer with one last probe, and says so (``stop_reason="budget"``). Reasoning the engine
cut before the budget (``engine_length``: its context is full) asks the engine for nothing more: the
answer is the one the reasoning wrote, else the last probe's (as ``evaluate`` reads a recorded run
the collection cut), and the run stays reported as cut.

The model's own answer has room for ``CoTConfig.answer_room`` tokens: what the client's
``max_tokens`` leaves after the reasoning, at most ``answer_tokens``. An answer cut there is never
passed off as complete: the run's ``stop_reason`` becomes ``answer_length``; so it does when the
engine refuses the answer because its context is full (vLLM refuses a request whose prompt plus
``max_tokens`` exceed its context): the answer is then the one the reasoning wrote, as with no room.
"""

from __future__ import annotations

from certaindex.core.answers import extract_answer
from certaindex.core.prompting import THINK_CLOSE, format_answer
from certaindex.engines.base import BudgetExhausted, Engine, EngineError, GenerationRequest
from certaindex.programs.cot_run import CoTRun


async def model_answer(run: CoTRun, engine: Engine, fallback: str | None) -> tuple[str | None, str]:
    """The model's own answer after its reasoning, closed with ``</think>``; its tokens are counted.
    ``fallback``: the answer when the model's text boxes none."""
    config = run.config
    room = config.answer_room(run.reasoning_tokens)
    if room == 0:  # the client's max_tokens was spent on the reasoning: no room for an answer
        run.stop_reason = "answer_length"
        return fallback, ""
    try:
        completion = await engine.generate(GenerationRequest(
            prompt=run.prompt + run.reasoning + THINK_CLOSE + "\n\n",
            max_tokens=room,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
        ))
    except EngineError as exc:
        if isinstance(exc, BudgetExhausted) or not exc.context_full:
            raise
        run.stop_reason = "answer_length"  # the engine's context has no room for the answer: cut at 0
        return fallback, ""
    run.answer_tokens += completion.first.completion_tokens
    if completion.first.finish_reason == "length":
        run.stop_reason = "answer_length"
    text = completion.first.text.strip()
    return extract_answer(text) or fallback, text


async def forced_answer(run: CoTRun) -> str | None:
    """The budget ran out mid-thought: one last probe answers (or, when not even it fits the
    scheduler's allowance, the last probe taken stands)."""
    try:
        last = await run.probe_or_none()
    except BudgetExhausted:
        last = run.judge.probes[-1] if run.judge.probes else None
    return last.answer if last is not None else extract_answer(run.reasoning)


def engine_cut_answer(run: CoTRun) -> str | None:
    """The engine cut the reasoning and has no room for more: the answer the reasoning wrote, else
    the last probe's (None: neither holds one)."""
    last = run.judge.probes[-1] if run.judge.probes else None
    return extract_answer(run.reasoning) or (last.answer if last is not None else None)


async def answer(run: CoTRun, engine: Engine) -> tuple[str | None, str]:
    """(answer, answer_text) for how the run stopped."""
    if run.stop_reason == "certain":
        settled = run.judge.final_answer()
        if run.config.answer == "model":
            return await model_answer(run, engine, settled)
        return settled, format_answer(settled)
    if run.stop_reason == "finished" and run.thinking:
        return await model_answer(run, engine, extract_answer(run.reasoning))
    if run.stop_reason == "finished":
        return extract_answer(run.reasoning), run.reasoning.strip()
    if run.stop_reason == "engine_length":
        cut = engine_cut_answer(run)
        return cut, format_answer(cut)
    forced = await forced_answer(run)
    return forced, format_answer(forced)


__all__ = ["answer", "engine_cut_answer", "forced_answer", "model_answer"]
