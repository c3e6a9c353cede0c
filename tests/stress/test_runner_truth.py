"""The runner's ground truth under geometry-changing and metadata perturbations."""

import math

import numpy as np
import pytest
import torch

from perturbations import PERTURBATIONS, AppliedPerturbation
from phantoms import CaseBatch
from stress.errors import StressError
from stress.runner import _spacing_told, _truth_after


def _batch():
    image = torch.zeros(3, 1, 8, 16, 16)
    mask = torch.zeros(3, 1, 8, 16, 16, dtype=torch.bool)
    mask[0, 0, 3:5, 1:3, 1:3] = True  # a lesion at the border: a 4 mm cut removes it
    mask[1, 0, 3:5, 7:9, 7:9] = True  # a central lesion: kept
    return CaseBatch(
        image=image,
        mask=mask,
        spacing_mm=(2.0, 1.0, 1.0),
        modality="CT",
        case_index=(0, 1, 2),
        label=(1, 1, 0),
        attributes=({}, {}, {}),
    )


def _steps(name, severity, n=3, **spec):
    entry = PERTURBATIONS.get(name)
    params = tuple(entry.sample(entry.spec(**spec), severity, np.random.default_rng(i)) for i in range(n))
    return [AppliedPerturbation(name, params)]


def test_a_lesion_cropped_out_of_view_turns_the_row_negative():
    truth = _truth_after(_batch(), _steps("crop_pad", 4.0))
    assert [t["label"] for t in truth] == [0, 1, 0]
    assert truth[0]["lesion_visible_fraction"] == 0.0 and truth[1]["lesion_visible_fraction"] == 1.0
    assert math.isnan(truth[2]["lesion_visible_fraction"])


def test_intensity_only_chains_keep_the_generated_labels():
    truth = _truth_after(_batch(), _steps("ct_dose", 0.25))
    assert [t["label"] for t in truth] == [1, 1, 0]
    assert [t["lesion_visible_fraction"] for t in truth][:2] == [1.0, 1.0]


def test_the_model_is_told_the_wrong_spacing():
    batch = _batch()
    assert _spacing_told(batch, _steps("wrong_spacing", 2.0), ["a", "b", "c"]) == (4.0, 1.0, 1.0)
    assert _spacing_told(batch, _steps("ct_dose", 0.5), ["a", "b", "c"]) == (2.0, 1.0, 1.0)


def test_cases_told_different_spacings_are_refused():
    entry = PERTURBATIONS.get("wrong_spacing")
    rng = np.random.default_rng(0)
    params = (entry.sample(entry.spec(), 2.0, rng), entry.sample(entry.spec(), 3.0, rng))
    with pytest.raises(StressError, match="different spacings"):
        _spacing_told(_batch(), [AppliedPerturbation("wrong_spacing", params)], ["a", "b"])
