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
        organs: ``(B, 1, D, H, W)`` uint8 organ/tissue label map (the structure whose surface contains
            the voxel centre, last painted wins), or ``None`` where a generator has none.
        organ_names: ``organ_names[k]`` is the name of label ``k``; label 0 is the background.
        generator: name of the generator that made the batch (e.g. ``"chest_ct"``).
        acquisition: modality-specific acquisition settings the images embody (for MR: field strength,
            sequence type, TR/TE/TI in ms, flip angle in degrees), recorded in exports.
    """

    image: Tensor
    mask: Tensor
    spacing_mm: tuple[float, float, float]
    modality: str
    case_index: tuple[int, ...]
    label: tuple[int, ...]
    attributes: tuple[dict[str, str], ...]
    lesions: tuple[tuple[dict[str, Any], ...], ...] = field(default=())
    organs: Tensor | None = None
    organ_names: tuple[str, ...] = ()
    generator: str = ""
    acquisition: tuple[dict[str, Any], ...] = ()


def merge_batches(batches: Sequence[CaseBatch]) -> CaseBatch:
    """Concatenate batches of the same generator and grid along the case axis."""
    first = batches[0]
    return CaseBatch(
        image=torch.cat([b.image for b in batches]),
        mask=torch.cat([b.mask for b in batches]),
        spacing_mm=first.spacing_mm,
        modality=first.modality,
        case_index=sum((b.case_index for b in batches), ()),
        label=sum((b.label for b in batches), ()),
        attributes=sum((b.attributes for b in batches), ()),
        lesions=sum((b.lesions for b in batches), ()),
        organs=None if first.organs is None else torch.cat([b.organs for b in batches]),
        organ_names=first.organ_names,
        generator=first.generator,
        acquisition=sum((b.acquisition for b in batches), ()),
    )


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
