"""Reasoning programs: async programs over an engine that stop once their answer has settled."""

from certaindex.programs.cot import CoTConfig, CoTEvent, CoTResult, Probe, solve_cot

__all__ = ["CoTConfig", "CoTEvent", "CoTResult", "Probe", "solve_cot"]
