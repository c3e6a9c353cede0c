"""Pre-processing declared per model in the scenario, run on the device before the model's ``predict``.

The steps (:mod:`stress.scenario.preprocess`) act on the whole batch ``(B, C, D, H, W)`` with torch
operations only (no host copies), in scenario order. ``resample`` changes the spacing the model is told.
The wrapper is a :class:`torch.nn.Module` holding the model, so simulated updates (``derive:``) that
copy or modify a model's weights see the same pre-processing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from stress.scenario.preprocess import CropPad, Normalize, PreprocessStep, Resample, Window, ZScore

Spacing = tuple[float, float, float]


def _resample(x: Tensor, spacing: Spacing, step: Resample) -> tuple[Tensor, Spacing]:
    """Resample over the same field of view: ``n' = round(n * s / s')`` voxels per axis."""
    size = [max(1, round(n * s / t)) for n, s, t in zip(x.shape[2:], spacing, step.spacing_mm, strict=True)]
    told = tuple(n * s / m for n, s, m in zip(x.shape[2:], spacing, size, strict=True))
    if step.mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact"), told
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False), told


def _crop_pad(x: Tensor, step: CropPad) -> Tensor:
    """Centred crop or pad of each spatial axis to ``step.shape`` (as MONAI's ``ResizeWithPadOrCrop``)."""
    pads: list[int] = []
    for n, m in zip(reversed(x.shape[2:]), reversed(step.shape), strict=True):
        # MONAI's convention (SpatialPad / CenterSpatialCrop): the odd voxel goes after when padding,
        # and is cut after when cropping.
        before = (m - n) // 2 if m >= n else -((n - m) // 2)
        pads += [before, m - n - before]
    return F.pad(x, pads, mode="constant", value=step.value)  # negative pads crop


def _window(x: Tensor, step: Window) -> Tensor:
    y = x.clamp(step.low, step.high)
    if step.out is None:
        return y
    lo, hi = step.out
    return lo + (y - step.low) * ((hi - lo) / (step.high - step.low))


def _zscore(x: Tensor, step: ZScore) -> Tensor:
    dims = tuple(range(1, x.ndim))
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    return (x - mean) / (std + step.eps)


def apply_preprocess(
    x: Tensor, spacing_mm: Spacing, steps: Sequence[PreprocessStep]
) -> tuple[Tensor, Spacing]:
    """Run ``steps`` in order on ``x`` ``(B, C, D, H, W)``; return the image and the spacing to tell."""
    spacing = tuple(float(s) for s in spacing_mm)
    for step in steps:
        if isinstance(step, Resample):
            x, spacing = _resample(x, spacing, step)
        elif isinstance(step, CropPad):
            x = _crop_pad(x, step)
        elif isinstance(step, Window):
            x = _window(x, step)
        elif isinstance(step, ZScore):
            x = _zscore(x, step)
        elif isinstance(step, Normalize):
            x = (x - step.mean) / step.std
        else:  # pragma: no cover - the schema admits only the steps above
            raise TypeError(f"unknown pre-processing step {step!r}")
    return x, spacing  # type: ignore[return-value]


class Preprocessed(torch.nn.Module):
    """A predictor whose input first goes through the scenario's pre-processing steps."""

    def __init__(self, model: Any, steps: Sequence[PreprocessStep]) -> None:
        super().__init__()
        self.model = model
        self.steps = tuple(steps)

    def predict(self, image: Tensor, spacing_mm: Spacing) -> Any:
        """Pre-process, then call the wrapped model's ``predict`` with the new image and spacing."""
        image, spacing = apply_preprocess(image, spacing_mm, self.steps)
        return self.model.predict(image, spacing)
