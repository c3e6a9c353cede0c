"""Pre-processing declared per model: each step against MONAI's transform, and the wiring into a model."""

from pathlib import Path

import pytest
import torch
from monai.transforms import NormalizeIntensity, ResizeWithPadOrCrop, ScaleIntensityRange

from stress.models import load_model
from stress.models.preprocess import apply_preprocess
from stress.scenario.schema import ModelSection

SPACING = (4.0, 1.5, 1.0)
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(autouse=True)
def _test_models_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(DATA))  # tests/data/bad_models.py


def _section(*steps, **extra):
    return ModelSection.model_validate(
        {
            "name": "m",
            "role": "reference",
            "python": "bad_models:recorder",
            "preprocess": list(steps),
            **extra,
        }
    )


def _image(seed=0, shape=(2, 1, 9, 14, 11)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * 400.0 - 300.0


def test_window_with_output_range_equals_monai_scale_intensity_range():
    x = _image()
    (y, _) = apply_preprocess(
        x, SPACING, _section({"op": "window", "low": -1000, "high": 400, "out": [0, 1]}).preprocess
    )
    ref = ScaleIntensityRange(a_min=-1000, a_max=400, b_min=0.0, b_max=1.0, clip=True)(x[0])
    torch.testing.assert_close(y[0], torch.as_tensor(ref), atol=1e-6, rtol=0)
    (clipped, _) = apply_preprocess(
        x, SPACING, _section({"op": "window", "low": -100, "high": 100}).preprocess
    )
    assert clipped.min() >= -100 and clipped.max() <= 100


def test_zscore_per_case_equals_monai_normalize_intensity():
    x = _image()
    x[1] = x[1] * 3 + 50  # the two cases differ in mean and spread: normalised separately
    (y, _) = apply_preprocess(x, SPACING, _section({"op": "zscore", "eps": 1e-8}).preprocess)
    for b in range(2):
        ref = torch.as_tensor(NormalizeIntensity()(x[b]))
        torch.testing.assert_close(y[b], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("shape", [(8, 16, 10), (9, 14, 11), (5, 20, 3)])
def test_crop_pad_is_centred_like_monai(shape):
    x = _image()
    (y, spacing) = apply_preprocess(
        x, SPACING, _section({"op": "crop_pad", "shape": list(shape), "value": 0.0}).preprocess
    )
    ref = torch.as_tensor(ResizeWithPadOrCrop(spatial_size=shape, mode="constant")(x[0]))
    assert tuple(y.shape[2:]) == shape and spacing == SPACING
    torch.testing.assert_close(y[0], ref)


def test_resample_keeps_the_field_of_view_and_tells_the_new_spacing():
    d, h, w = 9, 14, 11
    z = torch.arange(d, dtype=torch.float32).view(1, 1, d, 1, 1).expand(1, 1, d, h, w) * SPACING[0]
    (y, spacing) = apply_preprocess(
        z, SPACING, _section({"op": "resample", "spacing_mm": [2.0, 1.5, 2.0]}).preprocess
    )
    assert tuple(y.shape[2:]) == (18, 14, 6)  # 36 mm / 2, 21 mm / 1.5, 11 mm / 2 (rounded)
    assert spacing == pytest.approx((2.0, 1.5, 11 / 6))
    # a linear ramp in z (mm) stays that ramp at the new voxel centres, away from the clamped border
    centres = (torch.arange(18, dtype=torch.float32) + 0.5) * 2.0 - 0.5 * SPACING[0]
    torch.testing.assert_close(y[0, 0, 2:-2, 5, 3], centres[2:-2], atol=1e-4, rtol=0)


def test_a_models_preprocessing_is_applied_before_predict_and_recorded():
    section = _section(
        {"op": "resample", "spacing_mm": [2.0, 1.5, 1.0]},
        {"op": "window", "low": -1000, "high": 400, "out": [0, 1]},
    )
    model = load_model(section, torch.device("cpu"), 0)
    x = _image()
    scores, errors = model.predict(x.clone(), SPACING, ["a", "b"])
    seen, told = model.predictor.model.seen
    assert errors == [None, None] and scores.tolist() == [0.5, 0.5]
    assert tuple(seen.shape[2:]) == (18, 14, 11) and told == (2.0, 1.5, 1.0)
    assert seen.min() >= 0 and seen.max() <= 1
    assert model.fingerprint["preprocess"][1] == {
        "op": "window",
        "low": -1000.0,
        "high": 400.0,
        "out": [0.0, 1.0],
    }


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"op": "window", "low": 5, "high": 1}, "low must be below high"),
        ({"op": "resample", "spacing_mm": [0, 1, 1]}, "spacing_mm must lie in"),
        ({"op": "blur"}, "op"),
        ({"op": "zscore", "unknown": 1}, "unknown"),
    ],
)
def test_bad_steps_are_scenario_errors_with_their_location(tmp_path, step, message):
    from stress.errors import ScenarioError
    from stress.scenario import parse_scenario

    text = (
        "name: p\nseed: 1\nphantom: {generator: chest_ct, n_cases: 4}\n"
        "perturbations: [{name: ct_dose, severities: [1.0]}]\n"
        "models:\n  - name: v1\n    role: reference\n    python: bad_models:recorder\n"
        f"    preprocess: [{step}]\n"
    ).replace("'", "")
    with pytest.raises(ScenarioError, match=message) as err:
        parse_scenario(text, "p.yaml")
    assert "p.yaml:9" in str(err.value) and "preprocess" in str(err.value)


def test_amp_runs_the_model_in_reduced_precision_and_is_recorded():
    full = load_model(_section(python="stress.models.demo:reference"), torch.device("cpu"), 0)
    section = ModelSection.model_validate(
        {"name": "m", "role": "reference", "python": "stress.models.demo:reference", "amp": True}
    )
    amp = load_model(section, torch.device("cpu"), 0)
    x = _image(shape=(2, 1, 16, 32, 32))
    p_full, _ = full.predict(x.clone(), SPACING, ["a", "b"])
    p_amp, errors = amp.predict(x.clone(), SPACING, ["a", "b"])
    assert errors == [None, None] and amp.fingerprint["amp"] is True
    diff = (p_full - p_amp).abs().max().item()
    assert 0 < diff < 0.05  # bfloat16 on the CPU: close, but not bit-identical
