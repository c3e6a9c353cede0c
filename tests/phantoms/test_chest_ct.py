import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from phantoms import PHANTOMS
from phantoms.chest_ct import HU, ChestCTSpec, generate_chest_ct
from phantoms.population import PopulationSpec

# Whole-chest field of view on a small grid: 24 x 48 x 48 voxels of 6 x 7.5 x 7.5 mm.
SPEC = ChestCTSpec(shape=(24, 48, 48), spacing_mm=(6.0, 7.5, 7.5), vessels_per_lung=4)
POP = PopulationSpec(prevalence=0.5)


def _gen(indices, spec=SPEC, pop=POP, seed=7):
    return generate_chest_ct(spec, pop, seed, indices, torch.device("cpu"))


def test_case_is_a_pure_function_of_seed_and_index():
    a = _gen([3, 4, 5])
    b = _gen([5])
    assert torch.equal(a.image[2], b.image[0]) and torch.equal(a.mask[2], b.mask[0])
    assert a.attributes[2] == b.attributes[0] and a.lesions[2] == b.lesions[0]
    assert not torch.equal(_gen([5], seed=8).image[0], b.image[0])


def test_noiseless_tissue_values_in_eroded_rois():
    # ROIs are the tissue's analytic region eroded by one voxel in-plane (away from partial volume).
    spec = ChestCTSpec(shape=(16, 96, 96), spacing_mm=(10.0, 3.75, 3.75), vessels_per_lung=4)
    batch = _gen(range(3), spec=spec, pop=PopulationSpec(attributes={"bmi_band": {"obese": 1.0}}))
    for tissue in ("lung", "fat", "muscle", "air", "trabecular_bone"):
        hu = HU[tissue]
        for img in batch.image[:, 0].numpy():
            region = np.abs(img - hu) < 10.0
            eroded = ndimage.binary_erosion(region, structure=np.ones((1, 3, 3)), iterations=1)
            assert eroded.sum() > 20, tissue
            assert abs(float(img[eroded].mean()) - hu) < 5.0, tissue


def test_nodule_mask_matches_lesion_record_and_lies_in_lung():
    spec = ChestCTSpec(
        shape=(24, 48, 48),
        spacing_mm=(6.0, 7.5, 7.5),
        vessels_per_lung=0,
        lobulated_fraction=0.0,
        lesion_size_bands_mm={"large": (18.0, 24.0)},
    )
    batch = _gen(range(12), spec=spec, pop=PopulationSpec(prevalence=1.0))
    voxel = float(np.prod(spec.spacing_mm))
    for b in range(12):
        lesion = batch.lesions[b][0]
        mask = batch.mask[b, 0].numpy()
        analytic = math.pi / 6 * lesion["diameter_mm"] ** 3
        assert lesion["volume_mm3"] == mask.sum() * voxel
        assert abs(mask.sum() * voxel / analytic - 1.0) < 0.35  # coarse voxels; exact centre-in-surface rule
        # the mask's centroid is the recorded centre (within a voxel), and the nodule is surrounded by lung
        centroid = (np.array(ndimage.center_of_mass(mask)) - (np.array(mask.shape) - 1) / 2) * spec.spacing_mm
        assert np.all(np.abs(centroid - lesion["centre_mm"]) <= np.array(spec.spacing_mm))
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
        assert np.median(batch.image[b, 0].numpy()[ring]) < -300  # mostly lung around it


def test_negative_cases_have_empty_masks_and_no_lesion():
    batch = _gen(range(10), pop=PopulationSpec(prevalence=0.0))
    assert not batch.mask.any()
    assert all(lesions == () for lesions in batch.lesions)
    assert all(a["lesion_size"] == "none" for a in batch.attributes)


def test_population_matches_the_spec_chi_square():
    # n = 2000 cases, every attribute: chi-square p > 0.01 (fixed seed, so the test is deterministic).
    spec = {
        "sex": {"female": 0.3, "male": 0.7},
        "bmi_band": {"normal": 0.5, "overweight": 0.3, "obese": 0.2},
        "lesion_size": {"small": 0.8, "large": 0.2},
    }
    pop = PopulationSpec(prevalence=0.3, attributes=spec)
    from phantoms.chest_ct import _draw_case

    draws = [_draw_case(SPEC, pop, 11, i) for i in range(2000)]
    labels = np.array([d.label for d in draws])
    assert stats.binomtest(int(labels.sum()), labels.size, 0.3).pvalue > 0.01
    for name, dist in spec.items():
        values = [d.attributes[name] for d in draws if d.attributes[name] != "none"]
        observed = [values.count(level) for level in dist]
        expected = np.array(list(dist.values())) * len(values)
        assert stats.chisquare(observed, expected).pvalue > 0.01, name
    assert all(d.attributes["lesion_size"] == "none" for d in draws if not d.label)
    assert {a.name for a in PHANTOMS.get("chest_ct").attributes(SPEC)} == {"sex", "bmi_band", "lesion_size"}


def test_same_seed_same_volume_hash_and_cases_differ():
    import hashlib

    def digest(seed, index):
        return hashlib.sha256(_gen([index], seed=seed).image.numpy().tobytes()).hexdigest()

    assert digest(3, 4) == digest(3, 4)
    assert len({digest(3, 4), digest(3, 5), digest(4, 4)}) == 3


def test_bad_spec_is_rejected_with_field_and_value():
    with pytest.raises(ValueError, match=r"expected each dimension in \[8, 1024\] voxels"):
        ChestCTSpec(shape=(4, 64, 64))
    with pytest.raises(ValueError, match=r"band 'small' is invalid \(expected 0.5 <= low < high"):
        ChestCTSpec(lesion_size_bands_mm={"small": (10.0, 5.0)})


def test_every_nodule_lies_inside_a_tight_field_of_view():
    # 150 mm in x: the lungs reach about +-121 mm, so an unchecked nodule could fall outside the volume.
    spec = ChestCTSpec(
        shape=(24, 24, 20),
        spacing_mm=(6.0, 7.5, 7.5),
        vessels_per_lung=0,
        lesion_size_bands_mm={"large": (18.0, 24.0)},
    )
    batch = _gen(range(40), spec=spec, pop=PopulationSpec(prevalence=1.0))
    half = np.array(spec.shape) * np.array(spec.spacing_mm) / 2
    for b in range(40):
        lesion = batch.lesions[b][0]
        assert lesion["volume_mm3"] > 0
        assert np.all(np.abs(lesion["centre_mm"]) + lesion["diameter_mm"] / 2 < half)
