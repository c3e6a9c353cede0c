"""Statistics: metrics with case-resampled bootstrap CIs, per model x perturbation x severity x subgroup."""

from stress.stats.bootstrap import BootstrapCI, bootstrap_counts, percentile_ci
from stress.stats.metrics import METRICS, Metric, compute_roc_auc, weighted_roc_auc

__all__ = [
    "METRICS",
    "BootstrapCI",
    "Metric",
    "bootstrap_counts",
    "compute_roc_auc",
    "percentile_ci",
    "weighted_roc_auc",
]
