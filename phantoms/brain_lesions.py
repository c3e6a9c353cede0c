"""Lesions of the ``brain_mri`` phantom: white-matter hyperintensities and a tumour with oedema.

Placement on the host (inside white matter, clear of ventricles and nuclei), shapes as tapered capsules
rendered by :mod:`phantoms.render`; see docs/phantoms-brain-mri.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from phantoms.brain_anatomy import AGE_EFFECTS, MIDLINE_VENTRICLES, fields_at, nuclei_sd
from phantoms.nodules import shape_volume
from phantoms.render import capsule_sd_points

if TYPE_CHECKING:
    from phantoms.brain_mri import BrainMRISpec

MARGIN_MM = 1.5  # clearance of lesions from other structures


Lesion = tuple[np.ndarray, np.ndarray, dict[str, Any]]  # outer capsules, core capsules, record (mm)


def candidates(
    rng: np.random.Generator, geo: dict, ventricles: np.ndarray, n: int, periventricular: float
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` candidate centres (mm) and unit axes: near the lateral ventricles or anywhere in the hull."""
    lateral = ventricles[: len(ventricles) - len(MIDLINE_VENTRICLES)]
    cap = lateral[rng.integers(len(lateral), size=n)]
    t = rng.random((n, 1))
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    base = cap[:, :3] + t * (cap[:, 3:6] - cap[:, :3])
    near = base + axis * (cap[:, 6:7] + t * (cap[:, 7:8] - cap[:, 6:7]) + rng.uniform(1.0, 8.0, (n, 1)))
    deep = geo["hull_c"] + geo["hull_r"] * rng.uniform([-0.3, -0.7, -0.7], 0.7, (n, 3))  # supratentorial box
    return np.where(rng.random((n, 1)) < periventricular, near, deep), axis


def place_lesion(
    spec: BrainMRISpec,
    rng: np.random.Generator,
    geo: dict,
    ventricles: np.ndarray,
    nuclei: np.ndarray,
    shape: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """Centre and axis of a lesion of reach ``shape['reach']`` (mm) clear of the structures it must avoid."""
    fov = (np.array(spec.shape) - 1) / 2 * np.array(spec.spacing_mm) - np.array(spec.spacing_mm)
    reach, periventricular = shape["reach"], shape["periventricular"]
    for _ in range(32):
        points, axis = candidates(rng, geo, ventricles, 128, periventricular)
        f = fields_at(geo, points)
        ok = (np.abs(points) + reach < fov).all(1)
        ok &= capsule_sd_points(points, ventricles) > shape["clear"] + MARGIN_MM
        if shape["in_white_matter"]:
            ok &= f["par"] + geo["sulcus"][2] < -(reach + MARGIN_MM)
            ok &= nuclei_sd(points, nuclei) > reach + MARGIN_MM
        else:
            ok &= (f["hull"] < -reach) & (f["par"] < -MARGIN_MM)  # inside the brain, may touch the cortex
            ok &= np.abs(points[:, 2] - geo["fissure"][1]) > reach + geo["fissure"][0]
        ok &= (f["cb"] > reach + MARGIN_MM) & (f["stem"] > reach + MARGIN_MM)
        for other in shape["avoid"]:
            ok &= capsule_sd_points(points, other) > reach + MARGIN_MM
        if ok.any():
            i = int(np.argmax(ok))
            return points[i], axis[i]
    fov_txt = " x ".join(f"{2 * h:.0f}" for h in fov + np.array(spec.spacing_mm))
    raise ValueError(
        f"no room for a {2 * reach:.1f} mm lesion in the brain within the {fov_txt} mm field of view "
        "(expected a field of view that covers the head: about 160 x 230 x 230 mm)"
    )


def wmh_capsule(diameter: float, stretch: float, centre: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """A WMH blob: a capsule of half length ``stretch * r`` along ``axis`` whose volume is ``pi d^3 / 6``.

    ``pi r^2 (2 stretch r) + 4/3 pi r^3 = pi d^3 / 6`` gives ``r = d / (6 (2 stretch + 4/3))^(1/3)``.
    """
    r = diameter / (6.0 * (2.0 * stretch + 4.0 / 3.0)) ** (1.0 / 3.0)
    return np.array([[*(centre - axis * stretch * r), *(centre + axis * stretch * r), r, r]])


def draw_wmh(
    spec: BrainMRISpec, rng: np.random.Generator, geo: dict, vent: np.ndarray, nuclei: np.ndarray, attrs: dict
) -> list[Lesion]:
    """WMH blobs of the case's size band, as many as its age band draws, largest first."""
    lo, hi = spec.wmh_diameter_mm[attrs["lesion_size"]]
    low, high = AGE_EFFECTS[attrs["age_band"]][3]
    lesions, placed = [], []
    for d in map(float, np.sort(rng.uniform(lo, hi, int(rng.integers(low, high + 1))))[::-1]):
        stretch = rng.uniform(0.0, 1.0)
        reach = float(wmh_capsule(d, stretch, np.zeros(3), np.ones(3))[0, 6]) * (1.0 + stretch)
        shape = {
            "reach": reach,
            "clear": reach,
            "periventricular": 0.7,
            "in_white_matter": True,
            "avoid": placed,
        }
        centre, axis = place_lesion(spec, rng, geo, vent, nuclei, shape)
        placed.append(wmh_capsule(d, stretch, centre, axis))
        record = {"type": "wmh", "centre_mm": [float(c) for c in centre], "diameter_mm": d}
        lesions.append((placed[-1], np.zeros((0, 8)), {**record, "nominal_volume_mm3": math.pi * d**3 / 6.0}))
    return lesions


def tumour_shape(
    rng: np.random.Generator, diameter: float
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """A tumour centred at the origin: ``(outer, core, info)`` capsules (mm) and core measurements.

    The core is a unit sphere with 1-3 lobes (radius 0.4-0.65, centres 0.55 out); the oedema is the core
    dilated by 0.25-0.6 plus 2-4 finger-like extensions; the whole is scaled so that its volume, by
    randomised quasi-Monte Carlo (:func:`phantoms.nodules.shape_volume`), is ``pi d^3 / 6``.
    """
    core = [[0.0] * 6 + [1.0, 1.0]]
    for _ in range(int(rng.integers(1, 4))):
        u = rng.normal(size=3)
        u *= 0.55 / np.linalg.norm(u)
        core.append([*u, *u] + [rng.uniform(0.4, 0.65)] * 2)
    core = np.asarray(core)
    thickness = rng.uniform(0.25, 0.6)
    outer = [core + np.array([0.0] * 6 + [thickness] * 2)]
    for _ in range(int(rng.integers(2, 5))):
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        outer.append(np.array([[*(0.5 * u), *(rng.uniform(1.2, 1.5) * u)] + [rng.uniform(0.3, 0.45)] * 2]))
    outer = np.concatenate(outer)
    shift = rng.random(3)
    scale = (math.pi * diameter**3 / 6.0 / shape_volume(outer, shift)) ** (1.0 / 3.0)
    core_volume = shape_volume(core, shift) * scale**3
    info = {
        "core_diameter_mm": float((6.0 * core_volume / math.pi) ** (1.0 / 3.0)),
        "core_nominal_volume_mm3": float(core_volume),
        "oedema_thickness_mm": float(thickness * scale),
    }
    return outer * scale, core * scale, info


def draw_tumour(
    spec: BrainMRISpec, rng: np.random.Generator, geo: dict, vent: np.ndarray, nuclei: np.ndarray, attrs: dict
) -> list[Lesion]:
    """One tumour of the case's size band inside the cerebrum (its core clear of the ventricles)."""
    d = float(rng.uniform(*spec.tumour_diameter_mm[attrs["lesion_size"]]))
    outer, core, info = tumour_shape(rng, d)
    reach = float((np.linalg.norm(outer[:, 3:6], axis=1) + outer[:, 7]).max())
    clear = float(
        core[0, 7]
    )  # the main sphere keeps clear of the ventricles; lobes and oedema may reach them
    shape = {"reach": reach, "clear": clear, "periventricular": 0.0, "in_white_matter": False, "avoid": []}
    centre, _ = place_lesion(spec, rng, geo, vent, nuclei, shape)
    record = {"type": "tumour", "centre_mm": [float(c) for c in centre], "diameter_mm": d}
    move = np.concatenate([centre, centre, [0.0, 0.0]])
    return [(outer + move, core + move, {**record, "nominal_volume_mm3": math.pi * d**3 / 6.0, **info})]
