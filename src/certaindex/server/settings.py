"""What a running proxy is configured with: where the upstream is, its limits, and its defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from certaindex.evaluation.profile_choice import ProfileChoice
from certaindex.programs.cot import CoTConfig

DefaultPolicy = Literal["auto", "cot", "sc", "full", "off"]
SchedulerPolicy = Literal["certaindex", "fcfs", "off"]

# ``serve``'s reasoning budget when neither ``--budget``, a calibration nor the request sets one.
# In front of an engine: the longest budget the recorded Governor runs were collected with (AIME;
# MATH500 and AMC23 used 16,384), so a reasoning model's own run is not cut: 4,096 cuts 7 of the
# 50 sample R1 problems (8 with the previous R1-7B profile; benchmarks/results/serve-default-budget/). The embedded engine: its context.
UPSTREAM_DEFAULT_BUDGET = 32_768
EMBEDDED_DEFAULT_BUDGET = 4096


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one proxy. ``upstream`` None means the embedded default engine.

    ``policy`` is the default for chat requests that do not name one: ``auto`` runs the early-exit
    chain of thought for reasoning models (whose chat template opens ``<think>``) and passes every
    other request through untouched.
    """

    upstream: str | None = None
    model: str | None = None
    upstream_api_key: str | None = None
    chat_template: str | None = None
    api_key: str | None = None  # clients must send ``Authorization: Bearer <api_key>``
    policy: DefaultPolicy = "auto"
    cot: CoTConfig = field(default_factory=lambda: CoTConfig(budget=EMBEDDED_DEFAULT_BUDGET, probe_interval=64, k=3))
    max_concurrency: int = 64  # requests being served at once
    max_queue: int = 256  # requests waiting for a slot; beyond this the proxy answers 429
    upstream_timeout_s: float = 300.0  # one upstream read may take this long
    # A streamed upstream request's response headers (and a setup request's answer) must come within
    # this: an upstream that accepted the connection and hangs gives a 504 then.
    upstream_headers_timeout_s: float = 60.0
    request_timeout_s: float = 900.0  # a whole request may take this long
    max_tokens_limit: int = 131_072  # larger max_tokens / budgets are refused as absurd
    # Policy ``off`` on the embedded engine without max_tokens: at most this many tokens (not to the
    # end of the context window, which a looping small model reaches).
    plain_max_tokens: int = 1024
    max_body_bytes: int = 8 * 1024 * 1024
    log_content: bool = False  # log prompts and outputs (off: only ids, sizes, timings)
    engine_extra_body: dict[str, Any] = field(default_factory=dict)  # sent with every upstream request
    # Program-aware scheduling of the chat programs' upstream requests (certaindex.scheduler).
    scheduler: SchedulerPolicy = "certaindex"
    capacity: int | None = None  # upstream requests in flight; None: 1 embedded, else max_concurrency
    aging_s: float = 30.0  # a program this old goes before all later ones
    engine_priorities: bool = False  # send each request's priority upstream (vLLM --scheduling-policy priority)
    verbose: bool = False  # let the embedded engine's llama.cpp log through
    # Create the embedded engine with token logprobs (llama.cpp then keeps every position's logits,
    # which costs memory): set by ``serve`` only when the early-exit profile reads DEER trials.
    # HTTP upstreams return logprobs anyway, so with ``upstream`` given it must stay False.
    embedded_logprobs: bool = False
    token_ids: bool = False  # the upstream reports and takes token ids (vLLM): probes continue the model's own tokens
    # Shadow mode (server/shadow.py): answer chat programs with full reasoning, probe beside it and
    # write each program as a trace here. Traces hold prompts and answers: opt-in only.
    shadow_dir: str | None = None
    shadow_max_file_bytes: int = 256 * 1024 * 1024  # a trace file this large is closed and a new one begun
    # Proxy processes behind one port (``serve --workers``): each runs this app with the scheduler
    # capacity already split (server.workers.worker_settings); >1 also adds the serving pid to every
    # response (header x-certaindex-worker) and aggregates /metrics over the processes.
    workers: int = 1
    # The early-exit profile. ``profile_per_model``: chosen per request from its ``model``, else the
    # upstream's served model, and applied to ``cot`` (``serve`` with an upstream and no --model,
    # --profile, --calibration, --k or --probe-interval). Else ``cot`` runs as given, and ``profile``
    # says which profile it holds and why (reported in /health and usage.certaindex; None: unnamed).
    profile_per_model: bool = False
    profile: ProfileChoice | None = None
    # Refuse (404, as vLLM does) a chat request whose model the upstream does not serve, once its
    # GET /v1/models list is known; --model's name is accepted too (``serve`` turns this on).
    check_model: bool = False

    @property
    def scheduler_capacity(self) -> int:
        if self.capacity is not None:
            return self.capacity
        return 1 if self.upstream is None else self.max_concurrency

    def __post_init__(self) -> None:
        problems = []
        if self.policy not in ("auto", "cot", "sc", "full", "off"):
            problems.append(f"policy must be auto, cot, sc, full or off, got {self.policy!r}")
        if self.max_concurrency < 1:
            problems.append(f"max_concurrency must be at least 1, got {self.max_concurrency}")
        if self.max_queue < 0:
            problems.append(f"max_queue must be >= 0, got {self.max_queue}")
        if self.upstream_timeout_s <= 0 or self.request_timeout_s <= 0 or self.upstream_headers_timeout_s <= 0:
            problems.append("timeouts must be positive")
        if self.scheduler not in ("certaindex", "fcfs", "off"):
            problems.append(f"scheduler must be certaindex, fcfs or off, got {self.scheduler!r}")
        if self.plain_max_tokens < 1:
            problems.append(f"plain_max_tokens must be at least 1, got {self.plain_max_tokens}")
        if self.capacity is not None and self.capacity < 1:
            problems.append(f"capacity must be at least 1, got {self.capacity}")
        if self.workers < 1:
            problems.append(f"workers must be at least 1, got {self.workers}")
        if not 0 <= self.aging_s < float("inf"):
            problems.append(f"aging must be a finite number of seconds >= 0, got {self.aging_s}")
        if self.embedded_logprobs and self.upstream is not None:
            problems.append("embedded_logprobs applies to the embedded engine only, not to an upstream")
        if self.shadow_max_file_bytes < 1:
            problems.append(f"shadow_max_file_bytes must be at least 1, got {self.shadow_max_file_bytes}")
        if self.profile_per_model and self.upstream is None:
            problems.append("profile_per_model needs an upstream (the embedded engine serves one model)")
        if problems:
            raise ValueError("; ".join(problems))
