"""Reading a chat request: what the client asked for, whether certaindex can run it, and with what.

The proxy only takes over chat requests it fully understands (text messages, one choice, no tools,
no structured output); everything else is passed through unchanged. Inside a taken-over request,
anything it cannot honour is refused with a 400 naming the field, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from certaindex.core.prompting import NoQuestionError, validate_question
from certaindex.programs.cot import CoTConfig
from certaindex.programs.self_consistency import SCConfig
from certaindex.server.errors import bad_request

Policy = Literal["cot", "full", "sc", "off"]

# OpenAI chat fields. Those in TAKEOVER_BLOCKERS make a request one certaindex passes through.
OPENAI_CHAT_FIELDS = frozenset({
    "model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "seed", "stop", "n", "user", "metadata", "store", "presence_penalty",
    "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice",
    "functions", "function_call", "response_format", "parallel_tool_calls", "reasoning_effort",
    "service_tier", "modalities", "audio", "prediction", "web_search_options", "certaindex",
})
TAKEOVER_BLOCKERS = ("tools", "tool_choice", "functions", "function_call", "response_format",
                     "logprobs", "top_logprobs", "audio", "modalities", "prediction", "stop")
# Sampling fields of the engines themselves (vLLM, SGLang, llama.cpp): forwarded upstream as given.
ENGINE_SAMPLING_FIELDS = frozenset({
    "top_k", "min_p", "repetition_penalty", "repeat_penalty", "typical_p", "presence_penalty",
    "frequency_penalty", "logit_bias", "min_tokens", "ignore_eos", "priority",
})
ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


class CertaindexOptions(BaseModel):
    """The ``certaindex`` field of a request. Unknown keys are refused (a typo must not be ignored)."""

    model_config = ConfigDict(extra="forbid")

    policy: Policy | None = None
    budget: int | None = Field(default=None, ge=1)
    probe_interval: int | None = Field(default=None, ge=1)
    k: int | None = Field(default=None, ge=1)
    probe_tokens: int | None = Field(default=None, ge=1, le=256)
    answer_tokens: int | None = Field(default=None, ge=1)
    answer: Literal["boxed", "model"] | None = None  # after an early exit: the boxed answer, or the model's own
    samples: int | None = Field(default=None, ge=1, le=64)  # sc: most samples
    threshold: float | None = Field(default=None, ge=0.0, le=1.0)  # sc: certaindex to stop at
    deadline_s: float | None = Field(default=None, gt=0.0, le=86_400.0)  # scheduler: answer wanted within
    priority: int | None = Field(default=None, ge=-1000, le=1000)  # scheduler: lower runs sooner


@dataclass(frozen=True)
class ChatPlan:
    """What to do with one chat request."""

    policy: Policy
    messages: list[dict[str, str]]
    stream: bool
    include_usage: bool
    model: str | None
    cot: CoTConfig
    sc: SCConfig
    sampling_extra: dict[str, Any] = field(default_factory=dict)
    passthrough_reason: str | None = None  # why a request is passed through (for logs/headers)
    deadline_s: float | None = None  # seconds after arrival the client wants the answer by
    priority: int = 0  # scheduler priority class, lower runs sooner
    stop: tuple[str, ...] = ()  # the client's stop sequences (honoured by the embedded plain path)
    n: int = 1  # choices asked for


def parse_options(raw: Any) -> CertaindexOptions:
    if raw is None:
        return CertaindexOptions()
    if not isinstance(raw, dict):
        raise bad_request("'certaindex' must be an object", param="certaindex")
    try:
        return CertaindexOptions.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"certaindex.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise bad_request(problems, param="certaindex") from None


def _int_field(body: dict[str, Any], name: str, limit: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request(f"'{name}' must be an integer, got {value!r}", param=name)
    if not 1 <= value <= limit:
        raise bad_request(f"'{name}' must be between 1 and {limit}, got {value}", param=name)
    return value


def _number_field(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_request(f"'{name}' must be a number, got {value!r}", param=name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return float(value)


def _stop_field(raw: Any) -> tuple[str, ...]:
    """``stop``: a string or a list of strings (OpenAI allows up to 4; engines take more)."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise bad_request(f"'stop' must be a non-empty string or a list of them, got {raw!r:.100}", param="stop")
    return tuple(raw)


def fallback_note(plan: ChatPlan) -> dict[str, str]:
    """How a request served plainly says why certaindex did not take it over (empty if it was not a fallback)."""
    return {"policy": "off", "fallback": plan.passthrough_reason} if plan.passthrough_reason else {}


def embedded_plain_problem(body: dict[str, Any], plan: ChatPlan) -> tuple[str, str] | None:
    """What the embedded engine's plain completion (policy off) cannot honour in this request, as
    (reason, field); None if it can serve it all (``stop`` included). Refused, never ignored."""
    if not plan.messages:
        return plan.passthrough_reason or "the messages hold no text", "messages"
    used = [name for name in TAKEOVER_BLOCKERS if name != "stop" and body.get(name) not in (None, False, [], {})]
    used += sorted(name for name in ENGINE_SAMPLING_FIELDS if name in body)
    if used:
        return f"it does not take {', '.join(used)}", used[0]
    if plan.n > 1:
        return f"it answers one choice per request, not n={plan.n}", "n"
    return None


def text_messages(raw: Any) -> tuple[list[dict[str, str]] | None, str | None]:
    """Validate ``messages``; return them as plain text messages, or (None, reason) when they hold
    something certaindex does not reason over (images, tool calls): such requests pass through."""
    if raw is None:
        raise bad_request("'messages' is required", param="messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list", param="messages")
    out: list[dict[str, str]] = []
    reason: str | None = None
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise bad_request(f"messages[{i}] must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # (a list or object is not hashable)
            raise bad_request(f"messages[{i}].role must be one of {sorted(ROLES)}, got {role!r}", param="messages")
        content = message.get("content")
        if role == "tool" or message.get("tool_calls") or message.get("function_call"):
            reason = reason or "the conversation has tool calls"
            continue
        if isinstance(content, str):
            out.append({"role": "system" if role == "developer" else role, "content": content})
        elif isinstance(content, list):
            texts = []
            for part in content:
                if not isinstance(part, dict) or "type" not in part:
                    raise bad_request(f"messages[{i}].content parts must be objects with a type", param="messages")
                if part["type"] != "text":
                    reason = reason or f"messages[{i}] holds {part['type']} content"
                    break
                texts.append(str(part.get("text") or ""))
            else:
                out.append({"role": "system" if role == "developer" else role, "content": "".join(texts)})
        elif content is None and role == "assistant":
            out.append({"role": "assistant", "content": ""})
        else:
            raise bad_request(f"messages[{i}].content must be a string or a list of parts", param="messages")
    return (None, reason) if reason else (out, None)


def question_problem(messages: list[dict[str, str]]) -> str | None:
    """Why the certaindex programs cannot take this conversation's question (its last user message
    with text), or None. Such a request is served as plain passthrough, never a 5xx: the question is
    the client's to ask, and the upstream's to answer or refuse."""
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user" and m["content"].strip()), None)
    if question is None:
        return "no question found: the conversation has no user message with text"
    try:
        validate_question(question)
    except NoQuestionError as exc:
        return f"no question found: {exc}"
    return None


def plan_chat(body: dict[str, Any], default_policy: Policy, cot: CoTConfig, sc: SCConfig,
              max_tokens_limit: int) -> ChatPlan:
    """Validate a chat request and decide how to serve it. Raises a 400 ProxyError for bad input."""
    options = parse_options(body.get("certaindex"))
    messages, passthrough_reason = text_messages(body.get("messages"))
    max_tokens = _int_field(body, "max_completion_tokens", max_tokens_limit) or _int_field(
        body, "max_tokens", max_tokens_limit)
    temperature = _number_field(body, "temperature", 0.0, 2.0)
    top_p = _number_field(body, "top_p", 0.0, 1.0)
    if top_p == 0.0:
        raise bad_request("'top_p' must be greater than 0", param="top_p")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise bad_request(f"'seed' must be an integer, got {seed!r}", param="seed")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request(f"'stream' must be true or false, got {stream!r}", param="stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("'stream_options' must be an object", param="stream_options")
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise bad_request(f"'n' must be a positive integer, got {n!r}", param="n")
    stop = _stop_field(body.get("stop"))
    for limit_name, value in (("budget", options.budget), ("answer_tokens", options.answer_tokens)):
        if value is not None and value > max_tokens_limit:
            raise bad_request(f"certaindex.{limit_name} must be at most {max_tokens_limit}, got {value}",
                              param="certaindex")

    policy: Policy = options.policy or default_policy
    blockers = [name for name in TAKEOVER_BLOCKERS if body.get(name) not in (None, False, [], {})]
    if n not in (None, 1):
        blockers.append("n")
    if policy != "off" and not blockers and not passthrough_reason:
        passthrough_reason = question_problem(messages or [])
    if policy != "off" and (blockers or passthrough_reason):
        why = passthrough_reason or f"the request uses {', '.join(blockers)}"
        if options.policy is not None:
            raise bad_request(f"certaindex policy {policy!r} cannot serve this request: {why}; "
                              "send it without 'certaindex' (or with policy 'off') to pass it through",
                              param="certaindex")
        passthrough_reason, policy = why, "off"
    extra: dict[str, Any] = {}
    if policy != "off":
        unknown = sorted(set(body) - OPENAI_CHAT_FIELDS - ENGINE_SAMPLING_FIELDS)
        if unknown:
            raise bad_request(f"unknown field(s) {', '.join(map(repr, unknown))}: certaindex would not know "
                              "what to do with them", param=unknown[0])
        extra = {name: body[name] for name in ENGINE_SAMPLING_FIELDS if name in body}

    cot_config = cot
    cot_changes: dict[str, Any] = {
        key: value for key, value in (
            ("probe_interval", options.probe_interval), ("k", options.k),
            ("probe_tokens", options.probe_tokens), ("answer_tokens", options.answer_tokens),
            ("temperature", temperature), ("top_p", top_p), ("seed", seed), ("answer", options.answer),
        ) if value is not None
    }
    if options.k is not None or options.probe_interval is not None:
        cot_changes["certainty"] = None  # a request that asks for k or an interval gets Dynasor's rule
    budget = options.budget or cot.budget
    if max_tokens is not None:
        budget = min(budget, max_tokens)  # the client's max_tokens bounds every generated token
    cot_changes["budget"] = budget
    cot_changes["max_tokens"] = max_tokens  # ... and the reasoning and answer together
    cot_changes["early_exit"] = policy != "full"
    cot_changes["system_prompt"] = None  # the client's messages are rendered as they are
    cot_config = replace(cot_config, **cot_changes)
    sc_changes: dict[str, Any] = {"system_prompt": None}
    if options.samples is not None:
        sc_changes.update(n=options.samples, first_round=min(sc.first_round, options.samples),
                          round_size=min(sc.round_size, options.samples))
    if options.threshold is not None:
        sc_changes["threshold"] = options.threshold
    if max_tokens is not None:
        sc_changes["max_tokens"] = max_tokens
    for key, value in (("temperature", temperature), ("top_p", top_p), ("seed", seed)):
        if value is not None:
            sc_changes[key] = value
    try:
        sc_config = replace(sc, **sc_changes)
    except ValueError as exc:
        raise bad_request(str(exc), param="certaindex") from None
    model = body.get("model")
    return ChatPlan(
        policy=policy,
        messages=messages or [],
        stream=stream,
        include_usage=bool(stream_options.get("include_usage")),
        model=model if isinstance(model, str) else None,
        cot=cot_config,
        sc=sc_config,
        sampling_extra=extra,
        passthrough_reason=passthrough_reason,
        deadline_s=options.deadline_s,
        priority=options.priority or 0,
        stop=stop,
        n=n or 1,
    )
