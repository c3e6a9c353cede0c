import dataclasses
import hashlib
import math

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from phantoms import PHANTOMS
from phantoms import abdomen_shapes as shapes
from phantoms import liver_ct as lct
from phantoms.nodules import extent_mm
from phantoms.population import PopulationSpec, case_rng
from phantoms.render import Canvas, capsule_sd_points

# Whole-abdomen field of view (240 x 352 x 448 mm) on a coarse grid: 24 x 44 x 56 voxels of 10 x 8 x 8 mm.
SPEC = lct.LiverCTSpec(shape=(24, 44, 56), spacing_mm=(10.0, 8.0, 8.0), vessel_generations=3)
POP = PopulationSpec(prevalence=0.5)
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The grids here are small: torch's intra-op threads cost more than they give (and far more on a
    # loaded machine), so this module runs single-threaded; results do not depend on the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(indices, spec=SPEC, pop=POP, seed=7):
    return lct.generate_liver_ct(spec, pop, seed, list(indices), CPU)


def _host_sd(shape, points, layout):
    p = shapes.stack_shapes([layout], CPU, torch.float64)
    t = torch.as_tensor(np.atleast_2d(points), dtype=torch.float64).T.reshape(3, 1, -1, 1, 1)
    return shape(t[0], t[1], t[2], p).reshape(-1).numpy()


def test_case_is_a_pure_function_of_seed_and_index():
    pop = PopulationSpec(prevalence=0.8)
    a, b = _gen([3, 4, 5], pop=pop), _gen([5], pop=pop)
    assert torch.equal(a.image[2], b.image[0]) and torch.equal(a.mask[2], b.mask[0])
    assert torch.equal(a.organs[2], b.organs[0])
    assert a.attributes[2] == b.attributes[0] and a.lesions[2] == b.lesions[0]
    assert (
        a.acquisition[2]
        == b.acquisition[0]
        == {
            "contrast_phase": a.attributes[2]["contrast_phase"],
            "scan_delay_s": {"unenhanced": None, "arterial": 35, "portal_venous": 70}[
                a.attributes[2]["contrast_phase"]
            ],
        }
    )
    assert not torch.equal(_gen([5], pop=pop, seed=8).image[0], b.image[0])


def test_same_seed_same_volume_hash_and_cases_differ():
    def digest(seed, index):
        return hashlib.sha256(_gen([index], seed=seed).image.numpy().tobytes()).hexdigest()

    assert digest(3, 4) == digest(3, 4)
    assert len({digest(3, 4), digest(3, 5), digest(4, 4)}) == 3


@pytest.mark.parametrize("phase", lct.PHASES)
def test_noiseless_tissue_values_in_eroded_organ_rois(phase):
    # Each label's ROI is its region in the organ map eroded by one voxel (3x3x3), away from partial volume;
    # its mean must be the specified HU of the case (phase, age band and fatty liver included).
    spec = lct.LiverCTSpec(
        shape=(40, 88, 112),
        spacing_mm=(6.0, 4.0, 4.0),
        vessel_generations=3,
        lesion_size_bands_mm={"large": (28.0, 35.0)},
    )
    attributes = {"contrast_phase": {phase: 1.0}, "lesion_type": {"cyst": 1.0}}
    pop = PopulationSpec(prevalence=1.0, attributes=attributes)
    batch, checked = _gen(range(2), spec=spec, pop=pop), set()
    for b in range(2):
        img, organs = batch.image[b, 0].numpy(), batch.organs[b, 0].numpy()
        hu = {**lct.draw_case(spec, pop, 7, b).hu, "lesion": batch.lesions[b][0]["hu"]}
        for name in lct.ORGANS[1:]:
            roi = ndimage.binary_erosion(organs == lct.LABEL[name], structure=np.ones((3, 3, 3)))
            if roi.sum() >= 10:
                assert abs(float(img[roi].mean()) - hu[name]) < 5.0, (
                    b,
                    name,
                    float(img[roi].mean()),
                    hu[name],
                )
                checked.add(name)
    # thin structures (cortex, walls, discs, shells, small vessels) have no eroded interior on this grid
    expected = {"subcutaneous_fat", "muscle", "visceral_fat", "lung", "liver", "spleen", "kidney_medulla"}
    expected |= {"aorta", "ivc", "gallbladder", "gi_fluid", "gi_gas", "trabecular_bone", "lesion"}
    assert expected <= checked, expected - checked


def test_phase_contrast_follows_the_literature_ordering():
    values = {
        phase: lct.draw_case(SPEC, PopulationSpec(attributes={"contrast_phase": {phase: 1}}), 1, 0).hu
        for phase in lct.PHASES
    }
    un, art, pv = (values[p] for p in lct.PHASES)
    assert art["aorta"] > pv["aorta"] > un["aorta"]
    assert pv["portal_vein"] > art["portal_vein"] > un["portal_vein"]
    assert pv["liver"] - un["liver"] > 40 and art["kidney_cortex"] > art["kidney_medulla"] + 50
    assert art["spleen"] > art["liver"] + 40  # arterial spleen-to-liver contrast


@pytest.mark.parametrize("lesion_type", lct.LESION_TYPES)
def test_lesion_volume_within_5_percent_of_nominal_at_0_75_mm(lesion_type):
    # The generator's lesion shapes and renderer on a 0.75 mm grid around the lesion, at a random sub-voxel
    # offset as placed in the liver: mask volume (voxel centres inside) vs the nominal pi d^3 / 6.
    for k, diameter in enumerate((10.0, 16.0, 24.0)):
        rng = np.random.default_rng([5, k])
        body, _, _ = lct._lesion_shape(rng, lesion_type, diameter, rimmed=True)
        body[:, :6] += np.tile(rng.uniform(-0.375, 0.375, 3), 2)
        assert extent_mm(body) < 24.0
        canvas = Canvas(1, (64, 64, 64), (0.75, 0.75, 0.75), CPU, 60.0)
        volume = int((canvas.union_sd([body]).sd <= 0).sum()) * 0.75**3
        assert abs(volume / (math.pi * diameter**3 / 6) - 1.0) < 0.05, (diameter, volume)


def test_rim_core_and_nodules_paint_the_specified_values():
    spec = lct.LiverCTSpec(shape=(40, 88, 112), spacing_mm=(6.0, 4.0, 4.0), vessel_generations=2)
    for kind in ("hcc", "haemangioma"):
        att = {
            "lesion_type": {kind: 1.0},
            "contrast_phase": {"portal_venous": 1.0},
            "lesion_size": {"large": 1.0},
        }
        draw = lct.draw_case(spec, PopulationSpec(prevalence=1.0, attributes=att), 2, 0)
        centre = np.r_[draw.records[0]["centre_mm"], draw.records[0]["centre_mm"], 0.0, 0.0]
        draw = dataclasses.replace(draw, bodies=(draw.bodies[0] - centre,), nodules=draw.nodules - centre)
        canvas = Canvas(1, (48, 48, 48), (1.0, 1.0, 1.0), CPU, 100.0)  # 1 mm voxels around the first lesion
        mask, _ = lct._paint_lesions(canvas, [draw])
        labels, image = canvas.labels.view(-1)[mask], canvas.image.view(-1)[mask]
        record = draw.records[0]
        assert set(labels.unique().tolist()) == {lct.LABEL["lesion"], lct.LABEL["lesion_rim"]}
        core = ndimage.binary_erosion(canvas.labels[0].numpy() == lct.LABEL["lesion"], np.ones((3, 3, 3)))
        assert abs(float(canvas.image[0].numpy()[core].mean()) - record["hu"]) < 1.0
        assert float(image.max()) > record["hu"] + 20.0  # enhancing capsule / nodules


def test_lesion_records_masks_and_surroundings():
    spec = lct.LiverCTSpec(shape=(40, 88, 112), spacing_mm=(6.0, 4.0, 4.0), vessel_generations=3)
    pop = PopulationSpec(prevalence=1.0, attributes={"lesion_size": {"medium": 0.5, "large": 0.5}})
    batch = _gen(range(8), spec=spec, pop=pop)
    voxel = float(np.prod(spec.spacing_mm))
    liver_like = [lct.LABEL[n] for n in ("liver", "hepatic_vein", "portal_vein")]
    seen = set()
    for b in range(8):
        lesions, mask = batch.lesions[b], batch.mask[b, 0].numpy()
        img, organs = batch.image[b, 0].numpy(), batch.organs[b, 0].numpy()
        assert 1 <= len(lesions) <= spec.max_lesions and batch.label[b] == 1
        assert all(x["type"] == batch.attributes[b]["lesion_type"] for x in lesions)
        assert sum(x["volume_mm3"] for x in lesions) == mask.sum() * voxel
        total = sum(x["mean_hu"] * x["volume_mm3"] / voxel for x in lesions)
        assert total == pytest.approx(float(img[mask].astype(np.float64).sum()), rel=1e-4)
        assert set(np.unique(organs[mask])) <= {lct.LABEL["lesion"], lct.LABEL["lesion_rim"]}
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask
        assert np.mean(np.isin(organs[ring], liver_like)) > 0.95, b
        layout = lct.draw_case(spec, pop, 7, b).layout
        for x in lesions:
            low, high = spec.lesion_size_bands_mm[batch.attributes[b]["lesion_size"]]
            assert low <= x["diameter_mm"] < high
            assert _host_sd(shapes.liver_sd, x["centre_mm"], layout)[0] <= -(
                x["diameter_mm"] / 2 + spec.lesion_margin_mm
            )
            seen.add(x["type"])
    assert seen == set(lct.LESION_TYPES)


def test_lesions_keep_apart_and_clear_of_vessels_beyond_the_overlap_limit():
    spec = lct.LiverCTSpec(vessel_generations=5, max_lesions=4, lesion_vessel_overlap_mm=0.5)
    for i in range(25):
        draw = lct.draw_case(spec, PopulationSpec(prevalence=1.0), 3, i)
        centres = np.array([x["centre_mm"] for x in draw.records])
        reach = np.array(
            [extent_mm(body - np.r_[c, c, 0, 0]) for body, c in zip(draw.bodies, centres, strict=True)]
        )
        trees = np.concatenate([draw.layout.tubes["portal_tree"], draw.layout.tubes["hepatic_vein"]])
        assert np.all(capsule_sd_points(centres, trees) >= reach - 0.5)
        trunks = np.concatenate([draw.layout.tubes[k] for k in ("aorta", "ivc", "portal_vein")])
        assert np.all(capsule_sd_points(centres, trunks) >= reach + spec.lesion_margin_mm)
        gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) - reach[:, None] - reach[None]
        assert np.all(gaps[~np.eye(len(centres), dtype=bool)] >= 2.0)


def test_negative_cases_have_empty_masks_and_no_lesion():
    batch = _gen(range(6), pop=PopulationSpec(prevalence=0.0))
    assert not batch.mask.any() and all(lesions == () for lesions in batch.lesions)
    assert all(batch.attributes[b][k] == "none" for b in range(6) for k in ("lesion_size", "lesion_type"))
    assert not (batch.organs == lct.LABEL["lesion"]).any() and batch.label == (0,) * 6
    assert (
        (batch.organs == lct.LABEL["liver"]).any()
        and batch.generator == "liver_ct"
        and batch.modality == "CT"
    )


def test_population_matches_the_spec_chi_square():
    # n = 2000 cases, every attribute: chi-square p > 0.01 (fixed seed, so the test is deterministic).
    spec = {
        "contrast_phase": {"unenhanced": 0.2, "arterial": 0.3, "portal_venous": 0.5},
        "lesion_type": {"cyst": 0.4, "metastasis": 0.3, "hcc": 0.2, "haemangioma": 0.1},
        "lesion_size": {"small": 0.5, "medium": 0.3, "large": 0.2},
        "sex": {"female": 0.3, "male": 0.7},
        "bmi_band": {"normal": 0.5, "overweight": 0.3, "obese": 0.2},
        "age_band": {"18-39": 0.2, "40-64": 0.5, "65+": 0.3},
    }
    pop = PopulationSpec(prevalence=0.3, attributes=spec)
    draws = [lct.draw_attributes(SPEC, pop, case_rng(2026, lct.STREAM_CASE, i)) for i in range(2000)]
    labels = np.array([label for label, _ in draws])
    assert stats.binomtest(int(labels.sum()), labels.size, 0.3).pvalue > 0.01
    for name, dist in spec.items():
        values = [a[name] for _, a in draws if a[name] != "none"]
        observed = [values.count(level) for level in dist]
        assert stats.chisquare(observed, np.array(list(dist.values())) * len(values)).pvalue > 0.01, name
    assert all(a["lesion_type"] == a["lesion_size"] == "none" for label, a in draws if not label)
    assert {a.name for a in PHANTOMS.get("liver_ct").attributes(SPEC)} == set(spec)
    assert (
        lct.draw_case(SPEC, pop, 2026, 17).attributes == draws[17][1]
    )  # the generator draws them the same way


def test_fatty_liver_is_more_frequent_with_bmi_and_age():
    def fatty_share(bmi, age):
        att = {"bmi_band": {bmi: 1.0}, "age_band": {age: 1.0}, "contrast_phase": {"unenhanced": 1.0}}
        pop = PopulationSpec(prevalence=0.0, attributes=att)
        liver = np.array([lct.draw_case(SPEC, pop, 11, i).hu["liver"] for i in range(150)])
        assert np.all((liver == 60.0) | ((liver <= 50.0) & (liver >= 25.0)))
        return float(np.mean(liver < 60.0))

    assert (
        fatty_share("normal", "18-39")
        < 0.2
        < fatty_share("obese", "40-64")
        < fatty_share("obese", "65+") + 0.1
    )
    assert fatty_share("obese", "65+") > 0.5


def test_bad_spec_is_rejected_with_field_and_value():
    with pytest.raises(
        ValueError, match=r"shape is out of range \(expected each value in \[8, 1024\] voxels, got \(4"
    ):
        lct.LiverCTSpec(shape=(4, 64, 64))
    with pytest.raises(
        ValueError, match=r"max_lesions is out of range \(expected in \[1, 10\] lesions, got 0\)"
    ):
        lct.LiverCTSpec(max_lesions=0)
    with pytest.raises(
        ValueError,
        match=r"lesion_size_bands_mm is out of range \(expected 2.0 <= low < high <= 80.0 mm in every band",
    ):
        lct.LiverCTSpec(lesion_size_bands_mm={"small": (10.0, 5.0)})
    with pytest.raises(ValueError, match="lesion_count"):
        lct.LiverCTSpec(lesion_count=3)


def test_the_whole_body_fits_the_default_field_of_view():
    spec = lct.LiverCTSpec()
    half = (np.array(spec.shape[1:]) - 1) / 2 * np.array(spec.spacing_mm[1:])
    pop = PopulationSpec(attributes={"sex": {"male": 1.0}, "bmi_band": {"obese": 1.0}})
    widest = np.max(
        [lct.draw_case(spec, pop, 5, i).layout.outline[0] for i in range(40)], axis=0
    )  # skin (x, y)
    assert widest[0] < half[1] and widest[1] < half[0]
