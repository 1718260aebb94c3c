"""What one running proxy holds: its settings, engine, passthrough, admission, metrics and scheduler.

Built once per app in its lifespan and kept on ``app.state.proxy``; the routers read it through the
:func:`certaindex.server.dependencies.proxy_state` dependency instead of closing over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from certaindex.core.prompting import THINK_OPEN
from certaindex.engines.base import Engine, EngineError
from certaindex.programs.self_consistency import SCConfig
from certaindex.scheduler import Scheduler
from certaindex.server.admission import Admission
from certaindex.server.errors import bad_request, engine_failure
from certaindex.server.metrics import ProxyMetrics
from certaindex.server.model_profiles import ModelProfiles
from certaindex.server.passthrough import Passthrough
from certaindex.server.schema import ChatPlan, Policy
from certaindex.server.settings import ServerSettings
from certaindex.server.shadow import ShadowRecorder
from certaindex.server.upstream_watch import UpstreamWatch


@dataclass
class ProxyState:
    settings: ServerSettings
    engine: Engine
    passthrough: Passthrough | None
    admission: Admission
    metrics: ProxyMetrics
    scheduler: Scheduler | None = None
    sc: SCConfig = field(default_factory=lambda: SCConfig(n=8, first_round=4, round_size=2, max_tokens=1024))
    reasoning_model: bool | None = None
    shadow: ShadowRecorder | None = None  # --shadow DIR: full reasoning, side probes, traces
    watch: UpstreamWatch | None = None  # the upstream's reachability and served models, kept current
    profiles: ModelProfiles | None = None  # the early-exit profile per model

    def served_models(self) -> tuple[str, ...]:
        """The models the upstream serves, as last read; () when unknown or embedded."""
        return self.watch.snapshot.models if self.watch is not None else ()

    def models_without_logprobs(self) -> tuple[str, ...]:
        """The served models the upstream lists without token logprobs, as last read."""
        return self.watch.snapshot.without_logprobs if self.watch is not None else ()

    async def default_policy(self) -> Policy:
        """The server's policy, with ``auto`` resolved: early exit for reasoning models only."""
        if self.settings.policy != "auto":
            return self.settings.policy
        if self.reasoning_model is None:
            try:
                await self.engine.prepare()
                probe = self.engine.render_chat([{"role": "user", "content": "?"}])
                self.reasoning_model = probe.rstrip().endswith(THINK_OPEN)
            except EngineError as exc:
                if "timed out" in str(exc):
                    # A hung upstream: passing the request through would wait for it a second time
                    # (a second header timeout); this read's timeout is the answer.
                    self.metrics.upstream_errors.labels("chat").inc()
                    if self.watch is not None:
                        self.watch.poke()
                    raise engine_failure(str(exc)) from exc
                return "off"  # the upstream is down or has no model list: passing through gives its answer
        return "cot" if self.reasoning_model else "off"

    def engine_for(self, plan: ChatPlan) -> Engine:
        if not plan.sampling_extra:
            return self.engine
        derive = getattr(self.engine, "derive", None)  # HTTPEngine and ReplicatedEngine take per-request fields
        if derive is not None:
            return derive(plan.sampling_extra)
        raise bad_request(f"the embedded engine does not take {', '.join(sorted(plan.sampling_extra))}",
                          param=sorted(plan.sampling_extra)[0])

    def model_name(self, plan: ChatPlan) -> str:
        """The model a chat response names: the request's, else the engine's."""
        return str(plan.model or getattr(self.engine, "model", None) or self.engine.name)
