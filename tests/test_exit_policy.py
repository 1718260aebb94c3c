"""The exit policy objects (core/exit_policy.py): their decisions on hand-made streams, the vectorised
sweeps the evaluation keeps for speed equal to them on the shipped Governor sample, and a live run
over a recorded trajectory exiting where the replay of that trajectory does."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from certaindex.core.answers import canonical_answer
from certaindex.core.exit_policy import Decision, Deer, Dynasor, ScoreRule, key_equal, replay
from certaindex.core.exit_score import LiveScore, Obs
from certaindex.core.signals import ProbeObservation, probe_certaindex, probes_agree


def _probe(pos: int, answer: str | None, certain: bool = True, out: int = 3, src: str = "grid") -> Obs:
    return Obs(pos, src, answer, certain, out)


def _plain_equal(a: str, b: str) -> bool:
    return a.strip() == b.strip()


# ------------------------------------------------------------------------------ Dynasor


def test_dynasor_exits_when_the_last_k_probes_agree_without_hesitating():
    policy = Dynasor(3, _plain_equal)
    steps = [policy.observe(_probe(64 * i, a, c)) for i, (a, c) in enumerate(
        [("4", True), ("5", True), ("5", False), ("5", True), ("5", True), ("5", True)], start=1)]
    assert [d.exit for d in steps] == [False, False, False, False, False, True]
    assert [round(d.certaindex, 3) for d in steps] == [0.333, 0.333, 0.0, 0.333, 0.667, 1.0]
    assert steps[-1].answer == "5" and steps[-1].at is not None and steps[-1].at.pos == 384


def test_dynasor_reads_probes_only_and_counts_no_answer_as_a_break():
    policy = Dynasor(2, _plain_equal)
    assert not policy.observe(_probe(10, "7", src="box"), Obs(20, "trial", "7", confidence=1.0)).exit
    assert not policy.observe(_probe(64, "7"), _probe(128, None), _probe(192, "7")).exit
    assert not policy.observe(_probe(256, "  ")).exit  # whitespace is no answer
    d = policy.observe(_probe(320, "7", src="event"), _probe(384, "7"), _probe(448, "8"))
    assert d.exit and d.at is not None and d.at.pos == 384  # observations after the exit are not read


def test_dynasor_treats_an_answer_its_equivalence_cannot_read_as_none():
    key = {"1": "1", "junk": None}.get
    policy = Dynasor(1, key_equal(key))
    assert not policy.observe(_probe(64, "junk")).exit
    assert policy.observe(_probe(128, "1")).answer == "1"


def test_dynasor_refuses_a_bad_k():
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be"):
            Dynasor(k, _plain_equal)  # type: ignore[arg-type]


def test_dynasor_decides_as_core_signals_on_random_streams():
    """The live program's old rule (core.signals over ProbeObservation, each earlier probe compared to
    the latest) and the object agree probe by probe, with a non-transitive equivalence too."""
    rng = random.Random(7)
    near = lambda a, b: abs(int(a) - int(b)) <= 1  # noqa: E731 -- not transitive
    for _ in range(300):
        k = rng.randint(1, 5)
        policy = Dynasor(k, near)
        seen: list[ProbeObservation] = []
        for i in range(rng.randint(1, 25)):
            answer = rng.choice([None, "1", "2", "3", "4"])
            hesitant = rng.random() < 0.2
            seen.append(ProbeObservation(answer, hesitant))
            d = policy.observe(_probe(64 * (i + 1), answer, not hesitant))
            assert d.exit == probes_agree(seen, k, near)
            assert d.certaindex == probe_certaindex(seen, k, near)


# ------------------------------------------------------------------------------ DEER


def test_deer_exits_at_the_first_confident_trial_with_an_answer():
    policy = Deer(0.9)
    trials = [Obs(100, "trial", "3", confidence=0.95, out_tokens=5), Obs(50, "grid", "9", out_tokens=2),
              Obs(200, "trial", None, confidence=0.99, out_tokens=5), Obs(300, "trial", "4", confidence=0.5),
              Obs(400, "trial", "4", confidence=0.92, out_tokens=6)]
    d, spent = replay(policy, trials[1:])
    assert d.exit and d.answer == "4" and d.at is trials[4] and spent == 2 + 5 + 0 + 6
    assert Deer(0.9).observe(trials[0]).answer == "3"
    assert not Deer(1.0).observe(*trials).exit
    with pytest.raises(ValueError):
        Deer(1.5)


def test_replay_counts_every_observation_when_the_policy_never_exits():
    d, spent = replay(Dynasor(5, _plain_equal), [_probe(64, "1", out=4), _probe(128, "1", out=6)])
    assert d == Decision(False, None, None, 0.4) and spent == 10


# ------------------------------------------------------------------------------ the score


RULE = {"schedule": "bx+g64", "threshold": 0.7,
        "model": {"features": ["run_n"], "mean": [0.0], "scale": [1.0], "coef": [3.0], "intercept": -3.0}}


def test_the_score_decides_alike_fed_one_by_one_or_all_at_once():
    live = LiveScore(RULE, canonical_answer)
    text = "so x = 2. \\boxed{2} Wait, check. " * 3
    live.add_text(text, 30)
    stream = [_probe(5, "2"), _probe(10, "3"), _probe(15, "2"), _probe(20, "2"), _probe(25, "2"), _probe(28, "2")]
    one = ScoreRule(live)
    decisions = [one.observe(o) for o in stream]
    first = next(i for i, d in enumerate(decisions) if d.exit)
    whole = ScoreRule.recorded(RULE, canonical_answer, live.markers()).observe(*stream)
    assert first == 4 and whole.exit and whole.at is stream[first] and whole.answer == decisions[first].answer == "2"
    assert 0.0 <= decisions[0].certaindex <= 1.0


# ------------------------------------------------------------------------------ the shipped sample


def _sample_dir() -> Path:
    import certaindex

    return Path(certaindex.__file__).parent / "data" / "governor_sample" / "r1-distill-qwen-7b__math500__seed_42"


@pytest.fixture(scope="module")
def sample():
    from certaindex.traces.governor import read_governor

    return read_governor(_sample_dir())[0].trajectories


def _correct(t):
    return lambda a: canonical_answer(a) is not None and canonical_answer(a) == canonical_answer(t.target)


def test_the_all_k_dynasor_sweep_equals_the_policy_object_on_the_sample(sample):
    from certaindex.evaluation.governor import DYNASOR_INTERVALS, DYNASOR_KS, EVENT_KS
    from certaindex.evaluation.peers import dynasor, dynasor_all_k, event_probes

    ks = (1, *DYNASOR_KS)
    for t in sample:
        c = _correct(t)
        for interval in DYNASOR_INTERVALS:
            assert dynasor_all_k(t, ks, canonical_answer, c, interval) == [
                dynasor(t, k, canonical_answer, c, interval) for k in ks], (t.problem_id, interval)
        events = [p for p in t.events if p.pos < t.tokens_used]
        assert dynasor_all_k(t, EVENT_KS, canonical_answer, c, probes=events) == [
            event_probes(t, k, canonical_answer, c) for k in EVENT_KS], t.problem_id


def test_the_score_threshold_sweep_equals_the_policy_object_on_the_sample(sample):
    from certaindex.evaluation.governor import SCORE_SWEEP
    from certaindex.evaluation.profiles import shipped_profiles
    from certaindex.evaluation.score_policy import replay_score, sweep_score

    exits = 0
    for profile in shipped_profiles():
        rule = profile.rule
        thresholds = [*SCORE_SWEEP[::4], rule.get("threshold"), None]
        for t in sample[::3]:
            c = _correct(t)
            swept = sweep_score(rule, t, canonical_answer, c, thresholds)
            one = [replay_score(dict(rule, threshold=th), t, canonical_answer, c) for th in thresholds]
            assert swept == one, (profile.name, t.problem_id)
            exits += sum(o.exit_pos is not None for o in one)
    assert exits > 0  # the comparison saw exits, not only runs to the end


LIVE_IDS = [31, 47, 42, 144]  # trajectories of the sample: Dynasor exits on some, not on all


@pytest.mark.parametrize("k", [4, 8])
async def test_a_live_dynasor_run_over_a_recorded_trajectory_exits_where_its_replay_does(sample, k):
    """solve_cot under Dynasor's rule on a fake engine playing recorded R1-Distill-Qwen-7B
    trajectories (its text in the model's tokens, the recorded probes) exits at the same token with
    the same answer and token count as the replay (peers.dynasor) of the trajectory. The shipped
    score profile's twin of this test is tests/test_cot_trials.py's live-over-recorded test."""
    pytest.importorskip("quicktok")
    from certaindex.evaluation.peers import dynasor
    from certaindex.evaluation.score_policy import PROBE_SUFFIX
    from certaindex.programs.cot import CoTConfig, solve_cot
    from tests.governor_fake import GovernorTrajectoryFake

    trajs = {t.problem_id: t for t in sample}
    outcomes = []
    for pid in LIVE_IDS:
        t = trajs[pid]
        offline = dynasor(t, k, canonical_answer, lambda a: False, 64)
        engine = GovernorTrajectoryFake(t, {}, PROBE_SUFFIX)
        config = CoTConfig(budget=t.tokens_used + 64, probe_interval=64, probe_suffix=PROBE_SUFFIX, probe_tokens=32,
                           k=k, system_prompt=None)
        result = await solve_cot(engine, f"problem {pid}", config)
        outcomes.append(offline.exit_pos is not None)
        if offline.exit_pos is None:
            assert result.stop_reason == "finished" and result.probe_tokens == offline.overhead, pid
            continue
        assert (result.stop_reason, result.reasoning_tokens, result.answer) == (
            "certain", offline.exit_pos, offline.answer), pid
        assert result.reasoning_tokens + result.probe_tokens == offline.tokens, pid
    assert any(outcomes) and not all(outcomes)


def test_the_calibration_walk_replays_each_threshold_as_the_policy_object(sample):
    """score_policy's calibration replays a threshold over its observation table, vectorised; at each
    threshold its tokens and correctness per trajectory equal the ScoreRule replay."""
    import numpy as np

    from certaindex.core.exit_score import ScoreModel
    from certaindex.evaluation.profiles import shipped_profiles
    from certaindex.evaluation.score_policy import _exits, _replay, _table, replay_score

    rule = next(p for p in shipped_profiles() if p.name == "r1-distill-qwen").rule
    trajs = sample[::2]
    tab = _table(trajs, rule["schedule"], canonical_answer, lambda t, a: _correct(t)(a))
    scores = ScoreModel.from_dict(rule["model"]).score(tab.X)
    ids = np.arange(len(trajs))
    for th in (0.999, rule["threshold"], 0.9, 0.6):
        tok, cor = _replay(tab, _exits(tab, scores, ids), ids, th)
        one = [replay_score(dict(rule, threshold=th), t, canonical_answer, _correct(t)) for t in trajs]
        assert tok.tolist() == [float(o.tokens) for o in one], th
        assert cor.tolist() == [o.correct for o in one], th
