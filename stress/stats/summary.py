"""The metrics table: every metric per model x sweep point x subgroup, with bootstrap CIs.

Subgroups are the overall population (``subgroup == "all"``) and each level of each attribute in
``statistics.subgroups``. For lesion-level attributes (e.g. lesion size), a subgroup holds the
positive cases of that level and *all* negative cases, so that threshold-free metrics such as AUC
stay defined. One matrix of bootstrap case counts is drawn per run from the scenario seed and
shared by every cell, which pairs the intervals across models, perturbations and severities.

Label-free consistency metrics (``Metric.needs_reference``) also get the same model's scores on the
same cases at the sweep's reference point (:mod:`stress.stats.consistency`); a case failed at the
point *or* at the reference is left out of them and counted in their ``n_failed``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd

from phantoms import PHANTOMS
from phantoms.population import case_rng
from stress.errors import StressError
from stress.scenario.loader import phantom_spec
from stress.scenario.schema import Scenario
from stress.stats.bootstrap import bootstrap_counts, percentile_ci
from stress.stats.consistency import NO_REFERENCE, reference_scores
from stress.stats.metrics import METRICS

STREAM_BOOTSTRAP = 3
GROUP_KEYS = [
    "model",
    "model_role",
    "sweep",
    "perturbation",
    "severity_name",
    "severity_unit",
    "severity",
    "perturbation_2",
    "severity_2_name",
    "severity_2_unit",
    "severity_2",
]


def _subgroups(cases: pd.DataFrame, scenario: Scenario) -> Iterator[tuple[str, str, np.ndarray]]:
    """(attribute, level, case mask) for ``all`` and for every level of every configured attribute."""
    yield "all", "all", np.ones(len(cases), dtype=bool)
    gen = PHANTOMS.get(scenario.phantom.generator)
    lesion_level = {a.name for a in gen.attributes(phantom_spec(scenario)) if a.lesion_level}
    negatives = cases["label"].to_numpy() == 0
    for attr in scenario.statistics.subgroups:
        values = cases[attr].astype(str).to_numpy()
        for level in sorted(set(values) - ({"none"} if attr in lesion_level else set())):
            mask = values == level
            yield attr, level, (mask | negatives) if attr in lesion_level else mask


def compute_metrics_table(results: pd.DataFrame, scenario: Scenario) -> pd.DataFrame:
    """Metrics with percentile bootstrap CIs from the results table of a complete run."""
    boot = scenario.statistics.bootstrap
    case_index = np.sort(results["case_index"].unique())
    cases = results.drop_duplicates("case_index").set_index("case_index").loc[case_index].reset_index()
    counts = bootstrap_counts(len(case_index), boot.n_resamples, case_rng(scenario.seed, STREAM_BOOTSTRAP, 0))
    weights = np.vstack([np.ones((1, len(case_index))), counts])
    thresholds = {m.name: m.threshold for m in scenario.models}
    subgroups = list(_subgroups(cases, scenario))
    metrics = [(name, METRICS.get(name)) for name in scenario.metrics]
    references = reference_scores(results, case_index) if any(m.needs_reference for _, m in metrics) else {}
    rows = []
    # dropna=False: ``severity_2`` is NaN for the cells of 1-D sweeps.
    for key, group in results.groupby(GROUP_KEYS, sort=True, dropna=False):
        cell = dict(zip(GROUP_KEYS, key, strict=True))
        group = group.set_index("case_index").reindex(case_index)
        if group["model"].isna().any():
            raise StressError(
                f"results.parquet: missing rows for {cell} "
                "(expected one row per case; re-run the same `stress run` command to complete the run)"
            )
        y, s = group["label"].to_numpy().astype(int), group["score"].to_numpy()
        failed = group["error"].to_numpy() != ""
        ref = references.get((cell["model"], cell["sweep"]))
        for attr, level, in_group in subgroups:
            for name, metric in metrics:
                # Cases the model failed on (for a consistency metric: at the point or at the reference)
                # are left out of the metric and counted in n_failed.
                excluded = failed | ref.failed if metric.needs_reference else failed
                mask = in_group & ~excluded
                args = (ref.scores[mask],) if metric.needs_reference else ()
                values = metric.compute(y[mask], s[mask], weights[:, mask], thresholds[cell["model"]], *args)
                ci = percentile_ci(values[0], values[1:], boot.level)
                rows.append(
                    {
                        **cell,
                        "subgroup": attr,
                        "level": level,
                        "metric": name,
                        "estimate": ci.estimate,
                        "ci_low": ci.low,
                        "ci_high": ci.high,
                        "ci_level": ci.level,
                        "n_resamples": ci.n_resamples,
                        "n_undefined": ci.n_undefined,
                        "n_cases": int(mask.sum()),
                        "n_positive": int(y[mask].sum()),
                        "n_negative": int((1 - y[mask]).sum()),
                        "n_failed": int((in_group & excluded).sum()),
                        **(ref.point.columns() if metric.needs_reference else NO_REFERENCE),
                    }
                )
    return pd.DataFrame(rows)
