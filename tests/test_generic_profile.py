"""The ``generic`` profile (issue 19): the default for reasoning models of no known family, and the
live path computing the same relative features as the offline replay on recorded trajectories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from certaindex.core.answers import canonical_answer
from certaindex.core.exit_score import FEATURES, RELATIVE_FEATURES, LiveScore, stream_features
from certaindex.evaluation.profiles import (
    CONSERVATIVE,
    GENERIC,
    fallback_profile,
    parse_profile,
    profile_for_model,
    shipped_profiles,
)

NEW = ("ans_age_frac", "box_age_frac", "think_frac", "final_frac", "waits_run_share", "fewer_parts")


def _sample() -> Path:
    import certaindex

    return Path(certaindex.__file__).parent / "data" / "governor_sample" / "r1-distill-qwen-7b__math500__seed_42"


def _generic():
    return next(p for p in shipped_profiles() if p.name == GENERIC)


def test_generic_is_the_default_for_unknown_models_and_conservative_without_logprobs():
    generic = _generic()
    assert generic.kind == "score" and "tr" in generic.rule["schedule"].split("+")
    assert set(generic.rule["model"]["features"]) <= set(RELATIVE_FEATURES)  # no absolute token count
    assert {"r1-distill-qwen-7b", "qwen3-8b"} <= set(generic.calibration["models"]) and "TRAIN" in generic.calibration["data"]
    # its trials taken and read alike on every model: stopped at the box's end, DEER's avg1 (no family's
    # think-close rule), as the recorded trials of both families were read to fit it
    assert generic.rule["trials"]["confidence_rule"] == "avg1" and generic.rule["trials"]["require_think_close"] is False
    assert profile_for_model("some-lab/UnknownReasoner-9B").name == GENERIC
    assert profile_for_model("some-lab/UnknownReasoner-9B", logprobs=False).name == CONSERVATIVE
    assert profile_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B").name == "r1-distill-qwen"  # a family wins
    assert fallback_profile(logprobs=False).name == CONSERVATIVE
    # without a generic profile (an older profile folder) the conservative one stands in
    others = [p for p in shipped_profiles() if p.name != GENERIC]
    assert profile_for_model("some-lab/UnknownReasoner-9B", others).name == CONSERVATIVE
    assert "tr" not in fallback_profile(logprobs=False).rule["schedule"].split("+")


# The sample trajectories tests/test_cot_trials.py plays live (exits by a trial, a probe, a box
# there). Not every recorded trial is read back live with its recorded confidence (e.g. problem 25's
# trial at token 736: 0.9571 live from its logprobs, 0.9561 recorded), so a trajectory is only
# compared where the fake's trials match the records.
IDS = [98, 258, 253, 31, 53, 47, 42]


@pytest.mark.parametrize("schedule", ["bx+tc+g512+tr", "bx+tc+g64+tr"])
def test_live_features_over_a_recorded_stream_equal_the_replays(schedule):
    """Streaming a recorded R1-Distill-Qwen-7B trajectory token by token (its own vocabulary,
    quicktok) into :class:`LiveScore`, with the recorded probes, trials and the boxes it wrote
    observed where the schedule reads them, gives at each observation the same feature row (the new
    relative features included) as the offline replay's, which places markers on the whole text."""
    pytest.importorskip("quicktok")
    from certaindex.evaluation.score_policy import markers, observations
    from certaindex.traces.governor import read_governor
    from certaindex.traces.tokenmap import char_ends

    rule = {"schedule": schedule, "threshold": None, "trials": {"suffix": "x"},
            "model": {"features": list(NEW), "mean": [0.0] * len(NEW), "scale": [1.0] * len(NEW),
                      "coef": [0.0] * len(NEW), "intercept": 0.0}}
    seen_nonzero = np.zeros(len(NEW), dtype=bool)
    for t in read_governor(_sample())[0].trajectories[:12]:
        obs = observations(t, schedule)
        offline = stream_features(obs, markers(t), canonical_answer)
        ends, _ = char_ends(t.full_text, t.model, t.tokens_used)
        live = LiveScore(rule, canonical_answer)
        written = 0
        for i, o in enumerate(obs):
            while written < min(o.pos, len(ends)):  # one token at a time, as engines stream
                start = ends[written - 1] if written else 0
                live.add_text(t.full_text[start:ends[written]], 1)
                written += 1
            if o.src == "box":
                got = live.boxed(upto=o.pos)
                assert [(b.pos, b.answer) for b in got] == [(o.pos, o.answer)], (t.problem_id, i)
            else:
                live.observe(o.src, o.answer, o.certain, o.out_tokens, o.confidence, o.min_prob, pos=o.pos)
            row = stream_features(live.obs, live.markers(), canonical_answer)[-1]
            assert row == pytest.approx(offline[i], abs=1e-9), (t.problem_id, i, [
                f for f, a, b in zip(FEATURES, row, offline[i]) if abs(a - b) > 1e-9])
        cols = [FEATURES.index(f) for f in NEW]
        seen_nonzero |= (offline[:, cols] != 0).any(axis=0) if len(offline) else False
    # the comparison covered every new feature moving (fewer_parts needs a list answer: not required)
    assert seen_nonzero[: len(NEW) - 1].all(), dict(zip(NEW, seen_nonzero))


@pytest.mark.parametrize("streaming", [False, True])
async def test_the_generic_profile_live_exits_where_the_replay_does(streaming):
    """The shipped generic profile run live on a fake engine that plays recorded trajectories
    (text, probes, DEER trials with their logprobs) exits at the same token, with the same answer and
    token count, as ``certaindex evaluate``'s replay; at a lower threshold too."""
    pytest.importorskip("quicktok")
    from certaindex.traces.governor import read_governor
    from tests.governor_fake import live_beside_replay, recorded_trials

    profile = _generic()
    folder = _sample()
    trajs = {t.problem_id: t for t in read_governor(folder)[0].trajectories}
    trials = recorded_trials(folder)
    exits = 0
    for threshold in (profile.rule["threshold"], 0.9):
        rule = dict(profile.rule, threshold=threshold)
        for pid in IDS[:3] if streaming else IDS:
            result, offline = await live_beside_replay(profile, rule, trajs[pid], trials[pid], streaming)
            if offline.exit_pos is None:
                assert result.stop_reason == "finished" and result.probe_tokens == offline.overhead, pid
                continue
            exits += 1
            assert (result.stop_reason, result.reasoning_tokens, result.answer) == ("certain", offline.exit_pos, offline.answer), pid
            assert result.reasoning_tokens + result.probe_tokens == offline.tokens, pid
    assert exits > 0


def test_the_shipped_generic_profile_parses_and_names_its_evidence():
    generic = _generic()
    data = {"format": "certaindex-profile", "version": 1, "name": generic.name, "models": list(generic.models),
            "probe_suffix": generic.probe_suffix, "probe_interval": generic.probe_interval, "rule": generic.rule}
    assert parse_profile(data).rule == generic.rule
    assert "transfer_profiles.py" in generic.calibration["command"]
