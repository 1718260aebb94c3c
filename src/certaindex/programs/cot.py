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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Sequence

from contextlib import aclosing

from certaindex.core.answers import answers_equal, canonical_answer, extract_answer, is_hesitant
from certaindex.core.exit_score import LiveScore, read_trial
from certaindex.core.prompting import (
    PROBE_STOPS,
    marks_probe_event,
    THINK_CLOSE,
    THINK_OPEN,
    DEFAULT_PROBE_SUFFIX,
    DEFAULT_SYSTEM_PROMPT,
    format_answer,
    opens_box,
    read_probe_answer,
)
from certaindex.core.signals import ProbeObservation, probe_certaindex, probes_agree
from certaindex.core.validation import require
from certaindex.engines.base import (
    BudgetExhausted,
    Completion,
    Engine,
    EngineConfigError,
    EngineError,
    GenerationRequest,
)
from certaindex.programs.base import open_prompt
from certaindex.programs.main_stream import ProbePoint, SideProbes, Verdict, reason_in_one_stream

StopReason = Literal["certain", "finished", "budget"]
BOXED = object()  # a side point settled by the model's own boxes before its request was sent
ProbeTrigger = Literal["interval", "events", "both"]


@dataclass(frozen=True)
class CoTConfig:
    """Settings of one early-exit chain of thought. ``early_exit=False`` gives full reasoning."""

    budget: int = 2048  # most reasoning tokens (the model's max_tokens under full reasoning)
    probe_interval: int = 64  # reasoning tokens between probes
    k: int = 3  # consecutive agreeing probes needed to stop
    probe_tokens: int = 20  # length of one probe's completion
    answer_tokens: int = 256  # room for the answer after a reasoning model closes </think>
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
    thinking = prompt.rstrip().endswith(THINK_OPEN)
    reasoning = ""
    reasoning_tokens = probe_tokens = answer_tokens = overrun_tokens = resumes = id_probes = 0
    prompt_tokens = 0
    probes: list[Probe] = []
    observations: list[ProbeObservation] = []
    stop_reason: StopReason = "budget"
    emit = on_event or (lambda _event: None)
    early_exit = config.early_exit
    failed_probes = 0
    live = LiveScore(config.certainty, canonical_answer) if config.certainty is not None else None
    if live is not None and live.reads_trials and early_exit and not getattr(engine, "returns_logprobs", False):
        raise EngineConfigError(f"the score rule reads DEER trials, which need token logprobs, and {engine.name} "
                                "returns none; use a profile without trials (--profile conservative)")
    exit_answer: list[str | None] = [None]
    trials: list[Trial] = []

    probe_settled = [False]  # under a score rule: whether the latest probe's observation settled it

    def settled_after(record: Probe | None, at_tokens: int) -> bool:
        """The certainty rule at a decision point: the score (the boxes the model wrote up to it, the
        probe taken there if any, already judged by :func:`record_probe`) or k agreeing probes."""
        if live is None:
            return probes_agree(observations, config.k, answers_equal)
        if record is not None:
            return probe_settled[0]
        live.boxed(upto=at_tokens)
        return decided()

    def score_reported() -> float:
        """The score of the latest observation, as the certainty the scheduler hears (in [0, 1])."""
        return min(1.0, max(0.0, live.last_score or 0.0))  # type: ignore[union-attr]

    def decided() -> bool:
        go, answer, _ = live.decide()  # type: ignore[union-attr]
        if go:
            exit_answer[0] = answer
        return go

    async def send_trial(text: str) -> Completion:
        """One DEER-style trial on ``text`` (the reasoning before a "Wait"): greedy, with logprobs;
        its tokens count as probe tokens."""
        nonlocal probe_tokens
        assert live is not None
        completion = await engine.generate(GenerationRequest(
            prompt=prompt + text + live.trial_suffix, max_tokens=live.trial_tokens, stop=PROBE_STOPS,
            temperature=0.0, seed=config.seed, logprobs=1))
        probe_tokens += completion.first.completion_tokens
        if completion.first.logprobs is None:
            raise EngineError(f"{engine.name} returned no logprobs for a trial answer")
        return completion

    def record_trial(at_tokens: int, completion: Completion) -> bool:
        """Read a trial (answer, confidence from its logprobs), feed it to the score after the boxes
        written before it, and decide."""
        assert live is not None
        choice = completion.first
        lps = choice.logprobs or ()
        reading = read_trial([t.token for t in lps], [t.logprob for t in lps])
        answer = reading.answer
        if answer is None and choice.finish_reason == "stop":  # the engine cut the closing brace with a stop string
            answer = read_probe_answer("\\boxed{", choice.text.lstrip().removeprefix("{"), True)
        live.observe("trial", answer, out_tokens=choice.completion_tokens, confidence=reading.confidence,
                     min_prob=reading.min_prob, pos=at_tokens)
        settled = decided()
        trial = Trial(at_tokens, answer, reading.confidence, reading.min_prob, choice.completion_tokens, score_reported())
        trials.append(trial)
        emit(CoTEvent("trial", at_tokens, probe_tokens, trial=trial))
        return settled

    if main_stream is None:  # full reasoning sends no side request: one stream wherever tokens stream
        main_stream = config.side_probes and bool(
            getattr(engine, "concurrent_streams", False) or (not early_exit and getattr(engine, "streams_tokens", False)))

    def reasoning_request(done_tokens: int) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt + reasoning,
            max_tokens=min(config.point_interval, config.budget - done_tokens),
            stop=(THINK_CLOSE,) if thinking else (),
            temperature=config.temperature,
            top_p=config.top_p,
            seed=None if config.seed is None else config.seed + done_tokens,
        )

    async def reasoning_chunk(request: GenerationRequest) -> tuple[str, int, str, int]:
        """(text, tokens, finish_reason, prompt_tokens) of one reasoning chunk. Under a score rule it
        is streamed, so the score places what the model writes token by token."""
        if not stream_reasoning and live is None:
            completion = await engine.generate(request)
            choice = completion.first
            return choice.text, choice.completion_tokens, choice.finish_reason, completion.prompt_tokens
        parts: list[str] = []
        tokens, finish, prompt = 0, None, 0
        async with aclosing(engine.stream(request)) as deltas:
            async for delta in deltas:
                tokens += delta.tokens
                finish = delta.finish_reason or finish
                prompt = delta.prompt_tokens or prompt
                if live is not None:
                    live.add_text(delta.text, delta.tokens)
                if delta.text:
                    parts.append(delta.text)
                    if stream_reasoning:
                        emit(CoTEvent("delta", reasoning_tokens + tokens, probe_tokens, text=delta.text))
        if finish is None:
            raise EngineError(f"the stream from {engine.name} ended without a finish reason")
        return "".join(parts), tokens, finish, prompt

    suffix_ids: list[tuple[int, ...] | None] = []  # the probe suffix's token ids, asked for once

    async def probe_ids(ids: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """The probe prompt as token ids: the model's own tokens so far plus the suffix's (None: text)."""
        if ids is None:
            return None
        if not suffix_ids:
            try:
                suffix_ids.append(await engine.tokenize(config.probe_suffix))
            except EngineError:
                suffix_ids.append(None)
        return None if suffix_ids[0] is None else ids + suffix_ids[0]

    async def send_probe(text: str, ids: tuple[int, ...] | None = None) -> Completion:
        """One probe on ``text`` (the reasoning so far; ``ids``: the prompt and it as the model's
        token ids, where known); its tokens are counted when it answers."""
        nonlocal probe_tokens, id_probes
        prompt_ids = await probe_ids(ids)
        completion = await engine.generate(
            GenerationRequest(
                prompt=prompt + text + config.probe_suffix,
                max_tokens=config.probe_tokens,
                stop=PROBE_STOPS if opens_box(config.probe_suffix) else (),
                temperature=0.0,
                seed=config.seed,
                prompt_ids=prompt_ids,
            )
        )
        probe_tokens += completion.first.completion_tokens
        id_probes += prompt_ids is not None
        return completion

    def record_probe(at_tokens: int, completion: Completion) -> Probe:
        """Read a probe's answer and judge it in order: the rule sees probes by position."""
        choice = completion.first
        hit_stop = choice.finish_reason == "stop" and opens_box(config.probe_suffix)
        answer = read_probe_answer(config.probe_suffix, choice.text, hit_stop)
        hesitant = is_hesitant(choice.text)
        observations.append(ProbeObservation(answer=answer, hesitant=hesitant))
        if live is None:
            certaindex = probe_certaindex(observations, config.k, answers_equal)
        else:  # the score judges the boxes written up to the probe, then the probe
            live.boxed(upto=at_tokens)
            live.observe("grid", answer, certain=not hesitant, out_tokens=choice.completion_tokens, pos=at_tokens)
            probe_settled[0] = decided()
            certaindex = score_reported()
        record = Probe(
            at_tokens=at_tokens,
            text=choice.text,
            answer=answer,
            hesitant=hesitant,
            tokens=choice.completion_tokens,
            certaindex=certaindex,
        )
        probes.append(record)
        emit(CoTEvent("probe", at_tokens, probe_tokens, probe=record))
        return record

    def probe_failed(exc: EngineError) -> None:
        """A failed probe: raise, or give up early exit and reason to the end."""
        nonlocal early_exit, failed_probes
        if probe_failures == "raise":
            raise exc
        failed_probes += 1
        early_exit = False

    async def probe_or_none(at: int | None = None, text: str | None = None) -> Probe | None:
        """A probe at the current position (or at ``at`` tokens on ``text``), or None when it failed
        and failures fall back to full reasoning."""
        try:
            return record_probe(reasoning_tokens if at is None else at,
                                await send_probe(reasoning if text is None else text))
        except BudgetExhausted:
            raise
        except EngineError as exc:
            probe_failed(exc)
            return None

    if main_stream:
        def judge(point: ProbePoint, outcome: Completion | BaseException) -> Verdict:
            if isinstance(outcome, BudgetExhausted):
                return "budget"
            if isinstance(outcome, EngineError):
                probe_failed(outcome)
                return "stop-probing"
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is BOXED:
                return "settled"
            if point.kind == "trial":
                live.boxed(upto=point.at_tokens)  # type: ignore[union-attr]
                return "settled" if record_trial(point.at_tokens, outcome) else "continue"
            record = record_probe(point.at_tokens, outcome) if outcome is not None else None
            return "settled" if settled_after(record, point.at_tokens) else "continue"

        async def run_point(point: ProbePoint) -> Completion | object | None:
            """A trial, a probe, or (a point where the score rule reads no probe) nothing. Where every
            point before this one is judged, the boxes the model wrote up to it are judged first, so
            one that settles it spares the request (as the chunked path does)."""
            wanted = point.kind == "trial" or live is None or live.probe_wanted(point.at_tokens)
            if not wanted:
                return None
            if live is not None and side.judged == point.index:
                live.boxed(upto=point.at_tokens)
                if decided():
                    return BOXED
            if point.kind == "trial":
                return await send_trial(point.reasoning)
            return await send_probe(point.reasoning, point.ids)

        def on_delta(delta: object, tokens: int) -> None:
            text = getattr(delta, "text", "")
            if live is not None:
                live.add_text(text, getattr(delta, "tokens", 0))
            if stream_reasoning and text:
                emit(CoTEvent("delta", tokens, probe_tokens, text=text))

        last_point = [0]

        def on_point(tokens: int, text: str) -> None:
            emit(CoTEvent("chunk", tokens, probe_tokens, text=text[last_point[0]:]))
            last_point[0] = len(text)

        side = SideProbes(run_point, judge, config.max_probes_in_flight)
        outcome = await reason_in_one_stream(
            engine, prompt, budget=config.budget,
            base=reasoning_request(0),
            probes=side if early_exit else None,
            is_point=config.is_probe_point,
            on_delta=on_delta, on_point=on_point,
            trial_points=live.trial_points if live is not None and live.reads_trials and early_exit else None,
        )
        reasoning, reasoning_tokens = outcome.reasoning, outcome.tokens
        overrun_tokens, resumes = outcome.overrun_tokens, outcome.resumes
        prompt_tokens = outcome.prompt_tokens
        stop_reason = outcome.stop
        if stop_reason == "finished" and live is not None and early_exit:
            # the boxes the model wrote after the last decision point (its final answer, usually)
            live.boxed()
            if decided():
                stop_reason = "certain"
        if stop_reason == "certain" and live is not None and live.exit_obs is not None:
            # the exit is where the deciding observation was read (a box, a trial): the rest streamed is overrun
            at = live.exit_obs.pos
            reasoning, reasoning_tokens = live.text[:live.chars_at(at)], at
            overrun_tokens = outcome.streamed_tokens - at
        emit(CoTEvent("chunk", reasoning_tokens, probe_tokens, text=reasoning[last_point[0]:]))

    held: list[tuple[int, int]] = []  # chunked score path: an end point (tokens, chars) held until a "Wait" right before it is confirmed

    async def score_points(end: tuple[int, int] | None, final: bool) -> bool:
        """The chunked path's decision points under a score rule, in position order (as the one
        stream takes them): trial points confirmed by this chunk, a held end point, and this
        chunk's end (``end``: tokens and characters; None: none). True: exit."""
        assert live is not None
        points: list[tuple[int, int, int]] = [(pos, 1, char) for char, pos in live.trial_points(final=final)]
        ends, held[:] = held[:], []
        if end is not None:
            (held if live.trial_pending() and not final else ends).append(end)
        points += [(at, 0, chars) for at, chars in ends]
        for pos, kind, chars in sorted(points):
            if not early_exit:
                return False
            if kind == 1:
                live.boxed(upto=pos)
                if decided():
                    return True
                try:
                    completion = await send_trial(reasoning[:chars])
                except BudgetExhausted:
                    raise
                except EngineError as exc:
                    probe_failed(exc)
                    return False
                if record_trial(pos, completion):
                    return True
                continue
            record = None
            if live.probe_wanted(pos):
                live.boxed(upto=pos)
                if decided():  # a box the model wrote settles it before the probe is paid for
                    return True
                record = await probe_or_none(pos, reasoning[:chars])
                if record is None:
                    return False
            if settled_after(record, pos):
                return True
        if final and early_exit:  # the boxes written after the last decision point (the final answer, usually)
            live.boxed()
            return decided()
        return False

    while not main_stream and reasoning_tokens < config.budget:
        # Full reasoning uses the same chunks, so an early exit's reasoning is an exact prefix of
        # the full reasoning on a deterministic engine and the two are compared like for like.
        try:
            text, tokens, finish_reason, chunk_prompt_tokens = await reasoning_chunk(reasoning_request(reasoning_tokens))
        except BudgetExhausted:
            break  # a scheduler has no tokens left for this program: its budget ran out
        prompt_tokens = prompt_tokens or chunk_prompt_tokens
        chunk_start = len(reasoning)
        reasoning += text
        reasoning_tokens += tokens
        emit(CoTEvent("chunk", reasoning_tokens, probe_tokens, text=text))
        if live is not None:
            finished = finish_reason != "length" or tokens == 0
            end = None if finished or reasoning_tokens >= config.budget else (reasoning_tokens, len(reasoning))
            try:
                settled = early_exit and await score_points(end, finished)
            except BudgetExhausted:
                break
            if settled:
                stop_reason = "certain"
                at = live.exit_obs.pos if live.exit_obs is not None else reasoning_tokens
                overrun_tokens, reasoning_tokens = reasoning_tokens - at, at
                reasoning = reasoning[:live.chars_at(at)]
                break
            if finished:
                stop_reason = "finished"
                break
            continue
        if finish_reason != "length" or tokens == 0:
            stop_reason = "finished"
            break
        # Events: probe after a chunk in which one happened (the stream probes right at it).
        wanted = config.probe_trigger != "events" or marks_probe_event(reasoning[:chunk_start], text)
        if early_exit and wanted and reasoning_tokens < config.budget:
            try:
                record = await probe_or_none()
                settled = record is not None and settled_after(record, reasoning_tokens)
            except BudgetExhausted:
                break
            if settled:
                stop_reason = "certain"
                break

    if stop_reason == "certain":
        answer = exit_answer[0] if live is not None else probes[-1].answer
        answer_text = format_answer(answer)
    elif stop_reason == "finished" and thinking:
        # The model closed its reasoning: let it write the answer, as it would without certaindex.
        completion = await engine.generate(
            GenerationRequest(
                prompt=prompt + reasoning + THINK_CLOSE + "\n\n",
                max_tokens=config.answer_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=config.seed,
            )
        )
        answer_tokens += completion.first.completion_tokens
        answer_text = completion.first.text.strip()
        answer = extract_answer(answer_text) or extract_answer(reasoning)
    elif stop_reason == "finished":
        answer = extract_answer(reasoning)
        answer_text = reasoning.strip()
    else:
        # Budget spent mid-thought: force an answer with one last probe, and say so.
        try:
            last = await probe_or_none()
        except BudgetExhausted:  # not even a probe fits the scheduler's allowance: the last one stands
            last = probes[-1] if probes else None
        answer = last.answer if last is not None else extract_answer(reasoning)
        answer_text = format_answer(answer)

    result = CoTResult(
        question=question,
        answer=answer,
        answer_text=answer_text if answer is not None else "",
        stop_reason=stop_reason,
        reasoning=reasoning,
        prompt_tokens=prompt_tokens,
        reasoning_tokens=reasoning_tokens,
        probe_tokens=probe_tokens,
        answer_tokens=answer_tokens,
        budget=config.budget,
        probes=probes,
        probe_failures=failed_probes,
        overrun_tokens=overrun_tokens,
        stream_resumes=resumes,
        token_id_probes=id_probes,
        trials=trials,
    )
    emit(CoTEvent("done", reasoning_tokens, probe_tokens))
    return result


