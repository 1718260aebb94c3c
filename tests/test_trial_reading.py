"""Recorded DEER trials read the way a live profile reads them (issue 19): a trial recorded under a
longer rule (Qwen3-8B's run on until ``</think>``) is read, for a profile whose trials stop at the box's
end, over the tokens up to the stop; a record of the same rule reads back unchanged."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from certaindex.core.answers import canonical_answer
from certaindex.core.exit_score import tokens_to_stop
from certaindex.evaluation.score_policy import replay_score, sweep_score
from certaindex.evaluation.trial_reading import read_at_stops, trials_as_read
from certaindex.traces.governor import Trial, read_governor


def _sample_trajectories():
    import certaindex

    folder = Path(certaindex.__file__).parent / "data" / "governor_sample" / "r1-distill-qwen-7b__math500__seed_42"
    return read_governor(folder)[0].trajectories


def test_tokens_to_stop_counts_up_to_the_token_completing_the_first_stop():
    assert tokens_to_stop(["{", "13", "}\n\n", "Wait"], ("}\n",)) == 3
    assert tokens_to_stop(["{", "1", "}", "\n", "x"], ("}\n",)) == 4  # a stop spread over two tokens
    assert tokens_to_stop(["{", "1", "}, ", "\\boxed{2", "}$"], ("}\n", "}$")) == 5  # "}, " is no stop
    assert tokens_to_stop(["{", "1"], ("}\n",)) == 2  # none: every token
    assert tokens_to_stop([], ("}\n",)) == 0


def test_a_run_on_trial_is_read_over_its_tokens_up_to_the_box_end():
    # recorded as Qwen3-8B's: 6 tokens, no </think> in them, so the record's (avg2) confidence is 0
    tokens = (("{", -0.5), ("13", -0.01), ("}\n\n", -0.2), ("Wait", -1.0), (",", -0.1), (" hold", -3.0))
    rec = Trial(pos=100, answer="13", confidence=0.0, out_tokens=6, min_prob=math.exp(-3.0), tokens=tokens)
    read = read_at_stops(rec)
    assert read.out_tokens == 3 and read.answer == "13"
    assert read.confidence == pytest.approx((math.exp(-0.01) + math.exp(-0.2)) / 2)  # avg1 after the brace
    assert read.min_prob == pytest.approx(math.exp(-0.5))  # the tokens after the stop are not read
    assert read_at_stops(rec, "avg2").confidence == pytest.approx(math.exp((-0.01 - 0.2) / 2))
    assert read_at_stops(replace(rec, tokens=())) == replace(rec, tokens=())  # no tokens recorded: as it is


def test_records_of_the_same_rule_read_back_unchanged_and_think_close_rules_keep_the_record():
    trajs = [t for t in _sample_trajectories() if t.trials][:40]
    assert sum(len(t.trials) for t in trajs) > 50
    for t in trajs:  # R1-Distill-Qwen-7B's records: avg1, stopped at the box's end
        again = trials_as_read(t, {"at": "Wait"})
        assert [(x.confidence, x.min_prob, x.out_tokens, x.answer) for x in again.trials] == \
               [(x.confidence, x.min_prob, x.out_tokens, x.answer) for x in t.trials]
    t = trajs[0]
    zeroed = replace(t, trials=[replace(x, confidence=0.0) for x in t.trials])
    assert trials_as_read(zeroed, {"require_think_close": True}) is zeroed
    assert trials_as_read(zeroed, None) is zeroed
    assert trials_as_read(zeroed, {}) is zeroed  # no trial settings: no trials read
    assert [x.confidence for x in trials_as_read(zeroed, {"at": "Wait"}).trials] == [x.confidence for x in t.trials]
    with pytest.raises(ValueError, match="confidence rule"):
        trials_as_read(t, {"confidence_rule": "avg3"})


def test_the_replay_reads_trials_as_the_rule_does():
    """A rule exiting on a confident trial: on records whose confidence was read by another rule
    (zeroed here, as a think-close rule records a trial that does not close), the replay of a rule
    stopping at the box's end reads them back from their tokens and exits as on the original."""
    rule = {"schedule": "tr", "threshold": 0.9, "trials": {"at": "Wait"},
            "model": {"features": ["trial_conf"], "mean": [0.0], "scale": [1.0], "coef": [40.0], "intercept": -37.0}}
    think_close = dict(rule, trials={"at": "Wait", "confidence_rule": "avg2", "require_think_close": True})
    correct = (lambda a: False)
    exits = 0
    for t in [t for t in _sample_trajectories() if t.trials][:40]:
        zeroed = replace(t, trials=[replace(x, confidence=0.0) for x in t.trials])
        original = replay_score(rule, t, canonical_answer, correct)
        assert replay_score(rule, zeroed, canonical_answer, correct) == original
        assert sweep_score(rule, zeroed, canonical_answer, correct, [0.9]) == [original]
        assert replay_score(think_close, zeroed, canonical_answer, correct).exit_pos is None  # the record's zeros
        exits += original.exit_pos is not None
    assert exits > 5
