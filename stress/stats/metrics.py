"""Binary classification metrics, each computable on the sample and on all bootstrap resamples at once.

Every metric takes case weights ``(R, n)`` (bootstrap counts; a row of ones is the sample itself)
and returns ``(R,)`` values, NaN where undefined (e.g. no positive case in a resample). The
sample estimates agree with scikit-learn (``roc_auc_score``, ``recall_score``), which the tests check.

Label-free consistency metrics (``needs_reference``) compare each case's score with the same
model's score on the same case at the sweep's reference point (:mod:`stress.stats.consistency`);
they ignore the labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from stress.registry import Registry
from stress.stats.bootstrap import UndefinedMetricWarning

Array = NDArray[np.float64]


def compute_roc_auc(y_true: NDArray, y_score: NDArray) -> float:
    """Area under the ROC curve (scikit-learn); NaN with a warning when only one class is present."""
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) < 2:
        warnings.warn(
            "AUC is undefined with a single class; returning NaN", UndefinedMetricWarning, stacklevel=2
        )
        return float("nan")
    return float(roc_auc_score(y_true, y_score))


def weighted_roc_auc(y_true: NDArray, y_score: NDArray, weights: Array) -> Array:
    r"""AUC (Mann-Whitney, ties count 1/2) for each row of case ``weights`` ``(R, n)``, vectorised.

    .. math:: AUC_r = \frac{\sum_{i \in P} \sum_{j \in N} w_{ri} w_{rj}
              ([s_i > s_j] + \tfrac12 [s_i = s_j])}{W_{rP} W_{rN}}

    Cases are sorted once by score and weights are summed per distinct score, so the cost is
    ``O(R n)`` after an ``O(n log n)`` sort.
    """
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(y_score, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = np.asarray(weights, dtype=np.float64)[:, order]
    pos = np.add.reduceat(w * y[order], starts, axis=1)
    neg = np.add.reduceat(w * ~y[order], starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    num = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def weighted_sensitivity(y_true: NDArray, y_score: NDArray, weights: Array, threshold: float) -> Array:
    """True-positive rate at ``score >= threshold`` for each row of case weights."""
    y = np.asarray(y_true).astype(bool)
    hit = (np.asarray(y_score) >= threshold) & y
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ hit) / (weights @ y)


def weighted_specificity(y_true: NDArray, y_score: NDArray, weights: Array, threshold: float) -> Array:
    """True-negative rate at ``score < threshold`` for each row of case weights."""
    y = ~np.asarray(y_true).astype(bool)
    hit = (np.asarray(y_score) < threshold) & y
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ hit) / (weights @ y)


def _weighted_mean(x: NDArray, weights: Array) -> Array:
    """Mean of the per-case values ``x`` for each row of case weights; NaN for a row of zero weight."""
    w = np.asarray(weights, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (w @ np.asarray(x, dtype=np.float64)) / w.sum(axis=1)


def weighted_flip_rate(y_score: NDArray, y_reference: NDArray, weights: Array, threshold: float) -> Array:
    """Fraction of cases whose decision ``score >= threshold`` differs from the decision on the reference."""
    flip = (np.asarray(y_score) >= threshold) != (np.asarray(y_reference) >= threshold)
    return _weighted_mean(flip, weights)


def weighted_output_drift(
    y_score: NDArray, y_reference: NDArray, weights: Array, signed: bool = False
) -> Array:
    """Mean ``|score - reference score|`` (or the signed mean with ``signed``) for each row of weights."""
    diff = np.asarray(y_score, dtype=np.float64) - np.asarray(y_reference, dtype=np.float64)
    return _weighted_mean(diff if signed else np.abs(diff), weights)


@dataclass(frozen=True, slots=True, kw_only=True)
class Metric:
    """A registered metric: ``compute(y_true, y_score, weights (R, n), threshold) -> (R,)``.

    With ``needs_reference``, ``compute`` takes a fifth argument: the same model's scores on the same
    cases at the sweep's reference point, aligned with ``y_score``; such a metric needs no labels.
    """

    name: str
    description: str
    unit: str
    compute: Callable[..., Array]
    needs_reference: bool = False


METRICS: Registry[Metric] = Registry("metric")
METRICS.register(
    "auc",
    Metric(
        name="auc",
        unit="fraction",
        compute=lambda y, s, w, t: weighted_roc_auc(y, s, w),
        description="area under the ROC curve (threshold-free)",
    ),
)
METRICS.register(
    "sensitivity",
    Metric(
        name="sensitivity",
        unit="fraction",
        compute=weighted_sensitivity,
        description="true-positive rate at the model's threshold",
    ),
)
METRICS.register(
    "specificity",
    Metric(
        name="specificity",
        unit="fraction",
        compute=weighted_specificity,
        description="true-negative rate at the model's threshold",
    ),
)
METRICS.register(
    "flip_rate",
    Metric(
        name="flip_rate",
        unit="fraction",
        compute=lambda y, s, w, t, ref: weighted_flip_rate(s, ref, w, t),
        needs_reference=True,
        description="label-free: fraction of cases whose decision at the threshold differs from the "
        "sweep's reference point",
    ),
)
METRICS.register(
    "output_drift",
    Metric(
        name="output_drift",
        unit="probability",
        compute=lambda y, s, w, t, ref: weighted_output_drift(s, ref, w),
        needs_reference=True,
        description="label-free: mean |score - score at the sweep's reference point|",
    ),
)
METRICS.register(
    "output_drift_signed",
    Metric(
        name="output_drift_signed",
        unit="probability",
        compute=lambda y, s, w, t, ref: weighted_output_drift(s, ref, w, signed=True),
        needs_reference=True,
        description="label-free: mean (score - score at the sweep's reference point); < 0: scores fall",
    ),
)
