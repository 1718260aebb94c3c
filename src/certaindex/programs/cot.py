"""Chain of thought with probe-in-the-middle early exit (Dynasor-CoT).

Every ``probe_interval`` tokens (or at events in the text, see ``probe_trigger``) a *probe* is
forked: the reasoning so far plus a suffix that asks for the final answer right now. Its short
completion is read for an answer. Once the last ``k`` probes give the same answer and none of them
hesitates, the answer has settled and the reasoning stops. Probe tokens are real compute: every
result counts them.

On engines that stream and serve side requests meanwhile (``Engine.concurrent_streams``: HTTP
servers), the reasoning is one open stream and probes run beside it
(:mod:`certaindex.programs.main_stream`); elsewhere (the embedded engine, replayed traces) the
model reasons in chunks of ``probe_interval`` tokens and probes between them. Both make the same
decisions, because a probe is judged by the position it was taken at.

The program is a small state machine over one :class:`~certaindex.programs.cot_run.CoTRun`:
*reason* (in chunks, :mod:`certaindex.programs.cot_chunks`, or in one stream,
:mod:`certaindex.programs.cot_stream`), *observe* and *decide* at each decision point
(:mod:`certaindex.programs.cot_observe`), then *answer* (:mod:`certaindex.programs.cot_answer`).
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

from certaindex.core.answers import canonical_answer
from certaindex.core.exit_score import LiveScore
from certaindex.engines.base import Engine, EngineConfigError
from certaindex.programs.base import open_prompt
from certaindex.programs.cot_answer import answer as answer_phase
from certaindex.programs.cot_chunks import reason_in_chunks
from certaindex.programs.cot_observe import Judge
from certaindex.programs.cot_run import CoTRun, SideRequests
from certaindex.programs.cot_stream import reason_in_stream
from certaindex.programs.cot_types import (
    DEFAULT_ANSWER_TOKENS, AnswerMode, CoTConfig, CoTEvent, CoTResult, Probe, ProbeTrigger, StopReason, Trial,
)


def _live_score(engine: Engine, config: CoTConfig) -> LiveScore | None:
    """The fitted score rule's live state (None under Dynasor's rule); refuses an engine that cannot
    give the token logprobs its trials need."""
    if config.certainty is None:
        return None
    live = LiveScore(config.certainty, canonical_answer)
    if live.reads_trials and config.early_exit and not getattr(engine, "returns_logprobs", False):
        raise EngineConfigError(f"the score rule reads DEER trials, which need token logprobs, and {engine.name} "
                                "returns none; use a profile without trials (--profile conservative)")
    return live


def _uses_main_stream(engine: Engine, config: CoTConfig) -> bool:
    """Full reasoning sends no side request: one stream wherever tokens stream; early exit needs
    an engine that serves probes beside the stream."""
    return config.side_probes and bool(getattr(engine, "concurrent_streams", False) or (
        not config.early_exit and getattr(engine, "streams_tokens", False)))


async def solve_cot(
    engine: Engine,
    question: str,
    config: CoTConfig = CoTConfig(),
    on_event: Callable[[CoTEvent], None] | None = None,
    *,
    stream_reasoning: bool = False,
    probe_failures: Literal["raise", "full-reasoning"] = "raise",
    messages: Sequence[dict[str, str]] | None = None,
    main_stream: bool | None = None,
) -> CoTResult:
    """Run one chain of thought, with early exit unless ``config.early_exit`` is False.

    ``stream_reasoning``: emit ``delta`` events as reasoning text arrives (for servers that relay
    the reasoning live). ``probe_failures="full-reasoning"``: a probe the engine fails does not fail
    the question; early exit is given up and the model reasons to the end, as it would without
    certaindex. ``messages``: reason about this whole conversation (rendered as is,
    ``config.system_prompt`` unused) rather than ``question`` alone. ``main_stream``: reason in one
    open stream with probes on the side (default: ``config.side_probes`` where
    ``engine.concurrent_streams``, and full reasoning where ``engine.streams_tokens``), else in
    chunks with probes between them."""
    question, prompt = await open_prompt(engine, question, config.system_prompt, messages)
    emit = on_event or (lambda _event: None)
    live = _live_score(engine, config)
    run = CoTRun(config=config, prompt=prompt, judge=Judge(config, live, emit),
                 side=SideRequests(engine, prompt, config, live), emit=emit, early_exit=config.early_exit,
                 probe_failures=probe_failures, stream_reasoning=stream_reasoning)
    if main_stream is None:
        main_stream = _uses_main_stream(engine, config)
    if main_stream:
        await reason_in_stream(run, engine)
    else:
        await reason_in_chunks(run, engine)
    answer, answer_text = await answer_phase(run, engine)
    result = _result(run, question, answer, answer_text)
    emit(CoTEvent("done", run.reasoning_tokens, run.side.probe_tokens))
    return result


def _result(run: CoTRun, question: str, answer: str | None, answer_text: str) -> CoTResult:
    return CoTResult(
        question=question,
        answer=answer,
        answer_text=answer_text if answer is not None else "",
        stop_reason=run.stop_reason,
        reasoning=run.reasoning,
        prompt_tokens=run.prompt_tokens,
        reasoning_tokens=run.reasoning_tokens,
        probe_tokens=run.side.probe_tokens,
        answer_tokens=run.answer_tokens,
        budget=run.config.budget,
        probes=run.judge.probes,
        probe_failures=run.failed_probes,
        overrun_tokens=run.overrun_tokens,
        stream_resumes=run.resumes,
        token_id_probes=run.side.id_probes,
        trials=run.judge.trials,
    )


__all__ = ["DEFAULT_ANSWER_TOKENS", "AnswerMode", "CoTConfig", "CoTEvent", "CoTResult", "Probe", "ProbeTrigger", "StopReason", "Trial", "solve_cot"]
