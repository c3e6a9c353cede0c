"""Upper-abdomen anatomy for CT phantoms: a host-side layout per case.

Lengths in mm, points ``(z, y, x)``, +x the patient's left, +y posterior, +z superior, the grid centred on
the origin (:mod:`phantoms.render`). :func:`draw_layout` places habitus, diaphragm, lung bases, heart,
liver (with portal and hepatic vein trees), spleen, stomach, gallbladder, pancreas, kidneys, great
vessels, bowel, spine, back muscles and ribs around ``z0`` (centre of L1) and ``yv`` (the vertebral
bodies' centre line); :func:`phantoms.abdomen_shapes.paint_anatomy` renders a batch. Dense shapes are
ellipsoids rotated about z (``blob`` rows ``cz, cy, cx, hz, hy, hx, angle``, distance
``(rho - 1) min(half axes)`` as in the renderer), z-extruded ellipses (``cy, cx, hy, hx``) and
paraboloid domes; the rest are tapered capsules. The same torch functions answer host-side checks in
float64. Proportions and sources: docs/phantoms-liver-ct.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from torch import Tensor

from phantoms.trees import Ellipsoid, grow_tree

SEX_SCALE = {"female": 0.92, "male": 1.0}
SUBCUTANEOUS_FAT_MM = {"normal": (10.0, 20.0), "overweight": (20.0, 32.0), "obese": (30.0, 45.0)}
VISCERAL_FAT_MM = {"normal": (0.0, 8.0), "overweight": (8.0, 18.0), "obese": (18.0, 30.0)}
LIVER_BLEND_MM = 18.0  # smooth-union radius of the liver's lobes
STOMACH_BLEND_MM = 15.0
WALL_GAP_MM = 3.0  # organs keep this far inside the abdominal-wall muscle (diaphragm, peritoneum)
BOWEL_WALL_MM = 2.5
STOMACH_WALL_MM = 4.0
CORTEX_MM = 2.5  # cortical shell of the vertebral bodies
BONE_SHELL = 1.8  # cortical shell of ribs and vertebral processes, s mm
ORGANS = tuple(
    "background subcutaneous_fat muscle visceral_fat lung heart stomach gi_fluid gi_gas spleen pancreas liver"
    " gallbladder hepatic_vein portal_vein kidney_cortex kidney_medulla aorta ivc bowel spinal_canal"
    " cortical_bone trabecular_bone intervertebral_disc lesion lesion_rim".split()
)
LABEL = {name: k for k, name in enumerate(ORGANS)}
Params = dict[str, Tensor]  # per-case shape parameters stacked over a batch, see stack_shapes
Shape = Callable[[Tensor, Tensor, Tensor, Params], Tensor]  # signed distance (mm) at points z, y, x
Box = tuple[np.ndarray, np.ndarray]  # (lo, hi) corners (z, y, x) in mm
Tubes = dict[str, list[np.ndarray]]  # structure name -> capsule arrays (S, 8)


@dataclass(frozen=True, slots=True)
class AbdomenLayout:
    """Geometry of one case (mm).

    Attributes:
        scale: body scale s (sex x jitter).
        outline: ``(3, 2)`` half axes ``(x, y)`` of the skin, the abdominal-wall muscle and the cavity.
        vertebrae_z: ``(K,)`` centres of the vertebral bodies, each ``13 s`` mm high either way.
        shapes: blobs, ellipses, ``domes`` (``top, y0, x0, ay, ax, depth``), liver ``waves`` (``kz, ky, kx``
            rad/mm, phase, amplitude mm), ``gas_y``. tubes: capsules ``(S, 8)`` per structure.
    """

    scale: float
    outline: np.ndarray
    vertebrae_z: np.ndarray
    shapes: dict[str, np.ndarray]
    tubes: dict[str, np.ndarray]


# Tubes in the spine frame: radii (s mm, one or per point) and points (z - z0, y - yv, x) in s mm, where
# z0 is the centre of L1, yv the vertebral bodies' centre line and s the body scale.
PATHS = (
    ("aorta", (12, 11, 10), ((170, -14, 28), (40, -29, 13), (-150, -32, 8))),
    ("aorta", 3.5, ((0, -38, 12), (-12, -60, 8), (-150, -66, 4))),  # superior mesenteric artery
    ("aorta", 3.5, ((12, -31, 12), (16, -55, 6))),  # coeliac trunk
    ("ivc", 11, ((170, -48, -15), (100, -38, -20), (30, -35, -25), (-150, -28, -27))),
    ("portal_vein", 7, ((-10, -58, -4), (30, -58, -38))),  # confluence to the porta hepatis
    ("portal_vein", (5.5, 5, 4.5), ((-10, -58, -4), (-40, -68, -10), (-150, -72, -12))),  # SMV
    ("pancreas", (13, 9, 10), ((-20, -62, -32), (-6, -72, -2), (4, -58, 35))),
    ("psoas", (3, 22), ((20, 2, -20), (-150, -6, -46))),
    ("psoas", (3, 22), ((20, 2, 20), (-150, -6, 46))),
    ("colon", 16, ((-5, -80, -92), (-30, -106, -13), (-10, -102, 64), (35, -46, 100))),  # transverse
    ("colon", 17, ((-5, -80, -92), (-150, -59, -90))),  # ascending
    ("colon", 13, ((35, -46, 100), (-150, -29, 100))),  # descending
)
PORTA = (30.0, -58.0, -38.0)  # porta hepatis, spine frame
HEPATIC_CONFLUENCE = (100.0, -38.0, -20.0)  # hepatic veins join the IVC here, spine frame
VERTEBRA = (  # radius and end points (z - z_k, y - yv, x) of each side's processes, s mm
    (4.5, (0, 12, 13), (0, 26, 15)),  # pedicle
    (4.0, (-2, 28, 15), (-4, 40, 2)),  # lamina
    (4.0, (0, 24, 15), (2, 28, 46)),  # transverse process
    (4.5, (-4, 40, 0), (-12, 52, 0)),  # spinous process (on the midline: both sides coincide)
)
RENAL_VEIN_JOIN = ((-12.0, -35.0, -25.0), (-14.0, -50.0, 12.0))  # IVC entry; left vein passes the SMA here


def _blob(
    rng: np.random.Generator, s: float, centre: ArrayLike, half: ArrayLike, angle: float = 0.0
) -> np.ndarray:
    """A jittered blob row: centre + N(0, 3 s) mm, half axes x U(0.92, 1.08)."""
    c = np.asarray(centre, dtype=np.float64) + rng.normal(0.0, 3.0 * s, 3)
    h = np.asarray(half, dtype=np.float64) * rng.uniform(0.92, 1.08, 3)
    return np.concatenate([c, h, [angle]])


def _tube(points: ArrayLike, radii: ArrayLike) -> np.ndarray:
    """Capsules along a polyline; ``radii`` per point (or one radius)."""
    pts = np.asarray(points, dtype=np.float64)
    r = np.broadcast_to(np.asarray(radii, dtype=np.float64), (len(pts),))
    return np.concatenate([pts[:-1], pts[1:], r[:-1, None], r[1:, None]], axis=1)


def draw_layout(
    rng: np.random.Generator, sex: str, bmi_band: str, min_vessel_radius_mm: float, vessel_generations: int
) -> AbdomenLayout:
    """Draw one abdomen from the case's generator, sex and BMI band (all lengths in mm)."""
    s = SEX_SCALE[sex] * rng.uniform(0.96, 1.04)
    fat, visceral = rng.uniform(*SUBCUTANEOUS_FAT_MM[bmi_band]), rng.uniform(*VISCERAL_FAT_MM[bmi_band])
    wall = 12.0 * s
    ca, cb = 128.0 * s + visceral, 85.0 * s + 0.7 * visceral
    z0 = rng.uniform(-32.0, -22.0)
    yv = cb + wall - 55.0 * s  # vertebral body centre

    def frame(points: ArrayLike) -> np.ndarray:
        return np.asarray(points, dtype=np.float64) * s + np.array([z0, yv, 0.0])

    rx = 58.0 * s
    liver = np.stack(
        [
            _blob(rng, s, (z0 + 55 * s, -0.05 * cb, 3 * s + rx - ca), (80 * s, 0.78 * cb, rx)),
            _blob(rng, s, (z0 - 5 * s, 0.1 * cb, 41 * s - ca), (55 * s, 0.5 * cb, 35 * s)),
            _blob(rng, s, (z0 + 70 * s, -0.5 * cb, 0.08 * ca), (38 * s, 0.32 * cb, 0.5 * ca), -0.2),
            _blob(rng, s, (z0 + 55 * s, 0.15 * cb, -0.12 * ca), (40 * s, 0.3 * cb, 0.2 * ca)),
        ]
    )
    k = rng.normal(size=(5, 3))
    k *= 2 * np.pi / rng.uniform(70.0, 160.0, (5, 1)) / np.linalg.norm(k, axis=1, keepdims=True)
    waves = np.concatenate([k, rng.uniform(0, 2 * np.pi, (5, 1)), s * rng.uniform(1.0, 3.0, (5, 1))], 1)
    top = z0 + 125 * s + rng.uniform(-5.0, 5.0)
    domes = [
        [z, -0.05 * cb, side * 0.45 * ca, 1.3 * cb, 0.75 * ca, 75 * s] for z, side in ((top, -1), (top, 1))
    ]
    domes[1][0] -= rng.uniform(8.0, 18.0)
    t = rng.uniform(0.75, 0.95)  # where the spleen lies on the wall, radians from posterior to the left
    normal = np.array([np.cos(t) / cb, np.sin(t) / ca])  # (y, x), outward
    normal /= np.linalg.norm(normal)
    spleen_yx = np.array([cb * np.cos(t), ca * np.sin(t)]) - normal * (24 * s + WALL_GAP_MM + 3.0)
    along = math.atan2(-cb * np.sin(t), ca * np.cos(t))  # the wall's direction there
    spleen = _blob(rng, s, (z0 + 50 * s, *spleen_yx), (45 * s, 24 * s, 45 * s), along)
    hilum = np.array([z0 + 45 * s, *(spleen[1:3] - normal * 20 * s)])
    kidney, medulla, sinus = [], [], []
    for side, dz in ((-1.0, -14.0), (1.0, 4.0)):
        angle = math.radians(30.0 if side > 0 else 150.0)  # long axis anteromedial to posterolateral
        kidney.append(_blob(rng, s, (z0 + dz * s, yv + 4 * s, side * 58 * s), np.r_[52, 20, 30] * s, angle))
        medulla.append(kidney[-1] - np.r_[0, 0, 0, 9 * s, 7 * s, 7 * s, 0])
        centre = kidney[-1][:3] - 0.55 * kidney[-1][5] * np.array([0.0, np.sin(angle), np.cos(angle)])
        sinus.append(np.r_[centre, kidney[-1][3:6] * [0.55, 0.6, 0.5], angle])
    stomach = np.stack(
        [
            _blob(rng, s, (z0 + 45 * s, -0.35 * cb, 0.38 * ca), (45 * s, 26 * s, 38 * s), 0.6),
            _blob(rng, s, (z0 + 85 * s, 0.15 * cb, 0.35 * ca), (32 * s, 30 * s, 30 * s)),
        ]
    )
    gall = _blob(rng, s, (z0 + 12 * s, -0.5 * cb, -0.3 * ca), np.r_[32, 15, 14] * s, 0.5)
    shapes = {
        "cavity": np.array([[0.0, 0.0, cb, ca]]),
        "lungs": np.array([[0.08 * cb, side * 0.5 * ca, 0.95 * cb, 0.5 * ca] for side in (-1.0, 1.0)]),
        "domes": np.array(domes),
        "heart": _blob(rng, s, (top + 45 * s, -0.35 * cb, 0.15 * ca), (75 * s, 0.55 * cb, 0.42 * ca))[None],
        "liver": liver,
        "waves": waves,
        "spleen": spleen[None],
        "stomach": stomach,
        "gas_y": np.array([stomach[0, 1] - rng.uniform(0.2, 0.8) * stomach[0, 4]]),
        "gallbladder": gall[None],
        "kidney": np.stack(kidney),
        "kidney_medulla": np.stack(medulla),
        "renal_sinus": np.stack(sinus),
        "spine": np.array([[yv, 0.0, 16 * s, 21 * s]]),
        "canal": np.array([[yv + 25 * s, 0.0, 9 * s, 11 * s]]),
        "paraspinal": np.array(  # erector spinae (right, left), multifidus and interspinous muscle
            [[yv + 38 * s, side * 26 * s, 20 * s, 26 * s] for side in (-1.0, 1.0)]
            + [[yv + 44 * s, 0, 14 * s, 14 * s]]
        ),
    }
    parts: dict[str, list[np.ndarray]] = {}
    for name, radii, points in PATHS:
        parts.setdefault(name, []).append(_tube(frame(points), np.asarray(radii) * s))
    join, bend = frame(RENAL_VEIN_JOIN)
    parts["ivc"] += [_tube([sinus[0][:3], join], 5 * s), _tube([sinus[1][:3], bend, join], 5 * s)]
    renal_artery = [frame([(-10, -30, side * 6)])[0] for side in (-1, 1)]
    parts["aorta"] += [_tube([a, b[:3]], 3 * s) for a, b in zip(renal_artery, sinus, strict=True)]
    splenic = frame([(-10, -58, -4), (-2, -48, 30), (10, -40, 60)])
    parts["portal_vein"].append(_tube([*splenic, hilum], 4.5 * s))
    tail = hilum - np.r_[31, 8, 12] * s
    parts["pancreas"].append(_tube([frame([(4, -58, 35)])[0], tail], [10 * s, 8 * s]))
    roots = frame([PORTA, HEPATIC_CONFLUENCE])
    parts.update(_liver_trees(rng, liver, roots, vessel_generations, s, min_vessel_radius_mm))
    parts.update(_bowel(rng, parts.pop("colon"), z0, yv, ca, cb, s))
    vertebrae_z = z0 + 34.0 * s * np.arange(-4, 5)
    parts.update(_bones(vertebrae_z, z0, yv, ca + 0.5 * wall, cb + 0.5 * wall, s))
    return AbdomenLayout(
        scale=float(s),
        outline=np.array([[ca + wall + fat, cb + wall + fat], [ca + wall, cb + wall], [ca, cb]]),
        vertebrae_z=vertebrae_z,
        shapes=shapes,
        tubes={name: np.concatenate(v) if v else np.zeros((0, 8)) for name, v in parts.items()},
    )


def _liver_trees(
    rng: np.random.Generator, liver: np.ndarray, roots: np.ndarray, generations: int, s: float, min_r: float
) -> Tubes:
    """Portal tree from the porta hepatis, three hepatic vein trees from the IVC below the dome."""
    right, left = Ellipsoid(liver[0, :3], liver[0, 3:6]), Ellipsoid(liver[2, :3], liver[2, 3:6])
    porta, confluence = roots
    trees: dict[str, list[np.ndarray]] = {"portal_tree": [], "hepatic_vein": []}
    for name, lobe, root, direction, length, radius in (
        ("portal_tree", right, porta, right.centre - porta, 30, 6),
        ("portal_tree", left, porta, left.centre - porta, 35, 5),
        ("hepatic_vein", right, confluence, (-0.5, -0.2, -1.0), 30, 5),
        ("hepatic_vein", right, confluence, (-0.6, -1.0, -0.4), 30, 5),
        ("hepatic_vein", left, confluence, (-0.4, -1.0, 0.8), 30, 5),
    ):
        sub = np.random.default_rng(int(rng.integers(2**62)))
        d = np.asarray(direction, dtype=np.float64) / np.linalg.norm(direction) + rng.normal(0.0, 0.1, 3)
        trees[name].append(grow_tree(sub, lobe, root, d, length * s, radius * s, min_r, generations))
    return trees


def _bowel(
    rng: np.random.Generator, colon: list[np.ndarray], z0: float, yv: float, ca: float, cb: float, s: float
) -> Tubes:
    """Outer wall surfaces of the colon and of seven small-bowel loops, gas- or fluid-filled.

    The colon holds gas, a loop fluid (or gas with probability 0.25); the lumen is the wall surface moved
    :data:`BOWEL_WALL_MM` inwards.
    """
    gas, fluid = list(colon), []
    lo = np.array([z0 - 130 * s, -0.8 * cb, -0.75 * ca])
    hi = np.array([z0 - 20 * s, yv - 50 * s, 0.75 * ca])
    for _ in range(7):
        steps = rng.normal(size=(4, 3)) * np.array([0.5, 1.0, 1.0])
        steps *= 25 * s / np.linalg.norm(steps, axis=1, keepdims=True)
        points = rng.uniform(lo, hi) + np.concatenate([np.zeros((1, 3)), np.cumsum(steps, axis=0)])
        (gas if rng.random() < 0.25 else fluid).append(_tube(points, rng.uniform(9.0, 13.0) * s))
    return {"bowel_gas": gas, "bowel_fluid": fluid}


def _bones(zs: np.ndarray, z0: float, yv: float, rib_a: float, rib_b: float, s: float) -> Tubes:
    """Posterior elements of the vertebrae at ``zs`` and ribs 9-12 (marrow: :data:`BONE_SHELL` s inside)."""
    ends = np.array([p[1:] for p in VERTEBRA], dtype=np.float64) * s
    radii = np.array([p[0] for p in VERTEBRA]) * s
    caps = [np.c_[(ends * [1, 1, w] + [z, yv, 0]).reshape(-1, 6), radii, radii] for z in zs for w in (-1, 1)]
    for k, end in enumerate((0.95, 1.35, 1.9, 2.3)):  # ribs 12, 11, 10, 9: longer higher up
        t = np.linspace(0.35, end, 9)
        for side in (-1.0, 1.0):
            z = z0 + 34 * s * (k + 1) + 6 * s - 45 * s * (t - t[0])
            caps.append(_tube(np.stack([z, rib_b * np.cos(t), side * rib_a * np.sin(t)], 1), 4.5 * s))
    return {"bone": caps}
