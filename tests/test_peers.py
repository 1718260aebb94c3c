"""Peer rules and bounds on small hand-made trajectories whose right exits are known by hand."""

from __future__ import annotations

import pytest

from certaindex.evaluation.peers import (
    deer,
    dynasor,
    dynasor_all_k,
    event_probes,
    full_reasoning,
    grid,
    oracle,
)
from certaindex.traces.governor import Probe, Trajectory, Trial


def make(answers, certain=None, tokens=1000, final="5", target="5", out=10, trials=None, events=()):
    certain = certain or [True] * len(answers)
    probes = [Probe(64 * (i + 1), a, c, out) for i, (a, c) in enumerate(zip(answers, certain))]
    return Trajectory("m", "m/M", "math500", 42, 0, "dev", target, tokens, "", final, final == target, "stop",
                      probes, list(events), trials)


def key(a):  # agreement key: the answer itself (tests use plain strings)
    return a


def correct_for(target):
    return lambda a: a is not None and a == target


C5 = correct_for("5")


def test_full_reasoning_spends_the_recorded_tokens_only():
    t = make(["5"] * 3, tokens=700)
    o = full_reasoning(t, C5)
    assert (o.exit_pos, o.answer, o.correct, o.tokens, o.overhead) == (None, "5", True, 700, 0)


def test_dynasor_exits_when_the_last_k_agree_and_counts_probe_tokens():
    t = make(["3", "5", "5", "5", "5"])
    o = dynasor(t, 3, key, C5)
    assert o.exit_pos == 64 * 4  # probes 2, 3, 4 agree
    assert o.answer == "5" and o.correct
    assert o.overhead == 4 * 10 and o.tokens == 256 + 40


def test_dynasor_early_false_consensus_is_a_wrong_exit():
    t = make(["3", "3", "5", "5", "5"])
    o = dynasor(t, 2, key, C5)
    assert (o.exit_pos, o.answer, o.correct) == (128, "3", False)


def test_a_hesitant_or_missing_probe_breaks_the_run():
    t = make(["5", "5", "5", None, "5", "5"], certain=[True, False, True, True, True, True])
    assert dynasor(t, 2, key, C5).exit_pos == 64 * 6  # probe 2 hesitates, probe 4 has no answer
    assert dynasor(t, 3, key, C5).exit_pos is None


def test_no_exit_runs_to_the_end_and_still_pays_every_probe():
    t = make(["1", "2", "3"], tokens=250, final="5")
    o = dynasor(t, 2, key, C5)
    assert (o.exit_pos, o.answer, o.correct) == (None, "5", True)
    assert o.tokens == 250 + 30 and o.overhead == 30


def test_probes_at_or_beyond_the_end_are_not_seen():
    t = make(["5", "5", "5", "5"], tokens=192)  # probes at 64, 128 only (192 is the end)
    assert [p.pos for p in grid(t)] == [64, 128]
    assert dynasor(t, 3, key, C5).exit_pos is None


def test_intervals_subsample_the_grid():
    t = make(["3", "5", "9", "5", "9", "5"])  # at 128: 5, 256: 5, 384: 5
    assert [p.pos for p in grid(t, 128)] == [128, 256, 384]
    o = dynasor(t, 3, key, C5, interval=128)
    assert (o.exit_pos, o.correct, o.overhead) == (384, True, 30)
    assert dynasor(t, 2, key, C5, interval=64).exit_pos is None
    with pytest.raises(ValueError):
        grid(t, 0)


def test_all_k_at_once_equals_one_k_at_a_time():
    t = make(["3", "3", "5", "5", "5", None, "5", "5", "5", "5"], certain=[True] * 7 + [False, True, True])
    for interval in (64, 128):
        many = dynasor_all_k(t, range(1, 8), key, C5, interval)
        assert many == [dynasor(t, k, key, C5, interval) for k in range(1, 8)]


def test_agreement_uses_the_key_not_the_text():
    t = make(["1/2", "0.5", "\\frac12"], target="0.5", final="0.5")
    same = lambda a: {"1/2": "h", "0.5": "h", "\\frac12": "h"}.get(a)  # noqa: E731
    assert dynasor(t, 3, same, correct_for("0.5")).exit_pos == 192
    assert dynasor(t, 2, key, correct_for("0.5")).exit_pos is None


def test_event_probes_use_the_same_rule_on_events():
    evs = [Probe(100, "5", True, 4), Probe(150, "5", True, 4), Probe(900, "5", True, 4), Probe(1000, "5", True, 4)]
    t = make(["1", "2"], tokens=950, events=evs)
    o = event_probes(t, 2, key, C5)
    assert (o.exit_pos, o.tokens, o.overhead) == (150, 158, 8)
    o = event_probes(t, 4, key, C5)  # the event at 1000 is past the end
    assert (o.exit_pos, o.overhead) == (None, 12)


def test_deer_exits_at_the_first_confident_trial_and_counts_trial_tokens():
    trials = [Trial(100, "3", 0.9, 7), Trial(300, None, 0.999, 7), Trial(400, "5", 0.97, 7), Trial(500, "5", 0.999, 7)]
    t = make(["5"], tokens=800, trials=trials)
    o = deer(t, 0.95, C5)
    assert (o.exit_pos, o.answer, o.correct, o.overhead, o.tokens) == (400, "5", True, 21, 421)
    o = deer(t, 0.8, C5)
    assert (o.exit_pos, o.answer, o.correct) == (100, "3", False)
    o = deer(t, 0.9999, C5)
    assert (o.exit_pos, o.answer, o.tokens) == (None, "5", 800 + 28)
    with pytest.raises(ValueError, match="no DEER trials"):
        deer(make(["5"]), 0.9, C5)


def test_oracle_stops_where_every_later_probe_is_right():
    t = make(["5", "3", "5", "5", "5"])
    o = oracle(t, C5)
    assert (o.exit_pos, o.correct, o.overhead) == (192, True, 30)
    assert oracle(make(["5"] * 4), C5).exit_pos == 64


def test_oracle_does_not_exit_when_the_final_answer_is_wrong_or_the_last_probe_is():
    assert oracle(make(["5", "5"], final="4"), C5).exit_pos is None
    o = oracle(make(["5", "5", "3"]), C5)
    assert o.exit_pos is None and o.correct and o.overhead == 30


def test_the_oracle_exit_is_always_right_and_never_costs_more_than_running_on():
    cases = [make(a) for a in (["5", "5", "5"], ["3", "5", "5", "5"], ["5", "3", "5", "5"], ["3", "3", "3", "5"], ["3"])]
    for t in cases:
        o = oracle(t, C5)
        assert o.correct
        assert o.tokens <= t.tokens_used + sum(p.out_tokens for p in grid(t))
