"""Chest CT phantom in HU: anatomy, lung nodules of three types, exact masks and an organ label map.

The anatomy (:mod:`phantoms.chest_anatomy`) is laid out per case in millimetres from the case's random
stream and attributes: habitus (sex, BMI band), lungs, heart, great vessels, trachea and bronchi with an
airway tree, pulmonary artery and vein trees, spine, ribs and sternum. Positive cases carry one nodule
(:mod:`phantoms.nodules`): solid, part-solid or ground-glass, smooth, lobulated or spiculated, placed
inside a lung away from its surface, the heart, airways and bones, and overlapping pulmonary vessels by
at most ``nodule_vessel_overlap_mm``. Tissue values (HU) are in :data:`HU` with their sources in
docs/phantoms.md; trabecular bone depends on the age band.

Rendering (:mod:`phantoms.render`) is batched on the device: outlines are 2-D, lungs and heart are
ellipsoids on the grid, tubes and nodules are capsules evaluated in their bounding boxes. Every voxel
gets the label of the last structure containing its centre (:data:`ORGANS`); the lesion mask is exact
(voxel centre inside the nodule's surface).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator

from perturbations.random import standard_normal
from phantoms.base import PHANTOMS, Attribute, CaseBatch, PhantomGenerator, PhantomSpec
from phantoms.chest_anatomy import FAT_MM, SEX_SCALE, ChestLayout, draw_layout
from phantoms.nodules import LESION_TYPES, MARGINS, extent_mm, make_nodule, translate
from phantoms.population import PopulationSpec, case_rng, draw_level
from phantoms.render import Canvas, capsule_sd_points

TEXTURE_CELL_MM = 8.0  # grid step of the lung texture's random field
STREAM_CASE = 1  # stream id of the per-case phantom draws (see phantoms.population.case_rng)

ORGANS = (
    "background",
    "subcutaneous_fat",
    "muscle",
    "mediastinal_fat",
    "lung",
    "heart",
    "great_vessel",
    "pulmonary_vessel",
    "airway_wall",
    "airway_lumen",
    "cortical_bone",
    "trabecular_bone",
    "intervertebral_disc",
    "nodule",
    "nodule_solid_core",
)
LABEL = {name: k for k, name in enumerate(ORGANS)}
HU = {
    "background": -1000.0,
    "subcutaneous_fat": -100.0,
    "muscle": 50.0,
    "mediastinal_fat": -100.0,
    "lung": -850.0,
    "heart": 40.0,
    "great_vessel": 40.0,
    "pulmonary_vessel": 40.0,
    "airway_wall": 40.0,
    "airway_lumen": -1000.0,
    "cortical_bone": 1000.0,
    "intervertebral_disc": 90.0,
}
TRABECULAR_HU = {"18-39": 230.0, "40-64": 180.0, "65+": 130.0}
AGE_BANDS = tuple(TRABECULAR_HU)


class ChestCTSpec(PhantomSpec):
    """Settings of the ``chest_ct`` generator.

    Attributes:
        shape: volume size in voxels ``(D, H, W)``.
        spacing_mm: voxel size ``(D, H, W)`` in mm.
        solid_hu: attenuation of solid nodules and of part-solid cores, HU.
        ground_glass_hu: attenuation of ground-glass nodules and components, HU.
        lesion_size_bands_mm: sphere-equivalent diameter range ``[low, high)`` in mm per size band.
        vessel_generations: generations of each pulmonary artery tree (veins one fewer).
        min_vessel_radius_mm: thinnest vessel drawn; never below half the in-plane voxel size.
        nodule_vessel_overlap_mm: how far a vessel may reach into a nodule, mm.
        lung_texture_hu: standard deviation of a smooth Gaussian texture added to the lung parenchyma
            (correlation length about 8 mm), HU; 0 = off.
    """

    shape: tuple[int, int, int] = Field((40, 80, 80), description="D, H, W [voxels]")
    spacing_mm: tuple[float, float, float] = Field((4.0, 4.0, 4.0), description="D, H, W voxel size [mm]")
    solid_hu: float = Field(30.0, ge=-300.0, le=300.0, description="solid nodule attenuation [HU]")
    ground_glass_hu: float = Field(-650.0, ge=-850.0, le=-300.0, description="ground-glass attenuation [HU]")
    lesion_size_bands_mm: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"small": (8.0, 12.0), "large": (12.0, 20.0)},
        description="sphere-equivalent diameter range per size band [mm]",
    )
    vessel_generations: int = Field(7, ge=1, le=10, description="generations per artery tree [count]")
    min_vessel_radius_mm: float = Field(0.75, ge=0.1, le=5.0, description="thinnest vessel [mm]")
    nodule_vessel_overlap_mm: float = Field(1.0, ge=0.0, le=10.0, description="vessel reach into nodule [mm]")
    lung_texture_hu: float = Field(0.0, ge=0.0, le=200.0, description="lung texture SD [HU]")

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(n < 8 or n > 1024 for n in v):
            raise ValueError(
                f"shape is out of range (expected each dimension in [8, 1024] voxels, got {list(v)})"
            )
        return v

    @field_validator("spacing_mm")
    @classmethod
    def _spacing(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not 0.05 <= s <= 50.0 for s in v):
            raise ValueError(
                f"spacing_mm is out of range (expected each spacing in [0.05, 50] mm, got {list(v)})"
            )
        return v

    @field_validator("lesion_size_bands_mm")
    @classmethod
    def _bands(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        if not v:
            raise ValueError("at least one lesion size band is needed (expected e.g. small: [6, 10])")
        for band, (lo, hi) in v.items():
            if not 2.0 <= lo < hi <= 40.0:
                raise ValueError(
                    f"band '{band}' is invalid (expected 2 <= low < high <= 40 mm, got [{lo}, {hi}])"
                )
        return v


def chest_ct_attributes(spec: ChestCTSpec) -> tuple[Attribute, ...]:
    """Subgroup attributes of ``chest_ct`` (lesion-size levels come from the spec's bands)."""
    return (
        Attribute(name="sex", levels=tuple(SEX_SCALE), effect="body size x0.92 for female"),
        Attribute(name="age_band", levels=AGE_BANDS, effect="trabecular bone 230/180/130 HU"),
        Attribute(name="bmi_band", levels=tuple(FAT_MM), effect="subcutaneous fat thickness (mm)"),
        Attribute(name="lesion_type", levels=LESION_TYPES, lesion_level=True, effect="nodule attenuation"),
        Attribute(name="margin", levels=MARGINS, lesion_level=True, effect="nodule shape"),
        Attribute(
            name="lesion_size",
            levels=tuple(spec.lesion_size_bands_mm),
            lesion_level=True,
            effect="sphere-equivalent nodule diameter band (mm)",
        ),
    )


def tissue_hu(spec: ChestCTSpec, attributes: dict[str, str]) -> dict[str, float]:
    """Specified HU of every label for a case with these attributes."""
    return {
        **HU,
        "trabecular_bone": TRABECULAR_HU[attributes["age_band"]],
        "nodule_solid_core": spec.solid_hu,
        "nodule_solid": spec.solid_hu,
        "nodule_ground_glass": spec.ground_glass_hu,
    }


@dataclass(frozen=True, slots=True)
class _Draw:
    """Host-side description of one case (all lengths in mm)."""

    label: int
    attributes: dict[str, str]
    layout: ChestLayout
    hu: dict[str, float]
    nodule: np.ndarray  # (S, 8) capsules of the whole nodule, may be empty
    core: np.ndarray  # (S', 8) solid core of a part-solid nodule, may be empty
    lesion: dict[str, Any] | None
    texture_seed: int


def draw_attributes(spec: ChestCTSpec, pop: PopulationSpec, rng: np.random.Generator) -> tuple[int, dict]:
    """Label and subgroup attributes of one case (the first draws of its stream)."""
    label = int(rng.random() < pop.prevalence)
    attributes: dict[str, str] = {}
    for att in chest_ct_attributes(spec):
        if att.lesion_level and not label:
            attributes[att.name] = "none"
            continue
        attributes[att.name] = draw_level(rng, pop.attributes.get(att.name, att.levels))
    return label, attributes


def _draw_case(spec: ChestCTSpec, pop: PopulationSpec, seed: int, index: int) -> _Draw:
    rng = case_rng(seed, STREAM_CASE, index)
    label, attributes = draw_attributes(spec, pop, rng)
    min_r = max(spec.min_vessel_radius_mm, 0.5 * min(spec.spacing_mm[1:]))
    layout = draw_layout(rng, attributes["sex"], attributes["bmi_band"], min_r, spec.vessel_generations)
    hu = tissue_hu(spec, attributes)
    nodule, core, lesion = np.zeros((0, 8)), np.zeros((0, 8)), None
    if label:
        lo, hi = spec.lesion_size_bands_mm[attributes["lesion_size"]]
        caps, core, lesion = make_nodule(
            rng, attributes["lesion_type"], attributes["margin"], rng.uniform(lo, hi), hu
        )
        centre, side = _place(spec, rng, layout, caps)
        nodule, core = translate(caps, centre), translate(core, centre)
        lesion = {**lesion, "side": "RL"[side], "centre_mm": [float(c) for c in centre]}
    texture_seed = int(rng.integers(2**62))
    return _Draw(label, attributes, layout, hu, nodule, core, lesion, texture_seed)


def _place(
    spec: ChestCTSpec, rng: np.random.Generator, layout: ChestLayout, caps: np.ndarray
) -> tuple[np.ndarray, int]:
    """A nodule centre inside a lung, clear of the lung surface, heart, airways and bones."""
    reach = extent_mm(caps)
    radius = float(caps[0, 6])
    body = radius + 0.3 * (reach - radius)  # spicules may reach towards the pleura (pleural tags)
    fov_half = (np.array(spec.shape) - 1) / 2 * np.array(spec.spacing_mm)
    tubes = layout.tubes
    solid = np.concatenate([tubes["great_vessel"], tubes["airway_wall"], tubes["cortical_bone"]])
    spine_y, spine_x, spine_r, _ = layout.spine
    for _ in range(2000):
        side = int(rng.integers(2))
        lung = layout.lungs[side]
        d = rng.normal(size=3)
        centre = lung.centre + rng.uniform(0.0, 0.85) * lung.half_axes * d / np.linalg.norm(d)
        rho = float(lung.rho(centre))
        if (1.0 - rho) * lung.half_axes.min() < body + 3.0:
            continue
        if np.any(np.abs(centre) > fov_half - reach - np.array(spec.spacing_mm)):
            continue
        if layout.heart.rho(centre) < 1.0 + (body + 3.0) / layout.heart.half_axes.min():
            continue
        if np.hypot(centre[1] - spine_y, centre[2] - spine_x) < spine_r + body + 3.0:
            continue
        point = centre[None]
        if len(solid) and capsule_sd_points(point, solid)[0] < body + 2.0:
            continue
        vessels = tubes["pulmonary_vessel"]
        if len(vessels) and capsule_sd_points(point, vessels)[0] < radius - spec.nodule_vessel_overlap_mm:
            continue
        return centre, side
    fov = " x ".join(f"{2 * h:.0f}" for h in fov_half)
    raise ValueError(
        f"no room for a {2 * reach:.1f} mm nodule inside the lungs within the {fov} mm field of view "
        "(expected a field of view that covers the lungs: about 160 x 350 x 350 mm for an adult chest)"
    )


def _extruded(half_xy: Sequence[tuple[float, float]], centre_yx=None) -> tuple[np.ndarray, np.ndarray]:
    """Centres and half axes of z-extruded ellipses with half axes ``(x, y)``."""
    centre = (
        np.zeros((len(half_xy), 3)) if centre_yx is None else np.array([[0.0, y, x] for y, x in centre_yx])
    )
    return centre, np.array([[np.inf, hy, hx] for hx, hy in half_xy])


def _paint_anatomy(cv: Canvas, draws: Sequence[_Draw]) -> None:
    lay = [d.layout for d in draws]
    cv.paint_ellipsoids(*_extruded([x.body for x in lay]), HU["subcutaneous_fat"], LABEL["subcutaneous_fat"])
    inner = [(x.body[0] - x.fat_mm, x.body[1] - x.fat_mm) for x in lay]
    cv.paint_ellipsoids(*_extruded(inner), HU["muscle"], LABEL["muscle"])
    cv.paint_ellipsoids(*_extruded([x.cavity for x in lay]), HU["mediastinal_fat"], LABEL["mediastinal_fat"])
    for organ, shapes in (
        ("lung", [x.lungs[0] for x in lay]),
        ("lung", [x.lungs[1] for x in lay]),
        ("heart", [x.heart for x in lay]),
    ):
        centre, half = np.stack([e.centre for e in shapes]), np.stack([e.half_axes for e in shapes])
        cv.paint_ellipsoids(centre, half, HU[organ], LABEL[organ])
    cv.paint(cv.union_sd([x.tubes["great_vessel"] for x in lay]), HU["great_vessel"], LABEL["great_vessel"])
    vessels = cv.union_sd([x.tubes["pulmonary_vessel"] for x in lay])
    cv.paint(vessels, HU["pulmonary_vessel"], LABEL["pulmonary_vessel"], within=LABEL["lung"])
    for name in ("airway_wall", "airway_lumen"):
        cv.paint(cv.union_sd([x.tubes[name] for x in lay]), HU[name], LABEL[name])
    _paint_spine(cv, draws)
    trabecular = cv.column([d.hu["trabecular_bone"] for d in draws])
    cv.paint(
        cv.union_sd([x.tubes["cortical_bone"] for x in lay]), HU["cortical_bone"], LABEL["cortical_bone"]
    )
    cv.paint(cv.union_sd([x.tubes["trabecular_bone"] for x in lay]), trabecular, LABEL["trabecular_bone"])


def _paint_spine(cv: Canvas, draws: Sequence[_Draw]) -> None:
    """Vertebral body column: cortical shell, trabecular core, intervertebral discs 5 mm thick."""
    lay = [d.layout for d in draws]
    centre, half = _extruded([(x.spine[2], x.spine[2]) for x in lay], [(x.spine[0], x.spine[1]) for x in lay])
    column = cv.paint_ellipsoids(centre, half, HU["cortical_bone"], LABEL["cortical_bone"])
    window = cv.window(*_box(centre, half + cv.ramp_mm))
    trabecular = cv.column([d.hu["trabecular_bone"] for d in draws])
    cv.paint(column + 2.5, trabecular, LABEL["trabecular_bone"], window=window)
    period = cv.column([x.disc_period_mm for x in lay])
    phase = torch.remainder(cv.coords(window)[0] - cv.column([x.spine[3] for x in lay]), period)
    disc = torch.minimum(phase, period - phase) - 2.5
    cv.paint(
        torch.maximum(column, disc), HU["intervertebral_disc"], LABEL["intervertebral_disc"], window=window
    )


def _box(centre: np.ndarray, reach: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (centre - reach).min(0), (centre + reach).max(0)


def _add_lung_texture(cv: Canvas, draws: Sequence[_Draw], sd_hu: float) -> None:
    """Add a smooth zero-mean Gaussian texture of SD ``sd_hu`` to the lung voxels.

    I.i.d. normals on a grid of about :data:`TEXTURE_CELL_MM` cells (counter-based, so the same on every
    device and batch layout), trilinearly interpolated and scaled by ``sqrt(27 / 8)``, the inverse of
    the mean variance of a trilinear interpolant, so that the SD averaged over the volume is ``sd_hu``.
    """
    extent = [n * s for n, s in zip(cv.shape, cv.spacing, strict=True)]
    coarse = tuple(max(2, int(np.ceil(e / TEXTURE_CELL_MM)) + 1) for e in extent)
    seeds = torch.tensor([d.texture_seed for d in draws], dtype=torch.int64, device=cv.device)
    field = standard_normal(seeds, (1, *coarse))
    fine = torch.nn.functional.interpolate(field, size=cv.shape, mode="trilinear", align_corners=True)[:, 0]
    lung = cv.labels == LABEL["lung"]
    cv.image.add_(torch.where(lung, fine * (sd_hu * (27.0 / 8.0) ** 0.5), torch.zeros_like(fine)))


def generate_chest_ct(
    spec: ChestCTSpec, population: PopulationSpec, seed: int, indices: Sequence[int], device: torch.device
) -> CaseBatch:
    """Render cases ``indices`` of the population as a batch on ``device``.

    Returns:
        A :class:`CaseBatch` with ``image`` in HU, shape ``(B, 1, D, H, W)``, the nodule mask, the organ
        label map (:data:`ORGANS`) and one lesion record per positive case.
    """
    draws = [_draw_case(spec, population, seed, i) for i in indices]
    cv = Canvas(len(draws), spec.shape, spec.spacing_mm, device, HU["background"])
    _paint_anatomy(cv, draws)
    if spec.lung_texture_hu > 0:
        _add_lung_texture(cv, draws, spec.lung_texture_hu)
    nodule = cv.union_sd([d.nodule for d in draws])
    value = cv.column([d.lesion["hu"] if d.lesion else 0.0 for d in draws])
    cv.paint(nodule, value, LABEL["nodule"])
    cv.paint(cv.union_sd([d.core for d in draws]), spec.solid_hu, LABEL["nodule_solid_core"])
    inside = nodule.index[nodule.sd <= 0.0]
    mask = torch.zeros_like(cv.labels, dtype=torch.bool)
    mask.view(-1)[inside] = True
    voxel_mm3 = float(np.prod(spec.spacing_mm))
    case = inside // cv.voxels
    counts = torch.bincount(case, minlength=cv.batch)
    values = cv.image.view(-1)[inside].to(torch.float64)
    sums = torch.zeros(cv.batch, dtype=torch.float64, device=cv.device).index_add_(0, case, values)
    lesions = []
    for d, n, total in zip(draws, counts.tolist(), sums.tolist(), strict=True):
        if d.lesion is None:
            lesions.append(())
            continue
        mean_hu = total / n if n else float("nan")
        lesions.append(({**d.lesion, "volume_mm3": n * voxel_mm3, "mean_hu": mean_hu},))
    return CaseBatch(
        image=cv.image.unsqueeze(1),
        mask=mask.unsqueeze(1),
        spacing_mm=tuple(spec.spacing_mm),
        modality="CT",
        case_index=tuple(int(i) for i in indices),
        label=tuple(d.label for d in draws),
        attributes=tuple(d.attributes for d in draws),
        lesions=tuple(lesions),
        organs=cv.labels.unsqueeze(1),
        organ_names=ORGANS,
        generator="chest_ct",
    )


PHANTOMS.register(
    "chest_ct",
    PhantomGenerator(
        name="chest_ct",
        description="Chest CT in HU (ribs, airways, vessel trees); solid, part-solid or ground-glass nodule",
        modality="CT",
        spec=ChestCTSpec,
        attributes=chest_ct_attributes,
        generate=generate_chest_ct,
    ),
)
