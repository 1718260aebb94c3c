"""score_policy.threshold_reaching / certified_alpha: lowering a certified threshold until the exits
save what a simpler deployed rule saves, and the certificate the lowered threshold still carries.
Hand-made observation tables (no traces); reach_savings on a hand-made run."""

from __future__ import annotations

import numpy as np
import pytest

from certaindex.evaluation.score_policy import THRESHOLDS, _Table, calibrate, certified_alpha, reach_savings, threshold_reaching
from certaindex.traces.governor import read_governor
from tests.governor_data import write_boxed_run


def table(rows: list[list[tuple[int, float, bool]]], final_ok: list[bool], tokens: list[int]) -> tuple[_Table, np.ndarray]:
    """One trajectory per entry of ``rows``: its observations as (position, score, answer right)."""
    rt, cost, ok, scores = [], [], [], []
    for i, obs in enumerate(rows):
        for pos, s, right in obs:
            rt.append(i)
            cost.append(pos)
            ok.append(right)
            scores.append(s)
    n = len(rt)
    tab = _Table(np.zeros((n, 1)), np.array(rt), np.array(cost), np.array(ok), np.ones(n, dtype=bool),
                 np.zeros(len(rows), dtype=np.int64), np.array(final_ok), np.array(tokens, dtype=np.int64))
    return tab, np.array(scores)


def test_the_most_conservative_threshold_reaching_the_target_is_picked():
    # two trajectories of 1000 tokens: one sure early (score 0.99995 at 100), one later (0.95 at 500)
    tab, scores = table([[(100, 0.99995, True)], [(500, 0.95, True)]], [True, True], [1000, 1000])
    ids = np.arange(2)
    assert threshold_reaching(tab, scores, ids, 0.45) == THRESHOLDS[0]  # the first exit alone saves 45%
    th = threshold_reaching(tab, scores, ids, 0.60)  # needs the second exit too: 70% saved
    assert th == max(t for t in THRESHOLDS if t <= 0.95)  # the first grid threshold the 0.95 exit reaches
    assert threshold_reaching(tab, scores, ids, 0.80) is None  # no exit saves that much


def test_a_lowered_threshold_is_certified_only_at_a_larger_alpha():
    # 100 trajectories: 97 exit rightly at a high score, 3 wrongly (harmful: full reasoning right) at 0.9
    rows = [[(100, 0.9999, True)] for _ in range(97)] + [[(100, 0.9, False)] for _ in range(3)]
    tab, scores = table(rows, [True] * 100, [1000] * 100)
    ids = np.arange(100)
    high = THRESHOLDS[1]
    # no harmful exit above it: P(Bin(100, 0.03) = 0) = 0.048 <= delta, while 100 traces cannot certify 1%
    assert certified_alpha(tab, scores, ids, high, 0.1, (0.01, 0.03, 0.05, 0.1)) == 0.03
    low = 0.9
    assert low in THRESHOLDS
    # 3 harmful of 100: P(Bin(100, 0.05) <= 3) = 0.26 > delta, P(Bin(100, 0.1) <= 3) = 0.008
    assert certified_alpha(tab, scores, ids, low, 0.1, (0.01, 0.03, 0.05, 0.1)) == 0.1
    assert certified_alpha(tab, scores, ids, low, 0.1, (0.03, 0.05)) is None


def test_an_unknown_threshold_is_refused():
    tab, scores = table([[(100, 0.5, True)]], [True], [1000])
    with pytest.raises(ValueError):
        certified_alpha(tab, scores, np.arange(1), 0.123456, 0.1, (0.05,))


def test_reach_savings_hands_back_the_table_and_scores_it_judged_on(tmp_path):
    """A caller replaying more on the same trajectories (score_profiles --reach-deer's held-aside
    turns) reuses them: one row a recorded observation, in the trajectories' order, scored by ``cal``."""
    from certaindex.evaluation.grading import GradeCache
    from certaindex.evaluation.governor import grading_inputs

    (run,) = read_governor(write_boxed_run(tmp_path / "gov", 240).parent)
    cache = GradeCache.load(tmp_path / "g.json")
    cache.grade(*grading_inputs(run.trajectories))
    correct = lambda t, a: cache.correct(a, t.target)  # noqa: E731
    cal = calibrate(run.trajectories, "bx+g256", cache.key, correct, alpha=0.05, delta=0.1)
    for target in (0.0, 0.99):  # already saved by cal's threshold; saved by none: cal comes back unchanged
        reached = reach_savings(run.trajectories, cal, cache.key, correct, target)
        assert reached.calibration is cal
        assert reached.table.tokens_used.tolist() == [t.tokens_used for t in run.trajectories]
        assert len(reached.table.X) == len(reached.scores) == 4 * 240  # four observations a trajectory here (boxes, the grid at 256 and 512)
        assert np.allclose(reached.scores, cal.model.score(reached.table.X))
