"""Program-aware scheduling of reasoning programs on one engine (gang scheduling, certainty-driven
token allocation). :mod:`.core` decides (pure); :mod:`.runtime` runs programs under it (asyncio)."""

from certaindex.engines.base import BudgetExhausted
from certaindex.scheduler.core import Gang, Policy, SchedulerCore
from certaindex.scheduler.runtime import ScheduledEngine, Scheduler, cot_reporter, sc_reporter

__all__ = [
    "BudgetExhausted",
    "Gang",
    "Policy",
    "ScheduledEngine",
    "Scheduler",
    "SchedulerCore",
    "cot_reporter",
    "sc_reporter",
]
