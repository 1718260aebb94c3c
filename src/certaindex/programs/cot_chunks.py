"""Reason in chunks: the transport for engines that serve one request at a time (the embedded
engine, replayed traces, servers without side probes).

The model reasons ``CoTConfig.point_interval`` tokens at a time and the decision points between
chunks are probed (and, under a score rule, its trial points and boxes judged) before the next
chunk is asked for. Full reasoning uses the same chunks, so an early exit's reasoning is an exact
prefix of the full reasoning on a deterministic engine and the two are compared like for like.
"""

from __future__ import annotations

from contextlib import aclosing

from certaindex.core.prompting import marks_probe_event
from certaindex.engines.base import BudgetExhausted, Engine, EngineError, GenerationRequest
from certaindex.engines.context_full import cut_by_engine
from certaindex.programs.cot_run import CoTRun
from certaindex.programs.cot_types import StopReason

Chunk = tuple[str, int, str, int]  # text, tokens, finish_reason, prompt_tokens


async def read_chunk(run: CoTRun, engine: Engine, request: GenerationRequest) -> Chunk:
    """One reasoning chunk. Under a score rule (or when relaying the reasoning) it is streamed, so
    the score places what the model writes token by token."""
    live = run.live
    if not run.stream_reasoning and live is None:
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
                if run.stream_reasoning:
                    run.event("delta", run.reasoning_tokens + tokens, delta.text)
    if finish is None:
        raise EngineError(f"the stream from {engine.name} ended without a finish reason")
    return "".join(parts), tokens, finish, prompt


class ScorePoints:
    """The chunked path's decision points under a score rule, taken in position order as the one
    stream takes them: the trial points a chunk confirms, then the chunk's end. An end point is
    held until a "Wait" right before it is confirmed (it would be a trial point first)."""

    def __init__(self, run: CoTRun) -> None:
        self.run = run
        self.held: list[tuple[int, int]] = []  # end points (tokens, characters) held for a pending trial

    async def settle(self, end: tuple[int, int] | None, final: bool) -> bool:
        """Judge the points up to this chunk's end (``end``: tokens and characters; None: none).
        True: exit."""
        run, live = self.run, self.run.live
        assert live is not None
        points: list[tuple[int, int, int]] = [(pos, 1, char) for char, pos in live.trial_points(final=final)]
        ends, self.held = self.held, []
        if end is not None:
            (self.held if live.trial_pending() and not final else ends).append(end)
        points += [(at, 0, chars) for at, chars in ends]
        for pos, kind, chars in sorted(points):
            if not run.early_exit:
                return False
            verdict = await (self._trial(pos, chars) if kind == 1 else self._probe(pos, chars))
            if verdict is not None:
                return verdict
        if final and run.early_exit:  # the boxes written after the last decision point (the final answer, usually)
            return run.judge.boxes_settle()
        return False

    async def _trial(self, pos: int, chars: int) -> bool | None:
        """A trial point: True exit, False stop here (a failed trial), None go on."""
        run = self.run
        if run.judge.boxes_settle(pos):
            return True
        try:
            completion = await run.side.trial(run.reasoning[:chars])
        except BudgetExhausted:
            raise
        except EngineError as exc:
            run.probe_failed(exc)
            return False
        return True if run.record_trial(pos, completion) else None

    async def _probe(self, pos: int, chars: int) -> bool | None:
        """A probe point: the boxes up to it, then its probe where the schedule reads one."""
        run = self.run
        record = None
        if run.live.probe_wanted(pos):  # type: ignore[union-attr]
            if run.judge.boxes_settle(pos):  # a box the model wrote settles it before the probe is paid for
                return True
            record = await run.probe_or_none(pos, run.reasoning[:chars])
            if record is None:
                return False
        return True if run.judge.settled_after(record, pos) else None


async def _after_scored_chunk(run: CoTRun, points: ScorePoints, finish_reason: str, tokens: int,
                              cut_short: bool = False) -> StopReason | None:
    """Under a score rule: judge the points this chunk reached; the stop, or None to go on.
    ``cut_short``: the engine ended the chunk on ``length`` before the tokens asked for, so its end
    is no decision point (a full context would refuse the probe; the next chunk says whether the
    engine has more)."""
    finished = finish_reason != "length" or tokens == 0
    at_end = finished or cut_short or run.reasoning_tokens >= run.config.budget
    end = None if at_end else (run.reasoning_tokens, len(run.reasoning))
    settled = run.early_exit and await points.settle(end, finished)
    if settled:
        at = run.judge.exit_position()
        run.exit_at(run.reasoning_tokens if at is None else at, run.reasoning, run.reasoning_tokens)
        return "certain"
    if not finished:
        return None
    return "engine_length" if finish_reason == "length" else "finished"


async def _after_chunk(run: CoTRun, chunk_start: int, text: str) -> StopReason | None:
    """Dynasor's rule: probe after the chunk (under ``events``, only after one where an event happened)."""
    config = run.config
    wanted = config.probe_trigger != "events" or marks_probe_event(run.reasoning[:chunk_start], text)
    if run.early_exit and wanted and run.reasoning_tokens < config.budget:
        record = await run.probe_or_none()
        if record is not None and run.judge.settled_after(record, run.reasoning_tokens):
            return "certain"
    return None


async def reason_in_chunks(run: CoTRun, engine: Engine) -> None:
    """Reason chunk by chunk up to the budget, the model's end, or an exit; sets ``run.stop_reason``
    (``budget`` when the budget or a scheduler's allowance ran out, ``engine_length`` when a chunk
    asked for more gets no token on ``length``, or the engine refuses it because its context is
    full: the engine's own limit). A chunk the engine ended on ``length`` short of what was asked is
    not probed at its end: the next chunk is asked for first."""
    points = ScorePoints(run) if run.live is not None else None
    while run.reasoning_tokens < run.config.budget:
        request = run.reasoning_request(run.reasoning_tokens)
        try:
            text, tokens, finish_reason, chunk_prompt_tokens = await read_chunk(run, engine, request)
        except BudgetExhausted:
            return  # a scheduler has no tokens left for this program: its budget ran out
        except EngineError as exc:
            if not (run.reasoning_tokens and exc.context_full):
                raise  # refused before any reasoning: the prompt itself does not fit
            # the engine's context is full: as a continuation that gives no token
            text, tokens, finish_reason, chunk_prompt_tokens = "", 0, "length", 0
        cut_short = tokens > 0 and cut_by_engine(finish_reason, tokens, request.max_tokens)
        run.prompt_tokens = run.prompt_tokens or chunk_prompt_tokens
        chunk_start = len(run.reasoning)
        run.reasoning += text
        run.reasoning_tokens += tokens
        run.event("chunk", run.reasoning_tokens, text)
        try:
            if points is not None:
                stop = await _after_scored_chunk(run, points, finish_reason, tokens, cut_short)
            elif finish_reason != "length":
                stop = "finished"
            elif tokens == 0:  # cut on length before the budget, and nothing more: the engine's own limit
                stop = "engine_length"
            elif cut_short:  # the engine's limit (or a scheduler's allowance) cut it: no probe there
                stop = None
            else:
                stop = await _after_chunk(run, chunk_start, text)
        except BudgetExhausted:
            return
        if stop is not None:
            run.stop_reason = stop
            return


__all__ = ["ScorePoints", "read_chunk", "reason_in_chunks"]
