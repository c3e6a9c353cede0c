"""Host-side layout of one chest: habitus, lungs, heart, great vessels, airways, vessel trees, bones.

All lengths in mm, points ``(z, y, x)`` with +x the patient's left, +y posterior, +z superior (the
phantom grid is centred on the origin). A layout is a pure function of the case's generator and its
attributes; :mod:`phantoms.chest_ct` renders it. Proportions follow adult chest CT anatomy (e.g. Netter,
*Atlas of Human Anatomy*; chest width about 300 mm, depth about 200 mm for a male of normal BMI):

* body: elliptic outline, half axes ``140 s + fat`` (x) and ``95 s + fat`` (y), s = sex scale x jitter;
  subcutaneous fat of the BMI band's thickness, a muscle layer of ``12 s`` mm, a rib layer of 8 mm;
* lungs: two ellipsoids inside the thoracic cavity (z half axis 120-140 mm s);
* heart: ellipsoid left-anterior-inferior in the mediastinum; ascending aorta, arch and descending
  aorta, pulmonary trunk and arteries, superior vena cava as tubes;
* trachea (wall 2 mm) to a carina, main bronchi to each hilum, and intrapulmonary airways that travel
  with the arteries (same branching, offset beside them) for 4 generations;
* pulmonary arteries and veins: one bifurcating tree each per lung (:mod:`phantoms.trees`), pruned below
  ``min_vessel_radius_mm`` (vessels thinner than that are part of the parenchyma's attenuation);
* spine: vertebral body column (cortical shell, trabecular core) with 5 mm discs every 25 mm s,
  lamina and spinous processes; 12 pairs of ribs sloping down anteriorly; sternum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from phantoms.trees import Ellipsoid, grow_tree

FAT_MM = {"normal": (8.0, 14.0), "overweight": (16.0, 24.0), "obese": (28.0, 40.0)}
SEX_SCALE = {"female": 0.92, "male": 1.0}
RIB_LAYER_MM = 8.0
AIRWAY_WALL_MM = 2.0
AIRWAY_GENERATIONS = 4
LOBAR_DIRECTIONS = (
    (1.0, 0.1, 0.5),
    (0.0, 0.4, 1.0),
    (-1.0, 0.3, 0.4),
)  # upper, middle, lower (z, y, +x lateral)


@dataclass(frozen=True, slots=True)
class ChestLayout:
    """Geometry of one case (mm). Capsule arrays are ``(S, 8)``: p0, p1 (z, y, x), r0, r1."""

    body: tuple[float, float]  # outline half axes (x, y)
    fat_mm: float
    muscle_mm: float
    cavity: tuple[float, float]  # thoracic cavity half axes (x, y)
    lungs: tuple[Ellipsoid, Ellipsoid]  # right (x < 0), left
    heart: Ellipsoid
    spine: tuple[float, float, float, float]  # column centre (y, x), radius, z of the first disc
    disc_period_mm: float
    tubes: dict[str, np.ndarray] = field(default_factory=dict)  # structure name -> capsules


def _tube(points: list[tuple[float, float, float]], radius: float | tuple[float, float]) -> np.ndarray:
    """Capsules along a polyline, radius constant or linearly tapering from first to last point."""
    r0, r1 = (radius, radius) if isinstance(radius, float | int) else radius
    pts = np.asarray(points, dtype=np.float64)
    t = np.linspace(0.0, 1.0, len(pts))
    radii = r0 + t * (r1 - r0)
    return np.concatenate([pts[:-1], pts[1:], radii[:-1, None], radii[1:, None]], axis=1)


def _arc(start: np.ndarray, mid: np.ndarray, end: np.ndarray, n: int = 8) -> list[tuple[float, float, float]]:
    """Quadratic Bezier through ``mid`` (passes through it at t = 0.5)."""
    control = 2.0 * mid - 0.5 * (start + end)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return [tuple(p) for p in (1 - t) ** 2 * start + 2 * (1 - t) * t * control + t**2 * end]


def draw_layout(
    rng: np.random.Generator, sex: str, bmi_band: str, min_vessel_radius_mm: float, vessel_generations: int
) -> ChestLayout:
    """Draw one chest's layout from the case's generator and its sex and BMI band."""
    s = SEX_SCALE[sex] * rng.uniform(0.96, 1.04)
    fat = rng.uniform(*FAT_MM[bmi_band])
    muscle = 12.0 * s
    body = (140.0 * s + fat, 95.0 * s + fat)
    ca, cb = body[0] - fat - muscle - RIB_LAYER_MM, body[1] - fat - muscle - RIB_LAYER_MM
    lung_z, lung_hz = rng.uniform(-15.0, 15.0), rng.uniform(120.0, 140.0) * s
    lungs = tuple(
        Ellipsoid(np.array([lung_z, 0.0, side * 0.5 * ca]), np.array([lung_hz, 0.85 * cb, 0.42 * ca]))
        for side in (-1.0, 1.0)
    )
    heart = Ellipsoid(
        np.array([lung_z - 0.4 * lung_hz, -0.3 * cb, 0.15 * ca]), np.array([60.0 * s, 0.5 * cb, 0.36 * ca])
    )
    spine_y, spine_r = cb - 30.0 * s, 17.0 * s
    layout_tubes: dict[str, list[np.ndarray]] = {k: [] for k in _TUBE_NAMES}
    z_arch = lung_z + 0.45 * lung_hz
    _great_vessels(layout_tubes, heart, z_arch, lung_z - lung_hz, spine_y, spine_r, ca, cb, s)
    _airways_and_trees(
        rng, layout_tubes, lungs, z_arch, spine_y, cb, s, min_vessel_radius_mm, vessel_generations
    )
    disc_z0 = rng.uniform(0.0, 25.0 * s)
    _bones(rng, layout_tubes, lung_z + 0.95 * lung_hz, spine_y, disc_z0, ca, cb, s)
    return ChestLayout(
        body=body,
        fat_mm=fat,
        muscle_mm=muscle,
        cavity=(ca, cb),
        lungs=lungs,  # type: ignore[arg-type]
        heart=heart,
        spine=(spine_y, 0.0, spine_r, disc_z0),
        disc_period_mm=25.0 * s,
        tubes={k: np.concatenate(v) if v else np.zeros((0, 8)) for k, v in layout_tubes.items()},
    )


_TUBE_NAMES = (
    "great_vessel",
    "airway_wall",
    "airway_lumen",
    "pulmonary_vessel",
    "cortical_bone",
    "trabecular_bone",
)


def _great_vessels(tubes, heart: Ellipsoid, z_arch, z_low, spine_y, spine_r, ca, cb, s) -> None:
    hz, hy, hx = heart.centre
    desc_y, desc_x = spine_y - spine_r - 2.0, 0.2 * ca
    aorta = _arc(
        np.array([hz + 30.0, hy + 10.0, hx - 0.12 * ca]),
        np.array([z_arch, -0.25 * cb, -0.02 * ca]),
        np.array([z_arch - 10.0, -0.1 * cb, 0.0]),
        5,
    )
    aorta += _arc(
        np.array([z_arch - 10.0, -0.1 * cb, 0.0]),
        np.array([z_arch + 12.0, 0.1 * cb, 0.1 * ca]),
        np.array([z_arch - 10.0, desc_y, desc_x]),
        7,
    )[1:]
    aorta += [(z_low, desc_y + 5.0, desc_x - 8.0)]
    tubes["great_vessel"].append(_tube(aorta, 14.0 * s))
    trunk = [(hz + 35.0, hy - 5.0, hx + 0.05 * ca), (hz + 65.0, -0.12 * cb, 0.06 * ca)]
    tubes["great_vessel"].append(_tube(trunk, 13.0 * s))
    svc = [(hz + 35.0, -0.15 * cb, -0.22 * ca), (z_arch + 60.0, -0.1 * cb, -0.2 * ca)]
    tubes["great_vessel"].append(_tube(svc, 10.0 * s))


def _airways_and_trees(rng, tubes, lungs, z_arch, spine_y, cb, s, min_r, generations) -> None:
    carina = np.array([z_arch - 15.0, 0.2 * cb, 0.0])
    trachea_y = spine_y - 38.0 * s
    trachea = [(z_arch + 200.0, trachea_y, 0.0), (carina[0] + 10.0, carina[1], 0.0), tuple(carina)]
    outer = [_tube(trachea, 9.0 * s)]
    inner = [_tube(trachea, 9.0 * s - AIRWAY_WALL_MM)]
    bifurcation = np.array([z_arch - 5.0, -0.12 * cb, 0.0])
    for lung in lungs:
        side = math.copysign(1.0, lung.centre[2])
        la = lung.half_axes[2]
        hilum = np.array(
            [lung.centre[0] + 0.2 * lung.half_axes[0], 0.05 * cb, lung.centre[2] - side * 0.55 * la]
        )
        bronchus = [tuple(carina), tuple(hilum + np.array([0.0, 0.0, side * 4.0]))]
        outer.append(_tube(bronchus, 6.5 * s))
        inner.append(_tube(bronchus, 6.5 * s - AIRWAY_WALL_MM))
        tubes["great_vessel"].append(_tube([tuple(bifurcation), tuple(hilum)], 10.0 * s))
        hz = lung.half_axes[0]
        for lobar, length in zip(LOBAR_DIRECTIONS, (0.3 * hz, 0.45 * la, 0.3 * hz), strict=True):
            direction = np.array(lobar) * np.array([1.0, 1.0, side]) + rng.normal(0.0, 0.1, 3)
            tree_seed = int(rng.integers(2**62))
            artery = grow_tree(
                np.random.default_rng(tree_seed), lung, hilum, direction, length, 5.5 * s, min_r, generations
            )
            tubes["pulmonary_vessel"].append(artery)
            offset = np.array([0.0, -1.0, 0.0]) * (5.5 * s + 5.0 * s + 1.0)
            wall_min_r = max(min_r, 1.0 + AIRWAY_WALL_MM)
            airway = grow_tree(
                np.random.default_rng(tree_seed),
                lung,
                hilum + offset,
                direction,
                length,
                5.0 * s,
                wall_min_r,
                AIRWAY_GENERATIONS,
            )
            outer.append(airway)
            lumen = airway.copy()
            lumen[:, 6:8] -= AIRWAY_WALL_MM * np.minimum(1.0, lumen[:, 6:8] / 6.0)
            inner.append(lumen)
        for lobar in (LOBAR_DIRECTIONS[0], LOBAR_DIRECTIONS[2]):
            vein_root = hilum + np.array([-25.0 * s, 12.0, side * 3.0])
            direction = np.array(lobar) * np.array([1.0, 1.0, side]) + rng.normal(0.0, 0.2, 3)
            tubes["pulmonary_vessel"].append(
                grow_tree(rng, lung, vein_root, direction, 0.3 * hz, 5.0 * s, min_r, generations)
            )
    tubes["airway_wall"].extend(outer)
    tubes["airway_lumen"].extend(inner)


def _bones(rng, tubes, z_top, spine_y, disc_z0, ca, cb, s) -> None:
    """Ribs (12 pairs along the chest wall, sloping down anteriorly), sternum, lamina, spinous processes."""
    theta = np.linspace(0.22, 2.55, 10)
    k = np.arange(12)
    z0 = z_top - 20.0 * s - k * 24.0 * s + rng.uniform(-2.0, 2.0, size=(2, 12))  # (side, rib)
    drop = (55.0 + 2.0 * k)[:, None] * s * (theta - theta[0]) / (theta[-1] - theta[0])  # (rib, point)
    a, b = ca + 0.5 * RIB_LAYER_MM, cb + 0.5 * RIB_LAYER_MM
    side = np.array([-1.0, 1.0])[:, None, None]
    points = np.stack(
        np.broadcast_arrays(z0[..., None] - drop, b * np.cos(theta), side * a * np.sin(theta)), axis=-1
    )  # (2, 12, 10, 3)
    ribs = np.concatenate([points[..., :-1, :], points[..., 1:, :]], axis=-1).reshape(-1, 6)
    tubes["cortical_bone"].append(_with_radius(ribs, 5.0 * s))
    tubes["trabecular_bone"].append(_with_radius(ribs, 3.2 * s))
    sternum = np.array(
        [[z_top - 30.0 * s, -cb - 0.5 * RIB_LAYER_MM, 0.0, z_top - 200.0 * s, -cb - 0.5 * RIB_LAYER_MM, 0.0]]
    )
    tubes["cortical_bone"].append(_with_radius(sternum, 7.0 * s))
    tubes["trabecular_bone"].append(_with_radius(sternum, 4.8 * s))
    dz = disc_z0 + 12.5 * s + 25.0 * s * np.arange(-16, 16)
    arch = spine_y + 20.0 * s
    one = np.ones_like(dz)
    for start, end, radius in (
        ((arch, -10.0 * s), (arch + 18.0 * s, 0.0), 4.0 * s),  # right lamina
        ((arch, 10.0 * s), (arch + 18.0 * s, 0.0), 4.0 * s),  # left lamina
    ):
        seg = np.stack([dz, start[0] * one, start[1] * one, dz, end[0] * one, end[1] * one], axis=1)
        tubes["cortical_bone"].append(_with_radius(seg, radius))
    spinous = np.stack(
        [dz, (arch + 18.0 * s) * one, 0 * one, dz - 10.0 * s, (arch + 32.0 * s) * one, 0 * one], 1
    )
    tubes["cortical_bone"].append(_with_radius(spinous, 4.5 * s))


def _with_radius(segments: np.ndarray, radius: float) -> np.ndarray:
    """``(S, 6)`` end points -> ``(S, 8)`` capsules of constant ``radius``."""
    return np.concatenate([segments, np.full((len(segments), 2), radius)], axis=1)
