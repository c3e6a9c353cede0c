"""Generic and pipeline perturbations: parity with TorchIO/MONAI, masks, batching, replay, no host copies."""

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from perturbations import PERTURBATIONS, params_from_dict, params_to_dict
from perturbations.intensity import (
    GammaParams,
    GammaSpec,
    LossyCompressionParams,
    RescaleErrorSpec,
    apply_gamma,
    apply_lossy_compression,
    apply_rescale_error,
    quantisation_tables,
    sample_gamma,
    sample_rescale_error,
)
from perturbations.pipeline import (
    CropPadParams,
    DuplicatedSlicesParams,
    MissingSlicesParams,
    chosen_slices,
)
from perturbations.resolution import (
    AnisotropyParams,
    WrongSpacingSpec,
    apply_anisotropy,
    sample_wrong_spacing,
    spacing_after,
)

tio = pytest.importorskip("torchio")

MODULES = {"perturbations.intensity", "perturbations.resolution", "perturbations.pipeline"}
GENERIC = tuple(name for name, entry in PERTURBATIONS.items() if entry.spec.__module__ in MODULES)
GEOMETRY = ("orientation_flip", "axis_swap", "missing_slices", "duplicated_slices", "crop_pad")
SPACING = (2.0, 1.0, 1.5)


def _noise(shape, seed=0, scale=1.0):
    return torch.from_numpy((np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32))


def _sample(name, severity, seed=0, **spec):
    entry = PERTURBATIONS.get(name)
    return entry.sample(entry.spec(**spec), severity, np.random.default_rng(seed))


def _image(data, spacing=SPACING):
    """A TorchIO image whose array axes are ours (C, D, H, W) and whose spacing is ``spacing``."""
    return tio.ScalarImage(tensor=data.clone(), affine=np.diag([*spacing, 1.0]))


def _harsh(name):
    entry = PERTURBATIONS.get(name)
    return entry.ladder[-1] if name not in ("orientation_flip", "axis_swap") else 1.0


# --- registry-level checks over all generic perturbations --------------------------------------------


def test_generic_perturbations_are_registered_with_masks_where_geometry_changes():
    intensity = {"gamma", "intensity_rescale_error", "lossy_compression", "anisotropy", "wrong_spacing"}
    assert set(GENERIC) == intensity | set(GEOMETRY)
    for name in GENERIC:
        entry = PERTURBATIONS.get(name)
        assert entry.props.intensity_only == (name not in GEOMETRY), name
        assert (entry.apply_mask is not None) == (name in GEOMETRY), name
    assert PERTURBATIONS.get("wrong_spacing").spacing_after is spacing_after


@pytest.mark.parametrize("name", GENERIC)
def test_batch_of_three_equals_one_at_a_time(name):
    entry = PERTURBATIONS.get(name)
    x = _noise((3, 2, 12, 16, 20), seed=1, scale=100.0)
    params = [_sample(name, s, seed=i) for i, s in enumerate((entry.severity.nominal, *entry.ladder[2:4]))]
    batched = entry.apply(x, SPACING, params)
    assert batched.shape == x.shape
    for b, p in enumerate(params):
        alone = entry.apply(x[b : b + 1], SPACING, [p])
        torch.testing.assert_close(batched[b : b + 1], alone, atol=1e-5, rtol=0)
    if entry.apply_mask is not None:
        mask = x > 120.0
        batched = entry.apply_mask(mask, SPACING, params)
        assert batched.dtype == torch.bool and batched.shape == mask.shape
        for b, p in enumerate(params):
            assert torch.equal(batched[b : b + 1], entry.apply_mask(mask[b : b + 1], SPACING, [p]))


@pytest.mark.parametrize("name", GENERIC)
def test_replay_from_json_is_bit_identical(name):
    entry = PERTURBATIONS.get(name)
    x = _noise((2, 1, 10, 12, 14), seed=2, scale=50.0)
    params = [_sample(name, _harsh(name), seed=s) for s in (3, 4)]
    replayed = [params_from_dict(name, json.loads(json.dumps(params_to_dict(p)))) for p in params]
    assert replayed == params
    assert torch.equal(entry.apply(x, SPACING, params), entry.apply(x.clone(), SPACING, replayed))


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("orientation_flip", {"axis": "W"}),
        ("orientation_flip", {"axis": "D"}),
        ("axis_swap", {}),
        ("axis_swap", {"axes": "DW", "fill_value": -1000.0}),
        ("missing_slices", {"mode": "fill", "fill_value": -1000.0}),
        ("missing_slices", {"mode": "fill", "axis": "H"}),
        ("duplicated_slices", {}),
        ("duplicated_slices", {"shift": True, "axis": "W"}),
        ("crop_pad", {"fill_value": -1000.0}),
        ("crop_pad", {"axes": "DHW"}),
    ],
)
def test_mask_of_brightest_voxels_moves_with_the_image(name, spec):
    """apply_mask(x > t) == apply(x) > t when the transform moves or copies voxels and fills below t."""
    x = _noise((2, 1, 12, 14, 18), seed=5, scale=100.0)
    x[:, :, 2:6, 1:7, 10:18] += 1000.0  # an off-centre bright block at the border: flips, swaps, cuts move it
    mask = x > 500.0
    entry = PERTURBATIONS.get(name)
    severity = 3.0 if name == "crop_pad" else _harsh(name)  # 3 mm: 1-3 voxels per side, not the whole volume
    params = [_sample(name, severity, seed=s, **spec) for s in (7, 8)]
    moved = entry.apply_mask(mask, SPACING, params)
    assert torch.equal(moved, entry.apply(x, SPACING, params) > 500.0)
    assert not torch.equal(moved, mask)  # the harshest level really moves the mask


def test_missing_slices_interpolate_linearly_and_the_mask_takes_the_nearer_present_slice():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 16, 1, 1).expand(1, 1, 16, 3, 3).contiguous()
    p = MissingSlicesParams(axis="D", fraction=0.3, mode="interpolate", fill_value=None, seed=11)
    hit = chosen_slices([p], "D", 16, x, skip_first=False)[0].tolist()
    assert sum(hit) == round(0.3 * 16)
    present = [j for j in range(16) if not hit[j]]
    expected, nearer = [], []
    for j in range(16):
        before = max([i for i in present if i <= j], default=None)
        after = min([i for i in present if i >= j], default=None)
        lo, hi = before if before is not None else after, after if after is not None else before
        expected.append(lo if hi == lo else j)  # the ramp is linear: interpolation gives j itself
        nearer.append(hi if j - lo > hi - j else lo)
    y = PERTURBATIONS.get("missing_slices").apply(x, (1.0, 1.0, 1.0), [p])
    torch.testing.assert_close(y[0, 0, :, 1, 1], torch.tensor(expected, dtype=torch.float32))
    labels = torch.zeros(1, 1, 16, 3, 3, dtype=torch.bool)
    labels[:, :, 8:] = True
    moved = PERTURBATIONS.get("missing_slices").apply_mask(labels, (1.0, 1.0, 1.0), [p])
    assert moved[0, 0, :, 1, 1].tolist() == [i >= 8 for i in nearer]


# --- gamma and rescale --------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.5, 0.8, 1.25, 2.0])
def test_gamma_matches_torchio_gamma(gamma):
    data = _noise((1, 12, 10, 8), seed=3)  # negative values too: sign-preserving branch
    expected = tio.Gamma(gamma)(_image(data)).data
    ours = apply_gamma(data[None], SPACING, [GammaParams(gamma=gamma, window_low=0.0, window_high=1.0)])[0]
    rel = ((ours - expected).abs() / expected.abs().clamp(min=1e-6)).max()
    assert float(rel) < 1e-5


def test_gamma_with_own_window_matches_monai_adjust_contrast():
    monai_transforms = pytest.importorskip("monai.transforms")
    data = _noise((1, 12, 10, 8), seed=4, scale=300.0)
    for gamma in (0.7, 1.6):
        expected = monai_transforms.AdjustContrast(gamma=gamma)(data)
        ours = apply_gamma(
            data[None], SPACING, [GammaParams(gamma=gamma, window_low=None, window_high=None)]
        )[0]
        torch.testing.assert_close(
            ours, torch.as_tensor(expected).as_subclass(torch.Tensor), atol=1e-3, rtol=0
        )


def test_gamma_severity_is_abs_log_gamma():
    rng = np.random.default_rng(0)
    assert sample_gamma(GammaSpec(sign="positive"), 0.3, rng).gamma == pytest.approx(math.exp(0.3))
    assert sample_gamma(GammaSpec(sign="negative"), 0.3, rng).gamma == pytest.approx(math.exp(-0.3))
    signs = {sample_gamma(GammaSpec(), 0.2, np.random.default_rng(s)).gamma > 1 for s in range(20)}
    assert signs == {True, False}
    with pytest.raises(ValueError):
        GammaSpec(window=(1.0, 0.0))


def test_rescale_errors_are_exact_arithmetic():
    x = torch.arange(-1024, 3072, 16, dtype=torch.float32).view(1, 1, 4, 8, 8)
    rng = np.random.default_rng(0)
    intercept = sample_rescale_error(RescaleErrorSpec(), 1024.0, rng)
    assert torch.equal(apply_rescale_error(x, SPACING, [intercept]), x + 1024.0)
    down = sample_rescale_error(RescaleErrorSpec(sign="negative"), 24.0, rng)
    assert torch.equal(apply_rescale_error(x, SPACING, [down]), x - 24.0)
    # A slope of 2 read as 1 ... i.e. k = 2: the error at 1000 HU is (2 - 1) (1000 + 1024) = 2024 HU.
    slope = sample_rescale_error(RescaleErrorSpec(kind="slope"), 2024.0, rng)
    assert slope.slope_factor == 2.0 and slope.offset_hu == 1024.0
    y = apply_rescale_error(x, SPACING, [slope])
    assert torch.equal(y, 2.0 * x + 1024.0)
    assert float(y.flatten()[x.flatten() == -1024.0][0]) == -1024.0  # stored value 0 is unaffected
    with pytest.raises(ValueError, match="no positive slope"):
        sample_rescale_error(RescaleErrorSpec(kind="slope", sign="negative"), 3000.0, rng)


# --- anisotropy ---------------------------------------------------------------------------------------


def _outside_itk_buffer(size, factor, spacing):
    """Output voxels whose position on TorchIO's coarse grid lies outside SimpleITK's buffer (-> 0)."""
    n = math.floor(size * spacing / (spacing * factor))
    first = (size - 1) / 2 - (n - 1) / 2 * factor
    q = (np.arange(size) - first) / factor
    return (q < -0.5) | (q >= n - 0.5)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("factor", [1.5, 2.0, 2.5, 3.0, 4.5])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_anisotropy_matches_torchio_random_anisotropy(axis, factor, interpolation):
    data = _noise((1, 16, 15, 12), seed=6, scale=100.0)
    spacing = (2.0, 0.5, 1.5)
    transform = tio.RandomAnisotropy(
        axes=axis, downsampling=(factor, factor), image_interpolation=interpolation
    )
    expected = transform(_image(data, spacing)).data
    params = [AnisotropyParams(axis="DHW"[axis], downsampling=factor, interpolation=interpolation)]
    ours = apply_anisotropy(data[None], spacing, params)[0]
    outside = torch.from_numpy(_outside_itk_buffer(data.shape[axis + 1], factor, spacing[axis]))
    inside = (~outside).nonzero().flatten()
    diff = (ours - expected).index_select(axis + 1, inside).abs().max()
    assert float(diff) < 1e-4  # measured 3.1e-5 on values of std 100 (float32 rounding)
    border = outside.nonzero().flatten()
    if border.numel():  # SimpleITK writes 0 there; we repeat the edge coarse sample
        assert torch.all(expected.index_select(axis + 1, border) == 0)
        edge = ours.index_select(axis + 1, border)
        assert torch.all(edge != 0)


def test_anisotropy_blurs_only_its_axis_and_is_identity_at_factor_one():
    x = _noise((2, 1, 16, 16, 16), seed=7)
    same = apply_anisotropy(
        x, SPACING, [AnisotropyParams(axis="D", downsampling=1.0, interpolation="linear")] * 2
    )
    assert torch.equal(same, x)
    params = [AnisotropyParams(axis=a, downsampling=4.0, interpolation="linear") for a in ("D", "W")]
    y = apply_anisotropy(x, SPACING, params)
    for b, dim in ((0, 2), (1, 4)):
        rough_in = x[b].diff(dim=dim - 1).abs().mean()
        assert float(y[b].diff(dim=dim - 1).abs().mean()) < 0.6 * float(rough_in)
        other = 3 if dim != 3 else 2
        # along another axis the voxels are copies of input rows: roughness is kept
        assert float(y[b].diff(dim=other - 1).abs().mean()) > 0.5 * float(
            x[b].diff(dim=other - 1).abs().mean()
        )


# --- flip, swap, crop/pad -----------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flip_matches_torchio_flip(axis):
    data = _noise((1, 8, 10, 12), seed=8)
    expected = tio.Flip(axes=(axis,))(_image(data)).data
    p = _sample("orientation_flip", 1.0, axis="DHW"[axis])
    assert p.flipped
    assert torch.equal(PERTURBATIONS.get("orientation_flip").apply(data[None], SPACING, [p])[0], expected)


def test_flip_probability_is_the_severity():
    flips = [_sample("orientation_flip", 0.2, seed=s).flipped for s in range(2000)]
    assert abs(np.mean(flips) - 0.2) < 0.03
    assert not any(_sample("orientation_flip", 0.0, seed=s).flipped for s in range(100))
    # common random numbers: a case flipped at 0.2 is flipped at every higher probability
    assert all(_sample("orientation_flip", 0.5, seed=s).flipped for s in range(2000) if flips[s])


def test_axis_swap_transposes_and_fits_unequal_axes():
    x = _noise((1, 1, 6, 8, 8), seed=9)
    swap = PERTURBATIONS.get("axis_swap")
    assert torch.equal(swap.apply(x, SPACING, [_sample("axis_swap", 1.0)]), x.transpose(3, 4))
    x = _noise((1, 1, 6, 8, 12), seed=9)
    y = swap.apply(x, SPACING, [_sample("axis_swap", 1.0, fill_value=-7.0)])
    t = x.transpose(3, 4)  # (6, 12, 8): centre-crop H 12 -> 8, centre-pad W 8 -> 12
    assert torch.equal(y[..., :, 2:10], t[..., 2:10, :])
    assert torch.all(y[..., :2] == -7.0) and torch.all(y[..., 10:] == -7.0)


def test_crop_pad_matches_torchio_crop_then_pad():
    data = _noise((1, 10, 16, 20), seed=10)
    spacing = (2.0, 1.0, 0.8)
    p = CropPadParams(margin_mm=4.0, axes="HW", fill_value=-1000.0)  # 4 voxels in H, 5 in W
    cut = (0, 0, 4, 4, 5, 5)
    expected = tio.Pad(cut, padding_mode=-1000.0)(tio.Crop(cut)(_image(data, spacing))).data
    ours = PERTURBATIONS.get("crop_pad").apply(data[None], spacing, [p])[0]
    assert torch.equal(ours, expected)
    own = PERTURBATIONS.get("crop_pad").apply(
        data[None], spacing, [CropPadParams(margin_mm=4.0, axes="D", fill_value=None)]
    )
    assert torch.all(own[0, :, :2] == data.min()) and torch.equal(own[0, :, 2:-2], data[:, 2:-2])


# --- missing and duplicated slices --------------------------------------------------------------------


def test_missing_slices_are_blank_and_nested_across_severities():
    x = _noise((1, 1, 20, 6, 6), seed=12) + 10.0
    miss = PERTURBATIONS.get("missing_slices")
    sets = []
    for fraction in (0.05, 0.1, 0.2, 0.3):
        p = MissingSlicesParams(axis="D", fraction=fraction, mode="fill", fill_value=-1000.0, seed=42)
        y = miss.apply(x, SPACING, [p])
        blank = (y[0, 0] == -1000.0).all(dim=(1, 2))
        assert int(blank.sum()) == math.floor(fraction * 20 + 0.5)
        assert torch.equal(y[0, 0][~blank], x[0, 0][~blank])
        sets.append(set(blank.nonzero().flatten().tolist()))
    assert all(
        a <= b for a, b in zip(sets[:-1], sets[1:], strict=True)
    )  # milder levels miss a subset of the harsher ones


def test_duplicated_slices_replace_or_shift():
    x = torch.arange(10, dtype=torch.float32).view(1, 1, 10, 1, 1).expand(1, 1, 10, 2, 2).contiguous()
    dup = PERTURBATIONS.get("duplicated_slices")
    replace = DuplicatedSlicesParams(axis="D", fraction=0.2, shift=False, seed=5)
    shift = DuplicatedSlicesParams(axis="D", fraction=0.2, shift=True, seed=5)
    hit = chosen_slices([replace], "D", 10, x, skip_first=True)[0]
    assert int(hit.sum()) == 2 and not bool(hit[0])
    r = dup.apply(x, SPACING, [replace])[0, 0, :, 0, 0]
    s = dup.apply(x, SPACING, [shift])[0, 0, :, 0, 0]
    for j in hit.nonzero().flatten().tolist():
        assert r[j] == r[j - 1] and s[j] == s[j - 1]
    assert sorted(set(r.tolist())) == [v for v in range(10) if not hit[v]]  # replaced slices are gone
    assert s.tolist() == sorted(s.tolist()) and s[-1] == 7  # shifted: every slice kept in order, 2 fall off


# --- lossy compression --------------------------------------------------------------------------------


def _smooth_volume():
    d, h, w = torch.meshgrid(torch.arange(4.0), torch.arange(30.0), torch.arange(27.0), indexing="ij")
    blob = torch.exp(-((h - 14) ** 2 + (w - 12) ** 2) / 60.0) * 1400.0 - 1000.0
    return (blob + 3.0 * w + 2.0 * d + 8.0 * torch.sin(h / 3.0)).view(1, 1, 4, 30, 27)


def _lossy(x, quality, bits=8):
    p = LossyCompressionParams(quality=quality, bits=bits, window_low=-1024.0, window_high=1024.0)
    return apply_lossy_compression(x, SPACING, [p])


def _blockiness(y):
    """Mean |step| across 8-voxel block edges over mean |step| inside blocks, along W (edges 8, 16, 24)."""
    steps = y[..., :24].diff(dim=-1).abs()
    edge = torch.zeros(23, dtype=torch.bool)
    edge[[7, 15]] = True
    return float(steps[..., edge].mean() / steps[..., ~edge].mean())


def test_lossy_quality_100_is_near_identity():
    x = _smooth_volume()
    lsb = 2048.0 / 255
    assert float((_lossy(x, 100.0) - x).abs().max()) <= 2 * lsb  # measured 1.49 LSB: sample + DCT rounding
    assert float((_lossy(x, 100.0) - x).pow(2).mean().sqrt()) <= 0.5 * lsb  # measured 0.36 LSB
    assert float((_lossy(x, 100.0, bits=12) - x).abs().max()) <= 2 * 2048.0 / 4095  # measured 1.5 LSB


def test_lossy_error_grows_as_quality_drops_and_blocks_appear():
    x = _smooth_volume()
    ladder = PERTURBATIONS.get("lossy_compression").ladder
    errors = [float((_lossy(x, q) - x).pow(2).mean().sqrt()) for q in (100.0, *ladder)]
    assert errors == sorted(errors) and errors[-1] > 3 * errors[0]
    blockiness = [_blockiness(_lossy(x, q)) / _blockiness(x) for q in (100.0, *ladder)]
    assert blockiness[0] < 1.01 and blockiness == sorted(blockiness) and blockiness[-1] > 1.8


@pytest.mark.parametrize("quality", [95, 75, 50, 25, 10])
def test_lossy_matches_libjpeg_through_pillow(quality):
    """Same quantisation tables as libjpeg; decoded slices within 0.6 grey levels of Pillow's on average."""
    image_module = pytest.importorskip("PIL.Image")
    import io

    rng = np.random.default_rng(quality)
    yy, xx = np.mgrid[0:30, 0:27]
    pixels = 128 + 80 * np.sin(yy / 4.0) * np.cos(xx / 5.0) + rng.normal(0, 10, (30, 27))
    pixels = pixels.clip(0, 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    image_module.fromarray(pixels, "L").save(buffer, "JPEG", quality=quality)
    decoded = image_module.open(io.BytesIO(buffer.getvalue()))
    p = LossyCompressionParams(quality=float(quality), bits=8, window_low=0.0, window_high=255.0)
    table = quantisation_tables([p], torch.zeros(1, dtype=torch.float64))[0]
    assert table.flatten().tolist() == list(decoded.quantization[0])
    x = torch.from_numpy(pixels.astype(np.float64)).view(1, 1, 1, 30, 27)
    ours = apply_lossy_compression(x, SPACING, [p])[0, 0, 0].numpy()
    assert np.abs(ours - np.asarray(decoded, dtype=np.float64)).mean() < 0.6  # measured 0.01 to 0.49


# --- wrong_spacing ------------------------------------------------------------------------------------


def test_wrong_spacing_changes_only_the_spacing():
    entry = PERTURBATIONS.get("wrong_spacing")
    p = sample_wrong_spacing(WrongSpacingSpec(axes="DW"), 2.0, np.random.default_rng(0))
    assert spacing_after((2.5, 0.7, 0.7), p) == (5.0, 0.7, 1.4)
    q = sample_wrong_spacing(WrongSpacingSpec(direction="smaller"), 2.0, np.random.default_rng(0))
    assert spacing_after((2.5, 0.7, 0.7), q) == (1.25, 0.7, 0.7)
    nominal = sample_wrong_spacing(WrongSpacingSpec(), entry.severity.nominal, np.random.default_rng(0))
    assert spacing_after((2.5, 0.7, 0.7), nominal) == (2.5, 0.7, 0.7)
    x = _noise((2, 1, 4, 4, 4))
    assert torch.equal(entry.apply(x, SPACING, [p, q]), x)
    assert type(p)(**json.loads(json.dumps(params_to_dict(p)))) == p
    assert len(entry.ladder) == 5 and all(entry.severity.check(v) is None for v in entry.ladder)


# --- no host copies in apply paths --------------------------------------------------------------------

HOST_COPIES = {"cpu", "numpy", "item", "tolist"}


@pytest.mark.parametrize("module", ["intensity", "resolution", "pipeline"])
def test_kernels_make_no_host_copies(module):
    path = Path(__file__).resolve().parents[2] / "perturbations" / f"{module}.py"
    tree = ast.parse(path.read_text())
    calls = [
        (node.lineno, node.func.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in HOST_COPIES
    ]
    assert calls == []


@pytest.mark.parametrize("name", GENERIC)
def test_kernels_run_on_the_meta_device(name):
    """A kernel reading tensor values back to the host (item, nonzero, bool(t)) would fail on 'meta'."""
    entry = PERTURBATIONS.get(name)
    params = [_sample(name, _harsh(name), seed=s) for s in (0, 1)]
    x = torch.empty(2, 1, 12, 16, 20, device="meta")
    assert entry.apply(x, SPACING, params).device.type == "meta"
    if entry.apply_mask is not None:
        mask = torch.empty(2, 1, 12, 16, 20, device="meta", dtype=torch.bool)
        assert entry.apply_mask(mask, SPACING, params).dtype == torch.bool


def test_docs_table_lists_every_ladder():
    text = (Path(__file__).resolve().parents[2] / "docs" / "perturbations-generic.md").read_text()
    table = text.split("## Conventions")[0]  # the summary table at the top
    rows = {line.split("|")[1].strip(" `"): line for line in table.splitlines() if line.startswith("| `")}
    entries = {name: PERTURBATIONS.get(name) for name in GENERIC}
    entries["wrong_spacing"] = PERTURBATIONS.get("wrong_spacing")
    for name, entry in entries.items():
        assert ", ".join(f"{v:g}" for v in entry.ladder) in rows[name], name
        assert f"| {entry.severity.nominal:g} | {entry.severity.harsher} |" in rows[name], name
