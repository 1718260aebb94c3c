"""Prometheus metrics of one proxy (its own registry, so several apps in one process do not clash)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from certaindex.scheduler.core import SchedulerCore


class ProxyMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, active: Callable[[], float], waiting: Callable[[], float]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("certaindex_requests", "Requests served, by endpoint, policy and HTTP status",
                                ["endpoint", "policy", "status"], registry=r)
        self.duration = Histogram("certaindex_request_duration_seconds", "Time to serve a request",
                                  ["endpoint", "policy"], registry=r,
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900))
        self.tokens = Counter("certaindex_tokens", "Tokens generated for certaindex programs, by kind "
                              "(prompt, reasoning, overrun, probe, answer)", ["kind"], registry=r)
        self.stops = Counter("certaindex_stops", "Why programs stopped (certain, finished, budget, ...)",
                             ["reason"], registry=r)
        self.upstream_errors = Counter("certaindex_upstream_errors", "Requests failed by the upstream engine",
                                       ["endpoint"], registry=r)
        self.probe_failures = Counter("certaindex_probe_failures", "Probes the engine failed (the request "
                                      "fell back to full reasoning)", registry=r)
        self.disconnects = Counter("certaindex_client_disconnects", "Requests whose client went away "
                                   "(their upstream work was cancelled)", registry=r)
        in_flight = Gauge("certaindex_requests_in_flight", "Requests being served", registry=r)
        in_flight.set_function(active)
        queued = Gauge("certaindex_requests_queued", "Requests waiting for a slot", registry=r)
        queued.set_function(waiting)

    def watch_scheduler(self, core: "SchedulerCore") -> None:
        """Export the scheduler's state: programs, upstream requests in flight, gangs waiting."""
        r = self.registry
        Gauge("certaindex_scheduler_programs", "Programs under the scheduler", registry=r).set_function(
            lambda: core.live_programs)
        Gauge("certaindex_scheduler_running", "Upstream requests the scheduler has in flight",
              registry=r).set_function(lambda: core.running)
        Gauge("certaindex_scheduler_waiting", "Request groups waiting for the scheduler",
              registry=r).set_function(lambda: core.pending_gangs)

    def render(self) -> bytes:
        return generate_latest(self.registry)
