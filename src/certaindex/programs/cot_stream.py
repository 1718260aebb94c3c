"""Reason in one stream: the transport for engines that stream and serve side requests meanwhile
(``Engine.concurrent_streams``: HTTP servers).

The reasoning is one open upstream stream (:func:`certaindex.programs.main_stream.reason_in_one_stream`);
the decision points it reaches are probed beside it through :class:`SideProbes` and judged in
position order by the same :class:`~certaindex.programs.cot_observe.Judge` the chunked path uses.
"""

from __future__ import annotations

from certaindex.engines.base import BudgetExhausted, Completion, Engine, EngineError, StreamDelta
from certaindex.programs.cot_run import CoTRun
from certaindex.programs.main_stream import ProbePoint, SideProbes, Verdict, reason_in_one_stream

BOXED = object()  # a side point settled by the model's own boxes before its request was sent


class StreamPoints:
    """The one stream's decision points: what is sent at each (:meth:`run_point`), how its outcome
    is judged (:meth:`judge`), and the events the stream's text gives."""

    def __init__(self, run: CoTRun) -> None:
        self.run = run
        self.side: SideProbes = SideProbes(self.run_point, self.judge, run.config.max_probes_in_flight)
        self.last_point = 0  # characters of reasoning reported in chunk events so far

    def judge(self, point: ProbePoint, outcome: object) -> Verdict:
        """A point's outcome (a completion, an error, BOXED, or None: nothing was sent) as a verdict."""
        run = self.run
        if isinstance(outcome, BudgetExhausted):
            return "budget"
        if isinstance(outcome, EngineError):
            run.probe_failed(outcome)
            return "stop-probing"
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome is BOXED:
            return "settled"
        if point.kind == "trial":
            run.live.boxed(upto=point.at_tokens)  # type: ignore[union-attr]
            return "settled" if run.record_trial(point.at_tokens, outcome) else "continue"  # type: ignore[arg-type]
        record = run.record_probe(point.at_tokens, outcome) if outcome is not None else None  # type: ignore[arg-type]
        return "settled" if run.judge.settled_after(record, point.at_tokens) else "continue"

    async def run_point(self, point: ProbePoint) -> Completion | object | None:
        """A trial, a probe, or (a point where the score rule reads no probe) nothing. Where every
        point before this one is judged, the boxes the model wrote up to it are judged first, so
        one that settles it spares the request (as the chunked path does)."""
        run, live = self.run, self.run.live
        wanted = point.kind == "trial" or live is None or live.probe_wanted(point.at_tokens)
        if not wanted:
            return None
        if live is not None and self.side.judged == point.index and run.judge.boxes_settle(point.at_tokens):
            return BOXED
        if point.kind == "trial":
            return await run.side.trial(point.reasoning)
        return await run.side.probe(point.reasoning, point.ids)

    def on_delta(self, delta: StreamDelta, tokens: int) -> None:
        text = getattr(delta, "text", "")
        if self.run.live is not None:
            self.run.live.add_text(text, getattr(delta, "tokens", 0))
        if self.run.stream_reasoning and text:
            self.run.event("delta", tokens, text)

    def on_point(self, tokens: int, text: str) -> None:
        self.run.event("chunk", tokens, text[self.last_point:])
        self.last_point = len(text)


async def reason_in_stream(run: CoTRun, engine: Engine) -> None:
    """Reason in one stream with probes beside it; sets the run's reasoning, counts and stop."""
    live = run.live
    points = StreamPoints(run)
    outcome = await reason_in_one_stream(
        engine, run.prompt, budget=run.config.budget,
        base=run.reasoning_request(0),
        probes=points.side if run.early_exit else None,
        is_point=run.config.is_probe_point,
        on_delta=points.on_delta, on_point=points.on_point,
        trial_points=live.trial_points if live is not None and live.reads_trials and run.early_exit else None,
    )
    run.reasoning, run.reasoning_tokens = outcome.reasoning, outcome.tokens
    run.overrun_tokens, run.resumes = outcome.overrun_tokens, outcome.resumes
    run.prompt_tokens = outcome.prompt_tokens
    run.stop_reason = outcome.stop
    if run.stop_reason in ("finished", "engine_length") and live is not None and run.early_exit:
        # the boxes the model wrote after the last decision point (its final answer, usually)
        if run.judge.boxes_settle():
            run.stop_reason = "certain"
    at = run.judge.exit_position()
    if run.stop_reason == "certain" and at is not None:
        # the exit is where the deciding observation was read (a box, a trial): the rest streamed is overrun
        run.exit_at(at, live.text, outcome.streamed_tokens)  # type: ignore[union-attr]
    run.event("chunk", run.reasoning_tokens, run.reasoning[points.last_point:])


__all__ = ["BOXED", "StreamPoints", "reason_in_stream"]
