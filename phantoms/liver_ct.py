"""Abdominal CT phantom in HU for liver lesions: three contrast phases, fatty liver, four lesion types.

Anatomy: :mod:`phantoms.abdomen_anatomy`, rendered in one batch on the device. HU depend on the contrast
phase, trabecular bone on the age band, the liver on a fatty-liver draw more likely with BMI and age.
Positive cases carry 1 to ``max_lesions`` lesions of the case's type and size band inside the liver
(placement: :func:`_place`). Values and sources: docs/phantoms-liver-ct.md. The lesion mask is exact
(voxel centre inside a lesion surface); a voxel's organ label is the last structure containing its centre.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from phantoms import abdomen_anatomy as anat
from phantoms import abdomen_shapes as shapes
from phantoms.abdomen_anatomy import LABEL, ORGANS, AbdomenLayout
from phantoms.base import PHANTOMS, Attribute, CaseBatch, PhantomGenerator, PhantomSpec
from phantoms.nodules import extent_mm, shape_volume, translate, unit_shape
from phantoms.population import PopulationSpec, case_rng, draw_level
from phantoms.render import Canvas, SparseSD, capsule_sd_points

STREAM_CASE = 1  # stream id of the per-case draws (phantoms.population.case_rng)
PHASES = ("unenhanced", "arterial", "portal_venous")
SCAN_DELAY_S = {"unenhanced": None, "arterial": 35, "portal_venous": 70}
# HU per phase (unenhanced, late arterial, portal venous); sources in docs/phantoms-liver-ct.md.
TISSUE_HU = {
    "background": (-1000, -1000, -1000),
    "subcutaneous_fat": (-100, -100, -100),
    "muscle": (50, 55, 60),
    "visceral_fat": (-100, -100, -100),
    "lung": (-850, -850, -850),
    "heart": (40, 200, 150),
    "stomach": (40, 70, 85),
    "gi_fluid": (10, 10, 10),
    "gi_gas": (-1000, -1000, -1000),
    "spleen": (47, 140, 120),
    "pancreas": (45, 115, 95),
    "liver": (60, 80, 108),
    "gallbladder": (10, 10, 10),
    "hepatic_vein": (40, 60, 145),
    "portal_vein": (40, 130, 170),
    "kidney_cortex": (33, 190, 170),
    "kidney_medulla": (30, 80, 130),
    "aorta": (40, 300, 155),
    "ivc": (40, 80, 130),
    "bowel": (40, 70, 85),
    "spinal_canal": (15, 15, 15),
    "cortical_bone": (1000, 1000, 1000),
    "intervertebral_disc": (90, 90, 90),
}
TRABECULAR_HU = {"18-39": 230.0, "40-64": 180.0, "65+": 130.0}
AGE_BANDS = tuple(TRABECULAR_HU)
STEATOSIS_PROBABILITY = {"normal": 0.12, "overweight": 0.30, "obese": 0.55}  # times the age factor
STEATOSIS_AGE_FACTOR = {"18-39": 0.7, "40-64": 1.0, "65+": 1.2}
STEATOSIS_DROP_HU = (10.0, 35.0)  # liver attenuation lost to fat, uniform, all phases
LESION_TYPES = ("cyst", "metastasis", "hcc", "haemangioma")
# (core, rim) HU per phase; the rim of an HCC is its capsule, of a haemangioma its peripheral nodules.
LESION_HU = {
    "cyst": ((8, 8, 8), None),
    "metastasis": ((40, 55, 65), (45, 90, 100)),
    "hcc": ((42, 125, 85), (42, 125, 115)),
    "haemangioma": ((40, 60, 120), (40, 280, 155)),
}
METASTASIS_RIM_PROBABILITY = 0.6
LESION_GAP_MM = 2.0  # between lesion surfaces
PLACEMENT_BATCH, PLACEMENT_ROUNDS = 256, 40
EMPTY = np.zeros((0, 8))
RANGES = {  # field: (low, high, unit) of every value
    "shape": (8, 1024, "voxels"),
    "lesion_size_bands_mm": (2.0, 80.0, "mm"),
    "spacing_mm": (0.05, 50.0, "mm"),
    "max_lesions": (1, 10, "lesions"),
    "vessel_generations": (1, 8, "generations"),
    "min_vessel_radius_mm": (0.1, 5.0, "mm"),
    "lesion_margin_mm": (0.0, 20.0, "mm"),
    "lesion_vessel_overlap_mm": (0.0, 10.0, "mm"),
}


class LiverCTSpec(PhantomSpec):
    """Settings of the ``liver_ct`` generator.

    Attributes:
        shape: volume size in voxels ``(D, H, W)``.
        spacing_mm: voxel size ``(D, H, W)`` in mm; the default grid covers 240 x 352 x 448 mm.
        lesion_size_bands_mm: sphere-equivalent diameter range ``[low, high)`` in mm per size band.
        max_lesions: a positive case carries 1 to this many lesions (uniform).
        vessel_generations: generations of each portal and hepatic vein tree.
        min_vessel_radius_mm: thinnest vessel drawn; never below half the in-plane voxel size.
        lesion_margin_mm: least distance from a lesion to the liver surface and to the gallbladder,
            kidneys, spine, IVC, aorta and portal trunk, mm.
        lesion_vessel_overlap_mm: how far a hepatic vessel may reach into a lesion, mm.
    """

    shape: tuple[int, int, int] = Field((48, 88, 112), description="D, H, W [voxels]")
    spacing_mm: tuple[float, float, float] = Field((5.0, 4.0, 4.0), description="D, H, W voxel size [mm]")
    lesion_size_bands_mm: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"small": (5.0, 10.0), "medium": (10.0, 20.0), "large": (20.0, 35.0)},
        description="sphere-equivalent diameter range per size band [mm]",
    )
    max_lesions: int = Field(3, description="most lesions per positive case [count]")
    vessel_generations: int = Field(4, description="generations per hepatic vessel tree [count]")
    min_vessel_radius_mm: float = Field(1.0, description="thinnest vessel [mm]")
    lesion_margin_mm: float = Field(3.0, description="clearance from the liver surface and organs [mm]")
    lesion_vessel_overlap_mm: float = Field(1.0, description="vessel reach into a lesion [mm]")

    @field_validator(*RANGES)
    @classmethod
    def _in_range(cls, v: Any, info: ValidationInfo) -> Any:
        lo, hi, unit = RANGES[info.field_name]
        bands = isinstance(v, dict)
        values = [x for band in v.values() for x in band] if bands else np.atleast_1d(v).tolist()
        ordered = all(low < high for low, high in v.values()) if bands else True
        if not (values and ordered and all(lo <= x <= hi for x in values)):
            each = "each value " if isinstance(v, tuple) else ""
            rule = (
                f"{lo} <= low < high <= {hi} {unit} in every band"
                if bands
                else f"{each}in [{lo}, {hi}] {unit}"
            )
            raise ValueError(f"{info.field_name} is out of range (expected {rule}, got {v})")
        return v


def liver_ct_attributes(spec: LiverCTSpec) -> tuple[Attribute, ...]:
    """Subgroup attributes of ``liver_ct`` (lesion-size levels come from the spec's bands)."""
    bands, bmi = tuple(spec.lesion_size_bands_mm), tuple(anat.SUBCUTANEOUS_FAT_MM)
    fatty = "fatty liver (-10 to -35 HU) in 12/30/55% of cases x the age factor"
    return (
        Attribute(name="sex", levels=tuple(anat.SEX_SCALE), effect="body size x0.92 for female"),
        Attribute(
            name="age_band", levels=AGE_BANDS, effect="trabecular bone 230/180/130 HU; fatty liver x0.7/1/1.2"
        ),
        Attribute(name="bmi_band", levels=bmi, effect=f"subcutaneous and visceral fat thickness; {fatty}"),
        Attribute(
            name="contrast_phase", levels=PHASES, effect="organ, vessel and lesion HU (table per phase)"
        ),
        Attribute(name="lesion_type", levels=LESION_TYPES, lesion_level=True, effect="lesion HU, rim, shape"),
        Attribute(name="lesion_size", levels=bands, lesion_level=True, effect="lesion diameter band (mm)"),
    )


def tissue_hu(phase: str, age_band: str, liver_drop_hu: float = 0.0) -> dict[str, float]:
    """Specified HU of every anatomical label for a contrast phase, age band and fatty-liver drop."""
    column = PHASES.index(phase)
    hu = {name: float(values[column]) for name, values in TISSUE_HU.items()}
    hu["liver"] -= liver_drop_hu
    hu["trabecular_bone"] = TRABECULAR_HU[age_band]
    return hu


@dataclass(frozen=True, slots=True)
class LiverCase:
    """Host-side description of one case (mm): attributes, anatomy, specified HU and placed lesions.

    ``bodies`` holds each lesion's capsules. A lesion with ``rims[k] > 0`` is a rim (label ``lesion_rim``,
    HU ``rim_hu``) around a core (label ``lesion``, HU ``hu``) bounded by its surface moved ``rims[k]``
    inwards; ``nodules`` are the peripheral nodules of haemangiomas. ``records`` lack volume and mean HU.
    """

    label: int
    attributes: dict[str, str]
    layout: AbdomenLayout
    hu: dict[str, float]
    bodies: tuple[np.ndarray, ...] = ()
    rims: tuple[float, ...] = ()
    nodules: np.ndarray = field(default_factory=lambda: EMPTY)
    records: tuple[dict[str, Any], ...] = ()


def draw_attributes(
    spec: LiverCTSpec, pop: PopulationSpec, rng: np.random.Generator
) -> tuple[int, dict[str, str]]:
    """Label and subgroup attributes of one case (the first draws of its stream)."""
    label = int(rng.random() < pop.prevalence)
    attributes = {}
    for att in liver_ct_attributes(spec):
        lesionless = att.lesion_level and not label
        attributes[att.name] = (
            "none" if lesionless else draw_level(rng, pop.attributes.get(att.name, att.levels))
        )
    return label, attributes


def draw_case(spec: LiverCTSpec, pop: PopulationSpec, seed: int, index: int) -> LiverCase:
    """Everything random about case ``index``: a pure function of ``(spec, pop, seed, index)``."""
    rng = case_rng(seed, STREAM_CASE, index)
    label, att = draw_attributes(spec, pop, rng)
    min_r = max(spec.min_vessel_radius_mm, 0.5 * min(spec.spacing_mm[1:]))
    layout = anat.draw_layout(rng, att["sex"], att["bmi_band"], min_r, spec.vessel_generations)
    fatty = rng.random() < STEATOSIS_PROBABILITY[att["bmi_band"]] * STEATOSIS_AGE_FACTOR[att["age_band"]]
    drop = rng.uniform(*STEATOSIS_DROP_HU)
    hu = tissue_hu(att["contrast_phase"], att["age_band"], drop if fatty else 0.0)
    if not label:
        return LiverCase(label, att, layout, hu)
    kind, phase = att["lesion_type"], PHASES.index(att["contrast_phase"])
    rimmed = kind == "hcc" or (kind == "metastasis" and rng.random() < METASTASIS_RIM_PROBABILITY)
    count = int(rng.integers(spec.max_lesions)) + 1
    diameters = np.sort(rng.uniform(*spec.lesion_size_bands_mm[att["lesion_size"]], count))[::-1]
    shapes = [_lesion_shape(rng, kind, float(d), rimmed) for d in diameters]
    centres = _place(spec, rng, layout, [body for body, _, _ in shapes])
    core_hu, rim_hu = (None if v is None else float(v[phase]) for v in LESION_HU[kind])
    records = tuple(
        {
            "type": kind,
            "centre_mm": [float(c) for c in centre],
            "diameter_mm": float(d),
            "nominal_volume_mm3": math.pi * float(d) ** 3 / 6.0,
            "hu": core_hu,
            "rim_hu": rim_hu if rimmed or kind == "haemangioma" else None,
            "rim_mm": rim,
            "liver_hu": hu["liver"],
        }
        for (_, _, rim), centre, d in zip(shapes, centres, diameters, strict=True)
    )
    bodies = tuple(translate(body, c) for (body, _, _), c in zip(shapes, centres, strict=True))
    nodules = np.concatenate([translate(nod, c) for (_, nod, _), c in zip(shapes, centres, strict=True)])
    return LiverCase(label, att, layout, hu, bodies, tuple(r for _, _, r in shapes), nodules, records)


def _lesion_shape(
    rng: np.random.Generator, kind: str, d: float, rimmed: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(body, nodules, rim_mm)`` of a lesion of sphere-equivalent diameter ``d`` (mm) at the origin.

    Metastases are lobulated (a sphere with 2-4 lobes, scaled to the volume of the sphere of diameter ``d``
    by quasi-Monte Carlo, :func:`phantoms.nodules.shape_volume`), the other types spheres. A rimmed lesion's
    rim is 10% (metastasis) or 8% (HCC capsule) of ``d``, 1-3 mm; a haemangioma has 4-7 peripheral nodules
    of 15-25% of its radius centred at 0.8 of its radius.
    """
    r = d / 2.0
    body = np.array([[0.0] * 6 + [r, r]])
    if kind == "metastasis":
        unit = unit_shape(rng, "lobulated")
        body = unit * (math.pi * d**3 / 6.0 / shape_volume(unit, rng.random(3))) ** (1.0 / 3.0)
    rim = float(np.clip((0.1 if kind == "metastasis" else 0.08) * d, 1.0, 3.0)) if rimmed else 0.0
    if kind != "haemangioma":
        return body, EMPTY, rim
    u = rng.normal(size=(int(rng.integers(4, 8)), 3))
    u *= 0.8 * r / np.linalg.norm(u, axis=1, keepdims=True)
    radius = rng.uniform(0.15, 0.25, (len(u), 1)) * r
    return body, np.concatenate([u, u, radius, radius], axis=1), rim


def _at(shape: anat.Shape, points: np.ndarray, p: anat.Params) -> np.ndarray:
    """A shape's signed distance (mm) at host points ``(N, 3)``, in float64."""
    t = torch.as_tensor(points, dtype=torch.float64).T.reshape(3, 1, -1, 1, 1)
    return shape(t[0], t[1], t[2], p).reshape(-1).numpy()


def _clearance(z: torch.Tensor, y: torch.Tensor, x: torch.Tensor, p: anat.Params) -> torch.Tensor:
    """Distance (mm) to what is painted over the liver: gallbladder, kidneys, spine, back muscles."""
    d = shapes.blob_sd(z, y, x, p["gallbladder"][:, 0])
    for side in range(2):
        d = torch.minimum(d, shapes.blob_sd(z, y, x, p["kidney"][:, side]))
    for e in (p["spine"][:, 0], *p["paraspinal"].unbind(1)):
        d = torch.minimum(d, shapes.ellipse_sd(y, x, e))
    return d


def _place(
    spec: LiverCTSpec, rng: np.random.Generator, layout: AbdomenLayout, bodies: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Lesion centres (mm) inside the liver, by rejection sampling in batches of candidates."""
    p = shapes.stack_shapes([layout], torch.device("cpu"), torch.float64)
    lo, hi = shapes.blob_box(layout.shapes["liver"])
    fov = (np.array(spec.shape) - 1) / 2 * np.array(spec.spacing_mm)
    tubes = layout.tubes
    solid = np.concatenate([tubes[k] for k in ("aorta", "ivc", "portal_vein", "psoas", "bone")])
    trees = np.concatenate([tubes["portal_tree"], tubes["hepatic_vein"]])
    margin, placed = spec.lesion_margin_mm, []
    for i, body in enumerate(bodies):
        e = extent_mm(body)
        for _ in range(PLACEMENT_ROUNDS):
            c = rng.uniform(lo, hi, (PLACEMENT_BATCH, 3))
            c = c[np.all(np.abs(c) <= fov - e - max(spec.spacing_mm), axis=1)]
            c = c[_at(shapes.liver_sd, c, p) <= -(e + margin)]
            c = c[_at(_clearance, c, p) >= e + margin]
            for q, f in placed:
                c = c[np.linalg.norm(c - q, axis=1) >= e + f + LESION_GAP_MM]
            if len(c):
                c = c[capsule_sd_points(c, solid) >= e + margin]
            if len(c) and len(trees):
                c = c[capsule_sd_points(c, trees) >= e - spec.lesion_vessel_overlap_mm]
            if len(c):
                placed.append((c[0], e))
                break
        else:
            raise ValueError(
                f"no room for lesion {i + 1} of {len(bodies)} ({2 * e:.1f} mm) in the liver within the "
                f"{' x '.join(f'{2 * h:.0f}' for h in fov)} mm field of view (expected a field of view that "
                "covers the liver, about 240 x 300 x 400 mm, or smaller or fewer lesions)"
            )
    return [q for q, _ in placed]


def _paint_lesions(cv: Canvas, draws: Sequence[LiverCase]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Paint every lesion; return the lesion mask (flat) and, per lesion slot, its mask voxels."""
    first = [d.records[0] if d.records else {"hu": 0.0, "rim_hu": 0.0} for d in draws]
    body_hu = cv.column(
        [f["rim_hu"] if d.rims and d.rims[0] else f["hu"] for f, d in zip(first, draws, strict=True)]
    )
    mask, slots = torch.zeros(cv.batch * cv.voxels, dtype=torch.bool, device=cv.device), []
    for slot in range(max(len(d.bodies) for d in draws)):
        sd = cv.union_sd([d.bodies[slot] if slot < len(d.bodies) else EMPTY for d in draws])
        rims = [d.rims[slot] if slot < len(d.rims) else 0.0 for d in draws]
        rim = torch.as_tensor(rims, dtype=torch.float32, device=cv.device)[sd.index // cv.voxels]
        cv.paint(sd, body_hu, LABEL["lesion"])
        inside = sd.sd <= 0.0
        cv.labels.view(-1)[sd.index[inside & (rim > 0)]] = LABEL["lesion_rim"]
        core = SparseSD(sd.index[rim > 0], sd.sd[rim > 0] + rim[rim > 0])
        cv.paint(core, cv.column([f["hu"] for f in first]), LABEL["lesion"], LABEL["lesion_rim"])
        mask[sd.index[inside]] = True
        slots.append(sd.index[inside])
    nodules = cv.union_sd([d.nodules for d in draws])
    cv.paint(nodules, cv.column([f["rim_hu"] or 0.0 for f in first]), LABEL["lesion_rim"], LABEL["lesion"])
    return mask, slots


def generate_liver_ct(
    spec: LiverCTSpec, population: PopulationSpec, seed: int, indices: Sequence[int], device: torch.device
) -> CaseBatch:
    """Render cases ``indices`` of the population as a batch on ``device``.

    Returns:
        A :class:`CaseBatch` with ``image`` in HU, shape ``(B, 1, D, H, W)``, the union of the lesion masks,
        the organ label map (:data:`ORGANS`) and one record per lesion.
    """
    draws = [draw_case(spec, population, seed, i) for i in indices]
    cv = Canvas(len(draws), spec.shape, spec.spacing_mm, device, TISSUE_HU["background"][0])
    shapes.paint_anatomy(
        cv, [d.layout for d in draws], {k: cv.column([d.hu[k] for d in draws]) for k in draws[0].hu}
    )
    mask, slots = _paint_lesions(cv, draws)
    voxel_mm3, lesions = float(np.prod(spec.spacing_mm)), [[] for _ in draws]
    for slot, voxels in enumerate(slots):
        case = voxels // cv.voxels
        values = cv.image.view(-1)[voxels].to(torch.float64)
        sums = torch.zeros(cv.batch, dtype=torch.float64, device=device).index_add_(0, case, values).tolist()
        for b, n in enumerate(torch.bincount(case, minlength=cv.batch).tolist()):
            if slot < len(draws[b].records):
                record = {"volume_mm3": n * voxel_mm3, "mean_hu": sums[b] / n if n else float("nan")}
                lesions[b].append({**draws[b].records[slot], **record})
    labels, attributes = tuple(d.label for d in draws), tuple(d.attributes for d in draws)
    phases = [a["contrast_phase"] for a in attributes]
    acquisition = tuple({"contrast_phase": ph, "scan_delay_s": SCAN_DELAY_S[ph]} for ph in phases)
    image, organs = cv.image.unsqueeze(1), cv.labels.unsqueeze(1)
    return CaseBatch(
        image=image,
        mask=mask.view(organs.shape),
        spacing_mm=tuple(spec.spacing_mm),
        modality="CT",
        case_index=tuple(map(int, indices)),
        label=labels,
        attributes=attributes,
        lesions=tuple(map(tuple, lesions)),
        organs=organs,
        organ_names=ORGANS,
        generator="liver_ct",
        acquisition=acquisition,
    )


PHANTOMS.register(
    "liver_ct",
    PhantomGenerator(
        name="liver_ct",
        description="Abdominal CT in HU (liver, spleen, kidneys, vessels, spine) in three contrast phases; "
        "liver cysts, metastases, HCC or haemangiomas",
        modality="CT",
        spec=LiverCTSpec,
        attributes=liver_ct_attributes,
        generate=generate_liver_ct,
    ),
)
