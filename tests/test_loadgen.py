import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from certaindex.serving.loadgen import (
    ProgramRecord,
    latency_percentiles,
    poisson_arrivals,
    slo_attainment,
    summarise,
    throughput,
    trace_arrivals,
)


def rec(i: int, arrival: float, end: float, tokens: int = 10, correct: bool = True, start: float | None = None):
    return ProgramRecord(f"p{i}", arrival, arrival if start is None else start, end, tokens, correct)


# -- arrivals ------------------------------------------------------------------------------------


def test_poisson_same_seed_same_times_and_sorted():
    a = poisson_arrivals(50, 2.0, 7)
    b = poisson_arrivals(50, 2.0, np.random.default_rng(7))
    assert a == b
    assert a[0] == 0.0
    assert all(x <= y for x, y in zip(a, a[1:]))
    assert poisson_arrivals(50, 2.0, 8) != a


def test_poisson_rate_is_respected_on_average():
    times = poisson_arrivals(20_001, 4.0, 1)
    mean_gap = (times[-1] - times[0]) / 20_000
    assert mean_gap == pytest.approx(0.25, rel=0.03)


def test_poisson_start_and_empty():
    assert poisson_arrivals(0, 1.0) == []
    assert poisson_arrivals(3, 1.0, 0, start=10.0)[0] == 10.0


@pytest.mark.parametrize("n, rate", [(-1, 1.0), (3, 0.0), (3, -2.0), (3, math.inf), (3, math.nan), (True, 1.0)])
def test_poisson_rejects_bad_input(n, rate):
    with pytest.raises(ValueError):
        poisson_arrivals(n, rate)


def test_trace_arrivals_checks_and_shifts():
    assert trace_arrivals([5.0, 6.5, 6.5, 9]) == [5.0, 6.5, 6.5, 9.0]
    assert trace_arrivals([5.0, 6.5], start=0.0) == [0.0, 1.5]
    with pytest.raises(ValueError, match="must not decrease"):
        trace_arrivals([1.0, 0.5])
    with pytest.raises(ValueError, match="finite"):
        trace_arrivals([1.0, math.nan])


# -- records and metrics ----------------------------------------------------------------------------


def test_record_rejects_inconsistent_times():
    with pytest.raises(ValueError, match="arrival <= start <= end"):
        ProgramRecord("x", 1.0, 0.5, 2.0, 1, True)
    with pytest.raises(ValueError, match="arrival <= start <= end"):
        ProgramRecord("x", 1.0, 2.0, 1.5, 1, True)
    with pytest.raises(ValueError, match="tokens"):
        ProgramRecord("x", 0.0, 0.0, 1.0, -1, True)


def test_slo_attainment_counts_latency_not_end_time():
    records = [rec(0, 0.0, 1.0), rec(1, 10.0, 12.0), rec(2, 20.0, 25.0), rec(3, 30.0, 30.5)]
    assert slo_attainment(records, 2.0) == 0.75  # latencies 1, 2, 5, 0.5: the boundary counts as met
    assert slo_attainment(records, 1.0) == 0.5
    assert slo_attainment(records, 10.0) == 1.0
    with pytest.raises(ValueError):
        slo_attainment(records, 0.0)


def test_percentiles_match_known_values():
    records = [rec(i, 0.0, float(i + 1)) for i in range(100)]  # latencies 1..100
    p = latency_percentiles(records)
    assert p[50] == pytest.approx(50.5)
    assert p[90] == pytest.approx(90.1)
    assert p[99] == pytest.approx(99.01)


def test_throughput_uses_first_arrival_to_last_end():
    records = [rec(0, 2.0, 4.0, tokens=100), rec(1, 3.0, 12.0, tokens=300)]
    assert throughput(records) == (pytest.approx(2 / 10), pytest.approx(400 / 10))


def test_summary_and_ratio():
    base = summarise("full", [rec(0, 0.0, 4.0, 200, False), rec(1, 1.0, 9.0, 200, True)], slos=[5.0])
    fast = summarise("exit", [rec(0, 0.0, 2.0, 50, True), rec(1, 1.0, 3.0, 50, True)], slos=[5.0])
    assert base.slo == {5.0: 0.5} and fast.slo == {5.0: 1.0}
    assert base.accuracy == 0.5 and fast.accuracy == 1.0
    assert base.mean_latency == 6.0 and fast.mean_latency == 2.0
    ratio = fast.ratio(base)
    assert ratio["programs_per_s"] == pytest.approx(3.0)  # spans 9 s against 3 s
    assert ratio["mean_tokens"] == pytest.approx(0.25)
    d = fast.to_dict()
    assert d["latency"]["p50"] == pytest.approx(2.0) and d["slo"]["5"] == 1.0


def test_empty_records_are_an_error():
    with pytest.raises(ValueError, match="no program records"):
        summarise("x", [])


@given(st.lists(st.floats(0, 1000), min_size=1, max_size=30), st.floats(0.01, 100))
def test_attainment_is_monotone_in_slo(latencies, slo):
    records = [rec(i, 0.0, lat) for i, lat in enumerate(latencies)]
    assert slo_attainment(records, slo) <= slo_attainment(records, slo * 2)
    p = latency_percentiles(records)
    assert min(latencies) <= p[50] <= p[90] <= p[99] <= max(latencies)
