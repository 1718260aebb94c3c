"""Recorded DEER trials read the way a live profile reads them (issue 19).

Why: the Governor records read a trial's confidence by each family's own rule: R1-Distill-Qwen-7B's
trials stop at the box's end and read DEER's ``avg1``; Qwen3-8B's run on until ``</think>`` and read
``avg2`` over the tokens up to it (0 when the 20 tokens hold no ``</think>``). A profile whose trials
stop at the box's end (``generic``, a profile of any family recorded like R1-7B) reads a Qwen3-like
model's trial live as the first ~6 of those tokens, on ``avg1``'s scale and at their cost. Replaying
the recorded confidence instead would promise what the live profile does not do. The re-reading is
exact where the record runs at least as far as the live trial: a record cut at the box's end cannot
be read on to ``</think>``, so rules that require ``</think>`` keep the recorded reading.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from certaindex.core.exit_score import CONFIDENCE_RULES, read_trial, tokens_to_stop
from certaindex.core.prompting import PROBE_STOPS
from certaindex.traces.governor import Trajectory, Trial

__all__ = ["read_at_stops", "trials_as_read"]


def read_at_stops(trial: Trial, rule: str = "avg1") -> Trial:
    """``trial`` read as a live trial stopping at the box's end (:data:`PROBE_STOPS`) reads it: its
    confidence, smallest token probability and cost over the recorded tokens up to the stop. A
    record without tokens is returned as it is; the answer is the recorded one (the box closes at
    the stop, so the prefix holds the same answer)."""
    if not trial.tokens:
        return trial
    tokens = [t for t, _ in trial.tokens]
    n = tokens_to_stop(tokens, PROBE_STOPS)
    reading = read_trial(tokens[:n], [lp for _, lp in trial.tokens[:n]], rule)
    return dataclasses.replace(trial, confidence=reading.confidence, min_prob=reading.min_prob, out_tokens=n)


def trials_as_read(traj: Trajectory, trials: Mapping[str, Any] | None) -> Trajectory:
    """``traj`` with its trials read as a rule's ``trials`` settings read them live (``None``: the
    rule takes no trials; the trajectory is returned as it is). Settings with ``require_think_close``
    keep the recorded reading (see the module docstring)."""
    if not trials or traj.trials is None or trials.get("require_think_close"):
        return traj
    rule = trials.get("confidence_rule", "avg1")
    if rule not in CONFIDENCE_RULES:
        raise ValueError(f"trial confidence rule must be one of {', '.join(CONFIDENCE_RULES)}, got {rule!r}")
    return dataclasses.replace(traj, trials=[read_at_stops(x, rule) for x in traj.trials])
