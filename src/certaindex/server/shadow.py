"""Shadow mode (``certaindex serve --shadow DIR``): answer with full reasoning, probe on the side,
and record every program as a trace for ``certaindex calibrate DIR``.

The client's answer is the one policy ``full`` gives, request for request: the reasoning goes
upstream exactly as under ``full`` (one stream where the engine streams tokens, else the same
chunks), and the probes, every ``probe_interval`` tokens, go beside it and never decide anything
(their rule needs more agreeing probes than a run can take). What shadow mode costs is the probes:
their tokens are reported apart, as ``usage.certaindex.shadow_probe_tokens`` and the
``certaindex_shadow_probe_tokens`` metric, and the client's ``completion_tokens`` do not include
them. Traces are written in the background after the answer is complete; a disk error is logged
and counted and never fails a request. Traces hold prompts and answers: the mode is opt-in.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from dataclasses import replace
from typing import Any, AsyncIterator

from prometheus_client import Counter

from certaindex.engines.base import BudgetExhausted, Completion, Engine, EngineError, EngineView, GenerationRequest, StreamDelta
from certaindex.programs.cot import CoTConfig, CoTEvent, solve_cot
from certaindex.server.chat_programs import ChatOutcome, cot_outcome, count_prompt_tokens, label
from certaindex.server.metering import MeteredEngine
from certaindex.server.metrics import ProxyMetrics
from certaindex.server.schema import ChatPlan
from certaindex.traces.format import TraceRecord, TraceSettings
from certaindex.traces.shadow import SHADOW_DATASET, SkippedTrace, shadow_trace, shadow_trace_settings
from certaindex.traces.tracelog import TraceLog

__all__ = ["ShadowRecorder", "run_shadow_program", "shadow_plan"]

log = logging.getLogger("certaindex.server.shadow")


def shadow_plan(plan: ChatPlan, probing: CoTConfig) -> ChatPlan:
    """``plan`` as full reasoning with probes that never decide, at the server's probe protocol
    (``probing``: interval, suffix, probe tokens), whatever the request asked for."""
    cot = replace(plan.cot, early_exit=True, certainty=None, probe_trigger="interval",
                  probe_interval=probing.probe_interval, probe_suffix=probing.probe_suffix,
                  probe_tokens=probing.probe_tokens)
    return replace(plan, policy="full", cot=replace(cot, k=cot.max_probes + 1))  # k beyond reach: never settles


class _ProbeRefusalIsFailure(EngineView):
    """A scheduler's refusal of a *probe* becomes a probe failure, which ends shadow probing; as a
    refusal it would end the reasoning as if its budget were spent, changing the answer."""

    def __init__(self, inner: Engine, probe_suffix: str) -> None:
        super().__init__(inner)
        self.name = inner.name
        self.probe_suffix = probe_suffix

    async def generate(self, request: GenerationRequest) -> Completion:
        try:
            return await self.inner.generate(request)
        except BudgetExhausted as exc:
            if request.prompt.endswith(self.probe_suffix):
                raise EngineError(f"shadow probe refused by the scheduler: {exc}") from exc
            raise

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        async for delta in self.inner.stream(request):
            yield delta


class ShadowRecorder:
    """Writes shadow traces in the background and counts them (and the probes' cost) in /metrics."""

    def __init__(self, directory: str, metrics: ProxyMetrics, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._logs: dict[str, TraceLog] = {}  # by model (an engine's name can change once it is prepared)
        self._logs_lock = threading.Lock()  # writes run in worker threads
        self._pending: set[asyncio.Future[Any]] = set()
        r = metrics.registry
        self.traces = Counter("certaindex_shadow_traces", "Shadow programs by what became of their trace "
                              "(written, write-error, misaligned, probe-failed, ...)", ["outcome"], registry=r)
        self.probe_tokens = Counter("certaindex_shadow_probe_tokens", "Tokens the shadow probes cost the upstream "
                                    "(extra cost; the answers are full reasoning's)", registry=r)
        self.probes = Counter("certaindex_shadow_probes", "Shadow probes answered", registry=r)

    def _log(self, model: str, engine: str) -> TraceLog:
        with self._logs_lock:
            if model not in self._logs:
                self._logs[model] = TraceLog(self.directory, model, engine, SHADOW_DATASET, self.max_bytes)
            return self._logs[model]

    def _write(self, model: str, engine: str, settings: TraceSettings, record: TraceRecord) -> None:
        try:
            self._log(model, engine).write(settings, record)
        except OSError as exc:
            self.traces.labels("write-error").inc()
            log.error("shadow trace %s not written to %s: %s (the request was answered)", record.id,
                      self.directory, exc.strerror or exc)
        else:
            self.traces.labels("written").inc()

    def submit(self, model: str, engine: str, settings: TraceSettings, record: TraceRecord) -> None:
        """Write ``record`` in a worker thread; the request does not wait, and a client leaving
        does not cut the write (it is one whole line either way)."""
        task = asyncio.ensure_future(asyncio.to_thread(self._write, model, engine, settings, record))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def skipped(self, reason: str) -> None:
        self.traces.labels(reason).inc()

    async def drain(self) -> None:
        """Wait for the traces being written (tests; shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()
        for trace_log in self._logs.values():
            trace_log.close()


async def run_shadow_program(
    engine: Engine,
    plan: ChatPlan,
    recorder: ShadowRecorder,
    model: str,
    engine_name: str,
    events: asyncio.Queue[str] | None = None,
) -> ChatOutcome:
    """Serve ``plan`` (from :func:`shadow_plan`) with full reasoning, probes on the side, and hand
    its trace to ``recorder``. The outcome is policy ``full``'s; the probes' tokens are reported
    apart in ``shadow_probe_tokens``."""
    upstream = MeteredEngine(engine)
    question = label(plan.messages)
    config = plan.cot
    marks: list[tuple[int, str]] = []  # (reasoning tokens, text of the chunk that ended there)

    def relay(event: CoTEvent) -> None:
        if events is not None and event.kind == "delta" and event.text:
            events.put_nowait(event.text)
        if event.kind == "chunk":
            marks.append((event.reasoning_tokens, event.text))

    # Policy full's path: one stream wherever the engine streams tokens (and side probes are on).
    main_stream = config.side_probes and bool(upstream.concurrent_streams or upstream.streams_tokens)
    result = await solve_cot(
        _ProbeRefusalIsFailure(upstream, config.probe_suffix), question, config, relay,
        stream_reasoning=events is not None, probe_failures="full-reasoning", messages=plan.messages,
        main_stream=main_stream,
    )
    outcome = cot_outcome(result, "full", upstream)
    # Full reasoning also probes once at the budget, to force an answer: that probe is the client's.
    forced = result.probes[-1] if (result.stop_reason == "budget" and result.probes
                                   and result.probes[-1].at_tokens == result.reasoning_tokens) else None
    outcome.probe_tokens = forced.tokens if forced is not None else 0
    outcome.trial_tokens = 0  # any trial was the shadow's too
    outcome.shadow_probe_tokens = result.probe_tokens - outcome.probe_tokens
    shadow_probes = len(result.probes) - (forced is not None)
    outcome.details["probes"] = int(forced is not None)
    outcome.details["trials"] = 0
    outcome.details["shadow"] = {"probes": shadow_probes, "probe_tokens": outcome.shadow_probe_tokens,
                                 "answer": "full reasoning's, unaffected by the probes"}
    if outcome.prompt_tokens == 0:
        outcome.prompt_tokens = await count_prompt_tokens(engine, plan)
    recorder.probe_tokens.inc(outcome.shadow_probe_tokens)
    recorder.probes.inc(shadow_probes)

    offsets: dict[int, int] = {}
    chars = 0
    for tokens, text in marks:
        chars += len(text)
        offsets[tokens] = chars
    try:
        prompt = upstream.render_chat(plan.messages)
        record = shadow_trace(uuid.uuid4().hex, question, prompt, outcome.prompt_tokens, result, offsets, config)
    except SkippedTrace as exc:
        recorder.skipped(exc.reason)
        log.warning("shadow trace not recorded: %s", exc)
    except EngineError as exc:  # rendering failed: the program ran, so this is unexpected
        recorder.skipped("render-failed")
        log.warning("shadow trace not recorded: %s", exc)
    else:
        recorder.submit(model, engine_name, shadow_trace_settings(config), record)
    return outcome
