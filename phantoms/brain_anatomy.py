"""Brain anatomy for the ``brain_mri`` phantom: per-case geometry drawn on the host, shapes on the device.

Signed distances (mm) of the cerebrum with gyri and sulci, cerebellum, brainstem, ventricles and deep
gray nuclei, skull and scalp; see docs/phantoms-brain-mri.md for the anatomy and its sources.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SEX_SCALE = {"female": 0.95, "male": 1.0}


AGE_EFFECTS = {  # ventricle radius factor, sulcal CSF width (mm), subarachnoid CSF (mm), WMH count range
    "18-39": (1.0, 0.8, 1.5, (2, 4)),
    "40-64": (1.2, 1.5, 2.5, (3, 6)),
    "65+": (1.45, 2.4, 3.5, (5, 9)),
}


WAVES = 8  # plane waves of the sulcal field (plus one slow wave for the sulcal depth)


FOLIA = 14  # cerebellar fissures per half turn


BASE_SHAPE = (0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 0.08, -0.06, 0.0)  # see _ellipsoid


VENTRICLE_CHAINS = (  # left lateral ventricle (x > 0) at head scale 1: (z, y, x, radius) mm
    ((12, -32, 9, 4), (16, -20, 9, 6), (19, 0, 10, 6.5), (18, 18, 13, 6), (10, 32, 22, 8), (8, 50, 18, 4)),
    ((10, 32, 22, 8), (-8, 25, 30, 5), (-20, 8, 32, 4), (-25, -8, 30, 2.5)),
)


MIDLINE_VENTRICLES = (((3, -8, 0, 2.5), (0, 8, 0, 2.5)), ((-40, 11, 0, 3.0), (-50, 12, 0, 2.5)))


NUCLEI = (  # left caudate head, thalamus, lentiform nucleus: centre and half axes (z, y, x) mm
    ((14, -22, 15), (9, 10, 4.5)),
    ((2, 8, 9), (10, 15, 6)),
    ((0, -2, 25), (10, 16, 5.5)),
)


class Geo:
    """Per-case parameters stacked over a batch, shaped to broadcast over a grid or a list of points."""

    def __init__(self, geos: Sequence[dict[str, np.ndarray]], device: torch.device, grid: bool) -> None:
        dtype = torch.float32 if grid else torch.float64
        self.t = {
            k: torch.as_tensor(np.stack([g[k] for g in geos]), dtype=dtype, device=device) for k in geos[0]
        }
        self.view = (-1, 1, 1, 1) if grid else (-1,)
        self.batch = len(geos)

    def __call__(self, key: str, *index: int) -> Tensor:
        """Parameter ``key`` (at ``index`` within it) for every case, shaped to broadcast."""
        return self.t[key][(slice(None), *index)].reshape(self.view)


def _ellipsoid(g: Geo, key: str, z: Tensor, y: Tensor, x: Tensor, deform: bool = False) -> tuple:
    """Approximate signed distance (mm) to a (radially deformed) ellipsoid; also ``rho`` and ``u``.

    ``u = (p - c) / r``, ``rho = |u|``; the surface is ``rho = f(u / rho)`` with ``f = 1 + sum a_m t_m``
    over the direction monomials ``ny, nx, nz, nz ny, nx ny, nz nx, nx^2 ny, nx^2 nz, nz^3`` (evaluated as
    homogeneous polynomials of ``u`` over powers of ``rho``), and distances scale by ``|u| / |u / r|``
    (the ellipsoid bound of Quilez): exact on the axes, within a few percent elsewhere.
    """
    r = [g(key + "_r", a) for a in range(3)]
    u = [(q - g(key + "_c", a)) / r[a] for a, q in enumerate((z, y, x))]
    rho = torch.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])
    k1 = torch.sqrt((u[0] / r[0]) ** 2 + (u[1] / r[1]) ** 2 + (u[2] / r[2]) ** 2)
    ratio = torch.maximum(rho / k1.clamp_min(1e-9), torch.minimum(torch.minimum(r[0], r[1]), r[2]))
    if not deform:
        return (rho - 1.0) * ratio, rho, ratio, u
    a = [g(key + "_a", m) for m in range(len(BASE_SHAPE))]
    p1 = a[0] * u[1] + a[1] * u[2] + a[2] * u[0]
    p2 = a[3] * u[0] * u[1] + a[4] * u[2] * u[1] + a[5] * u[0] * u[2]
    p3 = (a[6] * u[1] + a[7] * u[0]) * u[2] * u[2] + a[8] * u[0] ** 3
    safe = rho.clamp_min(1e-6)
    f = ((p3 / safe + p2) / safe + p1) / safe + 1.0
    return (rho - f) * ratio, rho, ratio, u


def _capsule(g: Geo, key: str, z: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Signed distance (mm) to one tapered capsule per case (``key``: p0, p1, r0, r1)."""
    rel = [q - g(key, a) for a, q in enumerate((z, y, x))]
    d = [g(key, 3 + a) - g(key, a) for a in range(3)]
    t = torch.clamp(
        (rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / (d[0] ** 2 + d[1] ** 2 + d[2] ** 2), 0, 1
    )
    dist = torch.sqrt((rel[0] - t * d[0]) ** 2 + (rel[1] - t * d[1]) ** 2 + (rel[2] - t * d[2]) ** 2)
    return dist - (g(key, 6) + t * (g(key, 7) - g(key, 6)))


def _cleft(lateral: Tensor, depth: Tensor, half_width: Tensor, bottom: Tensor) -> Tensor:
    """Signed distance (mm) to a cleft: ``|lateral| < half_width`` and ``depth < bottom`` (a 2-D box)."""
    a, c = lateral - half_width, depth - bottom
    return torch.hypot(a.clamp_min(0), c.clamp_min(0)) + torch.clamp(torch.maximum(a, c), max=0.0)


def _sulci(g: Geo, hull: Tensor, rho: Tensor, u: Sequence[Tensor], idx: Tensor) -> Tensor:
    """Signed distance (mm) to the sulcal CSF clefts at the flat indices ``idx`` of ``hull``.

    The sulcal field ``G`` is a sum of :data:`WAVES` plane waves evaluated halfway between the point and
    its radial projection onto the undeformed hull (so sulci curve with depth); a sulcus is where the
    lateral distance to a nodal line of ``G``, ``|G| / |grad_t G|``, is below the half width (wider
    towards the surface) and the depth below the hull is less than ``D`` (times 0.6 to 1.4 by a slow wave).
    """
    where = torch.unravel_index(idx, hull.shape)
    b = idx // (hull.numel() // g.batch)

    def col(key: str, *i: int) -> Tensor:
        return g.t[key][(slice(None), *i)][b]

    norm = rho.expand(hull.shape)[where]
    n = [c.expand(hull.shape)[where] / norm for c in u]
    half = [col("hull_r", a) for a in range(3)]
    lift = 0.5 * (1.0 + norm)  # halfway between the point and its projection: sulci curve with depth
    s = [col("hull_c", a) + half[a] * n[a] * lift for a in range(3)]
    field, grad = torch.zeros_like(norm), [torch.zeros_like(norm) for _ in range(3)]
    for k in range(WAVES + 1):
        w = [col("waves", k, a) for a in range(3)]
        phase = s[0] * w[0] + s[1] * w[1] + s[2] * w[2] + col("phase", k)
        if k == WAVES:  # the slow wave: sulcal depth
            bottom = col("sulcus", 0) * (1.0 + 0.4 * torch.cos(phase))
            break
        field += torch.cos(phase)
        sin = torch.sin(phase)
        grad = [grad[a] - sin * w[a] for a in range(3)]
    nu = [n[a] / half[a] for a in range(3)]
    dot = (grad[0] * nu[0] + grad[1] * nu[1] + grad[2] * nu[2]) / (nu[0] ** 2 + nu[1] ** 2 + nu[2] ** 2)
    tangential = torch.sqrt(sum((grad[a] - dot * nu[a]) ** 2 for a in range(3)))
    floor = (
        0.3
        * math.sqrt(WAVES / 2)
        * torch.sqrt(col("waves", 0, 0) ** 2 + col("waves", 0, 1) ** 2 + col("waves", 0, 2) ** 2)
    )
    depth = -hull[where]
    opening = col("sulcus", 3) * torch.clamp(1.0 - depth / (0.5 * bottom), 0.0, 1.0)
    return _cleft(
        field.abs() / torch.maximum(tangential, floor), depth, 0.5 * col("sulcus", 1) + opening, bottom
    )


def _cerebellum(g: Geo, z: Tensor, y: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """Cerebellar tissue (hemispheres and vermis, with folia fissures) and white matter core distances (mm).

    Folia: fissures fanning out in the sagittal plane from a pivot at the fourth ventricle, every
    ``pi / FOLIA`` radians (``cos(FOLIA theta)`` by the Chebyshev recurrence), 0.3 of the depth.
    """
    left, rho_l, ratio_l, _ = _ellipsoid(g, "cbl", z, y, x)
    right, rho_r, ratio_r, _ = _ellipsoid(g, "cbr", z, y, x)
    vermis, _, _, _ = _ellipsoid(g, "cbv", z, y, x)
    tissue = _smin(_smin(left, right, 6.0), vermis, 6.0)
    core = torch.minimum((rho_l - 0.6) * ratio_l, (rho_r - 0.6) * ratio_r)
    dz, dy = z - g("folia", 0), y - g("folia", 1)
    radius = torch.sqrt(dz * dz + dy * dy)
    c = dz / radius.clamp_min(1e-6)
    prev, cheb = torch.ones_like(c), c
    for _ in range(FOLIA - 1):
        prev, cheb = cheb, 2.0 * c * cheb - prev
    lateral = torch.sqrt(torch.clamp(2.0 * (1.0 - cheb), min=0.0)) / FOLIA * radius
    tissue = torch.maximum(tissue, -_cleft(lateral, -tissue, g("folia", 2), g("folia", 3)))
    return tissue, torch.maximum(core, tissue + 2.0)


def brain_fields(g: Geo, z: Tensor, y: Tensor, x: Tensor, boxes: dict | None = None) -> dict[str, Tensor]:
    """Signed distances (mm) of the head's dense structures at the points ``z, y, x``.

    Keys: ``hull``, ``env`` (smooth union of cerebrum, cerebellum and brainstem), ``par`` (outer gray
    matter surface of the cerebrum), ``cb`` and ``cb_core`` (cerebellum and its white matter), ``stem``.

    ``boxes`` (grid mode) gives the sub-windows of ``z, y, x`` where the cerebellum, brainstem and midline
    matter (they are not needed elsewhere); without it every point is evaluated.
    """
    hull, rho, _, u = _ellipsoid(g, "hull", z, y, x, deform=True)
    reach = g("sulcus", 0) * 1.4 + g("sulcus", 2) + 3.0
    idx = torch.nonzero(((hull > -reach) & (hull < 3.0)).reshape(-1)).squeeze(1)
    par, env = hull.clone(), hull.clone()
    par.view(-1)[idx] = torch.maximum(hull.reshape(-1)[idx], -_sulci(g, hull, rho, u, idx))
    out = {"hull": hull, "env": env, "par": par}
    for part in ("cb", "stem", "mid"):
        sel = (Ellipsis,) if boxes is None else (slice(None), *boxes[part])
        zz, yy, xx = (z, y, x) if boxes is None else (z[:, sel[1]], y[:, :, sel[2]], x[:, :, :, sel[3]])
        if part == "cb":
            out["cb"], out["cb_core"] = cb, _ = _cerebellum(g, zz, yy, xx)
            env[sel], par[sel] = _smin(env[sel], cb), torch.maximum(par[sel], 2.5 - cb)
        elif part == "stem":
            out["stem"] = stem = _capsule(g, "bs", zz, yy, xx)
            cistern = torch.minimum(3.0 - stem, g("bs", 0) - 14.0 - zz)  # CSF around pons and medulla
            env[sel], par[sel] = _smin(env[sel], stem), torch.maximum(par[sel], cistern)
        else:
            core = torch.sqrt(
                ((zz - g("core", 0)) / g("core", 2)) ** 2 + ((yy - g("core", 1)) / g("core", 3)) ** 2
            )
            core = (core - 1.0) * torch.minimum(g("core", 2), g("core", 3))
            fissure = (xx - g("fissure", 1) - g("fissure", 2) * yy).abs() - g("fissure", 0)
            par[sel] = torch.maximum(par[sel], torch.minimum(-fissure, core))
    return out


def _smin(a: Tensor, b: Tensor, k: float = 8.0) -> Tensor:
    """Smooth minimum (polynomial, blend width ``k`` mm) of two signed distances."""
    h = torch.clamp(k - (a - b).abs(), min=0.0) / k
    return torch.minimum(a, b) - h * h * (k / 4.0)


def draw_geometry(rng: np.random.Generator, attrs: dict[str, str]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Dense-shape parameters, ventricle capsules and deep nuclei of one case (mm)."""
    s = SEX_SCALE[attrs["sex"]] * rng.uniform(0.97, 1.03)
    vscale, sulcus_w, csf_mm, _ = AGE_EFFECTS[attrs["age_band"]]
    waves = rng.normal(size=(WAVES + 1, 3))
    wavelength = np.append(rng.uniform(16.0, 19.0, WAVES), rng.uniform(50.0, 70.0))  # mm
    waves *= (2.0 * math.pi / wavelength / np.linalg.norm(waves, axis=1))[:, None]
    cb_half = np.array([21.0, 28.0, 30.0]) * s * rng.uniform(0.95, 1.05, 3)
    geo = {
        "hull_c": np.array([-6.0, 3.0, 0.0]) * s + rng.normal(0.0, 1.0, 3) * [1.0, 1.0, 0.0],
        "hull_r": np.array([60.0, 84.0, 68.0]) * s * rng.uniform(0.96, 1.04, 3),
        "hull_a": np.array(BASE_SHAPE) + rng.normal(0.0, 0.015, len(BASE_SHAPE)),
        "cbl_c": np.array([-42.0, 46.0, 24.0]) * s,
        "cbl_r": cb_half,
        "cbr_c": np.array([-42.0, 46.0, -24.0]) * s,
        "cbr_r": cb_half,
        "cbv_c": np.array([-38.0, 40.0, 0.0]) * s,
        "cbv_r": np.array([20.0, 26.0, 12.0]) * s,
        "folia": np.array([-38.0 * s, 18.0 * s, 0.5, 6.0 * s]),  # pivot z, y; fissure half width, depth
        "bs": np.array([-12.0, -2.0, 0.0, -110.0, 20.0, 0.0, 12.0, 9.0]) * s,
        "layers": np.array(
            [csf_mm + rng.uniform(-0.3, 0.3), rng.uniform(5.5, 7.5) * s, rng.uniform(4.5, 7.0) * s]
        ),
        "waves": waves,
        "phase": rng.uniform(0.0, 2.0 * math.pi, WAVES + 1),
        # sulcal depth D, CSF width at the fundus, gray matter thickness T, extra half width at the surface
        "sulcus": np.array([12.0 * s, sulcus_w, 2.75, 0.5 + 0.4 * sulcus_w]) * rng.uniform(0.9, 1.1, 4),
        "fissure": np.array([0.6 + 0.3 * sulcus_w, rng.normal(0.0, 0.7), rng.normal(0.0, 0.005)]),
        "core": np.array([-5.0, 0.0, 32.0, 38.0]) * s,  # corpus callosum and diencephalon: no fissure
    }
    caps = []
    for side in (1.0, -1.0):
        radius_factor = vscale * rng.uniform(0.9, 1.1)
        for chain in VENTRICLE_CHAINS:
            pts = np.array(chain, dtype=np.float64) * s
            pts[:, :3] += rng.normal(0.0, 1.0, (len(pts), 3))
            pts[:, 2] += pts[:, 3] * (radius_factor - 1.0)  # widen laterally: the septum stays in place
            pts[:, 2] *= side
            pts[:, 3] *= radius_factor
            caps.append(np.concatenate([pts[:-1, :3], pts[1:, :3], pts[:-1, 3:], pts[1:, 3:]], axis=1))
    for chain in MIDLINE_VENTRICLES:
        pts = np.array(chain, dtype=np.float64) * s
        caps.append(np.concatenate([pts[0, :3], pts[1, :3], pts[:, 3] * vscale])[None])
    nuclei = np.array([[c, h] for c, h in NUCLEI] * 2, dtype=np.float64) * s
    nuclei[3:, 0, 2] *= -1.0
    nuclei[:, 0] += rng.normal(0.0, 0.7, (6, 3))
    return geo, np.concatenate(caps), nuclei


def fields_at(geo: dict[str, np.ndarray], points: np.ndarray) -> dict[str, np.ndarray]:
    """The dense signed distances of one case at ``points`` (N, 3) mm, in float64 on the host."""
    g = Geo([geo], torch.device("cpu"), grid=False)
    p = torch.as_tensor(points, dtype=torch.float64)
    return {k: v.numpy() for k, v in brain_fields(g, p[:, 0], p[:, 1], p[:, 2]).items()}


def nuclei_sd(points: np.ndarray, nuclei: np.ndarray) -> np.ndarray:
    """Host-side signed distance (mm) of ``points`` (N, 3) to the deep gray nuclei ellipsoids."""
    rho = np.linalg.norm((points[:, None] - nuclei[None, :, 0]) / nuclei[None, :, 1], axis=-1)
    return ((rho - 1.0) * nuclei[None, :, 1].min(-1)).min(1)
