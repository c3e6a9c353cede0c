"""Brain MRI phantom: head anatomy in mm, MR signal from tissue relaxation, WMH or tumour lesions.

Anatomy (per case, mm, ``(z, y, x)`` with +x the patient's left, +y posterior, +z superior). The cerebral
hull is an ellipsoid deformed by low-order radial harmonics (a fixed adult shape plus per-case terms).
Sulci are CSF clefts cut radially into the hull along the nodal lines of a random wave field on its
surface (about 16 mm apart, 10-14 mm deep), the interhemispheric fissure is a midline cleft down to the
corpus callosum; gray matter is the parenchyma within ``T`` (2.5-3 mm) of a CSF surface, the rest is
white matter. The cerebellum (gray matter with a white matter core) and brainstem sit below; the
subarachnoid CSF, skull (tables of cortical bone around fatty diploe) and scalp (fat) are offset
surfaces of the smooth union of cerebrum, cerebellum and brainstem. Lateral ventricles are tapered
capsule chains (frontal horn, body, atrium, occipital and temporal horns; third and fourth ventricles
on the midline); caudate, thalamus and lentiform nuclei are ellipsoids of deep gray matter.

Signal (:mod:`phantoms.mri_signal`): each tissue's signal is computed from its T1, T2, T2* and PD at
the case's field strength under the spec's sequence, and partial volume blends *signals*: a voxel
holds the volume-weighted sum of its tissues' signals (the rasteriser's linear ramp).

Rendering is batched on the device (:mod:`phantoms.render`): dense signed distances over the heads'
bounding box, the sulcal field only on the cortical shell's voxels, capsules (ventricles, brainstem
nuclei, lesions) in their boxes. Host draws use ``case_rng(seed, 1, case)``: a case is the same alone or
in any batch. The lesion mask is exact (voxel centre inside a lesion surface).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from phantoms.base import PHANTOMS, Attribute, CaseBatch, PhantomGenerator
from phantoms.brain_anatomy import AGE_EFFECTS, SEX_SCALE, Geo, brain_fields, draw_geometry
from phantoms.brain_lesions import Lesion, draw_tumour, draw_wmh
from phantoms.mri_signal import FIELD_STRENGTHS, Acquisition, MRSequenceSpec, signal, tissue_table
from phantoms.population import PopulationSpec, case_rng, draw_level
from phantoms.render import Canvas, SparseSD

STREAM_CASE = 1
ORGANS = (
    *("background", "scalp", "skull", "diploe", "csf", "gray_matter", "white_matter", "deep_gray_matter"),
    *("ventricle", "wmh", "tumour_core", "oedema"),
)
LABEL = {name: k for k, name in enumerate(ORGANS)}
TISSUE = {"scalp": "fat", "skull": "cortical_bone", "diploe": "marrow", "ventricle": "csf"}  # else same name
LESION_TYPES = ("wmh", "tumour")
GRID_LIMITS = {"shape": (8, 1024, "voxels"), "spacing_mm": (0.05, 50.0, "mm")}


class BrainMRISpec(MRSequenceSpec):
    """Settings of the ``brain_mri`` generator; sequence fields: :class:`phantoms.mri_signal.MRSequenceSpec`.

    Attributes:
        shape: volume size in voxels ``(D, H, W)``.
        spacing_mm: voxel size ``(D, H, W)`` in mm.
        wmh_diameter_mm: sphere-equivalent diameter range ``[low, high)`` of each WMH blob per size band, mm.
        tumour_diameter_mm: sphere-equivalent diameter range of the whole tumour (core and oedema) per
            size band, mm. Both mappings have the same band names: the levels of ``lesion_size``.
    """

    shape: tuple[int, int, int] = Field((64, 96, 96), description="D, H, W [voxels]")
    spacing_mm: tuple[float, float, float] = Field((2.5, 2.5, 2.5), description="D, H, W voxel size [mm]")
    wmh_diameter_mm: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"small": (3.0, 6.0), "large": (6.0, 12.0)},
        description="WMH blob diameter range per size band [mm]",
    )
    tumour_diameter_mm: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {"small": (12.0, 24.0), "large": (24.0, 34.0)},
        description="whole-tumour diameter range per size band [mm]",
    )

    @field_validator("shape", "spacing_mm")
    @classmethod
    def _grid(cls, v: tuple[float, float, float], info: Any) -> tuple[float, float, float]:
        lo, hi, unit = GRID_LIMITS[info.field_name]
        if any(not lo <= n <= hi for n in v):
            expected = f"expected each value in [{lo:g}, {hi:g}] {unit}"
            raise ValueError(f"{info.field_name} is out of range ({expected}, got {list(v)})")
        return v

    @model_validator(mode="after")
    def _bands(self) -> BrainMRISpec:
        limits = {"wmh_diameter_mm": (1.0, 30.0), "tumour_diameter_mm": (5.0, 60.0)}
        for name, (lo, hi) in limits.items():
            for band, (a, b) in getattr(self, name).items():
                if not lo <= a < b <= hi:
                    raise ValueError(
                        f"{name} band '{band}' is out of range (expected {lo:g} <= low < high <= {hi:g} mm, "
                        f"got [{a}, {b}])"
                    )
        if not self.wmh_diameter_mm or set(self.wmh_diameter_mm) != set(self.tumour_diameter_mm):
            names = f"{sorted(self.wmh_diameter_mm)} and {sorted(self.tumour_diameter_mm)}"
            raise ValueError(
                "lesion size bands differ (expected the same band names in wmh_diameter_mm and "
                f"tumour_diameter_mm, got {names})"
            )
        return self


def brain_mri_attributes(spec: BrainMRISpec) -> tuple[Attribute, ...]:
    """Subgroup attributes of ``brain_mri`` (lesion-size levels come from the spec's bands)."""
    table = (  # name, levels, lesion level, effect
        ("sex", tuple(SEX_SCALE), False, "head and brain size x0.95 for female"),
        (
            "age_band",
            tuple(AGE_EFFECTS),
            False,
            "ventricles x1/1.2/1.45, sulcal CSF 0.8/1.5/2.4 mm, 2-4/3-6/5-9 WMH",
        ),
        ("field_strength", tuple(FIELD_STRENGTHS), False, "tissue T1/T2/T2*/PD table (scanner profile)"),
        ("lesion_type", LESION_TYPES, True, "WMH blobs or a tumour with oedema"),
        ("lesion_size", tuple(spec.wmh_diameter_mm), True, "WMH blob or whole-tumour diameter band (mm)"),
    )
    return tuple(Attribute(name=n, levels=v, lesion_level=lesion, effect=e) for n, v, lesion, e in table)


def draw_attributes(spec: BrainMRISpec, pop: PopulationSpec, rng: np.random.Generator) -> tuple[int, dict]:
    """Label and subgroup attributes of one case (the first draws of its stream)."""
    label = int(rng.random() < pop.prevalence)
    attributes: dict[str, str] = {}
    for att in brain_mri_attributes(spec):
        lesion_free = att.lesion_level and not label
        attributes[att.name] = (
            "none" if lesion_free else draw_level(rng, pop.attributes.get(att.name, att.levels))
        )
    return label, attributes


@dataclass(frozen=True, slots=True)
class BrainDraw:
    """Host-side description of one case (lengths in mm, signals in units of pure-water magnetisation)."""

    label: int
    attributes: dict[str, str]
    acquisition: Acquisition
    signals: dict[str, float]  # organ name -> signal of its tissue
    geo: dict[str, np.ndarray]  # dense-shape parameters (see Geo)
    ventricles: np.ndarray  # (S, 8) capsules
    nuclei: np.ndarray  # (6, 2, 3) centre and half axes
    lesions: tuple[Lesion, ...]


def _draw_case(spec: BrainMRISpec, pop: PopulationSpec, seed: int, index: int) -> BrainDraw:
    rng = case_rng(seed, STREAM_CASE, index)
    label, attributes = draw_attributes(spec, pop, rng)
    acquisition = spec.acquisition(attributes["field_strength"])
    table = tissue_table(attributes["field_strength"])
    signals = {organ: signal(table[TISSUE.get(organ, organ)], acquisition) for organ in ORGANS[1:]}
    geo, ventricles, nuclei = draw_geometry(rng, attributes)
    lesions = []
    if label:
        make = draw_wmh if attributes["lesion_type"] == "wmh" else draw_tumour
        lesions = make(spec, rng, geo, ventricles, nuclei, attributes)
    return BrainDraw(label, attributes, acquisition, signals, geo, ventricles, nuclei, tuple(lesions))


def _windows(cv: Canvas, draws: Sequence[BrainDraw]) -> dict[str, tuple[slice, slice, slice]]:
    """Grid windows (batch unions): the heads, the cerebellum and brainstem boxes, the midline slab."""
    box: dict[str, list] = {k: [] for k in ("head", "cb", "stem", "mid")}
    for d in draws:
        g = d.geo
        pad = g["layers"].sum() + 2.0 * cv.ramp_mm
        half = g["hull_r"] * (1.0 + np.abs(g["hull_a"]).sum()) + pad * g["hull_r"] / g["hull_r"].min()
        cb_lo = np.minimum(g["cbl_c"] - g["cbl_r"], g["cbr_c"] - g["cbr_r"]) - pad * 1.5
        cb_hi = np.maximum(g["cbl_c"] + g["cbl_r"], g["cbr_c"] + g["cbr_r"]) + pad * 1.5
        stem = g["bs"]
        box["head"].append((g["hull_c"] - half, g["hull_c"] + half))
        box["cb"].append((cb_lo, cb_hi))
        box["stem"].append(
            (np.minimum(stem[:3], stem[3:6]) - stem[6] - pad, np.maximum(stem[:3], stem[3:6]) + stem[6] + pad)
        )
        slab = (
            g["fissure"][0]
            + g["sulcus"][2]
            + abs(g["fissure"][1])
            + abs(g["fissure"][2]) * half[1]
            + 2.0 * cv.ramp_mm
        )
        box["mid"].append((np.array([-np.inf, -np.inf, -slab]), np.array([np.inf, np.inf, slab])))
    box["head"] += box["cb"] + box["stem"]
    return {k: cv.window(np.min([b[0] for b in v], 0), np.max([b[1] for b in v], 0)) for k, v in box.items()}


def _paint_anatomy(cv: Canvas, draws: Sequence[BrainDraw]) -> None:
    win = _windows(cv, draws)
    head = win["head"]
    rel = {
        k: tuple(slice(w.start - h.start, w.stop - h.start) for w, h in zip(win[k], head, strict=True))
        for k in ("cb", "stem", "mid")
    }
    g = Geo([d.geo for d in draws], cv.device, grid=True)
    sd = brain_fields(g, *cv.coords(head), boxes=rel)
    csf, bone, scalp = (g("layers", k) for k in range(3))

    def paint(organ: str, dist: Tensor | SparseSD, window: tuple[slice, slice, slice] | None = head) -> None:
        cv.paint(dist, cv.column([d.signals[organ] for d in draws]), LABEL[organ], window=window)

    paint("scalp", sd["env"] - (csf + bone + scalp))
    paint("skull", sd["env"] - (csf + bone))
    paint("diploe", (sd["env"] - (csf + 0.5 * bone)).abs() - 0.25 * bone)
    paint("csf", sd["env"] - csf)
    paint("gray_matter", sd["par"])
    paint("white_matter", sd["par"] + g("sulcus", 2))
    paint("gray_matter", sd["cb"], win["cb"])
    paint("white_matter", sd["cb_core"], win["cb"])
    paint("white_matter", sd["stem"], win["stem"])
    value = cv.column([d.signals["deep_gray_matter"] for d in draws])
    for k in range(len(draws[0].nuclei)):
        centre, half = np.stack([d.nuclei[k, 0] for d in draws]), np.stack([d.nuclei[k, 1] for d in draws])
        cv.paint_ellipsoids(centre, half, value, LABEL["deep_gray_matter"], within=LABEL["white_matter"])
    paint("ventricle", cv.union_sd([d.ventricles for d in draws]), None)


def _paint_lesions(cv: Canvas, draws: Sequence[BrainDraw]) -> tuple[Tensor, list[list[dict[str, Any]]]]:
    """Paint the lesions slot by slot (WMH blobs, or oedema then tumour core); return mask and records."""
    mask = torch.zeros_like(cv.labels, dtype=torch.bool)
    found: list[tuple[int, dict, dict[str, Tensor]]] = []
    for j in range(max((len(d.lesions) for d in draws), default=0)):
        slot = [d.lesions[j] if j < len(d.lesions) else None for d in draws]
        inside: dict[str, Tensor] = {}
        for organ, part in (("wmh", 0), ("oedema", 0), ("tumour_core", 1)):
            kind = "wmh" if organ == "wmh" else "tumour"
            caps = [s[part] if s is not None and s[2]["type"] == kind else np.zeros((0, 8)) for s in slot]
            if any(len(c) for c in caps):
                sd = cv.union_sd(caps)
                cv.paint(sd, cv.column([d.signals[organ] for d in draws]), LABEL[organ])
                inside[organ] = sd.index[sd.sd <= 0.0]
        for organ in ("wmh", "oedema"):
            mask.view(-1)[inside.get(organ, torch.zeros(0, dtype=torch.int64, device=cv.device))] = True
        for b, s in enumerate(slot):
            if s is not None:
                found.append((b, s[2], {k: v[v // cv.voxels == b] for k, v in inside.items()}))
    records: list[list[dict[str, Any]]] = [[] for _ in draws]
    voxel_mm3, image = float(np.prod(cv.spacing)), cv.image.view(-1)
    for b, record, inside in found:
        outer = inside["wmh" if record["type"] == "wmh" else "oedema"]
        extra = {"volume_mm3": outer.numel() * voxel_mm3, "mean_signal": _mean(image[outer])}
        if record["type"] == "tumour":
            core = inside["tumour_core"]
            extra.update(core_volume_mm3=core.numel() * voxel_mm3, core_mean_signal=_mean(image[core]))
        records[b].append({**record, **extra})
    return mask, records


def _mean(values: Tensor) -> float | None:
    return float(values.to(torch.float64).mean()) if values.numel() else None


def generate_brain_mri(
    spec: BrainMRISpec, population: PopulationSpec, seed: int, indices: Sequence[int], device: torch.device
) -> CaseBatch:
    """Render cases ``indices`` of the population as a batch on ``device``.

    Returns:
        A :class:`CaseBatch` with ``image`` the noiseless MR signal (fraction of the fully relaxed
        magnetisation of pure water), shape ``(B, 1, D, H, W)``, the lesion mask, the organ label map
        (:data:`ORGANS`), the lesion records and one acquisition record per case.
    """
    draws = [_draw_case(spec, population, seed, int(i)) for i in indices]
    cv = Canvas(len(draws), spec.shape, spec.spacing_mm, device, 0.0)
    _paint_anatomy(cv, draws)
    mask, lesions = _paint_lesions(cv, draws)
    per_case = {
        "case_index": tuple(int(i) for i in indices),
        "label": tuple(d.label for d in draws),
        "attributes": tuple(d.attributes for d in draws),
        "lesions": tuple(tuple(r) for r in lesions),
        "acquisition": tuple(d.acquisition.record() for d in draws),
    }
    volumes = {"image": cv.image.unsqueeze(1), "mask": mask.unsqueeze(1), "organs": cv.labels.unsqueeze(1)}
    return CaseBatch(
        spacing_mm=tuple(spec.spacing_mm),
        modality="MR",
        organ_names=ORGANS,
        generator="brain_mri",
        **volumes,
        **per_case,
    )


GENERATOR = {
    "name": "brain_mri",
    "description": "Brain MRI (T1w, T2w, FLAIR, PDw at 1.5 or 3 T); white-matter hyperintensities or tumour",
    "modality": "MR",
    "spec": BrainMRISpec,
    "attributes": brain_mri_attributes,
    "generate": generate_brain_mri,
}
PHANTOMS.register("brain_mri", PhantomGenerator(**GENERATOR))
