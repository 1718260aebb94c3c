"""The certainty score: live features on hand-made streams, monotonicity of the logistic score, the
Learn-then-Test guarantee by simulation, profile round-trips and the score rule's replay through
``certaindex evaluate`` on a hand-made Governor folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from certaindex import cli
from certaindex.core.calibration import hoeffding_bentkus_pvalue, ltt_fixed_sequence
from certaindex.core.exit_score import (
    FEATURES,
    NEVER,
    RELATIVE_FEATURES,
    Obs,
    ScoreModel,
    answer_parts,
    fit_logistic,
    first_exit,
    stream_features,
    text_markers,
)
from certaindex.evaluation.profiles import parse_profile, shipped_profiles
from certaindex.evaluation.score_policy import calibrate, check_schedule, observations
from certaindex.traces.governor import read_governor
from tests.governor_data import probe_rows, traj, trial, write_boxed_run, write_run


def col(X: np.ndarray, name: str) -> np.ndarray:
    return X[:, FEATURES.index(name)]


def one_char_per_token(text: str) -> np.ndarray:
    return np.arange(1, len(text) + 1)


# ------------------------------------------------------------------------------ features


def test_text_markers_place_waits_boxes_and_think_close():
    text = "Let x=2. Wait, check. So \\boxed{4}. Hmm. </think> The answer is \\boxed{5}."
    m = text_markers(text, one_char_per_token(text))
    assert m.box_content == ["4", "5"]
    assert list(m.box_pos) == [text.index("{4}") + 3, text.index("{5}") + 3]  # complete at the closing brace
    assert list(m.waits) == [text.index("Wait") + 4, text.index("Hmm") + 3]
    assert m.think_close == text.index("</think>") + len("</think>")
    assert list(m.finals) == [text.index("answer is") + len("answer is")]
    # an unfinished box is not an answer yet; no </think> means never
    m = text_markers("so \\boxed{4", one_char_per_token("so \\boxed{4"))
    assert m.box_content == [] and m.think_close == NEVER


def test_text_markers_follow_token_ends():
    text = "aaaa Wait bbbb"
    ends = np.array([4, 9, 14])  # three tokens: "aaaa", " Wait", " bbbb"
    assert list(text_markers(text, ends).waits) == [2]


def key(answer):
    return None if answer is None else answer.strip()


def test_agreement_run_and_changes():
    text = "x" * 1000
    marks = text_markers(text, one_char_per_token(text))
    obs = [Obs(64, "grid", "3"), Obs(128, "grid", "5"), Obs(192, "grid", "5"), Obs(256, "grid", "5", certain=False),
           Obs(320, "grid", None)]
    X = stream_features(obs, marks, key)
    assert list(np.expm1(col(X, "run_n")).round()) == [1, 1, 2, 3, 0]
    assert list(col(X, "run_tok") * 1000) == [0, 0, 64, 128, 0]
    assert list(np.expm1(col(X, "n_changes")).round()) == [0, 1, 1, 1, 2]
    assert list(np.expm1(col(X, "n_distinct")).round()) == [1, 2, 2, 2, 2]
    assert col(X, "frac_agree")[3] == pytest.approx(3 / 4)
    assert list(col(X, "cur_certain")) == [1, 1, 1, 0, 1]
    assert np.expm1(col(X, "run_uncertain"))[3] == pytest.approx(1)
    assert col(X, "letter_or_empty")[4] == 1  # no answer


def test_box_think_and_trial_features_use_only_the_past():
    text = "a" * 100 + "\\boxed{5}" + "b" * 100 + "</think>" + "c" * 100
    marks = text_markers(text, one_char_per_token(text))
    box_at = int(marks.box_pos[0])
    obs = [Obs(50, "grid", "5"), Obs(box_at, "box", "5"), Obs(150, "trial", "5", confidence=0.999, min_prob=0.9),
           Obs(260, "grid", "6"), Obs(300, "trial", "6", confidence=0.5, min_prob=0.2)]
    X = stream_features(obs, marks, key)
    assert list(col(X, "box_agree")) == [0, 1, 1, 0, 0]  # the box is not seen before it is written
    assert list(col(X, "is_box")) == [0, 1, 0, 0, 0]
    assert list(col(X, "think_closed")) == [0, 0, 0, 1, 1]
    assert list(col(X, "has_trial")) == [0, 0, 1, 1, 1]
    assert col(X, "trial_agree_lg")[2] == pytest.approx(3)  # -log10(1 - 0.999)
    assert col(X, "trial_agree_lg")[3] == 0  # no trial has said "6" yet
    assert col(X, "trial_agree_lg")[4] == pytest.approx(-math.log10(0.5))
    assert col(X, "trial_agree")[3] == 0 and col(X, "trial_agree")[4] == 1
    assert col(X, "trial_minp")[4] == pytest.approx(0.2)
    # row i depends only on obs[:i+1]: dropping the later observations leaves it unchanged
    assert np.array_equal(stream_features(obs[:3], marks, key), X[:3])


def test_relative_features_read_shares_of_the_reasoning_so_far():
    text = "a" * 100 + "\\boxed{5}" + "b" * 91 + "</think>" + "c" * 100 + " The answer is 5" + "d" * 300
    marks = text_markers(text, one_char_per_token(text))
    box_at, think_at, final_at = int(marks.box_pos[0]), marks.think_close, int(marks.finals[0])
    obs = [Obs(80, "grid", "5"), Obs(box_at, "box", "5"), Obs(400, "grid", "7"), Obs(600, "grid", "5")]
    X = stream_features(obs, marks, key)
    assert list(col(X, "ans_age_frac")) == pytest.approx([0, (box_at - 80) / box_at, 0, 520 / 600])
    assert list(col(X, "box_age_frac")) == pytest.approx([0, 0, 0, (600 - box_at) / 600])  # "7" was never boxed
    assert list(col(X, "think_frac")) == pytest.approx([0, 0, (400 - think_at) / 400, (600 - think_at) / 600])
    assert list(col(X, "final_frac")) == pytest.approx([0, 0, (400 - final_at) / 400, (600 - final_at) / 600])
    # the same stream at twice the tokens (half a character a token: every position doubled) gives
    # the same relative features
    marks2 = text_markers(text, np.repeat(one_char_per_token(text), 2))
    obs2 = [Obs(2 * o.pos, o.src, o.answer) for o in obs]
    X2 = stream_features(obs2, marks2, key)
    for name in ("ans_age_frac", "box_age_frac", "think_frac", "final_frac", "run_frac"):
        assert col(X2, name) == pytest.approx(col(X, name), abs=0.01), name
    assert not np.allclose(col(X2, "log_pos"), col(X, "log_pos"))  # an absolute feature moves
    assert set(RELATIVE_FEATURES) < set(FEATURES) and "log_pos" not in RELATIVE_FEATURES
    assert {"fewer_parts", "ans_age_frac", "trial_agree_lg"} <= set(RELATIVE_FEATURES)


def test_waits_run_share_counts_reflection_inside_the_run():
    text = "Wait " + "a" * 94 + " Wait " + "b" * 94 + " Hmm " + "c" * 200
    marks = text_markers(text, one_char_per_token(text))
    obs = [Obs(50, "grid", "3"), Obs(150, "grid", "4"), Obs(250, "grid", "4"), Obs(350, "grid", None)]
    X = stream_features(obs, marks, key)
    # waits so far: 1, 2, 3, 3; inside the run (since its first observation): 0, 0, 1 (the Hmm), 0
    assert list(col(X, "waits_run_share")) == pytest.approx([0, 0, 1 / 3, 0])


@pytest.mark.parametrize("answer, parts", [
    ("2, -3", 2), ("2", 1), ("(1, 2)", 1), ("1,000", 1), ("x=1 \\text{ or } x=2", 2), ("1, 2, and 3", 3),
    ("[1, 2), (3, 4]", 2), ("1; 2; 3", 3), ("2, ", 1), ("", 0), (None, 0)])
def test_answer_parts_counts_the_listed_parts(answer, parts):
    assert answer_parts(answer) == parts


def test_fewer_parts_flags_a_list_answered_short_after_a_longer_one():
    text = "x" * 1000
    marks = text_markers(text, one_char_per_token(text))
    obs = [Obs(64, "grid", "2"), Obs(128, "grid", "2, -3"), Obs(192, "grid", "-3"), Obs(256, "grid", None),
           Obs(320, "grid", "2, -3"), Obs(384, "grid", "(1, 5)")]
    X = stream_features(obs, marks, key)
    # "2" first is no sign (nothing longer came before); "-3" after "2, -3" is; a pair in brackets is one part
    assert list(col(X, "fewer_parts")) == [0, 0, 1, 0, 0, 1]


# ------------------------------------------------------------------------------ the score


@pytest.mark.parametrize("profile", [p for p in shipped_profiles() if p.kind == "score"], ids=lambda p: p.name)
def test_score_is_monotone_in_each_feature_as_its_sign_says(profile):
    model = ScoreModel.from_dict(profile.rule["model"])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, len(FEATURES)))
    base = model.score(X)
    for name, c in zip(model.features, model.coef):
        more = X.copy()
        more[:, FEATURES.index(name)] += 0.5
        moved = model.score(more)
        if c > 0:
            assert np.all(moved >= base), name
        elif c < 0:
            assert np.all(moved <= base), name
    # the evidence the research found strongest raises the score in every shipped profile that uses it
    for name in ("box_agree", "trial_agree_lg"):
        if name in model.features:
            assert model.coef[model.features.index(name)] > 0, (profile.name, name)


def test_fit_logistic_recovers_the_direction_and_first_exit():
    rng = np.random.default_rng(1)
    X = np.zeros((2000, len(FEATURES)))
    X[:, FEATURES.index("box_agree")] = rng.integers(0, 2, 2000)
    X[:, FEATURES.index("log_pos")] = rng.normal(size=2000)
    p = 1 / (1 + np.exp(-(2 * X[:, FEATURES.index("box_agree")] - 1)))
    y = rng.random(2000) < p
    m = fit_logistic(X, y, ["box_agree", "log_pos"], l2=1.0)
    assert m.coef[0] > 0.5 and abs(m.coef[1]) < 0.2
    s = m.score(X[:5])
    assert first_exit(s, [True] * 5, float(s.max())) == int(np.argmax(s))
    assert first_exit(s, [False] * 5, 0.0) is None


def test_score_model_round_trip_and_errors():
    m = ScoreModel(["box_agree", "log_pos"], [0.1, 7.0], [0.3, 1.0], [1.5, -0.5], 2.0)
    again = ScoreModel.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m
    with pytest.raises(ValueError, match="unknown features"):
        ScoreModel(["nope"], [0], [1], [1], 0)
    with pytest.raises(ValueError, match="lacks 'coef'"):
        ScoreModel.from_dict({"features": [], "mean": [], "scale": [], "intercept": 0})


# ------------------------------------------------------------------------------ Learn then Test


@pytest.mark.parametrize("method", ["binomial", "hb"])
def test_ltt_controls_harmful_exits_over_many_calibration_sets(method):
    """Settings j = 0..29 with true harmful-exit rates rising from 0 to 8%; each simulated calibration
    set has n examples (a latent u per example: harmful at j when u < risk_j, so counts are nested as
    for thresholds). The chosen setting's true risk exceeds alpha in at most a delta share of sets."""
    alpha, delta, n, sims = 0.03, 0.1, 400, 1500
    risks = np.linspace(0.0, 0.08, 30)
    rng = np.random.default_rng(7)
    bad = 0
    chosen_any = 0
    for _ in range(sims):
        u = rng.random(n)
        counts = [(u < r).sum() for r in risks]
        res = ltt_fixed_sequence([int(c) for c in counts], n, alpha, delta, method=method)
        if res.index is not None:
            chosen_any += 1
            bad += risks[res.index] > alpha
    assert chosen_any > sims / 2  # it does certify something most of the time
    assert bad / sims <= delta + 0.02


def test_hoeffding_bentkus_is_valid_and_more_conservative_than_binomial():
    from certaindex.core.calibration import binomial_cdf

    for k, n in ((0, 100), (2, 300), (10, 400)):
        assert binomial_cdf(k, n, 0.03) <= hoeffding_bentkus_pvalue(k, n, 0.03) <= 1
    assert hoeffding_bentkus_pvalue(50, 100, 0.03) == 1.0
    with pytest.raises(ValueError, match="binomial or hb"):
        ltt_fixed_sequence([0], 10, 0.1, 0.1, method="x")


# ------------------------------------------------------------------------------ profiles and replay


def score_profile(threshold, schedule="bx+g64", model=None, **extra):
    model = model or {"features": ["box_agree"], "mean": [0.0], "scale": [1.0], "coef": [10.0], "intercept": -5.0}
    return {"format": "certaindex-profile", "version": 1, "name": "mine", "models": ["mine"],
            "probe_suffix": "S", "probe_interval": 64,
            "rule": {"kind": "score", "schedule": schedule, "threshold": threshold, "model": model, **extra}}


def test_shipped_profiles_are_scores_with_their_calibration():
    profiles = {p.name: p for p in shipped_profiles()}
    for name in ("r1-distill-qwen", "r1-distill-qwen-32b", "qwen3", "r1-distill-llama", "conservative"):
        p = profiles[name]
        assert p.kind == "score"
        cal = p.calibration
        assert {"alpha", "delta", "label", "fit", "calibrate", "models"} <= set(cal)
        assert "TRAIN" in cal["data"]
        assert p.probe_suffix == "**Final Answer**\n\n\\[ \\boxed{"
        if "tr" in p.rule["schedule"].split("+"):
            assert p.rule["trials"]["suffix"] == "\n**Final Answer**\n\\boxed"
    assert "tr" not in profiles["conservative"].rule["schedule"]  # works on engines without logprobs


def test_profile_round_trip_and_validation():
    data = score_profile(0.9)
    p = parse_profile(json.loads(json.dumps(data)))
    assert p.kind == "score" and p.rule == data["rule"] and "score bx+g64" in p.label
    assert parse_profile(score_profile(None)).rule["threshold"] is None  # never exits
    for bad, msg in ((score_profile(1.5), "threshold"), (score_profile(0.9, schedule="bx+g100"), "schedule part"),
                     (score_profile(0.9, model={"features": []}), "lacks"),
                     (score_profile(0.9, schedule="bx+tr"), "trials")):
        with pytest.raises(ValueError, match=msg):
            parse_profile(bad, "p.json")


def boxed_folder(tmp_path):
    """Problem 0 boxes "5" early in its text (right); problem 1 boxes "4" (wrong) then ends with "7"."""
    t0 = traj(0, "5", 640, "5")
    t0["full_text"] = "<think>" + "x" * 40 + " so \\boxed{5} " + "y" * 2000 + "</think> \\boxed{5}"
    t1 = traj(1, "7", 640, "7")
    t1["full_text"] = "<think>" + "x" * 40 + " so \\boxed{4} " + "y" * 2000 + "</think> \\boxed{7}"
    rows = probe_rows(0, ["5"] * 9) + probe_rows(1, ["4", "4", "7", "7", "7", "7", "7", "7", "7"])
    return write_run(tmp_path / "gov", [t0, t1], rows, deer={0: [trial(100, "5", 0.99)], 1: []})


def test_replay_exits_at_the_first_box_it_trusts(tmp_path, capsys, monkeypatch):
    path = boxed_folder(tmp_path)
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(score_profile(0.99, schedule="bx")))  # exits only where a box agrees with itself
    out = tmp_path / "o.json"
    monkeypatch.setattr("certaindex.cli.common.out.width", 200)
    code = cli.main(["evaluate", str(path.parent), "--policy", str(prof), "--json", str(out), "--no-png", "--quiet",
                     "--grade-cache", str(tmp_path / "g.json")])
    assert code == 0
    (g,) = json.loads(out.read_text())["groups"]
    (run,) = read_governor(path.parent)
    boxes = [observations(t, "bx")[0] for t in run.trajectories]
    assert [b.answer for b in boxes] == ["5", "4"] and all(0 < b.pos < 640 for b in boxes)
    # both exit at their first box, free: tokens are the box positions; problem 1 exits on the wrong "4"
    assert g["tokens"] == pytest.approx((boxes[0].pos + boxes[1].pos) / 2)
    assert g["accuracy"] == 0.5 and g["harmful_exits"] == 1 and g["full_accuracy"] == 1.0


def test_replay_never_exits_without_threshold_and_counts_probes(tmp_path, monkeypatch):
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs, run_profile

    path = boxed_folder(tmp_path)
    (run,) = read_governor(path.parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    t = run.trajectories[0]
    o = run_profile(parse_profile(score_profile(None, schedule="bx+g128")), t, cache.key,
                    lambda a: cache.correct(a, t.target))
    assert o.exit_pos is None and o.overhead == 10 * 4  # probes at 128, 256, 384, 512 cost 10 each
    assert o.tokens == 640 + 40 and o.correct


def test_schedule_parts():
    assert check_schedule("bx+tc+g512+tr") == ["bx", "tc", "g512", "tr"]
    with pytest.raises(ValueError, match="gN"):
        check_schedule("g32")


def test_calibrate_certifies_on_train_problems_only_and_refuses_too_little(tmp_path):
    """A synthetic folder: many problems whose first box is right; calibration fits and certifies a
    threshold that exits there. Too few problems give a clear error."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs

    path = write_boxed_run(tmp_path / "gov", 240)
    (run,) = read_governor(path.parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    cal = calibrate(run.trajectories, "bx+g256", cache.key, lambda t, a: cache.correct(a, t.target),
                    alpha=0.05, delta=0.1)
    assert cal.threshold is not None and cal.cal_harmful == 0 and cal.cal_saved > 0.3
    assert cal.n_fit + cal.n_cal == 240 and cal.n_fit < cal.n_cal
    with pytest.raises(ValueError, match="observations with an answer"):
        calibrate(run.trajectories[:3], "bx", cache.key, lambda t, a: cache.correct(a, t.target))
    # the same through the command line: a profile that evaluate reads back
    prof, res = tmp_path / "mine.json", tmp_path / "res.json"
    assert cli.main(["calibrate", str(path.parent), "--schedule", "bx+g256", "--alpha", "0.05", "--out", str(prof),
                     "--grade-cache", str(tmp_path / "g.json"), "--quiet"]) == 0
    p = parse_profile(json.loads(prof.read_text()))
    assert p.kind == "score" and p.rule["threshold"] is not None and p.models == ("r1-distill-qwen-7b",)
    assert "all problems" in p.calibration["data"]  # no split manifest in this folder
    assert cli.main(["evaluate", str(path.parent), "--policy", str(prof), "--json", str(res), "--no-png", "--quiet",
                     "--grade-cache", str(tmp_path / "g.json")]) == 0
    (g,) = json.loads(res.read_text())["groups"]
    assert g["accuracy"] == 1.0 and g["saved"] > 0.3


# ------------------------------------------------------------------------------ live


def test_select_setting_chooses_on_held_aside_train_problems_only(tmp_path):
    """The held-aside choice replays only CAL problems (never FIT), each exactly once, and here (every
    first box right) admits a setting that exits early without harm; where a third of the early
    answers are wrong and nothing tells them apart, a setting certified at a loose alpha exits
    harmfully on held-aside problems and a zero loss budget admits none."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs
    from certaindex.evaluation.score_policy import part_of, select_setting

    def folder(name, wrong_every):
        trajs, rows = [], []
        for pid in range(240):
            right, early = str(pid % 7), (str(pid % 7 + 1) if pid % wrong_every == 0 else str(pid % 7))
            t = traj(pid, right, 640, right)
            t["full_text"] = "<think>" + "x" * 300 + f" \\boxed{{{early}}} " + "y" * 1500 + f"</think> \\boxed{{{right}}}"
            trajs.append(t)
            rows += probe_rows(pid, [early] * 9)
        (run,) = read_governor(write_run(tmp_path / name, trajs, rows).parent)
        cache = GradeCache.load(tmp_path / f"{name}.json")
        cache.grade(*grading_inputs(run.trajectories))
        return run.trajectories, cache

    ts, cache = folder("good", 10**9)
    chosen, table = select_setting(ts, "bx+g256", cache.key, lambda t, a: cache.correct(a, t.target),
                                   alphas=(0.05,), labels=("noharm",), guards=(True, False))
    held = sum(1 for t in ts if part_of(t) in (1, 2, 4, 5))
    assert len(table) == 2 and all(sum(v["n"] for v in h.per_dataset.values()) == held for h in table)
    assert chosen is not None and chosen.admissible and chosen.per_dataset["math500"]["harmful"] == 0
    assert chosen.saved("math500") > 0.3
    ts, cache = folder("bad", 3)
    chosen, table = select_setting(ts, "bx+g256", cache.key, lambda t, a: cache.correct(a, t.target),
                                   alphas=(0.5,), labels=("ok",), guards=(False,), max_loss=0.0)
    assert all(h.per_dataset["math500"]["harmful"] > 0 for h in table) and chosen is None


def test_live_score_decides_like_the_offline_features():
    """Streaming a text one token (character) at a time with probes every 64 tokens and the boxes
    the model writes gives the same exit as scoring the whole stream offline."""
    from certaindex.core.exit_score import LiveScore

    text = ("<think>" + "a" * 150 + " Wait, so \\boxed{3}. " + "b" * 200 + " Hmm \\boxed{5} " + "c" * 300
            + "</think> so \\boxed{5}")
    probes = {64: "3", 128: "3", 192: "4", 256: "5", 320: "5", 384: "5", 448: "5", 512: "5", 576: "5", 640: "5"}
    rule = {"schedule": "bx+g64", "threshold": 0.9,
            "model": {"features": ["box_agree", "run_n"], "mean": [0, 0], "scale": [1, 1], "coef": [3.0, 1.0], "intercept": -2.5}}
    live = LiveScore(rule, key)
    decided = None
    for i, ch in enumerate(text, 1):
        live.add_text(ch, 1)
        live.boxed()
        if live.probe_wanted(live.tokens):
            live.observe("grid", probes.get(i), out_tokens=10)
        go, answer, _ = live.decide()
        if go:
            decided = (i, answer)
            break
    marks = text_markers(text, one_char_per_token(text))
    obs = sorted([Obs(int(p), "box", c) for p, c in zip(marks.box_pos, marks.box_content)]
                 + [Obs(p, "grid", a, True, 10) for p, a in probes.items() if p <= len(text)],
                 key=lambda o: (o.pos, o.src != "box"))
    scores = ScoreModel.from_dict(rule["model"]).score(stream_features(obs, marks, key))
    j = first_exit(scores, [o.answer is not None for o in obs], 0.9)
    assert j is not None and decided == (obs[j].pos, obs[j].answer)
    # never exits without a threshold; trials are due after each new reflection word when scheduled
    quiet = LiveScore(dict(rule, threshold=None), key)
    quiet.add_text(text, len(text))
    quiet.boxed()
    assert quiet.decide()[0] is False
    tr = LiveScore(dict(rule, schedule="tr", trials={"max": 3}), key)
    tr.add_text("so. Wait", 3)  # "so", ".", " Wait"
    assert not tr.trial_due() and tr.trial_pending()  # "Wait" at the very end: maybe "Waiting"
    tr.add_text(", hmm, Hmm, but wait", 7)  # Hmm is a reflection word, but DEER's trials are at Wait/wait
    assert tr.trial_points() == [(4, 3)]  # the text before "Wait": 4 characters, ending in the " Wait" token
    assert tr.trial_points(final=True) == [(24, 10)]  # "wait" at the very end counts once the text ended
    tr.add_text(" Waiting. Wait. Wait. Wait.", 8)
    assert len(tr.trial_points()) == 1 and tr.trials_offered == 3  # at most trials.max in all
    assert LiveScore(rule, key).trial_points(final=True) == []  # the schedule reads no trials


def test_sweep_score_is_replay_at_each_threshold_and_exits_no_later_as_it_falls(tmp_path):
    """The score's frontier (one feature pass, many thresholds) gives at each threshold exactly what
    the profile replayed at that threshold gives, and a lower threshold never exits later."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs
    from certaindex.evaluation.score_policy import replay_score, sweep_score

    (run,) = read_governor(boxed_folder(tmp_path).parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    rule = score_profile(None, schedule="bx+g128", model={"features": ["box_agree", "log_pos"], "mean": [0.0, 0.0],
                                                          "scale": [1.0, 1.0], "coef": [4.0, 1.5], "intercept": -9.0})["rule"]
    thresholds = [None, 0.999, 0.9, 0.5, 0.1, 0.0]
    for t in run.trajectories:
        correct = (lambda a, t=t: cache.correct(a, t.target))
        swept = sweep_score(rule, t, cache.key, correct, thresholds)
        assert swept == [replay_score({**rule, "threshold": th}, t, cache.key, correct) for th in thresholds]
        assert swept[0].exit_pos is None and swept[-1].exit_pos is not None
        ends = [o.exit_pos if o.exit_pos is not None else t.tokens_used for o in swept]
        assert ends == sorted(ends, reverse=True)


def test_evaluate_tables_show_the_default_scores_frontier(tmp_path):
    """Under a score default, every group also gets the default's score swept over its threshold
    (family ``score``), and the table a row with its best point in band."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import SCORE_SWEEP, family_points, grading_inputs
    from certaindex.evaluation.governor_report import group_rows

    (run,) = read_governor(boxed_folder(tmp_path).parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    prof = parse_profile(score_profile(0.99, schedule="bx"))
    points = family_points(run.trajectories, cache, profile_for=lambda name: prof)
    sweep = [p for p in points if p.family == "score"]
    assert len(sweep) == len(SCORE_SWEEP)
    assert sweep[0].tokens >= sweep[-1].tokens  # conservative first
    rows = dict(group_rows(points))
    best = rows["default's score, best within band"]
    assert best is None or best.family == "score"
    # a Dynasor default has no score to sweep
    dyn = parse_profile({"format": "certaindex-profile", "version": 1, "name": "d", "models": ["d"], "probe_suffix": "S",
                         "probe_interval": 64, "rule": {"kind": "dynasor", "k": 3}})
    assert not [p for p in family_points(run.trajectories, cache, profile_for=lambda name: dyn) if p.family == "score"]


def test_held_aside_outcomes_replay_each_calibration_problem_once_at_a_threshold_certified_without_it(tmp_path):
    """Each CAL trajectory is replayed once, at the threshold that the other three CAL sixths
    certify; FIT trajectories never appear."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs
    from certaindex.evaluation.score_policy import THRESHOLDS, HELD_TURNS, _certify, fitted_scores, held_aside_outcomes, part_of

    trajs, rows = [], []
    for pid in range(240):
        right, early = str(pid % 7), (str(pid % 7 + 1) if pid % 5 == 0 else str(pid % 7))
        t = traj(pid, right, 640, right)
        t["full_text"] = "<think>" + "x" * (300 + 7 * (pid % 11)) + f" \\boxed{{{early}}} " + "y" * 1500 + f"</think> \\boxed{{{right}}}"
        trajs.append(t)
        rows += probe_rows(pid, [early] * 3 + [right] * 6)
    (run,) = read_governor(write_run(tmp_path / "gov", trajs, rows).parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    ts = run.trajectories
    correct = (lambda t, a: cache.correct(a, t.target))
    tab, scores = fitted_scores(ts, "bx+g128", cache.key, correct, "noharm")
    six = np.array([part_of(t) for t in ts])
    rot = held_aside_outcomes(tab, scores, six, None, 0.1, 0.1)
    assert sorted(rot.ids.tolist()) == [i for i, s in enumerate(six) if s in HELD_TURNS]
    assert len(rot.thresholds) == len(HELD_TURNS)
    for turn, th in zip(HELD_TURNS, rot.thresholds):
        others = np.nonzero(np.isin(six, [s for s in HELD_TURNS if s != turn]))[0]
        index, _, _ = _certify(tab, scores, others, None, 0.1, 0.1)
        assert th == (None if index is None else THRESHOLDS[index])
    full_tokens = tab.tokens_used[rot.ids] + tab.overhead[rot.ids]
    assert (rot.tokens <= full_tokens).all() and (rot.tokens < full_tokens).any()
