"""Self-consistency with certainty-driven early stopping, and its relatives.

Samples are drawn in rounds on one shared prompt (engines with prefix caching compute it once).
After each round the answers are clustered into classes of equivalent answers and a stopping rule
decides whether the vote is already decided:

* ``fixed``: never stop early (plain self-consistency with N samples, the baseline);
* ``entropy``: the paper's certaindex (1 - normalised semantic entropy) reaches ``threshold``;
* ``anytime``: the leader's lead is significant under an anytime-valid e-process at level ``alpha``
  (see :mod:`certaindex.core.stopping`).

Nothing is in flight when a round ends, so stopping wastes no tokens and every token is counted.

A sample the engine cuts short (``length`` before ``max_tokens``: its context filled) keeps what it
wrote and votes with it. A round the engine refuses because its context is full ends its samples
cut with no text (they count in the vote as samples without an answer) and ends the sampling
(``stop_reason: engine_length``; the same request would be refused again). Refused before any
sample, the prompt itself does not fit: that error stands.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

from certaindex.core.answers import answers_equal, extract_answer
from certaindex.engines.base import Engine, EngineError, GenerationRequest, StreamDelta
from certaindex.engines.context_full import cut_by_engine
from certaindex.core.prompting import DEFAULT_SYSTEM_PROMPT
from certaindex.programs.base import open_prompt
from certaindex.core.signals import Equal, Vote, majority_vote
from certaindex.core.stopping import anytime_valid_leader, entropy_rule
from certaindex.core.validation import require

StopRule = Literal["fixed", "entropy", "anytime"]
SCStop = Literal["certain", "significant", "budget", "engine_length"]


class NoAnswerError(RuntimeError):
    """Every sample ended without an answer: there is nothing to vote on. Carries what was spent
    and how many of the samples the engine cut (or refused for a full context)."""

    def __init__(self, message: str, total_tokens: int = 0, samples_used: int = 0, cut: int = 0) -> None:
        super().__init__(message + (f" ({cut} cut by the engine)" if cut else ""))
        self.total_tokens = total_tokens
        self.samples_used = samples_used
        self.cut = cut


@dataclass(frozen=True)
class SCConfig:
    n: int = 16  # most samples (the budget N)
    first_round: int = 4
    round_size: int = 4
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = 0
    rule: StopRule = "entropy"
    threshold: float = 0.8  # certaindex needed by the entropy rule
    alpha: float = 0.05  # error level of the anytime-valid rule
    min_samples: int = 2  # never stop on fewer samples than this
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        checks = [
            (self.n >= 1, f"n (samples) must be at least 1, got {self.n}"),
            (self.first_round >= 1, f"first_round must be at least 1, got {self.first_round}"),
            (self.round_size >= 1, f"round_size must be at least 1, got {self.round_size}"),
            (self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.rule in ("fixed", "entropy", "anytime"), f"unknown stopping rule {self.rule!r}"),
            (0 <= self.threshold <= 1, f"threshold must be in [0, 1], got {self.threshold}"),
            (0 < self.alpha < 1, f"alpha must be in (0, 1), got {self.alpha}"),
            (self.min_samples >= 1, f"min_samples must be at least 1, got {self.min_samples}"),
            (self.rule != "anytime" or self.n >= 2, "the anytime rule needs n >= 2"),
        ]
        require(checks)


@dataclass(frozen=True)
class Sample:
    text: str
    answer: str | None
    tokens: int
    finish_reason: str
    # Cut short: ended on ``length`` before ``max_tokens`` (the engine's context filled, or a
    # scheduler's allowance capped it), or refused because the engine's context is full (no text).
    cut: bool = False


@dataclass
class SCResult:
    question: str
    answer: str
    vote: Vote
    samples: list[Sample]
    stop_reason: SCStop
    prompt_tokens: int
    certaindex_history: list[float] = field(default_factory=list)

    @property
    def samples_used(self) -> int:
        return len(self.samples)

    @property
    def samples_cut(self) -> int:
        """Samples the engine cut short or refused for a full context (see :class:`Sample`)."""
        return sum(s.cut for s in self.samples)

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.samples)


def decide(answers: Sequence[str | None], config: SCConfig, equal: Equal = answers_equal) -> tuple[Vote, str | None]:
    """Vote on the answers so far and say why to stop (or None to go on). ``equal``: answer
    equivalence; a replay that has already put its answers in classes passes plain ``==``."""
    vote = majority_vote(answers, equal)
    if len(answers) < config.min_samples or vote.answer is None:
        return vote, None
    if config.rule == "entropy" and entropy_rule(vote.certaindex, config.threshold):
        return vote, "certain"
    if config.rule == "anytime":
        counts = [len(c) for c in vote.clusters]
        if anytime_valid_leader(counts, max_samples=config.n, alpha=config.alpha).stop:
            return vote, "significant"
    return vote, None


async def self_consistency(
    engine: Engine,
    question: str,
    config: SCConfig = SCConfig(),
    on_round: Callable[[Vote], None] | None = None,
    messages: Sequence[dict[str, str]] | None = None,
) -> SCResult:
    """Sample in rounds until the stopping rule fires or ``config.n`` samples are drawn.
    ``messages``: vote on this whole conversation instead of ``question`` (a proxied chat request)."""
    question, prompt = await open_prompt(engine, question, config.system_prompt, messages)
    samples: list[Sample] = []
    prompt_tokens = 0
    history: list[float] = []
    stop_reason: SCStop = "budget"
    vote = majority_vote([], answers_equal)
    while len(samples) < config.n:
        size = config.first_round if not samples else config.round_size
        size = min(size, config.n - len(samples))
        seed = None if config.seed is None else config.seed + len(samples)
        drawn, round_prompt_tokens, refused = await _draw_round(engine, prompt, config, seed, size, first=not samples)
        prompt_tokens = prompt_tokens or round_prompt_tokens
        samples.extend(drawn)
        vote, reason = decide([s.answer for s in samples], config)
        history.append(vote.certaindex)
        if on_round:
            on_round(vote)
        if reason is not None or refused:
            stop_reason = reason or "engine_length"  # type: ignore[assignment]
            break
    if vote.answer is None:
        cut = sum(s.cut for s in samples)
        raise NoAnswerError(
            f"none of the {len(samples)} samples gave an answer",
            total_tokens=sum(s.tokens for s in samples),
            samples_used=len(samples),
            cut=cut,
        )
    return SCResult(
        question=question,
        answer=vote.answer,
        vote=vote,
        samples=samples,
        stop_reason=stop_reason,
        prompt_tokens=prompt_tokens,
        certaindex_history=history,
    )


async def _draw_round(
    engine: Engine, prompt: str, config: SCConfig, seed: int | None, size: int, first: bool
) -> tuple[list[Sample], int, bool]:
    """One round of ``size`` samples: the samples, the prompt's tokens, and whether the engine
    refused the round because its context is full (its samples then end cut, with no text)."""
    request = GenerationRequest(
        prompt=prompt,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        seed=seed,
        n=size,
    )
    try:
        completion = await engine.generate(request)
    except EngineError as exc:
        if first or not exc.context_full:
            raise  # refused before any sample: the prompt itself does not fit (or another failure)
        return [Sample("", None, 0, "length", cut=True) for _ in range(size)], 0, True
    samples = [
        Sample(c.text, extract_answer(c.text), c.completion_tokens, c.finish_reason,
               cut=cut_by_engine(c.finish_reason, c.completion_tokens, config.max_tokens))
        for c in completion.choices
    ]
    return samples, completion.prompt_tokens, False


@dataclass
class FirstFinishResult:
    question: str
    answer: str | None
    text: str
    total_tokens: int  # the winner's tokens plus what the cancelled samples had generated
    samples_started: int
    refused: int = 0  # samples the engine refused because its context is full (they cannot win)


async def first_finish(engine: Engine, question: str, n: int = 4, config: SCConfig = SCConfig()) -> FirstFinishResult:
    """Start ``n`` samples, return the first to finish and cancel the rest at once (a cheap baseline:
    shorter traces tend to be the right ones). A sample the engine refuses for a full context does
    not win; when it refuses every one, that refusal stands."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    question, prompt = await open_prompt(engine, question, config.system_prompt)
    counts = [0] * n
    texts = [""] * n

    async def run(i: int) -> int:
        request = GenerationRequest(
            prompt=prompt,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=None if config.seed is None else config.seed + i,
        )
        stream = engine.stream(request)
        try:
            async for delta in stream:
                counts[i] += delta.tokens
                texts[i] += delta.text
        finally:
            await stream.aclose()
        return i

    tasks = [asyncio.create_task(run(i)) for i in range(n)]
    try:
        winner, refused = await _first_unrefused(tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return FirstFinishResult(
        question=question,
        answer=extract_answer(texts[winner]),
        text=texts[winner],
        total_tokens=sum(counts),
        samples_started=n,
        refused=refused,
    )


async def _first_unrefused(tasks: list[asyncio.Task[int]]) -> tuple[int, int]:
    """The result of the first task to end that the engine did not refuse for a full context, and
    how many were so refused; other failures raise as they come, and the first refusal when every
    task was refused."""
    pending: set[asyncio.Task[int]] = set(tasks)
    refusals: list[EngineError] = []
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if isinstance(error, EngineError) and error.context_full:
                refusals.append(error)
                continue
            return task.result(), len(refusals)
    raise refusals[0]


__all__ = [
    "FirstFinishResult",
    "NoAnswerError",
    "SCConfig",
    "SCResult",
    "Sample",
    "StreamDelta",
    "first_finish",
    "self_consistency",
]
