"""Label-free consistency metrics: flip rate and output drift against each sweep's reference point."""

import math

import numpy as np
import pandas as pd
import pytest
from e2e_helpers import write_scenario

from perturbations import PERTURBATIONS
from phantoms.population import case_rng
from stress.errors import StressError
from stress.runner import run_scenario
from stress.scenario import load_scenario, parse_scenario
from stress.stats import bootstrap_counts, percentile_ci, weighted_roc_auc
from stress.stats.bootstrap import UndefinedMetricWarning
from stress.stats.consistency import reference_point, reference_severity
from stress.stats.metrics import METRICS, weighted_flip_rate, weighted_output_drift
from stress.stats.summary import STREAM_BOOTSTRAP, compute_metrics_table

SCENARIO = """
name: consistency
seed: 11
phantom:
  generator: chest_ct
  n_cases: 4
  params: {shape: [16, 32, 32], spacing_mm: [10.0, 10.0, 10.0], vessel_generations: 2}
perturbations:
  - {name: ct_dose, severities: [1.0, 0.5, 0.25]}
  - {name: gaussian_blur, severities: [4.0, 2.0]}
  - name: ct_dose
    severities: [1.0, 0.25]
    grid: {name: gaussian_blur, severities: [0.0, 6.0]}
models:
  - {name: v1, role: reference, python: "stress.models.demo:reference", threshold: 0.5}
metrics: [auc, flip_rate, output_drift, output_drift_signed]
statistics: {subgroups: [sex], bootstrap: {n_resamples: 200}}
"""
DOSE, BLUR, GRID = "ct_dose", "gaussian_blur", "ct_dose x gaussian_blur"
POINTS = [(DOSE, 1.0, None), (DOSE, 0.5, None), (DOSE, 0.25, None), (BLUR, 4.0, None), (BLUR, 2.0, None)]
POINTS += [(GRID, d, f) for d in (1.0, 0.25) for f in (0.0, 6.0)]
# AUC is undefined in small subgroups of these tiny frames; the tests check the consistency metrics.
pytestmark = pytest.mark.filterwarnings("ignore::stress.stats.bootstrap.UndefinedMetricWarning")


@pytest.fixture(scope="module")
def scenario():
    return parse_scenario(SCENARIO, check_imports=False)


def _severity_columns(name: str, severity: float | None, suffix: str) -> dict:
    sev = PERTURBATIONS.get(name).severity if name else None
    return {
        f"perturbation{suffix}": name,
        f"severity{suffix}_name": sev.name if sev else "",
        f"severity{suffix}_unit": sev.unit if sev else "",
        f"severity{suffix}": math.nan if severity is None else float(severity),
    }


def results_frame(scores: dict, labels, errors: dict | None = None) -> pd.DataFrame:
    """A results table like the runner's: one row per case x sweep point (model v1); ``scores[point]``."""
    rows = []
    for point, values in scores.items():
        sweep, severity, severity_2 = point
        first, _, second = sweep.partition(" x ")
        for i, score in enumerate(values):
            rows.append(
                {
                    "case_index": i,
                    "label": int(labels[i]),
                    "sex": "female" if i % 2 else "male",
                    "sweep": sweep,
                    **_severity_columns(first, severity, ""),
                    **_severity_columns(second, severity_2, "_2"),
                    "model": "v1",
                    "model_role": "reference",
                    "score": float(score),
                    "error": (errors or {}).get((point, i), ""),
                }
            )
    return pd.DataFrame(rows)


def cell(metrics: pd.DataFrame, metric: str, sweep: str, severity: float, severity_2=None, subgroup="all"):
    sel = metrics[
        (metrics["metric"] == metric)
        & (metrics["sweep"] == sweep)
        & (metrics["severity"] == severity)
        & (metrics["severity_2"].isna() if severity_2 is None else metrics["severity_2"] == severity_2)
        & (metrics["subgroup"] == subgroup)
    ]
    assert len(sel) == 1, sel
    return sel.iloc[0]


# Scores of 4 cases; the dose-0.5 point flips cases 0 (0.2 -> 0.55) and 3 (0.9 -> 0.3).
CLEAN = [0.2, 0.6, 0.45, 0.9]
HALF = [0.55, 0.6, 0.40, 0.3]


def four_case_scores() -> dict:
    gen = np.random.default_rng(0)
    scores = {p: np.round(gen.random(4), 2) for p in POINTS}
    scores[(DOSE, 1.0, None)] = np.array(CLEAN)
    scores[(DOSE, 0.5, None)] = np.array(HALF)
    return scores


def test_flip_rate_and_drift_equal_hand_computed_values(scenario):
    m = compute_metrics_table(results_frame(four_case_scores(), [0, 1, 0, 1]), scenario)
    assert cell(m, "flip_rate", DOSE, 0.5)["estimate"] == pytest.approx(2 / 4)
    assert cell(m, "output_drift", DOSE, 0.5)["estimate"] == pytest.approx((0.35 + 0 + 0.05 + 0.6) / 4)
    assert cell(m, "output_drift_signed", DOSE, 0.5)["estimate"] == pytest.approx((0.35 - 0.05 - 0.6) / 4)
    # Subgroup sex=female holds cases 1 and 3: one flip (case 3), drift (0 + 0.6) / 2.
    female = m[(m["metric"] == "output_drift") & (m["severity"] == 0.5) & (m["level"] == "female")]
    assert female["estimate"].iloc[0] == pytest.approx(0.3)
    row = cell(m, "flip_rate", DOSE, 0.5)
    assert (row["reference"], row["reference_severity"]) == ("nominal", 1.0)
    assert math.isnan(row["reference_severity_2"])
    auc = cell(m, "auc", DOSE, 0.5)
    assert auc["reference"] == "" and math.isnan(auc["reference_severity"])


def test_weighted_forms_match_plain_means():
    gen = np.random.default_rng(1)
    s, ref = gen.random(50), gen.random(50)
    w = bootstrap_counts(50, 30, gen)
    flips = (s >= 0.4) != (ref >= 0.4)
    np.testing.assert_allclose(weighted_flip_rate(s, ref, w, 0.4), [np.average(flips, weights=r) for r in w])
    drift = np.abs(s - ref)
    np.testing.assert_allclose(weighted_output_drift(s, ref, w), [np.average(drift, weights=r) for r in w])
    assert np.isnan(weighted_flip_rate(s[:0], ref[:0], np.ones((2, 0)), 0.5)).all()
    assert all(METRICS.get(k).needs_reference for k in ("flip_rate", "output_drift", "output_drift_signed"))
    assert not any(METRICS.get(k).needs_reference for k in ("auc", "sensitivity", "specificity"))


def test_reference_point_itself_is_zero_with_a_zero_interval(scenario):
    m = compute_metrics_table(results_frame(four_case_scores(), [0, 1, 0, 1]), scenario)
    for metric in ("flip_rate", "output_drift", "output_drift_signed"):
        for sweep, sev, sev_2 in ((DOSE, 1.0, None), (BLUR, 2.0, None), (GRID, 1.0, 0.0)):
            row = cell(m, metric, sweep, sev, sev_2)
            assert (row["estimate"], row["ci_low"], row["ci_high"]) == (0.0, 0.0, 0.0)
            assert row["n_cases"] == 4 and row["n_failed"] == 0


def test_label_free_works_when_every_label_is_zero_and_auc_is_undefined(scenario):
    with pytest.warns(UndefinedMetricWarning):
        m = compute_metrics_table(results_frame(four_case_scores(), [0, 0, 0, 0]), scenario)
    auc = cell(m, "auc", DOSE, 0.5)
    assert math.isnan(auc["estimate"]) and auc["n_positive"] == 0
    flip = cell(m, "flip_rate", DOSE, 0.5)
    assert flip["estimate"] == pytest.approx(0.5) and flip["n_undefined"] == 0
    assert np.isfinite([flip["ci_low"], flip["ci_high"]]).all()


def test_bootstrap_interval_contains_the_estimate_and_is_paired_with_auc(scenario):
    n = 60
    gen = np.random.default_rng(5)
    labels = gen.integers(0, 2, n)
    clean = np.clip(0.3 + 0.4 * labels + 0.15 * gen.normal(size=n), 0, 1)
    scores = {p: np.clip(clean + 0.2 * gen.normal(size=n), 0, 1) for p in POINTS}
    scores[(DOSE, 1.0, None)] = clean
    m = compute_metrics_table(results_frame(scores, labels), scenario)
    weights = np.vstack([np.ones((1, n)), bootstrap_counts(n, 200, case_rng(11, STREAM_BOOTSTRAP, 0))])
    s = scores[(DOSE, 0.25, None)]
    expected = {
        "flip_rate": weighted_flip_rate(s, clean, weights, 0.5),
        "output_drift": weighted_output_drift(s, clean, weights),
        "auc": weighted_roc_auc(labels, s, weights),
    }
    for metric, values in expected.items():
        row = cell(m, metric, DOSE, 0.25)
        ci = percentile_ci(values[0], values[1:], 0.95)
        assert (row["estimate"], row["ci_low"], row["ci_high"]) == pytest.approx(
            (ci.estimate, ci.low, ci.high)
        )
        assert row["ci_low"] <= row["estimate"] <= row["ci_high"] and row["ci_low"] < row["ci_high"]


def test_grid_sweep_uses_the_nominal_pair(scenario):
    scores = four_case_scores()
    scores[(GRID, 1.0, 0.0)] = np.array([0.1, 0.7, 0.5, 0.5])
    scores[(GRID, 0.25, 6.0)] = np.array([0.6, 0.7, 0.2, 0.45])
    m = compute_metrics_table(results_frame(scores, [0, 1, 0, 1]), scenario)
    row = cell(m, "flip_rate", GRID, 0.25, 6.0)
    assert row["estimate"] == pytest.approx(3 / 4)
    assert (row["reference"], row["reference_severity"], row["reference_severity_2"]) == ("nominal", 1.0, 0.0)
    drift = cell(m, "output_drift", GRID, 0.25, 6.0)["estimate"]
    assert drift == pytest.approx((0.5 + 0.0 + 0.3 + 0.05) / 4)


def test_sweep_without_the_nominal_severity_uses_the_mildest_and_says_so(scenario):
    scores = four_case_scores()
    scores[(BLUR, 2.0, None)] = np.array([0.4, 0.6, 0.6, 0.8])
    scores[(BLUR, 4.0, None)] = np.array([0.5, 0.6, 0.4, 0.8])
    m = compute_metrics_table(results_frame(scores, [0, 1, 0, 1]), scenario)
    row = cell(m, "flip_rate", BLUR, 4.0)
    assert (row["reference"], row["reference_severity"]) == ("mildest", 2.0)
    assert row["estimate"] == pytest.approx(2 / 4)
    assert cell(m, "output_drift_signed", BLUR, 4.0)["estimate"] == pytest.approx((0.1 - 0.2) / 4)


def test_reference_severity_rule():
    assert reference_severity("ct_dose", [0.25, 1.0, 0.5]) == (1.0, True)
    assert reference_severity("ct_dose", [0.25, 0.5]) == (0.5, False)  # lower dose is harsher
    assert reference_severity("gaussian_blur", [8.0, 2.0, 4.0]) == (2.0, False)
    assert reference_severity("ct_dose", [2.0, 0.5]) == (0.5, False)  # closest in the severity's unit
    assert reference_severity("ct_dose", [1.5, 0.5]) == (1.5, False)  # tie: the side opposite `harsher`
    assert reference_severity("ct_hu_calibration", [-10.0, 10.0, 40.0]) == (-10.0, False)
    assert reference_severity("ct_hu_calibration", [20.0, -5.0]) == (-5.0, False)  # closest to nominal
    frame = results_frame({(GRID, d, f): [0.5] for d in (0.5, 0.25) for f in (0.0, 3.0)}, [0])
    point = reference_point(frame)
    assert (point.severity, point.severity_2, point.nominal) == (0.5, 0.0, False)


def test_cases_failed_at_the_point_or_the_reference_are_left_out(scenario):
    errors = {((DOSE, 0.5, None), 1): "timeout", ((DOSE, 1.0, None), 3): "bad output"}
    frame = results_frame(four_case_scores(), [0, 1, 0, 1], errors)
    frame.loc[frame["error"] != "", "score"] = math.nan
    m = compute_metrics_table(frame, scenario)
    # Left: cases 0 (flip, drift 0.35) and 2 (no flip, drift 0.05).
    flip = cell(m, "flip_rate", DOSE, 0.5)
    assert flip["estimate"] == pytest.approx(1 / 2)
    assert (flip["n_cases"], flip["n_failed"]) == (2, 2)
    assert cell(m, "output_drift", DOSE, 0.5)["estimate"] == pytest.approx((0.35 + 0.05) / 2)
    auc = cell(m, "auc", DOSE, 0.5)
    assert (auc["n_cases"], auc["n_failed"]) == (3, 1)  # AUC only loses the failure at its own point
    # Every other dose point loses case 3 (failed at the reference); the reference row itself too.
    assert cell(m, "flip_rate", DOSE, 0.25)["n_failed"] == 1
    assert cell(m, "flip_rate", DOSE, 1.0)[["n_cases", "n_failed", "estimate"]].tolist() == [3, 1, 0.0]


def test_missing_reference_rows_are_a_clear_error(scenario):
    frame = results_frame(four_case_scores(), [0, 1, 0, 1])
    frame = frame[~((frame["sweep"] == DOSE) & (frame["severity"] == 1.0) & (frame["case_index"] == 2))]
    with pytest.raises(StressError, match="reference point of sweep 'ct_dose'"):
        compute_metrics_table(frame, scenario)


def test_end_to_end_run_gives_finite_consistency_values(tmp_path):
    path = write_scenario(tmp_path / "tiny.yaml", n_cases=4)
    text = path.read_text().replace("metrics: [auc, sensitivity]", "metrics: [auc, flip_rate, output_drift]")
    path.write_text(text)
    store = run_scenario(load_scenario(path), tmp_path / "run", show_progress=False)
    m = pd.read_parquet(store.root / "metrics.parquet")
    dose = m[(m["sweep"] == "ct_dose") & (m["subgroup"] == "all")]
    for metric in ("flip_rate", "output_drift"):
        rows = dose[dose["metric"] == metric].set_index(["model", "severity"])
        assert len(rows) == 4 and np.isfinite(rows[["estimate", "ci_low", "ci_high"]].to_numpy()).all()
        assert (rows["reference"] == "nominal").all() and (rows["reference_severity"] == 1.0).all()
        assert (rows.xs(1.0, level="severity")["estimate"] == 0.0).all()
        assert ((rows["estimate"] >= 0) & (rows["estimate"] <= 1)).all()
