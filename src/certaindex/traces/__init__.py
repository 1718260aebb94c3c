"""Recorded reasoning traces: the format (:mod:`.format`), recording from a live engine
(:mod:`.recorder`) and exact offline replay (:mod:`.replay`)."""

from certaindex.traces.format import *  # noqa: F401,F403
from certaindex.traces.format import __all__ as _format_all
from certaindex.traces.recorder import engine_model_name, logprob_stats, record_one, record_traces

__all__ = [*_format_all, "engine_model_name", "logprob_stats", "record_one", "record_traces"]
