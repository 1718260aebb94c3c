"""Prometheus metrics of one proxy (its own registry, so several apps in one process do not clash).

With several proxy processes behind one port (``serve --workers``), a scrape reaches whichever
process the kernel picks, so each process answers for all of them: prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor before the workers start)
sums counters and histograms over the processes, and the gauges are summed over live processes
(``livesum``), each process writing its current values at every scrape it serves and once a second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from certaindex.scheduler.core import SchedulerCore


class ProxyMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, active: Callable[[], float], waiting: Callable[[], float], *, multiprocess: bool = False) -> None:
        """``multiprocess``: one of several worker processes (the environment must name the shared
        PROMETHEUS_MULTIPROC_DIR before prometheus_client is imported)."""
        self.registry = CollectorRegistry()
        self.multiprocess = multiprocess
        self._sampled: list[tuple[Gauge, Callable[[], float]]] = []
        r = self.registry
        self.requests = Counter("certaindex_requests", "Requests served, by endpoint, policy and HTTP status",
                                ["endpoint", "policy", "status"], registry=r)
        self.duration = Histogram("certaindex_request_duration_seconds", "Time to serve a request",
                                  ["endpoint", "policy"], registry=r,
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
        self.tokens = Counter("certaindex_tokens", "Tokens generated for certaindex programs, by kind "
                              "(prompt, reasoning, overrun, probe, trial, answer)", ["kind"], registry=r)
        self.stops = Counter("certaindex_stops", "Why programs stopped (certain, finished, budget, ...)",
                             ["reason"], registry=r)
        self.upstream_errors = Counter("certaindex_upstream_errors", "Requests failed by the upstream engine",
                                       ["endpoint"], registry=r)
        self.probe_failures = Counter("certaindex_probe_failures", "Probes the engine failed (the request "
                                      "fell back to full reasoning)", registry=r)
        self.disconnects = Counter("certaindex_client_disconnects", "Requests whose client went away "
                                   "(their upstream work was cancelled)", registry=r)
        self._gauge("certaindex_requests_in_flight", "Requests being served", active)
        self._gauge("certaindex_requests_queued", "Requests waiting for a slot", waiting)

    def _gauge(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        if not self.multiprocess:
            Gauge(name, documentation, registry=self.registry).set_function(value)
            return
        # A function gauge is not written to the shared files: sample it instead (refresh()).
        gauge = Gauge(name, documentation, registry=self.registry, multiprocess_mode="livesum")
        gauge.set(value())
        self._sampled.append((gauge, value))

    def refresh(self) -> None:
        """Write this process's current gauge values for the other processes' scrapes."""
        for gauge, value in self._sampled:
            gauge.set(value())

    def watch_scheduler(self, core: "SchedulerCore") -> None:
        """Export the scheduler's state: programs, upstream requests in flight, gangs waiting."""
        self._gauge("certaindex_scheduler_programs", "Programs under the scheduler", lambda: core.live_programs)
        self._gauge("certaindex_scheduler_running", "Upstream requests the scheduler has in flight",
                    lambda: core.running)
        self._gauge("certaindex_scheduler_waiting", "Request groups waiting for the scheduler",
                    lambda: core.pending_gangs)

    def render(self) -> bytes:
        if not self.multiprocess:
            return generate_latest(self.registry)
        self.refresh()
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
