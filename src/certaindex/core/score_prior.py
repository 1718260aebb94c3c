"""Fitting the certainty score toward a starting score (a prior) instead of toward zero: pure.

``certaindex calibrate DIR`` starts from a shipped profile's fitted score. With a few hundred of a
user's traces a cold refit (L2 toward zero) relearns every weight from scratch and is noisy; here
the penalty pulls the weights toward the starting score's, so the traces move the start only where
they disagree with it. With no data the start is returned unchanged; with much data the fit is the
data's (the penalty stays fixed while the log-loss grows with the traces).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from certaindex.core.exit_score import FEATURES, ScoreModel

__all__ = ["fit_logistic_toward"]


def fit_logistic_toward(X: np.ndarray, y: np.ndarray, prior: ScoreModel, features: Sequence[str] = (),
                        strength: float = 30.0, weights: np.ndarray | None = None,
                        iterations: int = 50) -> ScoreModel:
    """L2-penalised logistic regression whose penalty ``strength/2 * |beta - beta_prior|^2`` (every
    coefficient and the intercept) pulls toward ``prior``, fitted by Newton steps from the prior.

    Rows of ``X`` hold every :data:`FEATURES` column. The prior's features keep its standardisation
    (mean, scale), so its coefficients mean the same here; ``features`` not in the prior are added
    with a prior coefficient of 0 and the data's own standardisation. ``weights`` (default 1 per
    row) scale the log-loss: with weights summing to the number of trajectories, ``strength`` reads
    as a number of trajectories' worth of pull (times their per-row information)."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    extra = [f for f in features if f not in prior.features]
    names = list(prior.features) + extra
    cols = [FEATURES.index(f) for f in names]
    X = np.asarray(X, dtype=np.float64).reshape(-1, len(FEATURES))
    y = np.asarray(y, dtype=np.float64)
    w = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (len(X) == len(y) == len(w)):
        raise ValueError(f"X, y and weights differ in length: {len(X)}, {len(y)}, {len(w)}")
    Z = X[:, cols]
    mean, scale = list(prior.mean), list(prior.scale)
    for j in range(len(prior.features), len(names)):
        m = float(np.average(Z[:, j], weights=w)) if len(y) and w.sum() > 0 else 0.0
        s = float(np.sqrt(np.average((Z[:, j] - m) ** 2, weights=w))) if len(y) and w.sum() > 0 else 1.0
        mean.append(m)
        scale.append(s if s > 1e-9 else 1.0)
    A = np.hstack([(Z - np.asarray(mean)) / np.asarray(scale), np.ones((len(y), 1))])
    beta0 = np.array(list(prior.coef) + [0.0] * len(extra) + [prior.intercept])
    beta = beta0.copy()
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(A @ beta)))
        grad = A.T @ (w * (p - y)) + strength * (beta - beta0)
        hess = (A * (w * p * (1 - p))[:, None]).T @ A + np.eye(len(beta)) * (strength + 1e-9)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return ScoreModel(names, mean, scale, beta[:-1].tolist(), float(beta[-1]))
