"""mri_contrast_shift: remapped brain phantoms equal phantoms synthesised with the shifted protocol."""

import ast
import json
import re
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import perturbations.mri_contrast as mc
from perturbations import PERTURBATIONS, params_from_dict, params_to_dict
from phantoms import PHANTOMS
from phantoms.brain_mri import LABEL, ORGANS, TISSUE
from phantoms.mri_signal import Acquisition, Tissue, signal, tissue_table
from phantoms.population import PopulationSpec

ROOT = Path(__file__).resolve().parents[2]
NAME = "mri_contrast_shift"
ENTRY = PERTURBATIONS.get(NAME)
# An axial slab through the deep nuclei, ventricles and a tumour at the scenario's 2 mm: case 2 has a
# tumour with oedema, case 3 white-matter hyperintensities.
SLAB = {"shape": (24, 120, 96), "spacing_mm": (2.0, 2.0, 2.0)}
CASES = (2, 3)
# (sequence, family, field strength, parameter, relative change %, bound on the all-voxel relative RMS
# error, measured value in the comment). T1w TR +300 % swaps gray and white matter (non-monotone map).
BRAIN = (
    "csf",
    "gray_matter",
    "white_matter",
    "deep_gray_matter",
    "ventricle",
    "wmh",
    "tumour_core",
    "oedema",
)
SHIFTS = [
    ("T1w", "SE", "3T", "te_ms", 100.0, 0.04),  # 0.028
    ("T1w", "SE", "1.5T", "tr_ms", 300.0, 0.16),  # 0.13
    ("T2w", "SE", "3T", "te_ms", -50.0, 0.12),  # 0.090
    ("FLAIR", "IR", "1.5T", "ti_ms", -20.0, 0.30),  # 0.24
    ("T1w", "GRE", "3T", "flip_deg", -50.0, 0.09),  # 0.071
]


def _params(sequence, family, field, parameter, severity):
    spec = ENTRY.spec(sequence=sequence, family=family, field_strength=field, parameter=parameter)
    return ENTRY.sample(spec, severity, np.random.default_rng(0))


@lru_cache(maxsize=8)
def _phantom(sequence, family, field, **override):
    """The slab cases at one field strength, synthesised with the given protocol (CPU)."""
    gen = PHANTOMS.get("brain_mri")
    spec = gen.spec(**SLAB, sequence=sequence, family=family, **override)
    pop = PopulationSpec(prevalence=1.0, attributes={"field_strength": {field: 1.0}})
    return gen.generate(spec, pop, 7, list(CASES), torch.device("cpu"))


def _pure(batch):
    """Voxels of one tissue: 3x3x3 neighbourhood of one label, value equal to that tissue's signal.

    The eroded label map alone also holds a few % of mixed voxels (a later structure's partial-volume
    ramp reaching past a voxel's neighbours), hence the value check (to float32 rounding).
    """
    organs, image = batch.organs[:, 0].numpy(), batch.image[:, 0].numpy().astype(np.float64)
    nominal = np.zeros(image.shape)
    for b, record in enumerate(batch.acquisition):
        table, acq = tissue_table(f"{record['field_strength_t']:g}T"), Acquisition(**record)
        for organ in ORGANS[1:]:
            nominal[b][organs[b] == LABEL[organ]] = np.float32(signal(table[TISSUE.get(organ, organ)], acq))
    eroded = np.stack([ndimage.grey_erosion(o, size=3) == ndimage.grey_dilation(o, size=3) for o in organs])
    eroded &= organs > 0
    return eroded & (np.abs(image - nominal) <= 1e-6 * nominal), eroded


@pytest.mark.parametrize(("sequence", "family", "field", "parameter", "severity", "bound"), SHIFTS)
def test_remapped_phantom_equals_the_phantom_of_the_shifted_protocol(
    sequence, family, field, parameter, severity, bound
):
    p = _params(sequence, family, field, parameter, severity)
    nominal = _phantom(sequence, family, field)
    direct = _phantom(sequence, family, field, **{parameter: p.shifted_value})
    assert direct.acquisition[0][parameter] == pytest.approx(
        nominal.acquisition[0][parameter] * (1 + severity / 100)
    )
    remapped = ENTRY.apply(nominal.image, nominal.spacing_mm, [p] * len(CASES))
    y, ref = remapped.double().numpy()[:, 0], direct.image.double().numpy()[:, 0]
    pure, eroded = _pure(nominal)
    assert pure.sum() >= 0.99 * eroded.sum() and pure.sum() > 60000
    present = {ORGANS[k] for k in np.unique(nominal.organs[:, 0].numpy()[pure])}
    assert {"white_matter", "gray_matter", "deep_gray_matter", "csf", "scalp"} <= present, present
    relative = np.abs(y[pure] - ref[pure]) / np.abs(ref[pure])
    assert relative.max() <= 1e-4, relative.max()
    # All voxels: partial-volume mixtures of tissues that are not intensity-adjacent are mapped approximately.
    x = nominal.image.double().numpy()[:, 0]
    brain = np.isin(nominal.organs[:, 0].numpy(), [LABEL[k] for k in BRAIN])

    def rel_rms(a, where=Ellipsis):
        return np.sqrt(((a - ref)[where] ** 2).sum() / (ref[where] ** 2).sum())

    error, change = rel_rms(y), rel_rms(x)
    print(
        f"{NAME} {field} {sequence} {parameter} {severity:+g} %: {pure.sum()} pure voxels "
        f"({pure.sum() / eroded.sum():.4f} of eroded), {sorted(present)}, max rel {relative.max():.1e}; "
        f"relative RMS error all voxels {error:.4f} (change {change:.4f}), "
        f"brain {rel_rms(y, brain):.4f} (change {rel_rms(x, brain):.4f})"
    )
    assert error <= bound and error < change and rel_rms(y, brain) < 0.5 * rel_rms(x, brain)


def test_nominal_severity_is_the_identity_bit_for_bit():
    x = torch.randn(2, 2, 6, 7, 8, generator=torch.Generator().manual_seed(1))
    for spec in (
        {},
        {"sequence": "FLAIR", "family": "IR", "parameter": "ti_ms", "field_strength": "1.5T"},
        {"sequence": "T1w", "family": "GRE", "parameter": "flip_deg"},
        {"sequence": "T2w", "parameter": "tr_ms"},
    ):
        p = ENTRY.sample(ENTRY.spec(**spec), 0.0, np.random.default_rng(0))
        assert p.shifted_value == getattr(p, p.parameter)
        for dtype in (torch.float32, torch.float64):
            assert torch.equal(ENTRY.apply(x.to(dtype), (1.0, 1.0, 1.0), [p, p]), x.to(dtype))


def test_tissue_signals_and_two_tissue_mixtures_map_exactly():
    p = _params("T1w", "GRE", "3T", "te_ms", 60.0)  # cortical bone, the darkest tissue, keeps some signal
    nominal, shifted = mc.acquisitions(p)
    table = tissue_table("3T")
    s = {k: signal(t, nominal) for k, t in table.items()}
    s_new = {k: signal(t, shifted) for k, t in table.items()}
    order = sorted(s, key=s.get)
    names = list(s)
    x = torch.tensor([s[k] for k in names], dtype=torch.float64).view(1, 1, 1, 1, -1)
    y = ENTRY.apply(x, (1.0, 1.0, 1.0), [p])
    np.testing.assert_allclose(y.flatten().numpy(), [s_new[k] for k in names], rtol=1e-12, atol=1e-15)
    # mixtures of intensity neighbours are exact (air is the darkest tissue's neighbour); beyond the
    # brightest tissue the map is its ray through the origin; negative values: f(-v) = -f(v)
    first = order[0]
    lo, hi, top = order[4], order[5], order[-1]
    mix = [0.3 * s[lo] + 0.7 * s[hi], 0.4 * s[first], 1.5 * s[top], -0.1, 0.4 * s[top]]
    expected = [
        0.3 * s_new[lo] + 0.7 * s_new[hi],
        0.4 * s_new[first],
        1.5 * s_new[top],
        -np.interp(0.1, *mc.contrast_knots(p)),
    ]
    out = ENTRY.apply(torch.tensor(mix, dtype=torch.float64).view(1, 1, 1, 1, -1), (1.0,) * 3, [p]).flatten()
    np.testing.assert_allclose(out[:4].numpy(), expected, rtol=1e-12)
    # a mixture of non-neighbours is not: 40 % of the brightest tissue with air
    assert abs(float(out[4]) / (0.4 * s_new[top]) - 1) > 0.01


def test_signed_input_maps_oddly_and_stays_bounded():
    """T2w TE -50 %: cortical bone's signal grows e^100-fold, yet negative values stay bounded."""
    p = _params("T2w", "SE", "3T", "te_ms", -50.0)
    v = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
    x = torch.cat([v, -v]).view(1, 1, 1, 1, -1)
    y = ENTRY.apply(x, (1.0, 1.0, 1.0), [p]).flatten()
    assert torch.equal(y[:1001], -y[1001:]) and y.abs().max() < 10.0
    xs, ys = mc.contrast_knots(p)
    inside = v.numpy() <= xs[-1]
    np.testing.assert_allclose(y[:1001].numpy()[inside], np.interp(v.numpy()[inside], xs, ys), rtol=1e-9)


def test_contrast_follows_the_spin_echo_equation_on_t1w():
    """WM/GM contrast of a T1w spin echo falls as TE grows (GM's longer T2) and as TR grows (T1 weighting
    fades, GM's higher PD wins): at TR x 4 gray matter is brighter than white matter."""
    batch = _phantom("T1w", "SE", "3T")
    pure, _ = _pure(batch)
    organs = batch.organs[:, 0].numpy()
    table = tissue_table("3T")

    def ratio(image):
        values = image.double().numpy()[:, 0]
        wm, gm = (values[pure & (organs == LABEL[k])].mean() for k in ("white_matter", "gray_matter"))
        return wm / gm

    for parameter in ("te_ms", "tr_ms"):
        ratios = [ratio(batch.image)]
        for severity in (*ENTRY.ladder, 300.0):
            p = _params("T1w", "SE", "3T", parameter, severity)
            _, acq = mc.acquisitions(p)
            ratios.append(ratio(ENTRY.apply(batch.image, batch.spacing_mm, [p, p])))
            theory = signal(table["white_matter"], acq) / signal(table["gray_matter"], acq)
            assert ratios[-1] == pytest.approx(theory, rel=1e-5), (parameter, severity)
        assert ratios[0] > 1.1 and all(a > b for a, b in zip(ratios[:-1], ratios[1:], strict=True)), (
            parameter,
            ratios,
        )
    assert ratios[-1] < 1.0  # TR 2000 ms: contrast inverted


def test_flair_csf_brightens_when_ti_leaves_the_null_point():
    batch = _phantom("FLAIR", "IR", "1.5T")
    pure, _ = _pure(batch)
    ventricles = torch.from_numpy(pure & (batch.organs[:, 0].numpy() == LABEL["ventricle"]))
    for severity in (-20.0, 20.0):
        p = _params("FLAIR", "IR", "1.5T", "ti_ms", severity)
        xs, ys = mc.contrast_knots(p)
        csf = signal(tissue_table("1.5T")["csf"], mc.acquisitions(p)[0])
        assert ys[xs.index(csf)] > 3 * csf
        y = ENTRY.apply(batch.image, batch.spacing_mm, [p, p])[:, 0]
        assert ventricles.sum() > 100 and y[ventricles].mean() > 3 * batch.image[:, 0][ventricles].mean()


def test_tied_tissues_share_one_knot(monkeypatch):
    twin = {
        "a": Tissue(800.0, 70.0, 50.0, 0.7),
        "b": Tissue(800.0, 90.0, 60.0, 0.7),
    }  # same T1, PD: tie at TE 0
    monkeypatch.setattr(mc, "tissue_table", lambda field: {**twin, "zero": Tissue(300.0, 1e-3, 1e-3, 0.0)})
    p = _params("T1w", "SE", "3T", "te_ms", 50.0)
    p = mc.MRIContrastShiftParams(**{**params_to_dict(p), "te_ms": 1e-9, "shifted_value": 10.0})
    xs, ys = mc.contrast_knots(p)
    nominal, shifted = mc.acquisitions(p)
    assert len(xs) == 2 and xs[0] == ys[0] == 0.0  # air, then one knot for a and b; "zero" is air
    assert ys[1] == pytest.approx((signal(twin["a"], shifted) + signal(twin["b"], shifted)) / 2)
    y = ENTRY.apply(torch.tensor([0.0, xs[1], 2 * xs[1]]).view(1, 1, 1, 1, 3), (1.0,) * 3, [p])
    assert torch.isfinite(y).all()


def test_replay_from_json_is_bit_identical_and_mixed_batch_equals_cases_alone():
    x = _phantom("T1w", "SE", "3T").image[:1, :, 8:16].expand(3, 2, -1, -1, -1).clone()
    params = [
        _params("T1w", "SE", "3T", "te_ms", 50.0),
        _params("FLAIR", "IR", "1.5T", "ti_ms", -20.0),
        _params("T1w", "GRE", "3T", "flip_deg", 0.0),
    ]
    replayed = [params_from_dict(NAME, json.loads(json.dumps(params_to_dict(p)))) for p in params]
    assert replayed == params
    y = ENTRY.apply(x, (2.0, 2.0, 2.0), params)
    assert torch.equal(y, ENTRY.apply(x.clone(), (2.0, 2.0, 2.0), replayed))
    for b, p in enumerate(params):
        assert torch.equal(y[b : b + 1], ENTRY.apply(x[b : b + 1], (2.0, 2.0, 2.0), [p]))
    assert not torch.equal(y[0], x[0]) and not torch.equal(y[1], x[1]) and torch.equal(y[2], x[2])


@pytest.mark.parametrize(
    ("spec", "severity", "field"),
    [
        ({"sequence": "T1w", "family": "GRE"}, 500.0, "te_ms"),  # TE 24 ms >= TR 20 ms
        ({"sequence": "T1w", "family": "GRE", "parameter": "flip_deg"}, 700.0, "flip_deg"),  # 200 deg
        ({"sequence": "FLAIR", "parameter": "ti_ms"}, 300.0, "ti_ms"),  # TI 9600 ms >= TR
    ],
)
def test_invalid_shifted_protocol_is_rejected(spec, severity, field):
    with pytest.raises(ValueError, match=field):
        ENTRY.sample(ENTRY.spec(**spec), severity, np.random.default_rng(0))


@pytest.mark.parametrize(
    "spec", [{"parameter": "ti_ms"}, {"parameter": "flip_deg"}, {"field_strength": "7T"}, {"parameter": "b"}]
)
def test_bad_spec_is_rejected(spec):
    with pytest.raises(ValueError, match="parameter|field_strength"):
        ENTRY.spec(**spec)


def test_apply_runs_on_the_meta_device_and_makes_no_host_copies():
    x = torch.empty(2, 2, 12, 16, 10, device="meta")
    params = [_params("T1w", "SE", "3T", "te_ms", 50.0), _params("FLAIR", "IR", "3T", "ti_ms", 10.0)]
    y = ENTRY.apply(x, (1.0, 1.0, 1.0), params)
    assert y.device.type == "meta" and y.shape == x.shape and y.dtype == x.dtype
    tree = ast.parse((ROOT / "perturbations" / "mri_contrast.py").read_text())
    calls = [
        n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert not {"cpu", "numpy", "item", "tolist"} & set(calls)


def test_docs_table_lists_the_ladder():
    text = (ROOT / "docs" / "perturbations-mri.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith(f"| `{NAME}` |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert [float(re.sub(r"[^0-9.]", "", c)) for c in cells[-5:]] == list(ENTRY.ladder)
    assert ENTRY.severity.name in text


SCENARIO = """
name: contrast
seed: 1
phantom: {{generator: {generator}, n_cases: 4, params: {{sequence: T2w}}}}
population: {{attributes: {{field_strength: {fields}}}}}
perturbations:
  - {{name: mri_contrast_shift, severities: [0.0, 25.0],
     params: {{sequence: {sequence}, field_strength: 3T}}}}
models:
  - {{name: v1, role: reference, python: "stress.models.demo:reference"}}
"""


@pytest.mark.parametrize(
    ("generator", "fields", "sequence", "message"),
    [
        ("brain_mri", "{3T: 1.0}", "T2w", None),
        ("brain_mri", "{3T: 1.0}", "T1w", "sequence 'T1w' here, 'T2w' there"),
        ("brain_mri", "{1.5T: 0.5, 3T: 0.5}", "T2w", "population draws"),
        ("chest_ct", "{3T: 1.0}", "T2w", "needs an MR phantom"),
    ],
)
def test_a_scenario_whose_phantom_does_not_match_the_spec_is_refused(generator, fields, sequence, message):
    from stress.errors import ScenarioError
    from stress.scenario import parse_scenario

    text = SCENARIO.format(generator=generator, fields=fields, sequence=sequence)
    if generator == "chest_ct":
        text = text.replace("params: {sequence: T2w}", "params: {}").replace(
            "population: {attributes: {field_strength: {3T: 1.0}}}", ""
        )
    if message is None:
        parse_scenario(text, "c.yaml")
        return
    with pytest.raises(ScenarioError, match=message) as err:
        parse_scenario(text, "c.yaml")
    assert "perturbations[0].params: mri_contrast_shift:" in str(err.value)
