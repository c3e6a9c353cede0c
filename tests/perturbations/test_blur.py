import numpy as np
import pytest
import torch
from scipy import ndimage

from perturbations.blur import FWHM_PER_SIGMA, GaussianBlurParams, apply_gaussian_blur


def _measured_fwhm_mm(profile: np.ndarray, spacing: float) -> float:
    """FWHM measured directly: width where the linearly interpolated profile crosses half its maximum."""
    x = (np.arange(profile.size) - profile.size // 2) * spacing
    half = profile.max() / 2
    i = int(np.argmax(profile))
    left = np.flatnonzero(profile[:i] < half)[-1]
    right = i + np.flatnonzero(profile[i:] < half)[0]
    x_left = np.interp(half, profile[left : left + 2], x[left : left + 2])
    x_right = np.interp(half, profile[right - 1 : right + 1][::-1], x[right - 1 : right + 1][::-1])
    return x_right - x_left


@pytest.mark.parametrize("fwhm_mm", [3.0, 6.0, 10.0])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.8, 0.8)])
def test_blurred_point_has_requested_fwhm(fwhm_mm, spacing):
    x = torch.zeros(1, 1, 41, 65, 65)
    x[0, 0, 20, 32, 32] = 1.0
    y = apply_gaussian_blur(x, spacing, [GaussianBlurParams(fwhm_mm=fwhm_mm)])[0, 0].numpy()
    profiles = (y[:, 32, 32], y[20, :, 32], y[20, 32, :])
    for profile, step in zip(profiles, spacing, strict=True):
        x = (np.arange(profile.size) - profile.size // 2) * step
        fwhm_from_variance = FWHM_PER_SIGMA * np.sqrt((profile * x**2).sum() / profile.sum())
        assert abs(fwhm_from_variance / fwhm_mm - 1.0) < 0.05
        if fwhm_mm >= 3 * step:  # the half-maximum crossing is well sampled
            assert abs(_measured_fwhm_mm(profile, step) / fwhm_mm - 1.0) < 0.05
    assert y.sum() == pytest.approx(1.0, abs=1e-5)  # mass is preserved


@pytest.mark.parametrize("fwhm_mm", [0.5, 2.0, 7.5, 40.0])
def test_matches_scipy_gaussian_filter(fwhm_mm):
    gen = np.random.default_rng(0)
    img = gen.normal(size=(1, 1, 12, 20, 16)).astype(np.float32)
    spacing = (2.5, 1.0, 1.5)
    ours = apply_gaussian_blur(torch.from_numpy(img), spacing, [GaussianBlurParams(fwhm_mm=fwhm_mm)])
    sigma = [fwhm_mm / FWHM_PER_SIGMA / s for s in spacing]
    ref = ndimage.gaussian_filter(img[0, 0].astype(np.float64), sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(ours[0, 0].numpy(), ref, atol=1e-5)


def test_matches_torchio_blur():
    tio = pytest.importorskip("torchio")
    gen = np.random.default_rng(1)
    data = gen.normal(size=(1, 16, 20, 24)).astype(np.float32)  # TorchIO: (C, W, H, D)
    spacing = (1.5, 1.0, 2.0)
    image = tio.ScalarImage(tensor=torch.from_numpy(data), affine=np.diag([*spacing, 1.0]))
    std_mm = 2.0
    expected = tio.Blur(std=std_mm)(image).data
    ours = apply_gaussian_blur(
        torch.from_numpy(data)[None], spacing, [GaussianBlurParams(fwhm_mm=std_mm * FWHM_PER_SIGMA)]
    )
    np.testing.assert_allclose(ours[0].numpy(), expected.numpy(), atol=1e-5)


def test_per_case_kernels_equal_one_case_at_a_time():
    gen = np.random.default_rng(2)
    x = torch.from_numpy(gen.normal(size=(3, 2, 10, 12, 14)).astype(np.float32))
    params = [GaussianBlurParams(fwhm_mm=f) for f in (0.0, 3.0, 9.0)]
    batched = apply_gaussian_blur(x, (1.0, 1.0, 1.0), params)
    for b, p in enumerate(params):
        alone = apply_gaussian_blur(x[b : b + 1], (1.0, 1.0, 1.0), [p])
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-6, rtol=0)
    assert torch.equal(batched[0], x[0])  # FWHM 0 is the identity
