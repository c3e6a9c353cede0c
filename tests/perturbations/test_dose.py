import math

import numpy as np
import pytest
import torch
from scipy import stats

from perturbations import PERTURBATIONS
from perturbations.dose import CTDoseSpec, apply_ct_dose, sample_ct_dose

SPACING = (1.0, 1.0, 1.0)


def _uniform(b: int = 1, value: float = 40.0) -> torch.Tensor:
    return torch.full((b, 1, 48, 48, 48), value)


@pytest.mark.parametrize("dose", [1.0, 0.5, 0.25, 0.1, 0.05])
def test_noise_std_scales_as_inverse_sqrt_dose(dose, rng):
    spec = CTDoseSpec(reference_noise_hu=15.0)
    x = _uniform()
    y = apply_ct_dose(x, SPACING, [sample_ct_dose(spec, dose, rng)])
    roi = y[0, 0, 8:-8, 8:-8, 8:-8] - 40.0  # uniform region, 32^3 voxels
    expected = 15.0 / math.sqrt(dose)
    assert abs(float(roi.std()) / expected - 1.0) < 0.03
    assert abs(float(roi.mean())) < 3 * expected / math.sqrt(roi.numel())  # unbiased: mean stays in HU


def test_existing_noise_is_accounted_for(rng):
    spec = CTDoseSpec(reference_noise_hu=10.0, existing_noise_hu=10.0)
    assert sample_ct_dose(spec, 1.0, rng).added_noise_hu == 0.0
    p = sample_ct_dose(spec, 0.25, rng)
    assert p.total_noise_hu == pytest.approx(20.0)
    assert p.added_noise_hu == pytest.approx(math.sqrt(400.0 - 100.0))


def test_noise_is_gaussian_and_white(rng):
    y = apply_ct_dose(
        _uniform(value=0.0), SPACING, [sample_ct_dose(CTDoseSpec(reference_noise_hu=1.0), 1.0, rng)]
    )
    v = y.flatten().numpy()
    assert stats.kstest(v[:20000], "norm").pvalue > 0.01
    for dim in (2, 3, 4):  # neighbouring voxels are uncorrelated along every axis
        a, b = y.narrow(dim, 0, 47).flatten(), y.narrow(dim, 1, 47).flatten()
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.02


def test_replay_is_bit_identical_and_independent_of_batch_layout(rng):
    spec = CTDoseSpec()
    params = [sample_ct_dose(spec, d, rng) for d in (1.0, 0.3, 0.1)]
    x = _uniform(3)
    batched = apply_ct_dose(x, SPACING, params)
    assert torch.equal(batched, apply_ct_dose(x, SPACING, params))
    alone = apply_ct_dose(x[1:2], SPACING, params[1:2])
    assert torch.equal(batched[1:2], alone)


def test_different_seeds_give_uncorrelated_noise():
    spec = CTDoseSpec(reference_noise_hu=1.0)
    p1 = sample_ct_dose(spec, 1.0, np.random.default_rng(1))
    p2 = sample_ct_dose(spec, 1.0, np.random.default_rng(2))
    y = apply_ct_dose(_uniform(2, 0.0), SPACING, [p1, p2])
    assert abs(float(torch.corrcoef(y.flatten(1))[0, 1])) < 0.01


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match=r"expected shape \(B, C, D, H, W\)"):
        apply_ct_dose(torch.zeros(4, 4, 4), SPACING, [])
    with pytest.raises(ValueError, match="expected 2 params"):
        apply_ct_dose(torch.zeros(2, 1, 4, 4, 4), SPACING, [])
    assert PERTURBATIONS.get("ct_dose").severity.check(0.0) is not None
