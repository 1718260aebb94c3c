"""One chain of thought in progress: the state its phases share, and the side requests it sends.

The phases (reason in chunks or in one stream, observe and decide, answer) read and update one
:class:`CoTRun`; probes and trials go through :class:`SideRequests`, which counts their tokens.
Both transports call the same pieces, so they differ only in how the reasoning arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

from certaindex.core.exit_score import LiveScore
from certaindex.core.prompting import PROBE_STOPS, THINK_CLOSE, THINK_OPEN, opens_box
from certaindex.engines.base import BudgetExhausted, Completion, Engine, EngineError, GenerationRequest
from certaindex.programs.cot_observe import Judge
from certaindex.programs.cot_types import CoTConfig, CoTEvent, Probe, StopReason


def trial_stops(require_think_close: bool) -> tuple[str, ...]:
    """A trial's stop strings: at the box's end (DEER's), or at ``</think>`` for a profile whose
    trials were recorded under ``require_think_close`` (they run on until the model closes its thinking)."""
    return (THINK_CLOSE,) if require_think_close else PROBE_STOPS


class SideRequests:
    """The probes and trials sent beside the reasoning; their tokens count as probe tokens."""

    def __init__(self, engine: Engine, prompt: str, config: CoTConfig, live: LiveScore | None) -> None:
        self.engine = engine
        self.prompt = prompt
        self.config = config
        self.live = live
        self.probe_tokens = 0  # every probe and trial token so far
        self.id_probes = 0  # probes sent as the model's token ids rather than text
        self._suffix_ids: list[tuple[int, ...] | None] = []  # the probe suffix's token ids, asked for once

    async def _probe_ids(self, ids: tuple[int, ...] | None) -> tuple[int, ...] | None:
        """The probe prompt as token ids: the model's own tokens so far plus the suffix's (None: text)."""
        if ids is None:
            return None
        if not self._suffix_ids:
            try:
                self._suffix_ids.append(await self.engine.tokenize(self.config.probe_suffix))
            except EngineError:
                self._suffix_ids.append(None)
        suffix = self._suffix_ids[0]
        return None if suffix is None else ids + suffix

    async def probe(self, text: str, ids: tuple[int, ...] | None = None) -> Completion:
        """One probe on ``text`` (the reasoning so far; ``ids``: the prompt and it as the model's
        token ids, where known); its tokens are counted when it answers."""
        config = self.config
        prompt_ids = await self._probe_ids(ids)
        completion = await self.engine.generate(GenerationRequest(
            prompt=self.prompt + text + config.probe_suffix,
            max_tokens=config.probe_tokens,
            stop=PROBE_STOPS if opens_box(config.probe_suffix) else (),
            temperature=0.0,
            seed=config.seed,
            prompt_ids=prompt_ids,
        ))
        self.probe_tokens += completion.first.completion_tokens
        self.id_probes += prompt_ids is not None
        return completion

    async def trial(self, text: str) -> Completion:
        """One DEER-style trial on ``text`` (the reasoning before a "Wait"): greedy, with logprobs."""
        live = self.live
        assert live is not None
        completion = await self.engine.generate(GenerationRequest(
            prompt=self.prompt + text + live.trial_suffix, max_tokens=live.trial_tokens,
            stop=trial_stops(live.require_think_close),
            temperature=0.0, seed=self.config.seed, logprobs=1))
        self.probe_tokens += completion.first.completion_tokens
        if completion.first.logprobs is None:
            raise EngineError(f"{self.engine.name} returned no logprobs for a trial answer")
        return completion


@dataclass
class CoTRun:
    """The state of one chain of thought that its phases share: the reasoning so far, its counts,
    whether early exit still holds, and how it stopped."""

    config: CoTConfig
    prompt: str
    judge: Judge
    side: SideRequests
    emit: Callable[[CoTEvent], None]
    early_exit: bool
    probe_failures: Literal["raise", "full-reasoning"] = "raise"
    stream_reasoning: bool = False
    reasoning: str = ""
    reasoning_tokens: int = 0
    overrun_tokens: int = 0
    answer_tokens: int = 0
    resumes: int = 0
    prompt_tokens: int = 0
    failed_probes: int = 0
    stop_reason: StopReason = "budget"

    @property
    def live(self) -> LiveScore | None:
        return self.judge.live

    @property
    def thinking(self) -> bool:
        """Whether the prompt opened the model's thinking (its reasoning ends with </think>)."""
        return self.prompt.rstrip().endswith(THINK_OPEN)

    def event(self, kind: Literal["delta", "chunk", "done"], reasoning_tokens: int, text: str = "") -> None:
        self.emit(CoTEvent(kind, reasoning_tokens, self.side.probe_tokens, text=text))

    def probe_failed(self, exc: EngineError) -> None:
        """A failed probe or trial: raise, or give up early exit and reason to the end. One the engine
        refused because its context is full never raises: no later probe fits either, and the
        reasoning ends where the engine's limit cuts it (``engine_length``)."""
        if self.probe_failures == "raise" and not exc.context_full:
            raise exc
        self.failed_probes += 1
        self.early_exit = False

    def record_probe(self, at_tokens: int, completion: Completion) -> Probe:
        return self.judge.record_probe(at_tokens, completion, self.side.probe_tokens)

    def record_trial(self, at_tokens: int, completion: Completion) -> bool:
        return self.judge.record_trial(at_tokens, completion, self.side.probe_tokens)

    async def probe_or_none(self, at: int | None = None, text: str | None = None) -> Probe | None:
        """A probe at the current position (or at ``at`` tokens on ``text``), or None when it failed
        and failures fall back to full reasoning."""
        position = self.reasoning_tokens if at is None else at
        try:
            return self.record_probe(position, await self.side.probe(self.reasoning if text is None else text))
        except BudgetExhausted:
            raise
        except EngineError as exc:
            self.probe_failed(exc)
            return None

    def reasoning_request(self, done_tokens: int) -> GenerationRequest:
        """The next reasoning request after ``done_tokens`` (one chunk; the stream's sampling)."""
        config = self.config
        return GenerationRequest(
            prompt=self.prompt + self.reasoning,
            max_tokens=min(config.point_interval, config.budget - done_tokens),
            stop=(THINK_CLOSE,) if self.thinking else (),
            temperature=config.temperature,
            top_p=config.top_p,
            seed=None if config.seed is None else config.seed + done_tokens,
        )

    def exit_at(self, at: int, text: str, streamed_tokens: int) -> None:
        """Exit at position ``at`` (where the score's deciding observation was read): the reasoning
        is ``text`` up to there, and what was generated past it (``streamed_tokens`` in all) is overrun."""
        live = self.live
        assert live is not None
        self.reasoning, self.reasoning_tokens = text[:live.chars_at(at)], at
        self.overrun_tokens = streamed_tokens - at


__all__ = ["CoTRun", "SideRequests", "trial_stops"]
