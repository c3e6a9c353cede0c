"""Generic checks over every registered perturbation (the registry-completeness pattern)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from perturbations import PERTURBATIONS, params_from_dict, params_to_dict
from perturbations.base import PerturbationSpec, Props

NAMES = PERTURBATIONS.names()


def test_every_perturbation_is_classified():
    for name in NAMES:
        entry = PERTURBATIONS.get(name)
        assert isinstance(entry.props, Props), name
        assert issubclass(entry.spec, PerturbationSpec), name
        assert dataclasses.is_dataclass(entry.params) and entry.params.__dataclass_params__.frozen, name
        assert entry.severity.check(entry.severity.nominal) is None, name


def _sample(name, severity, seed=0):
    entry = PERTURBATIONS.get(name)
    return entry.sample(entry.spec(), severity, np.random.default_rng(seed))


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_device_kept_and_replay_bit_identical(name, device):
    entry = PERTURBATIONS.get(name)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 16, 16, 16)).astype(np.float32)).to(
        device
    )
    sev = entry.severity
    harsh = sev.nominal * 0.5 if sev.harsher == "lower" else sev.nominal + 3.0
    params = [_sample(name, sev.nominal, 1), _sample(name, harsh, 2)]
    y = entry.apply(x, (1.0, 1.0, 1.0), params)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(y, entry.apply(x, (1.0, 1.0, 1.0), params))
    if entry.spacing_after is not None:  # a metadata error: the spacing changes, the image does not
        assert entry.spacing_after((1.0, 1.0, 1.0), params[1]) != (1.0, 1.0, 1.0)
        assert entry.spacing_after((1.0, 1.0, 1.0), params[0]) == (1.0, 1.0, 1.0)
        return
    assert not torch.equal(y[1], x[1])  # a harsher severity changes the image


@pytest.mark.parametrize("name", NAMES)
def test_params_roundtrip_through_json(name):
    p = _sample(name, PERTURBATIONS.get(name).severity.nominal)
    assert params_from_dict(name, json.loads(json.dumps(params_to_dict(p)))) == p


@pytest.mark.parametrize("name", [n for n in NAMES if PERTURBATIONS.get(n).props.identity_at_nominal])
def test_identity_at_nominal(name):
    x = torch.randn(1, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    entry = PERTURBATIONS.get(name)
    assert torch.equal(entry.apply(x, (1.0, 1.0, 1.0), [_sample(name, entry.severity.nominal)]), x)


def test_unknown_name_suggests():
    from stress.errors import StressError

    with pytest.raises(StressError, match="did you mean 'ct_dose'"):
        PERTURBATIONS.get("ct_dos")


@pytest.mark.parametrize("name", NAMES)
def test_default_ladder_has_five_valid_levels_mildest_first(name):
    entry = PERTURBATIONS.get(name)
    ladder = entry.ladder
    assert len(ladder) == 5, name
    assert all(entry.severity.check(v) is None for v in ladder), name
    distance = [abs(v - entry.severity.nominal) for v in ladder]
    assert distance == sorted(distance) and len(set(distance)) == 5, name
