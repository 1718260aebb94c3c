"""The chain of thought's settings and what it reports: its config, probes, trials, result, events.

Kept apart from the program (:mod:`certaindex.programs.cot`) so its phases (observe, reason,
answer) can share these types without importing the program that wires them together.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

from certaindex.core.prompting import DEFAULT_PROBE_SUFFIX, DEFAULT_SYSTEM_PROMPT, marks_probe_event
from certaindex.core.validation import require

# certain: an early exit; finished: the model ended its reasoning; budget: the reasoning budget ran
# out (the answer was forced by one last probe); answer_length: the reasoning ended (either way) and
# the answer the model wrote after it was cut at its token limit; engine_length: the engine cut the
# reasoning before the budget and gave no more (its context, vLLM's max-model-len, a recording's cut):
# the answer is read from what was written (the reasoning's, else the last probe's), none is asked for.
StopReason = Literal["certain", "finished", "budget", "answer_length", "engine_length"]
AnswerMode = Literal["boxed", "model"]
# The answer's room after </think> when the client sets no max_tokens: above every one of the 5,236
# answers the Governor traces recorded (longest 3,935 tokens, 99th percentile 1,381; see
# benchmarks/results/answer-lengths/governor.txt).
DEFAULT_ANSWER_TOKENS = 4096
ProbeTrigger = Literal["interval", "events", "both"]


@dataclass(frozen=True)
class CoTConfig:
    """Settings of one early-exit chain of thought. ``early_exit=False`` gives full reasoning."""

    budget: int = 2048  # most reasoning tokens (the model's max_tokens under full reasoning)
    probe_interval: int = 64  # reasoning tokens between probes
    k: int = 3  # consecutive agreeing probes needed to stop
    probe_tokens: int = 20  # length of one probe's completion
    answer_tokens: int = DEFAULT_ANSWER_TOKENS  # most tokens of the answer the model writes after </think>
    # The client's max_tokens: the model's own writing (reasoning and the answer after it) stays
    # within it, as an upstream serving the request directly would bound it. None: no such bound.
    max_tokens: int | None = None
    # After an early exit: answer with the settled answer, boxed ("boxed"), or close the thinking and
    # let the model write its own final answer ("model"; its tokens are answer tokens).
    answer: AnswerMode = "boxed"
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    early_exit: bool = True
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    probe_suffix: str = DEFAULT_PROBE_SUFFIX
    # Where to probe: every probe_interval tokens; at events in the text (a conclusion, "Wait",
    # </think>), at least probe_interval tokens apart; or both (events then at least a quarter
    # interval after the previous probe). Replayed traces hold probes at the interval only.
    probe_trigger: ProbeTrigger = "interval"
    # Reason in one upstream stream with probes beside it where the engine can
    # (Engine.concurrent_streams); False: in chunks with probes between them (for servers that run
    # one request at a time, where a side probe would wait for the whole stream).
    side_probes: bool = True
    # Probes running beside one main stream; a probe point that comes while this many run is
    # queued (never skipped), so the decisions do not depend on timing.
    max_probes_in_flight: int = 1
    # A fitted certainty score (a profile's "score" rule: schedule, threshold, model) decides at each
    # decision point instead of k agreeing probes; None: Dynasor's rule with k. Its schedule says
    # which points send a probe (gN, tc) and whether DEER trials are taken at each "Wait" (tr).
    certainty: dict | None = None

    @property
    def point_interval(self) -> int:
        """Tokens between decision points: the probe interval, or under a score rule its 64-token
        grid or finer (probes only where the schedule reads them; the model's boxes are read at each)."""
        return self.probe_interval if self.certainty is None else max(1, min(self.probe_interval, 64))

    @property
    def reads_trials(self) -> bool:
        """The score rule takes DEER trials (schedule part ``tr``): they need the engine's logprobs."""
        return self.certainty is not None and "tr" in str(self.certainty.get("schedule", "")).split("+")

    @property
    def event_gap(self) -> int:
        """Fewest tokens between an event probe and the probe before it."""
        return self.probe_interval if self.probe_trigger == "events" else max(1, self.probe_interval // 4)

    @property
    def max_probes(self) -> int:
        """Most probes a run may send, the forced last one included (for scheduler budgets)."""
        if not self.early_exit:
            return 1
        if self.certainty is not None and self.probe_trigger == "interval":
            # a score rule probes only where its schedule reads one: every gN tokens, once after </think>
            parts = str(self.certainty.get("schedule", "")).split("+")
            every = next((int(p[1:]) for p in parts if p.startswith("g") and p[1:].isdigit()), None)
            return (-(-self.budget // every) if every else 0) + ("tc" in parts) + 1
        gap = self.probe_interval if self.probe_trigger == "interval" else self.event_gap
        return -(-self.budget // gap) + 1

    @property
    def max_trials(self) -> int:
        """Most DEER-style trials a run may send (the score rule's ``trials.max``; 0 without ``tr``)."""
        if not (self.early_exit and self.reads_trials):
            return 0
        return int((self.certainty.get("trials") or {}).get("max", 30))  # type: ignore[union-attr]

    @property
    def max_side_tokens(self) -> int:
        """Most tokens its probes and trials may generate (for scheduler budgets)."""
        trial_tokens = int((self.certainty or {}).get("trials", {}).get("tokens", 20)) if self.max_trials else 0
        return self.max_probes * self.probe_tokens + self.max_trials * trial_tokens

    def answer_room(self, reasoning_tokens: int) -> int:
        """Most tokens the answer after ``reasoning_tokens`` of reasoning may take (0: none left)."""
        if self.max_tokens is None:
            return self.answer_tokens
        return max(0, min(self.answer_tokens, self.max_tokens - reasoning_tokens))

    def is_probe_point(self, last_point: int, tokens: int, reasoning: str, added: str) -> bool:
        """Whether the reasoning, now ``tokens`` long after ``added`` arrived, has reached a probe
        point (``last_point``: the position of the previous one)."""
        step = self.point_interval
        interval = tokens // step > last_point // step
        if self.probe_trigger == "interval" or (interval and self.probe_trigger == "both"):
            return interval
        if tokens - last_point < self.event_gap:
            return False
        return marks_probe_event(reasoning[: len(reasoning) - len(added)], added)

    def __post_init__(self) -> None:
        checks = [
            (self.budget >= 1, f"budget must be at least 1 token, got {self.budget}"),
            (self.probe_interval >= 1, f"probe_interval must be at least 1 token, got {self.probe_interval}"),
            (self.k >= 1, f"k must be at least 1, got {self.k}"),
            (self.probe_tokens >= 1, f"probe_tokens must be at least 1, got {self.probe_tokens}"),
            (self.answer_tokens >= 1, f"answer_tokens must be at least 1, got {self.answer_tokens}"),
            (self.max_tokens is None or self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.answer in ("boxed", "model"), f"answer must be boxed or model, got {self.answer!r}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (bool(self.probe_suffix.strip()), "probe_suffix must not be empty"),
            (self.probe_trigger in ("interval", "events", "both"),
             f"probe_trigger must be interval, events or both, got {self.probe_trigger!r}"),
            (self.max_probes_in_flight >= 1, f"max_probes_in_flight must be at least 1, got {self.max_probes_in_flight}"),
        ]
        require(checks)


@dataclass(frozen=True)
class Probe:
    """One probe: where it was taken, what it said, and what it cost."""

    at_tokens: int  # reasoning tokens generated when the probe was forked
    text: str
    answer: str | None
    hesitant: bool
    tokens: int
    # The certainty the program reports after this probe (the scheduler hears it): Dynasor's
    # progress (trailing agreeing run / k; 1.0 means the exit condition holds) or, under a score
    # rule, the score of this probe's observation (what the simulator's plans carry).
    certaindex: float


@dataclass(frozen=True)
class Trial:
    """One DEER-style trial: the answer read at a "Wait", its confidence from the token logprobs."""

    at_tokens: int  # reasoning tokens before the "Wait" it was taken at
    answer: str | None
    confidence: float
    min_prob: float
    tokens: int
    certaindex: float = 0.0  # the score of this trial's observation, reported like a probe's


@dataclass
class CoTResult:
    question: str
    answer: str | None
    answer_text: str
    stop_reason: StopReason
    reasoning: str
    prompt_tokens: int
    reasoning_tokens: int
    probe_tokens: int
    answer_tokens: int
    budget: int
    probes: list[Probe] = field(default_factory=list)
    probe_failures: int = 0  # probes the engine failed (early exit was then given up)
    # Reasoning tokens the main stream generated past the deciding probe's position before it was
    # closed (0 on the chunked path): real cost, not part of ``reasoning``.
    overrun_tokens: int = 0
    stream_resumes: int = 0  # times the main stream broke and was resumed from the prefix
    token_id_probes: int = 0  # probes sent as the model's token ids rather than text
    trials: list[Trial] = field(default_factory=list)  # DEER-style trials (their tokens are in probe_tokens)

    @property
    def total_tokens(self) -> int:
        """Every generated token: reasoning, overrun, probes and answer. This is the cost figure."""
        return self.reasoning_tokens + self.overrun_tokens + self.probe_tokens + self.answer_tokens

    def to_dict(self) -> dict:
        data = asdict(self)
        data["total_tokens"] = self.total_tokens
        return data


@dataclass(frozen=True)
class CoTEvent:
    """Progress for live displays: reasoning text arrived (``delta``, when streaming), a reasoning
    chunk ended, a probe answered, or a DEER-style trial answered (``trial``, score rules only)."""

    kind: Literal["delta", "chunk", "probe", "trial", "done"]
    reasoning_tokens: int
    probe_tokens: int
    text: str = ""
    probe: Probe | None = None
    trial: Trial | None = None

    @property
    def certaindex(self) -> float | None:
        """The certainty the program reports with this event (a probe's or a trial's); None for others."""
        record = self.probe if self.kind == "probe" else self.trial if self.kind == "trial" else None
        return None if record is None else record.certaindex


__all__ = ["DEFAULT_ANSWER_TOKENS", "AnswerMode", "CoTConfig", "CoTEvent", "CoTResult", "Probe", "ProbeTrigger", "StopReason", "Trial"]
