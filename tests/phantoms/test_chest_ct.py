import hashlib
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from phantoms import PHANTOMS
from phantoms.chest_ct import (
    HU,
    LABEL,
    ORGANS,
    STREAM_CASE,
    ChestCTSpec,
    _draw_case,
    draw_attributes,
    generate_chest_ct,
    tissue_hu,
)
from phantoms.nodules import LESION_TYPES, MARGINS, make_nodule, translate
from phantoms.population import PopulationSpec, case_rng
from phantoms.render import Canvas, capsule_sd_points

# Whole-chest field of view on a small grid: 24 x 48 x 48 voxels of 6 x 7.5 x 7.5 mm.
SPEC = ChestCTSpec(shape=(24, 48, 48), spacing_mm=(6.0, 7.5, 7.5), vessel_generations=3)
POP = PopulationSpec(prevalence=0.5)
CPU = torch.device("cpu")


def _gen(indices, spec=SPEC, pop=POP, seed=7):
    return generate_chest_ct(spec, pop, seed, list(indices), CPU)


def test_case_is_a_pure_function_of_seed_and_index():
    a = _gen([3, 4, 5], pop=PopulationSpec(prevalence=1.0))
    b = _gen([5], pop=PopulationSpec(prevalence=1.0))
    assert torch.equal(a.image[2], b.image[0]) and torch.equal(a.mask[2], b.mask[0])
    assert torch.equal(a.organs[2], b.organs[0])
    assert a.attributes[2] == b.attributes[0] and a.lesions[2] == b.lesions[0]
    assert not torch.equal(_gen([5], seed=8).image[0], b.image[0])


def test_noiseless_tissue_values_in_eroded_organ_rois():
    # Each organ's ROI is its label-map region eroded by one voxel (3x3x3), away from partial volume.
    spec = ChestCTSpec(shape=(40, 100, 100), spacing_mm=(4.0, 3.6, 3.6), vessel_generations=5)
    pop = PopulationSpec(
        prevalence=1.0, attributes={"lesion_size": {"large": 1.0}, "margin": {"smooth": 1.0}}
    )
    batch = _gen(range(4), spec=spec, pop=pop)
    checked = set()
    for b in range(4):
        img, organs = batch.image[b, 0].numpy(), batch.organs[b, 0].numpy()
        hu = tissue_hu(spec, batch.attributes[b])
        hu["nodule"] = batch.lesions[b][0]["hu"]
        for name in ORGANS[1:]:
            roi = ndimage.binary_erosion(organs == LABEL[name], structure=np.ones((3, 3, 3)))
            if roi.sum() < 20:
                continue
            assert abs(float(img[roi].mean()) - hu[name]) < 5.0, (b, name, float(img[roi].mean()))
            checked.add(name)
    expected = {"subcutaneous_fat", "muscle", "mediastinal_fat", "lung", "heart", "great_vessel"}
    # thin structures (5 mm discs, cortical shells, airway walls) have no eroded interior on this grid
    assert expected | {"trabecular_bone"} <= checked, checked


@pytest.mark.parametrize("lesion_type", LESION_TYPES)
@pytest.mark.parametrize("margin", MARGINS)
def test_nodule_volume_within_5_percent_of_nominal_at_0_7_mm(lesion_type, margin):
    # The generator's own renderer on a 0.7 mm grid around the nodule, placed at a random sub-voxel offset
    # as the generator places nodules: mask volume vs the nominal pi d^3 / 6.
    hu = tissue_hu(SPEC, {"age_band": "40-64"})
    for k, diameter in enumerate((6.0, 9.0, 14.0)):
        rng = np.random.default_rng([5, k])
        caps, _, record = make_nodule(rng, lesion_type, margin, diameter, hu)
        caps = translate(caps, rng.uniform(-0.35, 0.35, 3))
        canvas = Canvas(1, (64, 64, 64), (0.7, 0.7, 0.7), CPU, -850.0)
        sd = canvas.union_sd([caps])
        volume = int((sd.sd <= 0).sum()) * 0.7**3
        assert record["nominal_volume_mm3"] == pytest.approx(math.pi * diameter**3 / 6)
        assert abs(volume / record["nominal_volume_mm3"] - 1.0) < 0.05, (diameter, volume)


def test_nodule_records_mask_types_and_surroundings():
    spec = ChestCTSpec(
        shape=(32, 64, 64), spacing_mm=(5.0, 5.0, 5.0), lesion_size_bands_mm={"large": (14.0, 20.0)}
    )
    batch = _gen(range(12), spec=spec, pop=PopulationSpec(prevalence=1.0))
    voxel = float(np.prod(spec.spacing_mm))
    seen_types = set()
    for b in range(12):
        lesion = batch.lesions[b][0]
        mask, img, organs = batch.mask[b, 0].numpy(), batch.image[b, 0].numpy(), batch.organs[b, 0].numpy()
        assert lesion["type"] == batch.attributes[b]["lesion_type"]
        assert lesion["margin"] == batch.attributes[b]["margin"]
        assert lesion["volume_mm3"] == mask.sum() * voxel
        assert lesion["mean_hu"] == pytest.approx(float(img[mask].astype(np.float64).mean()), abs=1e-3)
        assert set(np.unique(organs[mask])) <= {LABEL["nodule"], LABEL["nodule_solid_core"]}
        if lesion["type"] == "solid":
            assert lesion["mean_hu"] > -200.0
        elif lesion["type"] == "ground_glass":
            assert -800.0 < lesion["mean_hu"] < -550.0
        seen_types.add(lesion["type"])
        centroid = (np.array(ndimage.center_of_mass(mask)) - (np.array(mask.shape) - 1) / 2) * spec.spacing_mm
        assert np.all(np.abs(centroid - lesion["centre_mm"]) <= 1.5 * np.array(spec.spacing_mm))
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
        assert np.mean(np.isin(organs[ring], [LABEL["lung"], LABEL["pulmonary_vessel"]])) > 0.8
    assert seen_types == set(LESION_TYPES)


def test_nodules_keep_clear_of_vessels_beyond_the_overlap_limit():
    spec = ChestCTSpec(
        shape=(32, 64, 64), spacing_mm=(5.0, 5.0, 5.0), nodule_vessel_overlap_mm=0.5, vessel_generations=6
    )
    for i in range(30):
        draw = _draw_case(spec, PopulationSpec(prevalence=1.0), 3, i)
        centre = np.array(draw.lesion["centre_mm"])[None]
        radius = float(draw.nodule[0, 6])
        vessel_sd = capsule_sd_points(centre, draw.layout.tubes["pulmonary_vessel"])[0]
        assert vessel_sd >= radius - 0.5
        assert draw.layout.lungs["RL".index(draw.lesion["side"])].rho(centre[0]) < 0.85


def test_negative_cases_have_empty_masks_and_no_lesion():
    batch = _gen(range(6), pop=PopulationSpec(prevalence=0.0))
    assert not batch.mask.any()
    assert all(lesions == () for lesions in batch.lesions)
    assert all(batch.attributes[b][k] == "none" for b in range(6) for k in ("lesion_size", "lesion_type"))
    assert not (batch.organs == LABEL["nodule"]).any()


def test_population_matches_the_spec_chi_square():
    # n = 2000 cases, every attribute: chi-square p > 0.01 (fixed seed, so the test is deterministic; across
    # seeds the p-values are uniform, as they should be: 1 in 100 seeds fails an attribute by chance).
    spec = {
        "sex": {"female": 0.3, "male": 0.7},
        "age_band": {"18-39": 0.2, "40-64": 0.5, "65+": 0.3},
        "bmi_band": {"normal": 0.5, "overweight": 0.3, "obese": 0.2},
        "lesion_type": {"solid": 0.6, "part_solid": 0.1, "ground_glass": 0.3},
        "margin": {"smooth": 0.5, "lobulated": 0.3, "spiculated": 0.2},
        "lesion_size": {"small": 0.8, "large": 0.2},
    }
    pop = PopulationSpec(prevalence=0.3, attributes=spec)
    draws = [draw_attributes(SPEC, pop, case_rng(2026, STREAM_CASE, i)) for i in range(2000)]
    labels = np.array([label for label, _ in draws])
    assert stats.binomtest(int(labels.sum()), labels.size, 0.3).pvalue > 0.01
    for name, dist in spec.items():
        values = [a[name] for _, a in draws if a[name] != "none"]
        observed = [values.count(level) for level in dist]
        expected = np.array(list(dist.values())) * len(values)
        assert stats.chisquare(observed, expected).pvalue > 0.01, name
    assert all(a["lesion_type"] == "none" for label, a in draws if not label)
    assert {a.name for a in PHANTOMS.get("chest_ct").attributes(SPEC)} == set(spec)
    # the generator draws its attributes the same way
    assert _draw_case(SPEC, pop, 2026, 17).attributes == draws[17][1]


def test_same_seed_same_volume_hash_and_cases_differ():
    def digest(seed, index):
        return hashlib.sha256(_gen([index], seed=seed).image.numpy().tobytes()).hexdigest()

    assert digest(3, 4) == digest(3, 4)
    assert len({digest(3, 4), digest(3, 5), digest(4, 4)}) == 3


def test_bad_spec_is_rejected_with_field_and_value():
    with pytest.raises(ValueError, match=r"expected each dimension in \[8, 1024\] voxels"):
        ChestCTSpec(shape=(4, 64, 64))
    with pytest.raises(ValueError, match=r"band 'small' is invalid \(expected 2 <= low < high"):
        ChestCTSpec(lesion_size_bands_mm={"small": (10.0, 5.0)})


def test_every_nodule_lies_inside_a_tight_field_of_view():
    # 150 mm in x: the lungs reach about +-121 mm, so an unchecked nodule could fall outside the volume.
    spec = ChestCTSpec(
        shape=(24, 24, 20),
        spacing_mm=(6.0, 7.5, 7.5),
        vessel_generations=2,
        lesion_size_bands_mm={"large": (18.0, 24.0)},
    )
    batch = _gen(
        range(20), spec=spec, pop=PopulationSpec(prevalence=1.0, attributes={"margin": {"smooth": 1}})
    )
    half = np.array(spec.shape) * np.array(spec.spacing_mm) / 2
    for b in range(20):
        lesion = batch.lesions[b][0]
        assert lesion["volume_mm3"] > 0
        assert np.all(np.abs(lesion["centre_mm"]) + lesion["diameter_mm"] / 2 < half)


def test_lung_texture_is_zero_mean_with_the_specified_sd():
    spec = ChestCTSpec(
        shape=(40, 100, 100), spacing_mm=(4.0, 3.6, 3.6), vessel_generations=4, lung_texture_hu=30.0
    )
    batch = _gen(range(3), spec=spec, pop=PopulationSpec(prevalence=0.0))
    plain = _gen(
        range(3), spec=spec.model_copy(update={"lung_texture_hu": 0.0}), pop=PopulationSpec(prevalence=0.0)
    )
    assert torch.equal(batch.organs, plain.organs)
    outside = batch.organs != LABEL["lung"]
    assert torch.equal(batch.image[outside], plain.image[outside])  # texture only in the lung
    for b in range(3):
        roi = ndimage.binary_erosion(
            batch.organs[b, 0].numpy() == LABEL["lung"], structure=np.ones((3, 3, 3))
        )
        values = batch.image[b, 0].numpy()[roi]
        assert abs(values.mean() - HU["lung"]) < 5.0
        assert 24.0 < values.std() < 36.0
