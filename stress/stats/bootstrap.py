"""Nonparametric bootstrap by case (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993).

Resampling is expressed as a ``(R, n)`` matrix of multinomial counts: row ``r`` says how often each
case appears in resample ``r``. One matrix is drawn per run and shared by every model, perturbation
and severity, so differences between them are paired (the same resampled patients everywhere).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined on the data given (e.g. AUC with a single class); NaN is returned."""


@dataclass(frozen=True, slots=True)
class BootstrapCI:
    """A point estimate with a percentile bootstrap confidence interval.

    Attributes:
        estimate: metric on the original sample.
        low: lower bound of the ``level`` interval.
        high: upper bound of the ``level`` interval.
        level: coverage the interval aims at, e.g. 0.95.
        n_resamples: number of bootstrap resamples drawn.
        n_undefined: resamples on which the metric was undefined (excluded from the percentiles).
    """

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int
    n_undefined: int


def bootstrap_counts(n_cases: int, n_resamples: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """Multinomial case counts ``(n_resamples, n_cases)``; each row sums to ``n_cases``."""
    return rng.multinomial(n_cases, np.full(n_cases, 1.0 / n_cases), size=n_resamples).astype(np.float64)


def percentile_ci(estimate: float, replicates: NDArray[np.float64], level: float) -> BootstrapCI:
    """Percentile interval of the finite ``replicates`` around ``estimate``.

    Returns NaN bounds (with an :class:`UndefinedMetricWarning`) when more than half the resamples
    are undefined.
    """
    finite = replicates[np.isfinite(replicates)]
    n_undefined = int(replicates.size - finite.size)
    alpha = (1.0 - level) / 2.0
    if finite.size < replicates.size / 2:
        warnings.warn(
            f"{n_undefined} of {replicates.size} bootstrap resamples undefined; CI is NaN",
            UndefinedMetricWarning,
            stacklevel=2,
        )
        return BootstrapCI(estimate, float("nan"), float("nan"), level, int(replicates.size), n_undefined)
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return BootstrapCI(float(estimate), float(low), float(high), level, int(replicates.size), n_undefined)
