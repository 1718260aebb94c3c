"""Load generation and serving metrics: pure functions shared by the load test and the simulator.

Arrivals are either a Poisson process (seeded, so every policy of a comparison replays the same
times) or a given trace of times. Metrics are computed from per-program records, so a live load
test and a simulation are summarised by the very same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "PERCENTILES",
    "ProgramRecord",
    "Summary",
    "latency_percentiles",
    "poisson_arrivals",
    "slo_attainment",
    "summarise",
    "throughput",
    "trace_arrivals",
]

PERCENTILES = (50, 90, 99)


def poisson_arrivals(
    n: int, rate: float, rng: np.random.Generator | int | None = 0, *, start: float = 0.0
) -> list[float]:
    """``n`` arrival times of a Poisson process of ``rate`` programs per second, from ``start``.

    ``rng``: a numpy Generator or a seed; the same seed gives the same times, so policies compared
    under one seed see identical load. The first program arrives at ``start`` (the clock starts
    with the load), later ones after exponential gaps of mean ``1 / rate``."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"rate must be a finite number of programs per second > 0, got {rate!r}")
    if not math.isfinite(start):
        raise ValueError(f"start must be a finite time, got {start!r}")
    if n == 0:
        return []
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    gaps = generator.exponential(1.0 / rate, size=n - 1)
    return [float(start)] + [float(t) for t in start + np.cumsum(gaps)]


def trace_arrivals(times: Iterable[float], *, start: float | None = None) -> list[float]:
    """Arrival times from a recorded trace, checked (finite, non-decreasing); ``start`` shifts the
    first one to that time (None: keep the times as given)."""
    values = [float(t) for t in times]
    for i, t in enumerate(values):
        if not math.isfinite(t):
            raise ValueError(f"arrival {i} is not a finite time: {t!r}")
        if i and t < values[i - 1]:
            raise ValueError(f"arrival times must not decrease: arrival {i} at {t} comes before {values[i - 1]}")
    if start is not None and values:
        shift = start - values[0]
        values = [t + shift for t in values]
    return values


@dataclass(frozen=True)
class ProgramRecord:
    """One program served: when it arrived, first ran and ended, what it cost and whether it was right."""

    program_id: str
    arrival: float
    start: float  # its first request reached the engine
    end: float
    tokens: int  # every generated token (reasoning, probes, answer)
    correct: bool
    policy: str = ""
    answer: str | None = None
    stop_reason: str = ""
    overrun_tokens: int = 0  # of ``tokens``: streamed past the deciding probe's position (one-stream programs)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.arrival) and math.isfinite(self.start) and math.isfinite(self.end)):
            raise ValueError(f"program {self.program_id!r}: times must be finite")
        if not self.arrival <= self.start <= self.end:
            raise ValueError(
                f"program {self.program_id!r}: need arrival <= start <= end, got "
                f"{self.arrival}, {self.start}, {self.end}"
            )
        if self.tokens < 0:
            raise ValueError(f"program {self.program_id!r}: tokens must be >= 0, got {self.tokens}")

    @property
    def latency(self) -> float:
        """Arrival to end: what the user waits, queueing included."""
        return self.end - self.arrival

    @property
    def queueing(self) -> float:
        return self.start - self.arrival

    def to_dict(self) -> dict:
        data = asdict(self)
        data["latency"] = self.latency
        return data


def _nonempty(records: Sequence[ProgramRecord]) -> None:
    if not records:
        raise ValueError("no program records to summarise")


def latency_percentiles(records: Sequence[ProgramRecord], percentiles: Sequence[float] = PERCENTILES) -> dict[float, float]:
    """Latency percentiles (linear interpolation between order statistics, numpy's default)."""
    _nonempty(records)
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentiles must be in [0, 100], got {p}")
    values = np.percentile([r.latency for r in records], list(percentiles))
    return {p: float(v) for p, v in zip(percentiles, values)}


def slo_attainment(records: Sequence[ProgramRecord], slo_s: float) -> float:
    """Fraction of programs that ended within ``slo_s`` seconds of their arrival."""
    _nonempty(records)
    if not math.isfinite(slo_s) or slo_s <= 0:
        raise ValueError(f"an SLO must be a finite number of seconds > 0, got {slo_s!r}")
    return sum(1 for r in records if r.latency <= slo_s) / len(records)


def throughput(records: Sequence[ProgramRecord]) -> tuple[float, float]:
    """(programs/s, tokens/s) over the span from the first arrival to the last end."""
    _nonempty(records)
    span = max(r.end for r in records) - min(r.arrival for r in records)
    if span <= 0:
        raise ValueError("the records span no time: throughput is undefined")
    return len(records) / span, sum(r.tokens for r in records) / span


@dataclass(frozen=True)
class Summary:
    """Every figure of a policy's run, as the load test and simulator tables print them."""

    policy: str
    n: int
    programs_per_s: float
    tokens_per_s: float
    latency: dict[float, float]  # percentile -> seconds
    mean_latency: float
    slo: dict[float, float] = field(default_factory=dict)  # SLO seconds -> attainment
    accuracy: float = 0.0
    mean_tokens: float = 0.0
    span_s: float = 0.0
    mean_overrun: float = 0.0  # tokens streamed past the deciding probe, per program

    def ratio(self, baseline: "Summary") -> dict[str, float]:
        """Throughput and mean latency relative to ``baseline`` (nan where the baseline is 0)."""

        def div(a: float, b: float) -> float:
            return a / b if b else math.nan

        return {
            "programs_per_s": div(self.programs_per_s, baseline.programs_per_s),
            "tokens_per_s": div(self.tokens_per_s, baseline.tokens_per_s),
            "mean_latency": div(self.mean_latency, baseline.mean_latency),
            "mean_tokens": div(self.mean_tokens, baseline.mean_tokens),
        }

    def to_dict(self) -> dict:
        data = asdict(self)
        data["latency"] = {f"p{p:g}": v for p, v in self.latency.items()}
        data["slo"] = {f"{s:g}": v for s, v in self.slo.items()}
        return data


def summarise(policy: str, records: Sequence[ProgramRecord], slos: Sequence[float] = ()) -> Summary:
    """All metrics of one policy's records."""
    _nonempty(records)
    programs_per_s, tokens_per_s = throughput(records)
    return Summary(
        policy=policy,
        n=len(records),
        programs_per_s=programs_per_s,
        tokens_per_s=tokens_per_s,
        latency=latency_percentiles(records),
        mean_latency=sum(r.latency for r in records) / len(records),
        slo={float(s): slo_attainment(records, s) for s in slos},
        accuracy=sum(1 for r in records if r.correct) / len(records),
        mean_tokens=sum(r.tokens for r in records) / len(records),
        span_s=max(r.end for r in records) - min(r.arrival for r in records),
        mean_overrun=sum(r.overrun_tokens for r in records) / len(records),
    )
