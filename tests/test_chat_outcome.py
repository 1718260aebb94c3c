"""How a finished program is told to the client: trials counted apart from probes, and a
finish_reason that agrees with the stop_reason (a budget stop is ``length``)."""

from __future__ import annotations

import pytest

from certaindex.core.signals import Vote
from certaindex.programs.cot import CoTResult, Probe, Trial
from certaindex.programs.self_consistency import Sample, SCResult
from certaindex.server.chat_programs import cot_outcome, sc_outcome
from certaindex.server.metering import MeteredEngine
from tests.fakes import ScriptedFakeEngine


def upstream() -> MeteredEngine:
    return MeteredEngine(ScriptedFakeEngine(["step "]))


def test_trials_are_counted_apart_from_probes():
    trials = [Trial(at_tokens=10, answer="4", confidence=0.9, min_prob=0.8, tokens=3),
              Trial(at_tokens=20, answer="4", confidence=0.95, min_prob=0.9, tokens=4)]
    probe = Probe(at_tokens=32, text="4}", answer="4", hesitant=False, tokens=2, certaindex=1.0)
    result = CoTResult(question="q", answer="4", answer_text="", stop_reason="certain", reasoning="r",
                       prompt_tokens=5, reasoning_tokens=32, probe_tokens=3 + 4 + 2, answer_tokens=0,
                       budget=64, probes=[probe], trials=trials)
    outcome = cot_outcome(result, "cot", upstream())
    usage = outcome.usage()
    assert outcome.details["probes"] == 1 and outcome.details["trials"] == 2
    assert usage["certaindex"]["probe_tokens"] == 2 and usage["certaindex"]["trial_tokens"] == 7
    assert usage["completion_tokens"] == 32 + 2 + 7  # every generated token is still counted once


@pytest.mark.parametrize("stop_reason, finish_reason", [("budget", "length"), ("certain", "stop"),
                                                         ("significant", "stop")])
def test_self_consistency_finish_reason_agrees_with_its_stop_reason(stop_reason, finish_reason):
    vote = Vote(answer="4", count=2, n_samples=4, clusters=[[0, 1], [2], [3]], certaindex=0.4, margin=0.25)
    samples = [Sample(text="\\boxed{4}", answer="4", tokens=10, finish_reason="stop")] * 4
    result = SCResult(question="q", answer="4", vote=vote, samples=samples, stop_reason=stop_reason, prompt_tokens=5)
    outcome = sc_outcome(result, upstream())
    assert outcome.finish_reason == finish_reason and outcome.details["stop_reason"] == stop_reason
