"""The simulator's one-stream probe timing (issue 11): the main stream keeps decoding while a probe
runs beside it in the batch; the exit closes the stream when the deciding probe returns, and the
tokens decoded meanwhile are overrun, counted as cost. Hand-made programs on a unit engine (one
decode step = 1 s, nothing else costs time unless a test says so)."""

from __future__ import annotations

import pytest

from certaindex.serving.costmodel import CostModel
from certaindex.serving.simulator import LoggedProgram, simulate_logged

SUFFIX = 25
PROMPT = 100


def unit_cost(**changes) -> CostModel:
    fields = dict(a=1.0, b=0.0, c=0.0, prefill_s=0.0, request_s=0.0, max_batch=8, prefix_cache="program",
                  probe_suffix_tokens=SUFFIX)
    fields.update(changes)
    return CostModel(**fields)


def program(probes: list[tuple[int, int, float]], *, stream: int, exit_pos: int | None, end: int | None = None,
            name: str = "p", arrival: float = 0.0, budget: int = 16_384) -> LoggedProgram:
    """A plan in the chunked request format: a chunk up to each probe ``(position, out tokens,
    certaindex)``, then the probe; a last chunk to ``end`` (an exit read from the stream itself, or
    the end of the reasoning when nothing exits)."""
    requests: list[tuple] = []
    pos = 0
    for at, out, cdx in probes:
        if at > pos:
            requests.append((0, PROMPT + pos, at - pos, at - pos))
            pos = at
        requests.append((1, PROMPT + pos + SUFFIX, 32, out, cdx))
    if end is not None and end > pos:
        requests.append((0, PROMPT + pos, end - pos, end - pos))
    tokens = sum(r[3] for r in requests)
    return LoggedProgram(name, arrival, tuple(requests), tokens, True, "7", "exit" if exit_pos else "end", budget,
                         stream_tokens=stream, exit_pos=exit_pos)


def serve(p: LoggedProgram, timing: str, cost: CostModel | None = None, **kw):
    [record] = simulate_logged([p], cost or unit_cost(), "exit-fcfs", capacity=8, probe_timing=timing, **kw)
    return record


def test_a_probe_in_flight_overruns_by_the_tokens_decoded_before_it_returns():
    for out in (1, 10, 40):
        p = program([(64, out, 1.0)], stream=1000, exit_pos=64)
        side, chunked = serve(p, "side"), serve(p, "chunked")
        # side: the probe is sent once the stream has passed 64 (token 65), decodes `out` tokens beside
        # it; the stream is closed when it returns, `out + 1` tokens past the deciding position.
        assert side.overrun_tokens == out + 1
        assert side.latency == pytest.approx(64 + 1 + out)
        assert side.tokens == p.tokens + side.overrun_tokens
        # chunked: the stream waits for the probe, nothing is streamed past the exit.
        assert chunked.overrun_tokens == 0
        assert chunked.tokens == p.tokens
        assert chunked.latency == pytest.approx(64 + out)


def test_probe_points_are_queued_not_skipped_and_judged_in_order():
    # probes of 100 tokens every 64: the second point (stream 129) comes while the first runs
    # (65-165); it waits for it (one in flight), runs 165-265 and decides.
    p = program([(64, 100, 0.0), (128, 100, 1.0)], stream=1000, exit_pos=128)
    side = serve(p, "side")
    assert side.latency == pytest.approx(265)
    assert side.overrun_tokens == 265 - 128
    assert side.tokens == 128 + 200 + side.overrun_tokens == p.tokens + side.overrun_tokens
    # chunked: 64 + 100 + 64 + 100, one after another
    assert serve(p, "chunked").latency == pytest.approx(328)


def test_overrun_stops_at_the_streams_own_end_and_probes_are_drained():
    # The stream ends by itself (200 tokens) while the deciding probe (at 192, 30 tokens) runs.
    p = program([(192, 30, 1.0)], stream=200, exit_pos=192)
    side = serve(p, "side")
    assert side.overrun_tokens == 8
    assert side.latency == pytest.approx(193 + 30)
    assert side.tokens == 200 + 30
    # No exit: the program ends once the stream has ended and its last probe is judged; it spends
    # exactly what the chunked program spends.
    q = program([(64, 5, 0.0), (192, 30, 0.0)], stream=200, exit_pos=None, end=200)
    side, chunked = serve(q, "side"), serve(q, "chunked")
    assert side.overrun_tokens == 0 and side.tokens == chunked.tokens == q.tokens == 235
    assert side.latency == pytest.approx(223) and chunked.latency == pytest.approx(235)


def test_an_exit_read_from_the_stream_itself_closes_it_there():
    # A score plan exiting on the model's own \boxed{} at 300 (no probe there): the decision waits for
    # the probes before it (at 64: 5 tokens, back at 70), then comes as the stream reaches 300.
    p = program([(64, 5, 0.2)], stream=1000, exit_pos=300, end=300)
    side = serve(p, "side")
    assert side.overrun_tokens == 0 and side.tokens == p.tokens == 305
    assert side.latency == pytest.approx(300)
    # ... unless a probe before it is still in flight: then it comes when that probe returns.
    slow = program([(290, 40, 0.2)], stream=1000, exit_pos=300, end=300)
    record = serve(slow, "side")
    assert record.latency == pytest.approx(291 + 40)
    assert record.overrun_tokens == 331 - 300 and record.tokens == slow.tokens + record.overrun_tokens


def test_a_side_probe_prefills_only_its_suffix():
    p = program([(64, 10, 1.0)], stream=1000, exit_pos=64)
    cost = unit_cost(prefill_s=0.01)
    side = serve(p, "side", cost, chunked_prefill=True)
    # prompt 100 tokens at the start, then the probe's 25-token suffix (the prompt and 64 reasoning
    # tokens are the stream's cached prefix)
    assert side.latency == pytest.approx(1.0 + 65 + 0.25 + 10)
    # KV: the probe needs room for its suffix and output only, beside the running stream
    fits = serve(p, "side", cost, chunked_prefill=True, kv_tokens=PROMPT + 1000 + SUFFIX + 10)
    assert fits.latency == pytest.approx(side.latency)


def test_a_batch_of_one_reasons_in_chunks_as_the_live_runtime_does():
    p = program([(64, 10, 0.0), (128, 10, 1.0)], stream=1000, exit_pos=128)
    cost = unit_cost(max_batch=1)
    assert serve(p, "side", cost) == serve(p, "chunked", cost)
    [one] = simulate_logged([p], unit_cost(), "exit-fcfs", capacity=1, probe_timing="side")
    assert one.overrun_tokens == 0 and one.latency == pytest.approx(148)
    with pytest.raises(ValueError, match="probe_timing"):
        serve(p, "async")


def test_side_programs_share_the_batch_and_the_scheduler_hears_their_probes():
    # Two streams fill a capacity of 2: a probe needs a slot of its own, as it does live, so both
    # probes wait for the streams' own ends (500) and the whole rest of each stream is overrun.
    a = program([(64, 10, 1.0)], stream=500, exit_pos=64, name="a")
    b = program([(64, 10, 1.0)], stream=500, exit_pos=64, name="b")
    records = simulate_logged([a, b], unit_cost(max_batch=2), "exit-fcfs", capacity=2, probe_timing="side")
    for r in records:
        assert r.overrun_tokens == 500 - 64 and r.latency == pytest.approx(510)
        assert r.tokens == 64 + 10 + r.overrun_tokens
    # Sent straight to the engine, which has room for 4, they run beside the streams at once.
    engine = simulate_logged([a, b], unit_cost(max_batch=4), "exit-fcfs", capacity=2, probe_timing="side",
                             side_probes_scheduled=False)
    assert all(r.overrun_tokens == 11 and r.latency == pytest.approx(75) for r in engine)
    # With room for both probes in the core too, each returns 11 tokens after its point.
    sched = simulate_logged([a, b], unit_cost(max_batch=4), "exit-sched", capacity=4, probe_timing="side",
                            slo_s=1000.0)
    assert all(r.overrun_tokens == 11 and r.latency == pytest.approx(75) for r in sched)
