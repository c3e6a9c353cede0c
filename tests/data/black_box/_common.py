"""Shared by the black-box test scripts (each runs as its own program; this folder is on its sys.path)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np


def score(hu: np.ndarray) -> float:
    """The test "model": a sigmoid of the mean HU in a lung window (level -600, width 1500)."""
    mean = float(np.clip(hu.astype(np.float64), -1350.0, 150.0).mean())
    return 1.0 / (1.0 + math.exp(-(mean + 500.0) / 50.0))


def read_nifti(path: str | Path) -> tuple[np.ndarray, tuple[float, ...]]:
    """A NIfTI volume as a (D, H, W) array and its spacing (z, y, x) in mm."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(image), tuple(reversed(image.GetSpacing()))


def write_json(path: str | Path, data: object) -> None:
    Path(path).write_text(json.dumps(data))


def entry(path: Path) -> str:
    """``case-000001.nii.gz`` -> ``case-000001``."""
    return path.name.split(".")[0]


def fail(message: str, code: int = 3) -> None:
    print(message, file=sys.stderr)
    sys.exit(code)
