"""The token budget a program's scheduler session opens with: everything the program may generate.

Sized so that a program running alone is never cut (under ``fcfs`` scheduled and unscheduled runs
are the same); the ``certaindex`` core lends what settled programs do not need to unsure ones.
"""

from __future__ import annotations

from certaindex.programs.cot import CoTConfig
from certaindex.programs.self_consistency import SCConfig


def program_budget(config: CoTConfig) -> int:
    """A chain of thought: its reasoning budget, every probe and trial it may send (a probe after every
    chunk, or where its score rule reads one, plus the forced last one) and a reasoning model's answer
    (at most ``answer_tokens``, and within the client's ``max_tokens``)."""
    return config.budget + config.max_side_tokens + config.answer_room(0)


def sc_program_budget(config: SCConfig) -> int:
    """Self-consistency: every sample it may draw, each at most ``max_tokens``."""
    return config.n * config.max_tokens


__all__ = ["program_budget", "sc_program_budget"]
