"""The answer phase: what a chain of thought answers once its reasoning stopped.

An early exit answers with the settled answer, boxed. A model that closed its reasoning itself
writes its answer after ``</think>``, as it would without certaindex. A budget spent mid-thought
forces an answer with one last probe, and says so (``stop_reason="budget"``).
"""

from __future__ import annotations

from certaindex.core.answers import extract_answer
from certaindex.core.prompting import THINK_CLOSE, format_answer
from certaindex.engines.base import BudgetExhausted, Engine, GenerationRequest
from certaindex.programs.cot_run import CoTRun


async def model_answer(run: CoTRun, engine: Engine) -> tuple[str | None, str]:
    """The model's own answer after its reasoning (closed with ``</think>``); its tokens are counted."""
    config = run.config
    completion = await engine.generate(GenerationRequest(
        prompt=run.prompt + run.reasoning + THINK_CLOSE + "\n\n",
        max_tokens=config.answer_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=config.seed,
    ))
    run.answer_tokens += completion.first.completion_tokens
    text = completion.first.text.strip()
    return extract_answer(text) or extract_answer(run.reasoning), text


async def forced_answer(run: CoTRun) -> str | None:
    """The budget ran out mid-thought: one last probe answers (or, when not even it fits the
    scheduler's allowance, the last probe taken stands)."""
    try:
        last = await run.probe_or_none()
    except BudgetExhausted:
        last = run.judge.probes[-1] if run.judge.probes else None
    return last.answer if last is not None else extract_answer(run.reasoning)


async def answer(run: CoTRun, engine: Engine) -> tuple[str | None, str]:
    """(answer, answer_text) for how the run stopped."""
    if run.stop_reason == "certain":
        settled = run.judge.final_answer()
        return settled, format_answer(settled)
    if run.stop_reason == "finished" and run.thinking:
        return await model_answer(run, engine)
    if run.stop_reason == "finished":
        return extract_answer(run.reasoning), run.reasoning.strip()
    forced = await forced_answer(run)
    return forced, format_answer(forced)


__all__ = ["answer", "forced_answer", "model_answer"]
