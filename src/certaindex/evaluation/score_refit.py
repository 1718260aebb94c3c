"""The certainty score refitted on a user's traces starting from a shipped profile's score.

``certaindex calibrate DIR`` fits on a third of the traces and certifies the threshold on the rest
(as :func:`certaindex.evaluation.score_policy.calibrate`), but the fit is pulled toward the starting
profile's weights (:func:`certaindex.core.score_prior.fit_logistic_toward`): a hundred traces then
adjust the start instead of relearning it from nothing. The certificate is unchanged: Learn-then-Test
over the same thresholds on trajectories the fit never saw, no stratum guard (one user's traffic is
one stratum).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from certaindex.core.exit_score import FEATURES, ScoreModel
from certaindex.core.score_prior import fit_logistic_toward
from certaindex.evaluation.peers import KeyFn
from certaindex.evaluation.score_policy import (
    THRESHOLDS,
    Calibration,
    _certify,
    _replay,
    _table,
    check_schedule,
    fit_split,
)
from certaindex.traces.governor import Trajectory

__all__ = ["PRIOR_STRENGTH", "calibrate_toward", "refit_features"]

# How hard the start pulls, in trajectories' worth of log-loss (each fit trajectory weighs 1).
# Fixed before any curve was run. On held-aside TRAIN problems (benchmarks/calibration_curve.py
# --train-check, --strength 0.3 .. 300, from generic and from a start that never saw the family) the
# pull moved the savings less than the draws did, but a refit pulled toward the start got certified
# far more often than a nearly cold one (28 of 36 refits at 3..300 against 13 of 36 at 0.3, both
# starts; results/calibration-curve/train-check-*).
PRIOR_STRENGTH = 30.0


def refit_features(schedule: str) -> list[str]:
    """Every feature the schedule can move (no trial features without ``tr``)."""
    return [f for f in FEATURES if "tr" in schedule.split("+") or "trial" not in f]


def calibrate_toward(trajs: Sequence[Trajectory], schedule: str, prior: ScoreModel, key: KeyFn,
                     correct: Callable[[Trajectory, str | None], bool], alpha: float, delta: float,
                     strength: float = PRIOR_STRENGTH, fit_mod: int = 3) -> Calibration:
    """Fit the score toward ``prior`` on the FIT part of ``trajs`` (a third of the problems,
    :func:`~certaindex.evaluation.score_policy.fit_split`) with the label "exiting here is not
    harmful", every trajectory weighing 1, and certify a threshold on the CAL part by Learn-then-Test.
    Features: the prior's, plus every one the schedule can move (starting at weight 0)."""
    check_schedule(schedule)
    trajs = list(trajs)
    part = np.array([fit_split(t, fit_mod) for t in trajs])
    fit_ids, cal_ids = np.nonzero(part == "fit")[0], np.nonzero(part == "cal")[0]
    if not len(fit_ids) or not len(cal_ids):
        raise ValueError("calibration needs trajectories of several problems (both a fit and a calibration part)")
    tab = _table(trajs, schedule, key, correct)
    rows = np.isin(tab.row_traj, fit_ids) & tab.valid
    y = tab.ok | ~tab.final_ok[tab.row_traj]
    per_traj = np.bincount(tab.row_traj[rows], minlength=len(trajs))[tab.row_traj[rows]]
    model = fit_logistic_toward(tab.X[rows], y[rows], prior, refit_features(schedule), strength,
                                weights=1.0 / per_traj if len(per_traj) else None)
    scores = model.score(tab.X) if len(tab.X) else np.zeros(0)
    index, stopped, runs = _certify(tab, scores, cal_ids, None, alpha, delta)
    threshold = THRESHOLDS[index] if index is not None else None
    tok, cor = _replay(tab, runs, cal_ids, threshold)
    full_ok = tab.final_ok[cal_ids]
    full_tok = tab.tokens_used[cal_ids].mean()
    return Calibration(schedule, model, threshold, alpha, delta, len(fit_ids), len(cal_ids),
                       int(((~cor) & full_ok).sum()), float(1 - tok.mean() / full_tok), stopped,
                       {"all": len(cal_ids)}, "noharm", False)
