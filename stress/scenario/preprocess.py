"""The ``preprocess:`` steps a model entry may declare, so that a model sees the input it expects.

Each step is a mapping with an ``op`` key; the steps run in order on the device, on the whole batch,
before the model's ``predict`` (implementation: :mod:`stress.models.preprocess`)::

    preprocess:
      - {op: resample, spacing_mm: [2.0, 2.0, 2.0]}          # trilinear, the model is told the new spacing
      - {op: crop_pad, shape: [32, 64, 64], value: -1024}    # centred; pad value in the image's unit
      - {op: window, low: -1000, high: 400, out: [0.0, 1.0]} # clip to [low, high], map linearly to out
      - {op: zscore}                                         # per case: (x - mean) / std over the volume
      - {op: normalize, mean: -500.0, std: 500.0}            # fixed affine normalisation
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resample(_Step):
    """Resample to ``spacing_mm`` (D, H, W) over the same field of view; the model is told the new spacing."""

    op: Literal["resample"]
    spacing_mm: tuple[float, float, float] = Field(description="target voxel spacing D, H, W [mm]")
    mode: Literal["trilinear", "nearest"] = "trilinear"

    @model_validator(mode="after")
    def _positive(self) -> Resample:
        if not all(0.01 <= s <= 100.0 for s in self.spacing_mm):
            raise ValueError(f"spacing_mm must lie in [0.01, 100] mm per axis (got {list(self.spacing_mm)})")
        return self


class CropPad(_Step):
    """Centred crop or pad of every axis to ``shape`` voxels; padding takes ``value``."""

    op: Literal["crop_pad"]
    shape: tuple[int, int, int] = Field(description="output D, H, W [voxels]")
    value: float = Field(0.0, description="pad value, in the image's unit (e.g. -1024 HU for air)")

    @model_validator(mode="after")
    def _sizes(self) -> CropPad:
        if not all(1 <= n <= 4096 for n in self.shape):
            raise ValueError(f"shape must lie in [1, 4096] voxels per axis (got {list(self.shape)})")
        return self


class Window(_Step):
    """Clip to ``[low, high]`` and, with ``out``, map that range linearly onto ``out``."""

    op: Literal["window"]
    low: float
    high: float
    out: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if not self.low < self.high:
            raise ValueError(f"low must be below high (got low={self.low}, high={self.high})")
        return self


class ZScore(_Step):
    """Per case: subtract the volume's mean and divide by its standard deviation (plus ``eps``)."""

    op: Literal["zscore"]
    eps: float = Field(1e-6, gt=0.0)


class Normalize(_Step):
    """``(x - mean) / std`` with fixed values."""

    op: Literal["normalize"]
    mean: float
    std: float = Field(gt=0.0)


PreprocessStep = Annotated[Resample | CropPad | Window | ZScore | Normalize, Field(discriminator="op")]
