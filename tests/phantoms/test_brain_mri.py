import hashlib
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy import ndimage, stats

from phantoms import PHANTOMS
from phantoms.brain_lesions import tumour_shape, wmh_capsule
from phantoms.brain_mri import (
    LABEL,
    ORGANS,
    STREAM_CASE,
    TISSUE,
    BrainMRISpec,
    _draw_case,
    brain_mri_attributes,
    draw_attributes,
    generate_brain_mri,
)
from phantoms.mri_signal import TISSUES, Tissue, tissue_table
from phantoms.population import PopulationSpec, case_rng
from phantoms.render import Canvas

CPU = torch.device("cpu")
# Whole head on a coarse grid: 40 x 60 x 60 voxels of 4 mm (160 x 240 x 240 mm).
HEAD = {"shape": (40, 60, 60), "spacing_mm": (4.0, 4.0, 4.0)}
# An axial slab through the deep nuclei at 1 mm: cortex, white matter, nuclei, ventricles, skull, scalp.
SLAB = {"shape": (8, 184, 150), "spacing_mm": (1.0, 1.0, 1.0)}
FIELDS = ("1.5T", "3T")


def _gen(spec, pop, indices, seed=7):
    return generate_brain_mri(spec, pop, seed, list(indices), CPU)


def _reference_signal(t: Tissue, family: str, tr: float, te: float, ti: float | None, flip: float) -> float:
    """The three signal equations, written out independently of phantoms.mri_signal."""
    e1 = np.exp(-tr / t.t1)
    if family == "SE":
        return t.pd * (1 - e1) * np.exp(-te / t.t2)
    if family == "GRE":
        a = np.deg2rad(flip)
        return t.pd * np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1) * np.exp(-te / t.t2s)
    return t.pd * abs(1 - 2 * np.exp(-ti / t.t1) + e1) * np.exp(-te / t.t2)


def _roi_means(batch, b):
    """Mean signal of each organ in its label region eroded by one voxel (3x3x3), where >= 20 voxels."""
    img, organs = batch.image[b, 0].numpy().astype(np.float64), batch.organs[b, 0].numpy()
    out = {}
    for name in ORGANS[1:]:
        roi = ndimage.binary_erosion(organs == LABEL[name], structure=np.ones((3, 3, 3)))
        if roi.sum() >= 20:
            out[name] = float(img[roi].mean())
    return out


@pytest.mark.parametrize(
    ("sequence", "family"), [("T1w", "SE"), ("T1w", "GRE"), ("T2w", "SE"), ("PDw", "SE"), ("FLAIR", "IR")]
)
@pytest.mark.parametrize("field", FIELDS)
def test_tissue_signals_in_eroded_rois_follow_the_signal_equation(sequence, family, field):
    spec = BrainMRISpec(**SLAB, sequence=sequence, family=family)
    pop = PopulationSpec(prevalence=0.0, attributes={"field_strength": {field: 1.0}})
    batch = _gen(spec, pop, [2])
    acq = batch.acquisition[0]
    assert (acq["field_strength_t"], acq["sequence"], acq["family"]) == (float(field[:-1]), sequence, family)
    table = tissue_table(field)
    means = _roi_means(batch, 0)
    assert {"white_matter", "gray_matter", "deep_gray_matter", "ventricle", "scalp"} <= set(means), means
    for name, mean in means.items():
        args = (acq["family"], acq["tr_ms"], acq["te_ms"], acq["ti_ms"], acq["flip_deg"])
        expected = _reference_signal(table[TISSUE.get(name, name)], *args)
        assert mean == pytest.approx(expected, rel=0.01, abs=1e-6), (name, mean, expected)
    wm, gm, csf = means["white_matter"], means["gray_matter"], means["ventricle"]
    if sequence == "T1w":
        assert wm > 1.05 * gm and gm > 1.2 * csf, means
    elif sequence == "T2w":
        assert csf > 1.2 * gm and gm > 1.2 * wm, means
    elif sequence == "FLAIR":
        assert csf < 0.3 * wm and csf < 0.3 * gm, means


@pytest.mark.parametrize("field", FIELDS)
def test_flair_wmh_are_brighter_than_white_matter(field):
    spec = BrainMRISpec(**HEAD, sequence="FLAIR", wmh_diameter_mm={"small": (3, 6), "large": (10, 14)})
    pop = PopulationSpec(
        prevalence=1.0,
        attributes={
            "field_strength": {field: 1.0},
            "lesion_type": {"wmh": 1.0},
            "lesion_size": {"large": 1.0},
        },
    )
    batch = _gen(spec, pop, [0, 1])
    wm = _reference_signal(tissue_table(field)["white_matter"], "IR", 9000.0, 120.0, 2400.0, 90.0)
    wmh = _reference_signal(tissue_table(field)["wmh"], "IR", 9000.0, 120.0, 2400.0, 90.0)
    assert wmh > 1.5 * wm
    for b in range(2):
        for lesion in batch.lesions[b]:
            # partial volume with the surrounding white matter pulls the mean below the pure WMH value
            assert wm * 1.2 < lesion["mean_signal"] <= wmh + 1e-6, (lesion, wm, wmh)


def test_case_is_a_pure_function_of_seed_and_index():
    spec = BrainMRISpec(**HEAD, sequence="T2w")
    pop = PopulationSpec(prevalence=0.7)
    a = _gen(spec, pop, [3, 4, 5, 6])
    assert {lesion["type"] for case in a.lesions for lesion in case} == {"wmh", "tumour"}
    for pos, index in enumerate([3, 4, 5, 6]):
        b = _gen(spec, pop, [index])
        for name in ("image", "mask", "organs"):
            assert torch.equal(getattr(a, name)[pos], getattr(b, name)[0]), (index, name)
        assert a.lesions[pos] == b.lesions[0] and a.attributes[pos] == b.attributes[0]
        assert a.acquisition[pos] == b.acquisition[0]


def test_volume_hash_is_reproducible_and_differs_between_cases():
    spec = BrainMRISpec(**HEAD)
    pop = PopulationSpec(prevalence=0.5)

    def digest(index, seed=7):
        return hashlib.sha256(_gen(spec, pop, [index], seed).image.numpy().tobytes()).hexdigest()

    assert digest(11) == digest(11)
    assert digest(11) != digest(12)
    assert digest(11) != digest(11, seed=8)


def test_population_frequencies_match_the_specification():
    spec = BrainMRISpec()
    pop = PopulationSpec(
        prevalence=0.3,
        attributes={"field_strength": {"1.5T": 0.25, "3T": 0.75}, "lesion_type": {"wmh": 0.6, "tumour": 0.4}},
    )
    n = 2000
    draws = [draw_attributes(spec, pop, case_rng(5, STREAM_CASE, i)) for i in range(n)]
    labels = np.array([label for label, _ in draws])
    assert stats.binomtest(int(labels.sum()), n, 0.3).pvalue > 0.01
    for att in brain_mri_attributes(spec):
        values = [a[att.name] for label, a in draws if label or not att.lesion_level]
        if att.lesion_level:
            assert all(a[att.name] == "none" for label, a in draws if not label)
        dist = pop.attributes.get(att.name, {level: 1 / len(att.levels) for level in att.levels})
        observed = [values.count(level) for level in att.levels]
        expected = [dist[level] * len(values) for level in att.levels]
        assert stats.chisquare(observed, expected).pvalue > 0.01, (att.name, observed, expected)


@pytest.mark.parametrize("diameter", [4.0, 8.0, 12.0])
def test_wmh_mask_volume_within_3_percent_of_nominal(diameter):
    rng = np.random.default_rng([5, int(diameter)])
    axis = rng.normal(size=3)
    caps = wmh_capsule(diameter, rng.uniform(0, 1), rng.uniform(-0.2, 0.2, 3), axis / np.linalg.norm(axis))
    step = diameter / 25
    canvas = Canvas(1, (64, 64, 64), (step,) * 3, CPU, 0.0)
    volume = int((canvas.union_sd([caps]).sd <= 0).sum()) * step**3
    assert volume == pytest.approx(math.pi * diameter**3 / 6, rel=0.03)


@pytest.mark.parametrize("diameter", [15.0, 30.0])
def test_tumour_mask_volumes_within_3_percent_of_nominal(diameter):
    outer, core, info = tumour_shape(np.random.default_rng([6, int(diameter)]), diameter)
    step = diameter / 25
    canvas = Canvas(1, (96, 96, 96), (step,) * 3, CPU, 0.0)
    volume = int((canvas.union_sd([outer]).sd <= 0).sum()) * step**3
    core_volume = int((canvas.union_sd([core]).sd <= 0).sum()) * step**3
    assert volume == pytest.approx(math.pi * diameter**3 / 6, rel=0.03)
    assert core_volume == pytest.approx(info["core_nominal_volume_mm3"], rel=0.03)
    assert info["core_diameter_mm"] < diameter


def test_lesion_records_match_mask_and_organ_map():
    spec = BrainMRISpec(**HEAD, sequence="FLAIR")
    batch = _gen(spec, PopulationSpec(prevalence=1.0), range(6))
    voxel = float(np.prod(spec.spacing_mm))
    assert batch.label == (1,) * 6 and batch.modality == "MR" and batch.generator == "brain_mri"
    assert batch.organ_names == ORGANS
    for b in range(6):
        mask, organs = batch.mask[b, 0].numpy(), batch.organs[b, 0].numpy()
        lesions = batch.lesions[b]
        assert sum(lesion["volume_mm3"] for lesion in lesions) == pytest.approx(mask.sum() * voxel)
        assert set(np.unique(organs[mask])) <= {LABEL["wmh"], LABEL["oedema"], LABEL["tumour_core"]}
        for lesion in lesions:
            assert lesion["type"] == batch.attributes[b]["lesion_type"]
            assert lesion["nominal_volume_mm3"] == pytest.approx(math.pi * lesion["diameter_mm"] ** 3 / 6)
            z, y, x = (
                round(c / 4.0 + (n - 1) / 2) for c, n in zip(lesion["centre_mm"], spec.shape, strict=True)
            )
            assert (
                organs[z, y, x] in (LABEL["wmh"], LABEL["oedema"], LABEL["tumour_core"])
                or lesion["diameter_mm"] < 8
            )
        if lesions[0]["type"] == "tumour":
            assert lesions[0]["core_volume_mm3"] == (organs == LABEL["tumour_core"]).sum() * voxel
        sizes = [lesion["diameter_mm"] for lesion in lesions]
        assert sizes == sorted(sizes, reverse=True)


def test_older_brains_have_larger_ventricles_and_more_wmh():
    spec = BrainMRISpec(**HEAD)

    def ventricle_and_count(band):
        pop = PopulationSpec(
            prevalence=1.0, attributes={"age_band": {band: 1.0}, "lesion_type": {"wmh": 1.0}}
        )
        batch = _gen(spec, pop, range(4))
        volume = (batch.organs == LABEL["ventricle"]).sum().item()
        return volume, sum(len(case) for case in batch.lesions)

    young, old = ventricle_and_count("18-39"), ventricle_and_count("65+")
    assert old[0] > 1.8 * young[0] and old[1] > young[1]


def test_field_strength_picks_the_tissue_table():
    for field in FIELDS:
        pop = PopulationSpec(prevalence=0.0, attributes={"field_strength": {field: 1.0}})
        draw = _draw_case(BrainMRISpec(), pop, 1, 0)
        wm = TISSUES[field]["white_matter"]
        expected = _reference_signal(wm, "SE", 500.0, 12.0, None, 90.0)
        assert draw.signals["white_matter"] == pytest.approx(expected, rel=1e-12)
    assert TISSUES["3T"]["white_matter"].t1 > TISSUES["1.5T"]["white_matter"].t1
    assert PHANTOMS.get("brain_mri").generate is generate_brain_mri


@pytest.mark.parametrize(
    ("params", "field", "value"),
    [
        ({"sequence": "T3w"}, "sequence", "'T3w'"),
        ({"family": "EPI"}, "family", "'EPI'"),
        ({"sequence": "FLAIR", "family": "SE"}, "family", "'SE'"),
        ({"tr_ms": 0.0}, "tr_ms", "0.0"),
        ({"te_ms": 600.0}, "te_ms", "600"),
        ({"ti_ms": 800.0}, "ti_ms", "800"),
        ({"family": "GRE", "flip_deg": 200.0}, "flip_deg", "200.0"),
        ({"flip_deg": 30.0}, "flip_deg", "30"),
        ({"shape": (4, 96, 96)}, "shape", "[4, 96, 96]"),
        ({"spacing_mm": (2.0, 0.0, 2.0)}, "spacing_mm", "[2.0, 0.0, 2.0]"),
        ({"wmh_diameter_mm": {"small": (6.0, 3.0), "large": (6.0, 12.0)}}, "wmh_diameter_mm", "[6.0, 3.0]"),
        ({"wmh_diameter_mm": {"tiny": (2.0, 3.0)}}, "tumour_diameter_mm", "['tiny']"),
    ],
)
def test_bad_spec_values_are_rejected_with_field_and_value(params, field, value):
    with pytest.raises(ValidationError) as err:
        BrainMRISpec(**params)
    message = str(err.value)
    assert field in message and value in message, message
    assert "expected" in message, message
