import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score

from stress.stats import bootstrap_counts, compute_roc_auc, percentile_ci, weighted_roc_auc
from stress.stats.bootstrap import UndefinedMetricWarning
from stress.stats.metrics import weighted_sensitivity, weighted_specificity


@pytest.fixture
def data():
    gen = np.random.default_rng(3)
    y = gen.integers(0, 2, 150)
    s = np.round(gen.random(150) + 0.3 * y, 2)  # rounding makes ties
    return y, s


def test_weighted_auc_equals_sklearn_with_sample_weights(data):
    y, s = data
    w = bootstrap_counts(len(y), 20, np.random.default_rng(0))
    ours = weighted_roc_auc(y, s, w)
    expected = [roc_auc_score(y, s, sample_weight=row) for row in w]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    assert weighted_roc_auc(y, s, np.ones((1, len(y))))[0] == pytest.approx(roc_auc_score(y, s))


def test_sensitivity_and_specificity_equal_sklearn(data):
    y, s = data
    ones = np.ones((1, len(y)))
    pred = (s >= 0.6).astype(int)
    assert weighted_sensitivity(y, s, ones, 0.6)[0] == pytest.approx(recall_score(y, pred))
    assert weighted_specificity(y, s, ones, 0.6)[0] == pytest.approx(recall_score(1 - y, 1 - pred))


def test_single_class_is_nan_with_warning():
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(compute_roc_auc(np.ones(5), np.arange(5)))
    assert np.isnan(weighted_roc_auc(np.ones(5), np.arange(5), np.ones((1, 5)))[0])


def test_bootstrap_counts_are_seeded_resamples():
    a = bootstrap_counts(30, 50, np.random.default_rng(9))
    assert np.array_equal(a, bootstrap_counts(30, 50, np.random.default_rng(9)))
    assert a.shape == (50, 30) and np.all(a.sum(axis=1) == 30)


def test_percentile_ci_covers_the_true_auc_about_95_percent():
    # Coverage by simulation: binormal scores with known AUC = Phi(d / sqrt(2)).
    from scipy.stats import norm

    d, n, trials, hits = 1.0, 120, 200, 0
    truth = norm.cdf(d / np.sqrt(2))
    gen = np.random.default_rng(2024)
    for _ in range(trials):
        y = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
        s = gen.normal(size=n) + d * y
        w = bootstrap_counts(n, 400, gen)
        values = weighted_roc_auc(y, s, np.vstack([np.ones((1, n)), w]))
        ci = percentile_ci(values[0], values[1:], 0.95)
        hits += ci.low <= truth <= ci.high
    assert 0.89 <= hits / trials <= 0.99
