"""Shared fixtures. Tests pin the CPU and use small volumes."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/ is on sys.path (pyproject `pythonpath`) for the shared helpers, and its phantoms/ and
# perturbations/ folders would shadow the packages of the same name when pytest runs from its own script
# (not `python -m pytest`): the repository root goes first.
ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[0] != ROOT:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import perturbations  # noqa: E402, F401  (registers perturbations)
import phantoms  # noqa: E402, F401  (registers phantoms)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cpu")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)
