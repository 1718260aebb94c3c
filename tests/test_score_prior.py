"""The score refitted toward a starting score (``certaindex calibrate DIR``'s refit): with no data
the start comes back unchanged, a little data moves it a little, much data moves it to what the data
says; and the refit on hand-made trajectories is certified by Learn-then-Test on the other two thirds."""

from __future__ import annotations

import numpy as np
import pytest

from certaindex.core.exit_score import FEATURES, ScoreModel, fit_logistic
from certaindex.core.score_prior import fit_logistic_toward
from certaindex.evaluation.score_refit import calibrate_toward, refit_features
from certaindex.evaluation.self_calibration import calibrate_score, refit_schedules
from certaindex.traces.governor import read_governor
from tests.governor_data import write_boxed_run

PRIOR = ScoreModel(["run_frac", "frac_agree"], [0.5, 0.5], [0.25, 0.25], [1.0, 0.5], 0.2)


def data(n: int, seed: int = 0, coef: tuple[float, float] = (-1.0, 2.0), intercept: float = -0.5):
    """Rows drawn from a logistic model unlike :data:`PRIOR` (in PRIOR's standardisation)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n, len(FEATURES)))
    cols = [FEATURES.index(f) for f in PRIOR.features]
    X[:, cols] = rng.uniform(0, 1, size=(n, 2))
    z = (X[:, cols] - 0.5) / 0.25
    p = 1 / (1 + np.exp(-(z @ np.array(coef) + intercept)))
    return X, (rng.uniform(size=n) < p).astype(float)


def test_with_no_data_the_start_is_returned():
    empty = np.zeros((0, len(FEATURES)))
    m = fit_logistic_toward(empty, np.zeros(0), PRIOR)
    assert m.features == PRIOR.features and m.coef == pytest.approx(PRIOR.coef) and m.intercept == pytest.approx(0.2)
    # a feature the start lacks joins at weight 0: the score is still the start's
    m = fit_logistic_toward(empty, np.zeros(0), PRIOR, ["run_frac", "ans_len"])
    assert m.features == ["run_frac", "frac_agree", "ans_len"] and m.coef[2] == 0.0
    X, _ = data(50)
    assert np.allclose(m.score(X), PRIOR.score(X))


def test_the_start_pulls_a_little_data_and_much_data_overrules_it():
    X, y = data(40, seed=1)
    warm = fit_logistic_toward(X, y, PRIOR, strength=30.0)
    cold = fit_logistic(X, y, PRIOR.features, l2=1e-6)
    gap = lambda m: abs(m.coef[0] - PRIOR.coef[0]) + abs(m.coef[1] - PRIOR.coef[1])  # noqa: E731
    assert gap(warm) < 0.5 * gap(cold)  # 40 rows move the start, but much less than a cold fit moves
    assert warm.coef[0] < PRIOR.coef[0]  # ... in the direction the data says (its first weight is -1)
    X, y = data(40_000, seed=2)
    many = fit_logistic_toward(X, y, PRIOR, strength=30.0)
    assert many.coef == pytest.approx([-1.0, 2.0], abs=0.15) and many.intercept == pytest.approx(-0.5, abs=0.15)
    with pytest.raises(ValueError, match="strength"):
        fit_logistic_toward(X, y, PRIOR, strength=-1)


def boxed_trajectories(tmp_path, n: int = 240):
    """Problems whose first box (early in the reasoning) already holds the final answer."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs

    path = write_boxed_run(tmp_path / "gov", n)
    (run,) = read_governor(path.parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    return run.trajectories, cache


def test_refit_toward_the_start_is_certified_on_the_other_two_thirds(tmp_path):
    trajs, cache = boxed_trajectories(tmp_path)
    correct = lambda t, a: cache.correct(a, t.target)  # noqa: E731
    cal = calibrate_toward(trajs, "bx+g256", PRIOR, cache.key, correct, alpha=0.05, delta=0.1)
    assert cal.threshold is not None and cal.cal_harmful == 0 and cal.cal_saved > 0.3
    assert cal.n_fit + cal.n_cal == 240 and cal.n_fit < cal.n_cal and cal.model.features[:2] == PRIOR.features
    assert set(cal.model.features) == set(PRIOR.features) | set(refit_features("bx+g256"))
    # an overwhelming pull keeps the start's weights
    stiff = calibrate_toward(trajs, "bx+g256", PRIOR, cache.key, correct, alpha=0.05, delta=0.1, strength=1e9)
    assert stiff.model.coef == pytest.approx(PRIOR.coef + [0.0] * (len(stiff.model.coef) - 2), abs=1e-4)
    with pytest.raises(ValueError, match="fit and a calibration part"):
        calibrate_toward(trajs[:1], "bx", PRIOR, cache.key, correct, alpha=0.05, delta=0.1)


def test_calibrate_score_tries_the_start_and_each_refit_schedule(tmp_path):
    assert refit_schedules("bx+tc+g512", has_trials=False) == ["bx+tc+g512"]
    assert refit_schedules("bx+tc+g512+tr", has_trials=True) == ["bx+tc+g512+tr", "bx+tc+tr"]
    trajs, cache = boxed_trajectories(tmp_path, 150)
    cands = calibrate_score(trajs, "bx+g256", PRIOR, cache.key, lambda t, a: cache.correct(a, t.target), 0.05, 0.1 / 4,
                            ["bx+g256", "bx+g128"])
    assert [c.name for c in cands] == ["start", "refit", "refit"]
    assert [c.calibration.schedule for c in cands] == ["bx+g256", "bx+g256", "bx+g128"]
    assert cands[0].calibration.n_cal == 150 and cands[1].calibration.n_fit > 0


def test_calibrate_dir_starts_from_generic_for_any_model():
    """Issue 19: the score is learnt from the generic start, for a model of no family and for a
    model of a known family alike (whose own profile was fitted on other traffic)."""
    from certaindex.cli.shadow_calibrate import start_profile

    for model in ("my-own-reasoner-3b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "Qwen/Qwen3-8B"):
        assert start_profile(model).name == "generic"
