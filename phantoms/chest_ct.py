"""A chest-CT-like phantom in HU with an optional solid nodule and its exact mask.

Anatomy is laid out in millimetres in the axial plane (x: patient left-right, y: anterior ->
posterior) and extruded along z with ellipsoidal lungs and heart: body outline with subcutaneous
fat whose thickness follows the BMI band, a muscle wall, mediastinal fat, two lungs with a
branching set of vessels from each hilum, heart, descending aorta and a vertebral body with a
cortical shell. Sex scales the body (female 0.92). Tissue values (HU) are textbook figures
(Kalender, *Computed Tomography*, 2011, table 1.1; Hounsfield 1973).

Positive cases carry one solid nodule inside a lung, spherical or lobulated (a union of spheres),
whose diameter is drawn uniformly from the case's lesion-size band. Structures are rendered with a
one-voxel partial-volume ramp on their signed distance; the lesion mask is exact: a voxel is in
the mask iff its centre lies inside the nodule surface.

Everything random is drawn on the host per case from ``case_rng(seed, case_index)`` (a few dozen
scalars); the voxels of a whole batch are then rendered on the device in one pass per structure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor

from phantoms.base import PHANTOMS, Attribute, CaseBatch, PhantomGenerator, PhantomSpec
from phantoms.population import PopulationSpec, case_rng, draw_level

STREAM_CASE = 1  # stream id of the per-case phantom draws (see phantoms.population.case_rng)

HU = {
    "air": -1000.0,
    "lung": -850.0,
    "fat": -100.0,
    "mediastinum": -80.0,
    "muscle": 50.0,
    "blood": 40.0,
    "trabecular_bone": 250.0,
    "cortical_bone": 1000.0,
}
FAT_MM = {"normal": (8.0, 14.0), "overweight": (16.0, 24.0), "obese": (28.0, 40.0)}
SEX_SCALE = {"female": 0.92, "male": 1.0}


class ChestCTSpec(PhantomSpec):
    """Settings of the ``chest_ct`` generator.

    Attributes:
        shape: volume size in voxels ``(D, H, W)``.
        spacing_mm: voxel size ``(D, H, W)`` in mm.
        nodule_hu: attenuation of the solid nodule, HU.
        lesion_size_bands_mm: diameter range ``[low, high)`` in mm for each lesion-size band.
        lobulated_fraction: probability that a nodule is lobulated rather than spherical.
        vessels_per_lung: number of vessel segments drawn in each lung.
        vessel_radius_mm: range ``[low, high]`` of vessel radii in mm (uniform).
    """

    shape: tuple[int, int, int] = Field((40, 80, 80), description="D, H, W [voxels]")
    spacing_mm: tuple[float, float, float] = Field((4.0, 4.0, 4.0), description="D, H, W voxel size [mm]")
    nodule_hu: float = Field(30.0, ge=-1000.0, le=3000.0, description="nodule attenuation [HU]")
    lesion_size_bands_mm: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"small": (8.0, 12.0), "large": (12.0, 20.0)},
        description="diameter range per size band [mm]",
    )
    lobulated_fraction: float = Field(0.5, ge=0.0, le=1.0, description="probability of a lobulated nodule")
    vessels_per_lung: int = Field(6, ge=0, le=64, description="vessel segments per lung [count]")
    vessel_radius_mm: tuple[float, float] = Field((0.75, 2.0), description="vessel radius range [mm]")

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

    @field_validator("vessel_radius_mm")
    @classmethod
    def _vessels(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.1 <= v[0] <= v[1] <= 20.0:
            raise ValueError(
                f"vessel_radius_mm is invalid (expected 0.1 <= low <= high <= 20 mm, got {list(v)})"
            )
        return v

    @field_validator("lesion_size_bands_mm")
    @classmethod
    def _bands(cls, v: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        if not v:
            raise ValueError("at least one lesion size band is needed (expected e.g. small: [6, 10])")
        for band, (lo, hi) in v.items():
            if not 0.5 <= lo < hi <= 60.0:
                raise ValueError(
                    f"band '{band}' is invalid (expected 0.5 <= low < high <= 60 mm, got [{lo}, {hi}])"
                )
        return v


def chest_ct_attributes(spec: ChestCTSpec) -> tuple[Attribute, ...]:
    """Subgroup attributes of ``chest_ct`` (lesion-size levels come from the spec's bands)."""
    return (
        Attribute(name="sex", levels=tuple(SEX_SCALE), effect="body size x0.92 for female"),
        Attribute(name="bmi_band", levels=tuple(FAT_MM), effect="subcutaneous fat thickness (mm)"),
        Attribute(
            name="lesion_size",
            levels=tuple(spec.lesion_size_bands_mm),
            lesion_level=True,
            effect="nodule diameter band (mm)",
        ),
    )


@dataclass(frozen=True, slots=True)
class _Draw:
    """Host-side per-case scalars (all lengths in mm)."""

    label: int
    attributes: dict[str, str]
    body: tuple[float, float, float]  # half-axes x, y of the outline; fat thickness
    lung_z: float  # z centre of both lungs
    vessels: np.ndarray  # (2 * vessels_per_lung, 7): p0 xyz, p1 xyz, radius
    spheres: np.ndarray  # (n, 4): centre zyx, radius (nodule = union); may be empty
    lesion: dict[str, Any] | None


def _anatomy(body_a: float, body_b: float, fat: float) -> dict[str, Any]:
    """Derived geometry (mm) of cavity, lungs, heart, aorta and spine from the outline."""
    ai, bi = body_a - fat - 15.0, body_b - fat - 15.0
    lung_a, lung_b = 0.42 * ai, 0.8 * bi
    return {
        "cavity": (ai, bi),
        "lungs": [((-0.5 * ai, -0.05 * bi), (lung_a, lung_b)), ((0.5 * ai, -0.05 * bi), (lung_a, lung_b))],
        "lung_hz": 150.0,
        "heart": ((0.1 * ai, -0.35 * bi), (0.3 * ai, 0.4 * bi), 90.0),
        "aorta": ((0.18 * ai, 0.55 * bi), 12.0),
        "spine": ((0.0, 0.88 * bi), 18.0),
    }


def _draw_case(spec: ChestCTSpec, pop: PopulationSpec, seed: int, index: int) -> _Draw:
    rng = case_rng(seed, STREAM_CASE, index)
    attrs_known = chest_ct_attributes(spec)
    label = int(rng.random() < pop.prevalence)
    attributes: dict[str, str] = {}
    for att in attrs_known:
        if att.lesion_level and not label:
            attributes[att.name] = "none"
            continue
        attributes[att.name] = draw_level(rng, pop.attributes.get(att.name, att.levels))
    scale = SEX_SCALE[attributes["sex"]] * rng.uniform(0.96, 1.04)
    fat = rng.uniform(*FAT_MM[attributes["bmi_band"]])
    body_a, body_b = 140.0 * scale + fat, 95.0 * scale + fat
    geo = _anatomy(body_a, body_b, fat)
    lung_z = rng.uniform(-15.0, 15.0)
    vessels = []
    for (cx, cy), (la, lb) in geo["lungs"]:
        hilum = np.array([cx - math.copysign(0.75 * la, cx), cy, lung_z])
        for _ in range(spec.vessels_per_lung):
            end = _point_in_ellipsoid(rng, (cx, cy, lung_z), (la, lb, geo["lung_hz"]), 0.5, 0.92)
            vessels.append([*hilum, *end, rng.uniform(*spec.vessel_radius_mm)])
    vessels_arr = np.array(vessels, dtype=np.float64).reshape(-1, 7)
    spheres = np.zeros((0, 4))
    lesion = None
    if label:
        spheres, lesion = _draw_nodule(spec, rng, geo, lung_z, attributes["lesion_size"])
    return _Draw(label, attributes, (body_a, body_b, fat), lung_z, vessels_arr, spheres, lesion)


def _point_in_ellipsoid(rng: np.random.Generator, centre, half_axes, rmin: float, rmax: float) -> list[float]:
    """Uniform direction, normalised radius in [rmin, rmax]: a point inside an ellipsoid (x, y, z)."""
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    r = rng.uniform(rmin, rmax)
    return [c + r * di * a for c, di, a in zip(centre, d, half_axes, strict=True)]


def _draw_nodule(
    spec: ChestCTSpec, rng: np.random.Generator, geo: dict[str, Any], lung_z: float, band: str
) -> tuple[np.ndarray, dict[str, Any]]:
    lo, hi = spec.lesion_size_bands_mm[band]
    diameter = rng.uniform(lo, hi)
    r = diameter / 2
    side = int(rng.integers(2))
    (cx, cy), (la, lb) = geo["lungs"][side]
    fov_half = [n * s / 2 for n, s in zip(spec.shape, spec.spacing_mm, strict=True)]  # z, y, x
    for _ in range(1000):
        x, y, z = _point_in_ellipsoid(rng, (cx, cy, lung_z), (la, lb, geo["lung_hz"]), 0.0, 0.8)
        rho = math.sqrt(((x - cx) / la) ** 2 + ((y - cy) / lb) ** 2 + ((z - lung_z) / geo["lung_hz"]) ** 2)
        inside_lung = (1.0 - rho) * min(la, lb) > 1.6 * r + 4.0
        inside_fov = all(
            abs(c) < half - 1.6 * r - step
            for c, half, step in zip((z, y, x), fov_half, spec.spacing_mm, strict=True)
        )
        if inside_lung and inside_fov:
            break
    else:
        raise ValueError(
            f"no room for a {diameter:.1f} mm nodule inside the lung within the "
            f"{' x '.join(f'{2 * h:.0f}' for h in fov_half)} mm field of view "
            "(expected a field of view that covers the lungs: about 160 x 350 x 350 mm for an adult chest)"
        )
    spheres = [[z, y, x, r]]
    lobulated = bool(rng.random() < spec.lobulated_fraction)
    if lobulated:
        for _ in range(int(rng.integers(2, 4))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            spheres.append(
                [z + 0.6 * r * d[0], y + 0.6 * r * d[1], x + 0.6 * r * d[2], r * rng.uniform(0.45, 0.65)]
            )
    lesion = {
        "type": "solid",
        "shape": "lobulated" if lobulated else "spherical",
        "side": "RL"[side],
        "diameter_mm": diameter,
        "hu": spec.nodule_hu,
    }
    return np.array(spheres, dtype=np.float64), lesion


def _grid(spec: ChestCTSpec, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Voxel-centre coordinates in mm, centred on the volume: z (D,1,1), y (1,H,1), x (1,1,W)."""
    axes = []
    for n, s in zip(spec.shape, spec.spacing_mm, strict=True):
        axes.append((torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * s)
    z, y, x = axes
    return z.view(1, -1, 1, 1), y.view(1, 1, -1, 1), x.view(1, 1, 1, -1)


def _col(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor(list(values), dtype=torch.float32, device=device).view(-1, 1, 1, 1)


def _ellipse_sd(x: Tensor, y: Tensor, cx: Tensor, cy: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Approximate signed distance (mm) to an axial ellipse, negative inside."""
    rho = torch.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return (rho - 1.0) * torch.minimum(a, b)


def _ellipsoid_sd(x, y, z, cx, cy, cz, a, b, c) -> Tensor:
    rho = torch.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2 + ((z - cz) / c) ** 2)
    return (rho - 1.0) * torch.minimum(torch.minimum(a, b), c)


def _segment_sd(x, y, z, seg: Tensor) -> Tensor:
    """Signed distance (mm) to capsules; ``seg`` is (B, 7): p0 xyz, p1 xyz, radius.

    Uses ``|r - t d|^2 = |r|^2 - 2 t (r.d) + t^2 |d|^2`` so that only the dot product and the final
    combination are full-volume operations (the per-axis terms broadcast from 1-D).
    """
    col = [seg[:, i].view(-1, 1, 1, 1) for i in range(7)]
    rel = [x - col[0], y - col[1], z - col[2]]
    d = [col[3] - col[0], col[4] - col[1], col[5] - col[2]]
    length2 = torch.clamp(d[0] ** 2 + d[1] ** 2 + d[2] ** 2, min=1e-6)
    dot = rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]
    t = torch.clamp(dot / length2, 0.0, 1.0)
    dist2 = (rel[0] ** 2 + rel[1] ** 2 + rel[2] ** 2) - t * (2.0 * dot - t * length2)
    return torch.sqrt(torch.clamp(dist2, min=0.0)) - col[6]


def _paint(img: Tensor, sd: Tensor, hu: float, ramp_mm: float, within: Tensor | None = None) -> Tensor:
    """Blend ``hu`` into ``img`` where ``sd < 0``, with a linear partial-volume ramp of one voxel."""
    frac = torch.clamp(0.5 - sd / ramp_mm, 0.0, 1.0)
    if within is not None:
        frac = frac * within
    return img + frac * (hu - img)


def generate_chest_ct(
    spec: ChestCTSpec, population: PopulationSpec, seed: int, indices: Sequence[int], device: torch.device
) -> CaseBatch:
    """Render cases ``indices`` of the population as a batch on ``device``.

    Returns:
        A :class:`CaseBatch` with ``image`` in HU, shape ``(B, 1, D, H, W)``.
    """
    draws = [_draw_case(spec, population, seed, i) for i in indices]
    z, y, x = _grid(spec, device)
    ramp = float(np.mean(spec.spacing_mm))
    b = len(draws)
    a_body = _col([d.body[0] for d in draws], device)
    b_body = _col([d.body[1] for d in draws], device)
    fat = _col([d.body[2] for d in draws], device)
    img = torch.full((b, *spec.shape), HU["air"], dtype=torch.float32, device=device)
    zero = torch.zeros_like(a_body)
    img = _paint(img, _ellipse_sd(x, y, zero, zero, a_body, b_body), HU["fat"], ramp)
    img = _paint(img, _ellipse_sd(x, y, zero, zero, a_body - fat, b_body - fat), HU["muscle"], ramp)
    geos = [_anatomy(*d.body) for d in draws]
    ai, bi = _col([g["cavity"][0] for g in geos], device), _col([g["cavity"][1] for g in geos], device)
    img = _paint(img, _ellipse_sd(x, y, zero, zero, ai, bi), HU["mediastinum"], ramp)
    lung_z = _col([d.lung_z for d in draws], device)
    lung_in = torch.zeros_like(img)
    for side in range(2):
        cx = _col([g["lungs"][side][0][0] for g in geos], device)
        cy = _col([g["lungs"][side][0][1] for g in geos], device)
        la = _col([g["lungs"][side][1][0] for g in geos], device)
        lb = _col([g["lungs"][side][1][1] for g in geos], device)
        sd = _ellipsoid_sd(x, y, z, cx, cy, lung_z, la, lb, torch.full_like(la, geos[0]["lung_hz"]))
        lung_in = torch.maximum(lung_in, torch.clamp(0.5 - sd / ramp, 0.0, 1.0))
        img = _paint(img, sd, HU["lung"], ramp)
    hx, hy = _col([g["heart"][0][0] for g in geos], device), _col([g["heart"][0][1] for g in geos], device)
    ha, hb = _col([g["heart"][1][0] for g in geos], device), _col([g["heart"][1][1] for g in geos], device)
    img = _paint(
        img,
        _ellipsoid_sd(x, y, z, hx, hy, lung_z - 30.0, ha, hb, torch.full_like(ha, 90.0)),
        HU["blood"],
        ramp,
    )
    for key, hu in (("aorta", HU["blood"]), ("spine", HU["cortical_bone"])):
        px, py = _col([g[key][0][0] for g in geos], device), _col([g[key][0][1] for g in geos], device)
        r = _col([g[key][1] for g in geos], device)
        img = _paint(img, _ellipse_sd(x, y, px, py, r, r), hu, ramp)
        if key == "spine":
            img = _paint(img, _ellipse_sd(x, y, px, py, r - 2.5, r - 2.5), HU["trabecular_bone"], ramp)
    n_vessels = draws[0].vessels.shape[0]
    if n_vessels:
        vessels = torch.tensor(np.stack([d.vessels for d in draws]), dtype=torch.float32, device=device)
        vessel_sd = _segment_sd(x, y, z, vessels[:, 0])
        for k in range(1, n_vessels):
            vessel_sd = torch.minimum(vessel_sd, _segment_sd(x, y, z, vessels[:, k]))
        img = _paint(img, vessel_sd, HU["blood"], ramp, within=lung_in)
    mask = torch.zeros(img.shape, dtype=torch.bool, device=device)
    n_spheres = max(d.spheres.shape[0] for d in draws)
    if n_spheres:
        # Pad every case to n_spheres with far-away empty spheres, then take the union (min distance).
        pad = np.array([[1e6, 1e6, 1e6, 0.0]])
        sph = np.stack(
            [np.concatenate([d.spheres, np.repeat(pad, n_spheres - len(d.spheres), 0)]) for d in draws]
        )
        sph_t = torch.tensor(sph, dtype=torch.float32, device=device)
        sd = torch.full_like(img, float("inf"))
        for k in range(n_spheres):
            c = [sph_t[:, k, i].view(-1, 1, 1, 1) for i in range(4)]
            sd = torch.minimum(sd, torch.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) - c[3])
        img = _paint(img, sd, spec.nodule_hu, ramp)
        mask = sd <= 0.0
    voxel_mm3 = float(np.prod(spec.spacing_mm))
    volumes = (mask.flatten(1).sum(dim=1).to(torch.float64) * voxel_mm3).tolist()
    lesions = []
    for d, vol in zip(draws, volumes, strict=True):
        if d.lesion is None:
            lesions.append(())
            continue
        centre = [float(v) for v in d.spheres[0, :3]]
        lesions.append(({**d.lesion, "centre_mm": centre, "volume_mm3": vol},))
    return CaseBatch(
        image=img.unsqueeze(1),
        mask=mask.unsqueeze(1),
        spacing_mm=tuple(spec.spacing_mm),
        modality="CT",
        case_index=tuple(int(i) for i in indices),
        label=tuple(d.label for d in draws),
        attributes=tuple(d.attributes for d in draws),
        lesions=tuple(lesions),
    )


PHANTOMS.register(
    "chest_ct",
    PhantomGenerator(
        name="chest_ct",
        description="Chest-CT-like volume in HU; positive cases carry a solid spherical/lobulated nodule",
        modality="CT",
        spec=ChestCTSpec,
        attributes=chest_ct_attributes,
        generate=generate_chest_ct,
    ),
)
