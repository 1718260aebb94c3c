"""Serve one chat request with a certaindex program and describe the outcome in OpenAI terms.

The program runs as its own task and reports progress through a queue, so a streaming response can
relay reasoning as it is generated and a disconnecting client can cancel the task (which closes
the upstream requests in flight, aborting their generation).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from certaindex.engines.base import Engine, EngineError
from certaindex.core.prompting import format_answer
from certaindex.programs.cot import CoTEvent, CoTResult, solve_cot
from certaindex.programs.self_consistency import NoAnswerError, SCResult, self_consistency
from certaindex.scheduler import ScheduledEngine, cot_reporter, sc_reporter
from certaindex.server.metering import MeteredEngine
from certaindex.server.schema import ChatPlan


@dataclass
class ChatOutcome:
    """The finished answer: reasoning (``reasoning_content``), answer (``content``) and cost."""

    reasoning: str
    content: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    reasoning_tokens: int
    probe_tokens: int
    answer_tokens: int
    details: dict[str, Any] = field(default_factory=dict)
    # Reasoning streamed past the deciding probe before the upstream stream was closed.
    overrun_tokens: int = 0
    # Shadow mode (server/shadow.py): tokens of the probes taken beside full reasoning, an extra
    # cost reported apart; the answer and ``completion_tokens`` are full reasoning's.
    shadow_probe_tokens: int | None = None
    # The early-exit profile the program ran and why ({"profile": ..., "profile_reason": ...}),
    # reported in ``usage.certaindex`` beside the token counts.
    profile: dict[str, str] | None = None
    trial_tokens: int = 0  # DEER-style trials (score rules), counted apart from the answer probes

    @property
    def completion_tokens(self) -> int:
        """Every token generated for this request, probes, trials and overrun included: what it cost."""
        return self.reasoning_tokens + self.overrun_tokens + self.probe_tokens + self.trial_tokens + self.answer_tokens

    def usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": {
                "reasoning_tokens": self.completion_tokens - self.answer_tokens,
            },
            "certaindex": {
                "reasoning_tokens": self.reasoning_tokens,
                "overrun_tokens": self.overrun_tokens,
                "probe_tokens": self.probe_tokens,
                "trial_tokens": self.trial_tokens,
                "answer_tokens": self.answer_tokens,
            },
        }
        if self.shadow_probe_tokens is not None:
            usage["certaindex"]["shadow_probe_tokens"] = self.shadow_probe_tokens
        if self.profile is not None:
            usage["certaindex"].update(self.profile)
        if self.details.get("fallback"):  # served plainly: the client is told why, never silently
            usage["certaindex"].update(policy=self.details.get("policy"), fallback=self.details["fallback"])
        return usage


def label(messages: list[dict[str, str]]) -> str:
    """The question a conversation asks: its last user message (programs want one for results)."""
    for message in reversed(messages):
        if message["role"] == "user" and message["content"].strip():
            return message["content"]
    raise EngineError("the conversation has no user message with text")  # turned into a 400 upstream


def cot_outcome(result: CoTResult, policy: str, upstream: MeteredEngine) -> ChatOutcome:
    if result.answer_tokens > 0:
        content = result.answer_text  # the model closed </think> and wrote its answer
    elif result.answer is not None:
        content = format_answer(result.answer)
    elif result.stop_reason == "finished":
        content = result.reasoning.strip()  # plain text with no answer to extract: the text is it
    else:
        content = ""  # cut by the budget and no answer: nothing is presented as one
    trial_tokens = sum(trial.tokens for trial in result.trials)  # CoTResult counts them in probe_tokens
    return ChatOutcome(
        reasoning=result.reasoning,
        content=content,
        # Cut by the budget (the answer was forced by a probe), by the engine's own limit, or the
        # answer cut at its limit: the client is told so.
        finish_reason="length" if result.stop_reason in ("budget", "engine_length", "answer_length") else "stop",
        prompt_tokens=result.prompt_tokens,
        reasoning_tokens=result.reasoning_tokens,
        probe_tokens=result.probe_tokens - trial_tokens,
        trial_tokens=trial_tokens,
        answer_tokens=result.answer_tokens,
        overrun_tokens=result.overrun_tokens,
        details={
            "policy": policy,
            "stop_reason": result.stop_reason,
            "answer": result.answer,
            "budget": result.budget,
            "probes": len(result.probes),
            "trials": len(result.trials),
            "probe_failures": result.probe_failures,
            "stream_resumes": result.stream_resumes,
            "upstream_requests": upstream.usage.requests,
            "upstream_prompt_tokens": upstream.usage.prompt_tokens,
        },
    )


def sc_outcome(result: SCResult, upstream: MeteredEngine) -> ChatOutcome:
    return ChatOutcome(
        reasoning="",
        content=format_answer(result.answer),
        # Stopped by the sample budget, or by the engine refusing a round for a full context, before
        # the vote was certain: the client is told, as for cot.
        finish_reason="length" if result.stop_reason in ("budget", "engine_length") else "stop",
        prompt_tokens=result.prompt_tokens,
        reasoning_tokens=result.total_tokens,
        probe_tokens=0,
        answer_tokens=0,
        details={
            "policy": "sc",
            "stop_reason": result.stop_reason,
            "answer": result.answer,
            "samples": result.samples_used,
            "samples_cut": result.samples_cut,
            "certaindex": result.vote.certaindex,
            "upstream_requests": upstream.usage.requests,
            "upstream_prompt_tokens": upstream.usage.prompt_tokens,
        },
    )


async def run_chat_program(
    engine: Engine,
    plan: ChatPlan,
    events: asyncio.Queue[str] | None = None,
) -> ChatOutcome:
    """Run ``plan`` (policy cot, full or sc) on ``engine``. With ``events``, reasoning text is put
    on the queue as it is generated. On a scheduler session every certaindex (each probe's, each
    vote's) is reported to the scheduler. Engine failures propagate as :class:`EngineError`, except
    a failed probe, after which the model simply reasons to the end."""
    upstream = MeteredEngine(engine)
    question = label(plan.messages)
    scheduled = isinstance(engine, ScheduledEngine)
    report_probe = cot_reporter(engine) if scheduled else None
    on_round = sc_reporter(engine) if scheduled else None

    def relay(event: CoTEvent) -> None:
        if events is not None and event.kind == "delta" and event.text:
            events.put_nowait(event.text)
        if report_probe is not None:
            report_probe(event)

    if plan.policy == "sc":
        try:
            result = await self_consistency(upstream, question, plan.sc, messages=plan.messages, on_round=on_round)
        except NoAnswerError as exc:
            return ChatOutcome(
                reasoning="", content="", finish_reason="length", prompt_tokens=0,
                reasoning_tokens=exc.total_tokens, probe_tokens=0, answer_tokens=0,
                details={"policy": "sc", "stop_reason": "no-answer", "samples": exc.samples_used,
                         "samples_cut": exc.cut, "upstream_requests": upstream.usage.requests},
            )
        return sc_outcome(result, upstream)
    result = await solve_cot(
        upstream, question, plan.cot, relay,
        stream_reasoning=events is not None,
        probe_failures="full-reasoning",
        messages=plan.messages,
    )
    outcome = cot_outcome(result, plan.policy, upstream)
    if outcome.prompt_tokens == 0:
        outcome.prompt_tokens = await count_prompt_tokens(engine, plan)
    return outcome


async def count_prompt_tokens(engine: Engine, plan: ChatPlan) -> int:
    """The prompt's tokens when the engine's stream did not report them (0 if it cannot say)."""
    counter = getattr(engine, "count_tokens", None)
    if counter is None:
        return 0
    try:
        count = counter(engine.render_chat(plan.messages))
        if asyncio.iscoroutine(count):
            count = await count
    except EngineError:
        return 0
    return int(count or 0)
