"""Lung nodule model: type (solid, part-solid, ground-glass), margin, size, placement and truth.

Geometry. A nodule is a union of tapered capsules (:mod:`phantoms.render`): a central sphere, plus
2-4 lobes for a *lobulated* margin (spheres of 0.45-0.65 r whose centres sit 0.6 r out), or 6-12
spicules for a *spiculated* margin (thin cones from inside the surface out to 0.6-1.3 r beyond it,
base radius 0.12-0.2 r, tip 0.15 mm). The shape is built at unit size and scaled so that its volume
equals the sphere of the drawn diameter: ``diameter_mm`` is the sphere-equivalent diameter, and the
nominal volume is ``pi d^3 / 6``. The unit shape's volume is integrated by
quasi-Monte Carlo (2^14 points of the R3 low-discrepancy sequence, randomly shifted per case), error
well under 1%.

Attenuation. Solid nodules are soft tissue (default 30 HU). Ground-glass nodules are hazy increased
lung attenuation, -650 HU by default (pure GGNs measure about -600 to -750 HU; Ikeda et al., Chest
2007). A part-solid nodule is a ground-glass nodule with a solid core whose diameter is 30-60% of the
whole (Fleischner Society 2017 glossary; MacMahon et al., Radiology 2017).

Malignancy proxy. ``suspicious`` if the nodule would be Lung-RADS v2022 category 4 on size or
morphology alone: solid >= 8 mm, part-solid with a solid component >= 6 mm, or a spiculated margin;
``probably_benign`` otherwise. It is a documented proxy, not a diagnosis.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from phantoms.render import capsule_sd_points

LESION_TYPES = ("solid", "part_solid", "ground_glass")
MARGINS = ("smooth", "lobulated", "spiculated")
SPICULE_TIP_MM = 0.15
QMC_POINTS = 2**14


@dataclass(frozen=True, slots=True)
class Nodule:
    """A nodule placed in the body: capsules in mm and its truth record."""

    capsules: np.ndarray  # (S, 8) whole nodule
    core: np.ndarray  # (S', 8) solid core of a part-solid nodule, else empty
    record: dict[str, Any]


def unit_shape(rng: np.random.Generator, margin: str) -> np.ndarray:
    """Capsules of a nodule of main radius 1 centred at the origin (before scaling)."""
    caps = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0]]
    if margin == "lobulated":
        for _ in range(int(rng.integers(2, 5))):
            d = _unit_vector(rng)
            c = 0.6 * d
            r = rng.uniform(0.45, 0.65)
            caps.append([*c, *c, r, r])
    elif margin == "spiculated":
        for _ in range(int(rng.integers(6, 13))):
            d = _unit_vector(rng)
            tip = d * (1.0 + rng.uniform(0.6, 1.3))
            caps.append([*(0.8 * d), *tip, rng.uniform(0.12, 0.2), 0.0])
    return np.asarray(caps, dtype=np.float64)


def _unit_vector(rng: np.random.Generator) -> np.ndarray:
    d = rng.normal(size=3)
    return d / np.linalg.norm(d)


@functools.cache
def _quasi_random_points() -> np.ndarray:
    """``QMC_POINTS`` points of the R3 Kronecker low-discrepancy sequence in the unit cube.

    ``x_n = frac(n alpha)`` with ``alpha_k = phi^-k`` for the positive root ``phi`` of ``x^4 = x + 1``
    (Roberts, "The unreasonable effectiveness of quasirandom sequences", 2018): pure numpy, no state.
    """
    phi = 1.2207440846057596
    alpha = phi ** -np.arange(1, 4)
    return np.mod(np.arange(1, QMC_POINTS + 1)[:, None] * alpha, 1.0)


def shape_volume(capsules: np.ndarray, shift: np.ndarray) -> float:
    """Volume (same units cubed) of a union of capsules by randomised quasi-Monte Carlo.

    The fixed point set is moved by a Cranley-Patterson rotation ``shift`` in [0, 1)^3 (drawn per case),
    so estimates for different cases are independent and each is reproducible.
    """
    reach = np.maximum(capsules[:, 6], capsules[:, 7])[:, None]
    lo = np.minimum(capsules[:, 0:3], capsules[:, 3:6]) - reach
    hi = np.maximum(capsules[:, 0:3], capsules[:, 3:6]) + reach
    lo, hi = lo.min(0), hi.max(0)
    points = np.mod(_quasi_random_points() + shift, 1.0)
    inside = capsule_sd_points(lo + points * (hi - lo), capsules) <= 0.0
    return float(inside.mean() * np.prod(hi - lo))


def make_nodule(
    rng: np.random.Generator,
    lesion_type: str,
    margin: str,
    diameter_mm: float,
    hu: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A nodule of sphere-equivalent ``diameter_mm`` centred at the origin.

    Returns:
        ``(capsules, core_capsules, record)`` with lengths in mm; the record holds type, margin,
        diameter, nominal volume, solid-core diameter, HU and the malignancy proxy.
    """
    unit = unit_shape(rng, margin)
    nominal = math.pi * diameter_mm**3 / 6.0
    shift = rng.random(3)
    volume = 4.0 / 3.0 * math.pi if margin == "smooth" else shape_volume(unit, shift)
    scale = (nominal / volume) ** (1.0 / 3.0)
    caps = unit.copy()
    caps[:, :6] *= scale
    caps[:, 6:8] *= scale
    spicules = caps[:, 7] == 0.0
    caps[spicules, 7] = SPICULE_TIP_MM
    core = np.zeros((0, 8))
    solid_mm = diameter_mm if lesion_type == "solid" else 0.0
    if lesion_type == "part_solid":
        solid_mm = diameter_mm * rng.uniform(0.3, 0.6)
        core = np.array([[0.0] * 6 + [solid_mm / 2, solid_mm / 2]])
    suspicious = (
        (lesion_type == "solid" and diameter_mm >= 8.0)
        or (lesion_type == "part_solid" and solid_mm >= 6.0)
        or margin == "spiculated"
    )
    record = {
        "type": lesion_type,
        "margin": margin,
        "diameter_mm": float(diameter_mm),
        "solid_diameter_mm": float(solid_mm),
        "nominal_volume_mm3": nominal,
        "hu": hu["nodule_solid" if lesion_type == "solid" else "nodule_ground_glass"],
        "core_hu": hu["nodule_solid"] if lesion_type == "part_solid" else None,
        "malignancy_proxy": "suspicious" if suspicious else "probably_benign",
    }
    return caps, core, record


def extent_mm(capsules: np.ndarray) -> float:
    """Largest distance from the origin reached by the nodule's surface (mm)."""
    reach = np.maximum(capsules[:, 6], capsules[:, 7])
    ends = np.maximum(np.linalg.norm(capsules[:, 0:3], axis=1), np.linalg.norm(capsules[:, 3:6], axis=1))
    return float((ends + reach).max())


def translate(capsules: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Capsules moved so that the origin goes to ``centre`` (z, y, x mm)."""
    out = capsules.copy()
    out[:, 0:3] += centre
    out[:, 3:6] += centre
    return out
