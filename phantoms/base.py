"""Phantom contract: ``(generator spec, population, seed, case indices) -> CaseBatch`` on a device."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from phantoms.population import PopulationSpec
from stress.registry import Registry


class PhantomSpec(BaseModel):
    """Base of every generator's settings: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class CaseBatch:
    """A batch of synthetic cases with exact ground truth.

    Attributes:
        image: ``(B, 1, D, H, W)`` float32 in physical units (HU for CT).
        mask: ``(B, 1, D, H, W)`` bool, the lesion mask (all False on negative cases).
        spacing_mm: voxel size ``(D, H, W)`` in mm.
        modality: ``"CT"`` or ``"MR"``.
        case_index: index of each case in the scenario's population.
        label: reference-standard label per case (1 = lesion present).
        attributes: subgroup attributes per case (e.g. ``{"sex": "female", ...}``).
        lesions: per case, a tuple of lesion records (centre_mm, diameter_mm, volume_mm3, ...).
    """

    image: Tensor
    mask: Tensor
    spacing_mm: tuple[float, float, float]
    modality: str
    case_index: tuple[int, ...]
    label: tuple[int, ...]
    attributes: tuple[dict[str, str], ...]
    lesions: tuple[tuple[dict[str, Any], ...], ...] = field(default=())


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribute:
    """A subgroup attribute a generator understands.

    Attributes:
        name: attribute name in the population spec and the results table.
        levels: allowed levels (may depend on the generator spec, see ``levels_from``).
        lesion_level: the attribute describes the lesion; negative cases get ``"none"``.
        effect: how the attribute changes the phantom (for docs and ``stress list``).
    """

    name: str
    levels: tuple[str, ...]
    lesion_level: bool = False
    effect: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class PhantomGenerator:
    """A registered phantom generator."""

    name: str
    description: str
    modality: str
    spec: type[PhantomSpec]
    attributes: Callable[[Any], tuple[Attribute, ...]]
    generate: Callable[[Any, PopulationSpec, int, Sequence[int], torch.device], CaseBatch]


PHANTOMS: Registry[PhantomGenerator] = Registry("phantom generator")
