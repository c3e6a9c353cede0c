"""ct_respiratory_motion: the displacement model, its resampling, masks and batching."""

import math

import numpy as np
import torch

from perturbations import PERTURBATIONS
from perturbations.ct_motion import RespiratoryMotionParams, displacement_mm

ENTRY = PERTURBATIONS.get("ct_respiratory_motion")
SPACING = (2.5, 1.0, 1.0)


def _params(amplitude, phase=0.3, period=4.0, speed=40.0):
    return RespiratoryMotionParams(
        amplitude_mm=amplitude, period_s=period, table_speed_mm_s=speed, phase_rad=phase
    )


def _z_ramp(batch=1, depth=48):
    z = (torch.arange(depth, dtype=torch.float32) - (depth - 1) / 2) * SPACING[0]
    return z.view(1, 1, depth, 1, 1).expand(batch, 1, depth, 6, 5).contiguous()


def test_each_slice_shows_the_anatomy_displaced_by_the_lujan_model():
    x = _z_ramp()
    p = _params(12.0, phase=0.7)
    y = ENTRY.apply(x, SPACING, [p])
    k = np.arange(48)
    t = k * SPACING[0] / p.table_speed_mm_s
    expected = -p.amplitude_mm * np.cos(math.pi * t / p.period_s - p.phase_rad) ** 4
    inside = (k + expected / SPACING[0] >= 0) & (k + expected / SPACING[0] <= 47)
    shown = y[0, 0, :, 0, 0].numpy() - x[0, 0, :, 0, 0].numpy()
    np.testing.assert_allclose(shown[inside], expected[inside], atol=1e-3)
    assert inside.sum() > 40


def test_peak_to_peak_amplitude_over_a_breath():
    # 0.37 mm/s at 2.5 mm slices: 6.8 s per slice, incommensurate with the 4 s period, so 2000 slices
    # sample the whole breathing cycle
    d = displacement_mm([_params(15.0, speed=0.37)], 2000, SPACING[0], torch.zeros(1))
    assert abs(float(d.max() - d.min()) - 15.0) < 0.01


def test_mask_moves_with_the_image_and_stays_a_mask():
    x = _z_ramp(batch=2)
    params = [_params(10.0, phase=0.2), _params(20.0, phase=1.9)]
    mask = x > 7.0
    moved = ENTRY.apply_mask(mask, SPACING, params)
    image = ENTRY.apply(x, SPACING, params)
    assert moved.dtype == torch.bool and moved.shape == mask.shape
    # nearest-slice mask vs linearly interpolated image: they agree except within half a slice of the edge
    disagree = moved != (image > 7.0)
    assert torch.equal(moved[:, :, :, :1, :1].expand_as(moved), moved)  # whole slices move
    if disagree.any():
        assert (image[disagree] - 7.0).abs().max() <= SPACING[0] / 2 + 1e-4
    assert not torch.equal(moved, mask)


def test_batch_equals_one_case_at_a_time_and_zero_amplitude_is_identity():
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 1, 20, 8, 8)).astype(np.float32))
    params = [_params(0.0), _params(8.0, phase=1.0), _params(20.0, phase=2.5)]
    together = ENTRY.apply(x, SPACING, params)
    for b in range(3):
        assert torch.equal(together[b : b + 1], ENTRY.apply(x[b : b + 1], SPACING, [params[b]]))
    assert torch.equal(together[0], x[0])
    assert not torch.equal(together[2], x[2])
