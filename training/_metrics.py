"""Evaluation measures for the churn classifier and the value regressor.

All functions take plain numpy arrays and return floats, so training, promotion and
live monitoring compute them the same way.

>>> import numpy as np
>>> y = np.array([0, 0, 1, 1])
>>> round(roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])), 2)
0.75
>>> expected_calibration_error(y, np.array([0.0, 0.0, 1.0, 1.0]))
0.0
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "ECE_BINS",
    "classification_metrics",
    "expected_calibration_error",
    "lift_at",
    "regression_metrics",
    "roc_auc",
]

ECE_BINS: Final = 10
Array = npt.NDArray[np.float64]


def roc_auc(y: npt.ArrayLike, score: Array) -> float:
    """Area under the ROC curve (0.5 when only one class is present)."""
    y = np.asarray(y, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return 0.5
    return float(roc_auc_score(y, score))


def expected_calibration_error(y: npt.ArrayLike, p: Array, bins: int = ECE_BINS) -> float:
    """Mean |observed rate - mean probability| over equal-width bins, weighted by size."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    idx = np.minimum((np.asarray(p) * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = idx == b
        n = int(mask.sum())
        if n:
            total += n * abs(float(np.mean(y[mask])) - float(np.mean(p[mask])))
    return total / len(p)


def lift_at(y: npt.ArrayLike, score: Array, share: float = 0.1) -> tuple[float, float]:
    """(lift, capture rate) of the top ``share`` of customers ranked by score."""
    y = np.asarray(y, dtype=np.float64)
    n = len(score)
    positives = float(np.sum(y))
    if n == 0 or positives == 0:
        return 0.0, 0.0
    top = max(1, round(n * share))
    # stable ordering: ties broken by position, so the figure is reproducible
    order = np.argsort(-np.asarray(score), kind="stable")[:top]
    caught = float(np.sum(y[order]))
    return (caught / top) / (positives / n), caught / positives


def classification_metrics(labels: npt.ArrayLike, p: Array) -> dict[str, float]:
    """ROC-AUC, PR-AUC, Brier, log-loss, ECE, top-decile lift and capture."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    lift, capture = lift_at(y, p)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": roc_auc(y, p),
        "pr_auc": float(average_precision_score(y, p)) if both else float(np.mean(y)),
        "brier": float(np.mean((p - y) ** 2)),
        "log_loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))),
        "ece": expected_calibration_error(y, p),
        "lift_top10": lift,
        "capture_top10": capture,
        "base_rate": float(np.mean(y)),
        "mean_prob": float(np.mean(p)),
    }


def regression_metrics(y: Array, pred: Array) -> dict[str, float]:
    """MAE, RMSE (in the label's unit) and Spearman rank correlation."""
    y = np.asarray(y, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    err = pred - y
    rho = float(spearmanr(y, pred).statistic) if len(y) > 1 and np.std(pred) > 0 else 0.0
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "spearman": rho,
    }
