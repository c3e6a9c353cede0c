"""MRI perturbations: TorchIO/MONAI parity, physics (Rician, k-space energy, Gibbs, aliasing), batching."""

import ast
import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import special, stats

from perturbations import PERTURBATIONS, mri_motion, params_from_dict, params_to_dict
from perturbations.mri_bias import (
    MRIBiasFieldSpec,
    apply_mri_bias_field,
    bias_coefficients,
    sample_mri_bias_field,
)
from perturbations.mri_kspace import (
    MRIGhostingParams,
    MRISpikeParams,
    apply_mri_ghosting,
    apply_mri_spike,
    spike_positions,
)
from perturbations.mri_motion import (
    MRIMotionSpec,
    apply_mri_motion,
    motion_residual,
    motion_schedule,
    rotation_matrices,
    sample_mri_motion,
    segment_masks,
    torchio_motion_arguments,
)
from perturbations.mri_noise import MRIRicianNoiseSpec, apply_mri_rician_noise, sample_mri_rician_noise
from perturbations.mri_sampling import (
    MRIGibbsParams,
    MRIUndersamplingSpec,
    apply_mri_gibbs,
    apply_mri_undersampling,
    sample_mri_undersampling,
    sampled_lines,
)

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("mri_common", "mri_noise", "mri_bias", "mri_kspace", "mri_sampling", "mri_motion", "mri_contrast")
NAMES = (
    "mri_rician_noise",
    "mri_bias_field",
    "mri_ghosting",
    "mri_spike",
    "mri_motion",
    "mri_gibbs",
    "mri_undersampling",
    "mri_contrast_shift",
)
# Per perturbation, three specs that differ case to case (mixed axes, orders, counts, patterns in one batch).
MIXED_SPECS = {
    "mri_rician_noise": [{}, {"reference_signal": 2.0}, {}],
    "mri_bias_field": [{"order": 1}, {"order": 3}, {"order": 5}],
    "mri_ghosting": [{"axis": 0}, {"axis": 1, "restore": None}, {"axis": 2, "num_ghosts": 3}],
    "mri_spike": [{"num_spikes": 1}, {"num_spikes": 4}, {"num_spikes": 2}],
    "mri_motion": [{"num_transforms": 1}, {"num_transforms": 3}, {"rotation_radius_mm": None}],
    "mri_gibbs": [{"axes": (0, 1, 2)}, {"axes": (1,)}, {"axes": (0, 2)}],
    "mri_undersampling": [{"axis": 2}, {"pattern": "random"}, {"axis": 0, "center_fraction": 0.0}],
    "mri_contrast_shift": [
        {},
        {"parameter": "tr_ms", "field_strength": "1.5T"},
        {"sequence": "FLAIR", "parameter": "ti_ms"},
    ],
}
SPACING = (1.5, 1.0, 1.2)


def _sample(name, severity, seed=0, **spec):
    entry = PERTURBATIONS.get(name)
    return entry.sample(entry.spec(**spec), severity, np.random.default_rng(seed))


def _object(b=1, c=1, shape=(20, 24, 28), seed=0):
    """Non-negative test volumes: blobs plus a bright box with sharp edges plus texture."""
    x = blobs(shape).expand(b, c, *shape).clone()
    x[..., 6:12, 8:16, 10:20] += 0.8
    return x + 0.1 * torch.from_numpy(np.random.default_rng(seed).random((b, c, *shape)).astype(np.float32))


def _image(data, affine=None):
    """A TorchIO image whose array axes are ours (C, D, H, W)."""
    import torchio as tio

    return tio.ScalarImage(tensor=data.clone(), affine=np.eye(4) if affine is None else affine)


def _positive(shape, seed):
    return torch.from_numpy(np.random.default_rng(seed).uniform(0.2, 1.0, size=shape).astype(np.float32))


def _gaussian(n, sigma):
    """An anisotropic Gaussian at the centre of an n^3 volume."""
    g = np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij")
    return torch.from_numpy(
        np.exp(-(g[0] ** 2 + 1.3 * g[1] ** 2 + 0.8 * g[2] ** 2) / (2 * sigma**2))
    ).float()[None, None]


def blobs(shape, sigma=2.0):
    """Smooth test object: two Gaussian blobs well inside the volume (zero to < 1e-6 at the borders)."""
    grid = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    first = np.exp(-((grid[0] - 1) ** 2 + 1.5 * (grid[1] + 2) ** 2 + (grid[2] - 1) ** 2) / (2 * sigma**2))
    second = np.exp(
        -((grid[0] + 3) ** 2 + (grid[1] - 3) ** 2 + (grid[2] + 4) ** 2) / (2 * (0.7 * sigma) ** 2)
    )
    return torch.from_numpy((first + 0.6 * second).astype(np.float32)).view(1, 1, *shape)


# --- parity with TorchIO and MONAI ----------------------------------------------------------------------


@pytest.mark.parametrize("order", [1, 3, 5])
@pytest.mark.parametrize("shape", [(17, 20, 23), (16, 12, 1)])
def test_bias_field_equals_torchio_bias_field(order, shape):
    tio = pytest.importorskip("torchio")
    p = sample_mri_bias_field(MRIBiasFieldSpec(order=order), 0.4, np.random.default_rng(order))
    x = _positive((1, 2, *shape), seed=0)
    expected = tio.BiasField(coefficients=bias_coefficients(p), order=order)(_image(x[0])).data
    ours = apply_mri_bias_field(x, (1.0, 1.0, 1.0), [p])[0]
    assert float(((ours - expected).abs() / expected.abs()).max()) < 1e-5  # measured 0 (same float64 sums)


@pytest.mark.parametrize(
    ("num_ghosts", "axis", "intensity", "restore"),
    [(4, 1, 0.5, 0.02), (3, 0, 1.0, None), (2, 2, 0.3, 0.2), (5, 1, 0.75, 0.5), (10, 2, 0.9, 0.02)],
)
def test_ghosting_equals_torchio_ghosting(num_ghosts, axis, intensity, restore):
    tio = pytest.importorskip("torchio")
    x = _positive((1, 2, 16, 20, 24), seed=1)
    expected = tio.Ghosting(num_ghosts=num_ghosts, axis=axis, intensity=intensity, restore=restore)(
        _image(x[0])
    ).data
    p = MRIGhostingParams(intensity=intensity, num_ghosts=num_ghosts, axis=axis, restore=restore)
    ours = apply_mri_ghosting(x, (1.0, 1.0, 1.0), [p])[0]
    assert float((ours - expected).abs().max()) < 1e-5  # measured <= 4.8e-7 (float32 FFT rounding)
    assert float((ours - x[0]).abs().max()) > 0.1  # a real artefact, not a no-op


@pytest.mark.parametrize(("num_spikes", "intensity"), [(1, 0.5), (1, 2.0), (3, 0.3), (5, 0.1)])
def test_spike_equals_torchio_spike(num_spikes, intensity):
    tio = pytest.importorskip("torchio")
    x = _positive((1, 2, 16, 20, 24), seed=2)
    p = MRISpikeParams(intensity=intensity, num_spikes=num_spikes, seed=123 + num_spikes)
    expected = tio.Spike(spikes_positions=spike_positions(p), intensity=intensity)(_image(x[0])).data
    ours = apply_mri_spike(x, (1.0, 1.0, 1.0), [p])[0]
    assert float((ours - expected).abs().max()) < 1e-5  # measured <= 1.4e-6


@pytest.mark.parametrize("amplitude_mm", [2.0, 6.0, 10.0])
@pytest.mark.parametrize(
    ("shape", "spacing"), [((24, 28, 32), (1.0, 1.0, 1.0)), ((26, 30, 28), (1.5, 1.0, 1.2))]
)
def test_motion_equals_torchio_motion_on_a_smooth_object(amplitude_mm, shape, spacing):
    """Both resample trilinearly; they differ only where the moved object meets the border.

    SimpleITK replicates the edge voxel within half a voxel of the border, grid_sample blends with the
    image minimum there; on an object that is zero near the borders the two agree to float32 rounding.
    """
    tio = pytest.importorskip("torchio")
    x = blobs(shape)
    p = sample_mri_motion(MRIMotionSpec(num_transforms=3), amplitude_mm, np.random.default_rng(3))
    affine, arguments = torchio_motion_arguments(p, shape, spacing)
    expected = tio.Motion(image_interpolation="linear", **arguments)(_image(x[0], affine)).data
    ours = apply_mri_motion(x, spacing, [p])[0]
    error = (ours - expected).abs()
    change = float((ours - x[0]).abs().max())
    assert float(error.max()) < 1e-5 and float(error.mean()) < 1e-7  # measured <= 2.4e-7 and 7e-9
    assert change > 1e4 * float(error.max())  # the artefact: 0.18 to 0.37 of the peak


@pytest.mark.parametrize("alpha", [0.35, 0.5, 0.7])
def test_gibbs_equals_monai_gibbs_noise_on_an_object_varying_along_one_axis(alpha):
    """MONAI keeps a sphere of radius (1 - alpha) n / sqrt(2) bins; for an object that varies along D only,
    k-space is non-zero on the k_D axis alone, where the sphere and our box agree for
    f = 1 - sqrt(2) (1 - alpha). Odd n: MONAI's centre (n - 1) / 2 is then the DC bin."""
    monai = pytest.importorskip("monai.transforms")
    profile = torch.zeros(31)
    profile[8:20] = 1.0  # a slab: two step edges
    x = (profile.view(1, 1, 31, 1, 1) + torch.linspace(0, 0.5, 31).view(1, 1, 31, 1, 1)).expand(
        1, 1, 31, 9, 11
    )
    x = x.contiguous()
    expected = torch.as_tensor(monai.GibbsNoise(alpha=alpha)(x[0])).as_subclass(torch.Tensor)
    removed = 1.0 - np.sqrt(2.0) * (1.0 - alpha)
    ours = apply_mri_gibbs(x, (1.0, 1.0, 1.0), [MRIGibbsParams(removed_fraction=removed, axes="012")])[0]
    assert float((ours - expected).abs().max()) < 1e-5  # measured <= 4.8e-7
    assert float((ours - x[0]).abs().max()) > 0.01  # 0.02 at alpha 0.35 (f = 0.08), 0.31 at 0.7


# --- Rician noise -----------------------------------------------------------------------------------------


def rician_mean(signal, sigma):
    """sigma sqrt(pi/2) L_1/2(-A^2 / 2 sigma^2), with L_1/2(-v) = e^(-v/2) [(1 + v) I0(v/2) + v I1(v/2)]."""
    v = signal**2 / (2 * sigma**2)
    return sigma * math.sqrt(math.pi / 2) * ((1 + v) * special.i0e(v / 2) + v * special.i1e(v / 2))


@pytest.mark.parametrize("snr", [1.0, 2.0, 5.0, 20.0])
def test_rician_mean_and_second_moment_match_theory(snr, rng):
    signal = 1.0
    p = sample_mri_rician_noise(MRIRicianNoiseSpec(reference_signal=signal), snr, rng)
    y = apply_mri_rician_noise(torch.full((1, 1, 32, 32, 32), signal), SPACING, [p]).double()
    expected = rician_mean(signal, p.sigma)
    assert expected == pytest.approx(stats.rice.mean(signal / p.sigma, scale=p.sigma), rel=1e-10)
    assert abs(float(y.mean()) / expected - 1) < 0.02  # measured <= 0.13 % (SNR 1, 2, 5, 20)
    # E[M^2] = A^2 + 2 sigma^2 exactly for a Rice variable
    assert abs(float((y**2).mean()) / (signal**2 + 2 * p.sigma**2) - 1) < 0.02
    assert float(y.min()) >= 0.0


def test_rician_noise_floor_and_shared_field_across_severities():
    zero = torch.zeros(1, 1, 32, 32, 32)
    mild, harsh = (
        sample_mri_rician_noise(MRIRicianNoiseSpec(), s, np.random.default_rng(9)) for s in (10, 2)
    )
    assert mild.seed == harsh.seed  # common random numbers: one field, scaled by sigma
    y_mild, y_harsh = (apply_mri_rician_noise(zero, SPACING, [p]) for p in (mild, harsh))
    torch.testing.assert_close(y_harsh, y_mild * (harsh.sigma / mild.sigma), rtol=1e-5, atol=0)
    # Rayleigh floor where there is no signal: mean sigma sqrt(pi / 2)
    assert abs(float(y_harsh.mean()) / (harsh.sigma * math.sqrt(math.pi / 2)) - 1) < 0.02


# --- bias field -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("severity", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("order", [1, 3])
def test_bias_field_spans_its_peak_deviation(severity, order):
    spec = MRIBiasFieldSpec(order=order)
    p = sample_mri_bias_field(spec, severity, np.random.default_rng(order))
    field = apply_mri_bias_field(torch.ones(1, 1, 33, 33, 33), SPACING, [p])
    assert float(field.max()) == pytest.approx(1 + severity, rel=1e-6)  # the reference grid itself
    assert float(field.min()) == pytest.approx(1 / (1 + severity), rel=1e-6)
    field = apply_mri_bias_field(torch.ones(1, 1, 16, 20, 24), SPACING, [p])
    assert float(field.max()) == pytest.approx(1 + severity, rel=0.01)  # another grid: measured 2e-6
    assert float(field.min()) == pytest.approx(1 / (1 + severity), rel=0.01)
    other = sample_mri_bias_field(spec, 2 * severity, np.random.default_rng(order))
    log_ratio = torch.log(apply_mri_bias_field(torch.ones(1, 1, 8, 8, 8), SPACING, [other])) / torch.log(
        apply_mri_bias_field(torch.ones(1, 1, 8, 8, 8), SPACING, [p])
    )  # common random numbers: the same field shape at every severity, only its log scaled
    expected = math.log1p(2 * severity) / math.log1p(severity)
    torch.testing.assert_close(log_ratio, torch.full_like(log_ratio, expected), rtol=1e-3, atol=0)


# --- spikes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("intensity", [0.05, 0.5])
def test_spike_stripe_amplitude_is_intensity_times_mean(intensity):
    x = _object()
    y = apply_mri_spike(x, SPACING, [MRISpikeParams(intensity=intensity, num_spikes=1, seed=7)])
    stripes = y - x  # a single cosine: amplitude intensity * max|K| / N = intensity * mean (DC is the max)
    assert float(stripes.abs().max()) == pytest.approx(intensity * float(x.mean()), rel=1e-3)
    assert abs(float(stripes.mean())) < 1e-3 * intensity * float(x.mean())


# --- motion -----------------------------------------------------------------------------------------------


def _energy(x):
    """sum |K|^2 over the 3-D spectrum (= N * image energy, by Parseval; x may be complex)."""
    return float(torch.fft.fftn(x.to(torch.complex128), dim=(2, 3, 4)).abs().pow(2).sum())


def test_motion_with_whole_voxel_translations_preserves_kspace_energy_exactly():
    """A translation only changes the phase of k-space, so every segment keeps |K| and so does the
    assembled k-space. Whole-voxel shifts of a zero-bordered object make the resampling exact, so this
    checks the segment assembly itself (a sharp-edged box: all frequencies matter)."""
    x = torch.zeros(2, 1, 24, 28, 32)
    x[..., 8:16, 9:19, 10:22] = 1.0
    x[..., 10:13, 11:14, 12:20] += 0.5
    translation = torch.tensor([[[2, -3, 4], [-4, 1, -2], [3, 3, -5]], [[0, 0, 6], [-1, 2, 0], [5, -4, 1]]])
    times = torch.tensor([[0.2, 0.45, 0.7], [0.3, 0.6, 0.8]], dtype=torch.float64)
    z = x + motion_residual(x, (1.0, 1.0, 1.0), torch.zeros(2, 3, 3), translation.double(), times)
    for b in range(2):
        assert abs(_energy(z[b : b + 1]) / _energy(x[b : b + 1]) - 1) < 1e-6  # measured <= 1e-8
    assert float((z - x).abs().max()) > 0.3


def test_seeded_translations_keep_the_magnitude_image_energy():
    """Through the registered perturbation: ``output: magnitude`` returns |z|, whose energy is the
    k-space energy. Sub-voxel shifts resample trilinearly (as TorchIO), scaling a moved segment's spectrum
    by |H(f)|^2 = prod(1 - 2 d (1 - d)(1 - cos 2 pi f)), d the fractional shift: within 1 % on a smooth
    zero-bordered object (sigma 4 voxels). The real part (TorchIO's output) drops the part of the
    assembled k-space that is not conjugate-symmetric, so its energy is lower."""
    x = _gaussian(32, 4.0)
    magnitude = MRIMotionSpec(rotation_radius_mm=None, num_transforms=4, output="magnitude")
    for seed in range(4):
        p = sample_mri_motion(magnitude, 1.5, np.random.default_rng(seed))
        y = apply_mri_motion(x, (1.0, 1.0, 1.0), [p])
        assert abs(_energy(y) / _energy(x) - 1) < 0.01  # measured <= 0.005 %
        assert float((y - x).abs().max()) > 1e-4
        real = apply_mri_motion(x, (1.0, 1.0, 1.0), [dataclasses.replace(p, output="real")])
        assert _energy(real) <= _energy(y) * (1 + 1e-9)


def _reference_motion_residual(x, spacing, degrees, translation_mm, times):
    """The plain formulation: affine_grid, one grid_sample of every (case, transform), complex FFT along W,
    k-space masks, complex inverse FFT (what motion_residual computes with real FFTs, slab by slab)."""
    import torch.nn.functional as F

    b, c, *shape = x.shape
    count = times.shape[1]
    rotation = rotation_matrices(degrees).view(-1, 3, 3)
    theta = mri_motion._sampling_grid(rotation, translation_mm.reshape(-1, 3), shape, spacing)
    grid = F.affine_grid(theta.to(x.dtype), [b * count, c, *shape], align_corners=False)
    low = x.amin(dim=(2, 3, 4), keepdim=True)
    source = (x - low).unsqueeze(1).expand(b, count, c, *shape).reshape(b * count, c, *shape)
    moved = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    moving = ((degrees != 0) | (translation_mm != 0)).any(dim=-1).to(x.dtype).view(b, count, 1, 1, 1, 1)
    diff = (moved.view(b, count, c, *shape) + low.unsqueeze(1) - x.unsqueeze(1)) * moving
    masks = segment_masks(times, shape[2]).to(x.dtype).view(b, count, 1, 1, 1, shape[2])
    return torch.fft.ifft((torch.fft.fft(diff, dim=-1) * masks).sum(dim=1), dim=-1)


@pytest.mark.parametrize(
    ("b", "count", "shape"), [(1, 3, (12, 14, 16)), (3, 3, (9, 10, 15)), (2, 2, (40, 8, 9))]
)
def test_motion_residual_equals_the_complex_fft_formulation(b, count, shape, monkeypatch):
    """Real FFTs with Hermitian segment weights, slabs along D and the separable grid give the residual of the
    plain complex formulation (odd and even W; a still pose and an empty segment in the batch)."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(b, 2, *shape, generator=gen) + 0.5
    degrees = (torch.rand(b, count, 3, generator=gen, dtype=torch.float64) - 0.5) * 12
    translation = (torch.rand(b, count, 3, generator=gen, dtype=torch.float64) - 0.5) * 6
    degrees[0, 0], translation[0, 0] = 0.0, 0.0  # a still pose contributes nothing
    times = torch.sort(torch.rand(b, count, generator=gen, dtype=torch.float64), dim=1).values
    times[-1, -1] = 2.0  # an empty segment
    spacing = (1.2, 0.9, 1.1)
    expected = _reference_motion_residual(x, spacing, degrees, translation, times)
    assert float(expected.abs().max()) > 0.01
    monkeypatch.setattr(mri_motion, "CHUNK_POINTS", 700)  # several slabs
    ours = motion_residual(x, spacing, degrees, translation, times)
    assert float((ours - expected).abs().max()) < 1e-5


def test_separable_grid_equals_affine_grid():
    import torch.nn.functional as F

    rows = [[0.98, 0.1, -0.05, 0.02], [-0.1, 0.99, 0.03, -0.1], [0.04, -0.02, 1.01, 0.05]]
    theta = torch.tensor([rows, rows])
    theta[1, :, 3] = torch.tensor([0.3, -0.2, 0.1])
    grid = mri_motion.affine_sampling_grid(theta.double(), (7, 9, 11), torch.float32)
    expected = F.affine_grid(theta, [2, 1, 7, 9, 11], align_corners=False)
    assert float((grid - expected).abs().max()) < 1e-6
    torch.testing.assert_close(
        mri_motion.affine_sampling_grid(theta.double(), (7, 9, 11), torch.float32, (2, 5)), grid[:, 2:5]
    )


def test_motion_keeps_the_original_kspace_centre_segment():
    x = _object()
    p = sample_mri_motion(MRIMotionSpec(num_transforms=3), 10.0, np.random.default_rng(4))
    schedule = motion_schedule([p], x)
    z = x + motion_residual(x, SPACING, *schedule)
    moved = segment_masks(schedule[2], x.shape[-1])[0].any(dim=0)  # W bins taken from moved poses
    kx, kz = torch.fft.fft(x.double(), dim=-1), torch.fft.fft(z.to(torch.complex128), dim=-1)
    assert not bool(moved[0])  # the DC bin (and the segment holding it) comes from the original pose
    assert float((kx - kz)[..., ~moved].abs().max()) < 1e-5 * float(kx.abs().max())
    assert float((kx - kz)[..., moved].abs().max()) > 0.01 * float(kx.abs().max())


# --- Gibbs ringing ----------------------------------------------------------------------------------------


def test_gibbs_truncates_kspace_to_a_box_and_overshoots_about_nine_percent():
    n = 128
    step = torch.zeros(1, 1, 4, 4, n)
    step[..., n // 4 : 3 * n // 4] = 1.0
    p = MRIGibbsParams(removed_fraction=0.75, axes="2")
    y = apply_mri_gibbs(step, SPACING, [p])
    spectrum = torch.fft.fft(y.double(), dim=-1)
    k = torch.fft.fftfreq(n, d=1.0 / n).abs()
    removed = k > 0.25 * n / 2
    assert float(spectrum[..., removed].abs().max()) < 1e-4
    kept = torch.fft.fft(step.double(), dim=-1)[..., ~removed]
    torch.testing.assert_close(spectrum[..., ~removed], kept, atol=1e-4, rtol=0)
    overshoot = float(y.max()) - 1.0
    assert 0.07 < overshoot < 0.095  # Gibbs constant 0.0895 of the step, sampled at 4 points per cycle
    assert torch.equal(
        apply_mri_gibbs(step, SPACING, [MRIGibbsParams(removed_fraction=0.0, axes="012")]), step
    )


# --- undersampling ----------------------------------------------------------------------------------------


def test_twofold_equispaced_undersampling_folds_the_image_over_half_the_field_of_view():
    x = _object(c=2)
    spec = MRIUndersamplingSpec(axis=1, center_fraction=0.0)
    y = apply_mri_undersampling(x, SPACING, [sample_mri_undersampling(spec, 2.0, np.random.default_rng(0))])
    # lines k = 0, +-2, ...: the mask (1 + (-1)^k) / 2 is the image plus its copy shifted by FOV / 2
    expected = (x + torch.roll(x, x.shape[3] // 2, dims=3)) / 2
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("pattern", ["equispaced", "random"])
@pytest.mark.parametrize("acceleration", [2.0, 4.0, 8.0])
def test_undersampling_acquires_one_line_in_r_with_a_full_centre(pattern, acceleration):
    n = 256
    spec = MRIUndersamplingSpec(pattern=pattern, center_fraction=0.08)
    params = [sample_mri_undersampling(spec, acceleration, np.random.default_rng(s)) for s in range(20)]
    lines = sampled_lines(params, n, torch.empty(0))
    half = math.floor(0.08 * n / 2)  # |k| <= 10: 21 lines
    assert bool(lines[:, n // 2 - half : n // 2 + half + 1].all())
    fraction = lines.double().mean(dim=1)
    tolerance = 0.15 if pattern == "random" else 0.05  # random: binomial spread of the outer lines
    assert abs(float(fraction.mean()) * acceleration - 1) < tolerance
    if pattern == "equispaced":
        assert torch.equal(lines, lines.flip(1).roll(1, dims=1))  # symmetric about k = 0: a real image
    else:
        assert not torch.equal(lines[0], lines[1])  # the seed draws the pattern


# --- every MRI perturbation: batching, dtype, replay, device ---------------------------------------------


def test_every_registered_mri_perturbation_is_covered_here():
    assert sorted(NAMES) == [name for name in PERTURBATIONS.names() if name.startswith("mri_")]


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_three_with_different_params_equals_one_at_a_time(name):
    entry = PERTURBATIONS.get(name)
    x = _object(b=3, c=2, seed=1)
    severities = (entry.ladder[0], entry.ladder[2], entry.ladder[4])
    params = [
        _sample(name, s, seed=i, **spec)
        for i, (s, spec) in enumerate(zip(severities, MIXED_SPECS[name], strict=True))
    ]
    batched = entry.apply(x, SPACING, params)
    for b, p in enumerate(params):
        alone = entry.apply(x[b : b + 1], SPACING, [p])
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-6, rtol=0)
        assert not torch.equal(alone, x[b : b + 1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_dtype_shape_device_kept_and_json_replay_bit_identical(name, dtype):
    entry = PERTURBATIONS.get(name)
    x = _object(b=2, c=2, shape=(12, 16, 10)).to(dtype)
    params = [_sample(name, entry.ladder[-1], seed=s) for s in (3, 4)]
    replayed = [params_from_dict(name, json.loads(json.dumps(params_to_dict(p)))) for p in params]
    assert replayed == params
    y = entry.apply(x, SPACING, params)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    assert torch.equal(y, entry.apply(x.clone(), SPACING, replayed))


@pytest.mark.parametrize("name", NAMES)
def test_apply_runs_on_the_meta_device(name):
    """Meta tensors carry no data: any host copy or sync (.item(), .cpu(), .numpy(), float(t), `if t:`) in
    the kernel raises, so this proves the apply path stays on the device."""
    entry = PERTURBATIONS.get(name)
    x = torch.empty(2, 2, 12, 16, 10, device="meta")
    params = [_sample(name, entry.ladder[-1], seed=s) for s in (5, 6)]
    y = entry.apply(x, SPACING, params)
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype


HOST_COPIES = {"cpu", "numpy", "item", "tolist"}


def _functions():
    found = {}
    for module in MODULES:
        tree = ast.parse((ROOT / "perturbations" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                found[node.name] = node
    return found


def test_apply_paths_make_no_host_copies():
    """Static twin of the meta-device test: every function reachable from an ``apply_mri_*`` kernel."""
    functions = _functions()
    todo = [name for name in functions if name.startswith("apply_mri_")]
    assert len(todo) == len(NAMES)
    seen, offenders = set(), []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for node in ast.walk(functions[name]):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Attribute) and node.func.attr in HOST_COPIES:
                offenders.append(f"{name}: .{node.func.attr}() at line {node.lineno}")
            if isinstance(node.func, ast.Name) and node.func.id in functions:
                todo.append(node.func.id)
    assert offenders == []
    assert {"kspace_filter", "line_filter", "seeded_integers", "segment_masks"} <= seen


def test_docs_table_lists_every_ladder():
    text = (ROOT / "docs" / "perturbations-mri.md").read_text()
    for name in NAMES:
        entry = PERTURBATIONS.get(name)
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert [float(re.sub(r"[^0-9.]", "", c)) for c in cells[-5:]] == list(entry.ladder), name
        assert entry.severity.name in text
