"""Shared fixtures. Tests pin the CPU and use small volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import perturbations  # noqa: F401  (registers perturbations)
import phantoms  # noqa: F401  (registers phantoms)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
