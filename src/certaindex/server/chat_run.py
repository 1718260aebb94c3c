"""Running one chat program for the proxy: in a scheduler session, bounded by the request timeout,
engine failures turned into OpenAI errors, and what it cost counted in the metrics and the log."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from certaindex.engines.base import Engine, EngineError
from certaindex.evaluation.profile_choice import ProfileChoice
from certaindex.scheduler.budgets import program_budget, sc_program_budget
from certaindex.server.chat_programs import ChatOutcome, run_chat_program
from certaindex.engines.deadline import capped
from certaindex.server.errors import ProxyError, engine_failure
from certaindex.server.responses import new_id
from certaindex.server.schema import ChatPlan
from certaindex.server.shadow import run_shadow_program
from certaindex.server.state import ProxyState

log = logging.getLogger("certaindex.server")


def engine_error(exc: EngineError) -> ProxyError:
    """An engine failure as the client sees it: 400 when the request was refused or too long, else 502/504."""
    return engine_failure(str(exc))


def timed_out(state: ProxyState) -> ProxyError:
    seconds = state.settings.request_timeout_s
    return ProxyError(504, f"the request took longer than {seconds:g} s", "upstream_error", code="request_timeout")


def record_chat(state: ProxyState, outcome: ChatOutcome, plan: ChatPlan, status: str, seconds: float) -> None:
    """Meter one answered chat program: request, duration, tokens by kind, stop reason; one log line."""
    metrics = state.metrics
    metrics.requests.labels("chat", plan.policy, status).inc()
    metrics.duration.labels("chat", plan.policy).observe(seconds)
    for kind, value in (("prompt", outcome.prompt_tokens), ("reasoning", outcome.reasoning_tokens),
                        ("overrun", outcome.overrun_tokens), ("probe", outcome.probe_tokens),
                        ("trial", outcome.trial_tokens), ("answer", outcome.answer_tokens)):
        metrics.tokens.labels(kind).inc(value)
    metrics.stops.labels(str(outcome.details.get("stop_reason"))).inc()
    metrics.probe_failures.inc(int(outcome.details.get("probe_failures") or 0))
    line = "chat policy=%s stop=%s tokens=%d (reasoning %d, probe %d, answer %d) %.2fs"
    args: list[Any] = [plan.policy, outcome.details.get("stop_reason"), outcome.completion_tokens,
                       outcome.reasoning_tokens, outcome.probe_tokens, outcome.answer_tokens, seconds]
    if state.settings.log_content:
        line += " messages=%r answer=%r"
        args += [plan.messages, outcome.content]
    log.info(line, *args)


async def scheduled_program(state: ProxyState, plan: ChatPlan, engine: Engine,
                            events: asyncio.Queue[Any] | None) -> ChatOutcome:
    """The program in a scheduler session (its upstream requests queue and are ordered there),
    or straight on the engine with ``--scheduler off``."""
    scheduler = state.scheduler

    async def program(on: Engine) -> ChatOutcome:
        if state.shadow is not None and plan.policy == "full":
            return await run_shadow_program(on, plan, state.shadow, state.model_name(plan), state.engine.name, events)
        return await run_chat_program(on, plan, events)

    if scheduler is None:
        return await program(engine)
    budget = sc_program_budget(plan.sc) if plan.policy == "sc" else program_budget(plan.cot)
    deadline = None if plan.deadline_s is None else scheduler.clock() + plan.deadline_s
    async with scheduler.session(new_id(), budget=budget, deadline=deadline, priority=plan.priority,
                                 engine=engine) as session:
        return await program(session)


async def run_program(state: ProxyState, plan: ChatPlan, engine: Engine, events: asyncio.Queue[Any] | None,
                      profile: ProfileChoice | None = None) -> ChatOutcome:
    """:func:`scheduled_program` by the request's deadline (``--request-timeout`` from its arrival:
    504), engine failures as 400/502. ``profile``: the early-exit profile the plan runs, named in
    ``usage.certaindex`` with its reason."""
    runs_profile = profile is not None and (plan.policy == "cot" or state.shadow is not None)
    if runs_profile and state.profiles is not None:
        state.profiles.announce(profile)
    try:
        outcome = await asyncio.wait_for(scheduled_program(state, plan, engine, events),
                                         capped(state.settings.request_timeout_s))
    except asyncio.TimeoutError:
        raise timed_out(state) from None
    except EngineError as exc:
        state.metrics.upstream_errors.labels("chat").inc()
        if state.watch is not None:
            state.watch.poke()  # the upstream may be down, or serve another model now
        raise engine_error(exc) from exc
    if runs_profile:
        outcome.profile = profile.to_dict()
        outcome.details.update(outcome.profile)
    return outcome
