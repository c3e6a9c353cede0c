r"""CT metal artefacts: streaks from a metal implant, simulated in the projection domain.

A metal implant (hip stem, spinal or dental screw, rod) attenuates so strongly that three departures
from the linear model that filtered back-projection (FBP) assumes become large on the rays through it
(De Man et al., "Metal streak artifacts in X-ray CT: a simulation study", IEEE TNS 46:691, 1999;
Hsieh, *Computed Tomography*, 2nd ed., 2009, ch. 7; Kalender, Hebel & Ebersberger, Radiology 164:576,
1987). Per axial slice, with ``p`` the line integral of the linear attenuation (dimensionless):

* **beam hardening** of the metal path ``p_m``: the polychromatic measurement falls short of the
  monochromatic one, to second order as in :mod:`perturbations.ct_beam`, with the physical asymptote of
  a fully hardened beam (attenuation per unit path tends to ``r`` times its effective value):
  :math:`h(p_m) = r\,p_m + (1 - r)\,p_s (1 - e^{-p_m/p_s}) = p_m - \frac{1-r}{2 p_s} p_m^2 + O(p_m^3)`;
* **exponential edge (partial volume) effect** (Joseph & Spital, JCAT 5:512, 1981; Glover & Pelc, Med
  Phys 7:238, 1980): a detector element averages intensities, not line integrals: ``-ln mean(e^{-p})``
  over four sub-rays across the detector aperture (``detector_aperture_mm``, a property of the scanner,
  not of the image grid) and over the fraction ``f_z`` of the slice the implant covers in z;
* **photon starvation**: the expected count ``I0 e^{-p}`` behind metal is a few photons; counts are
  Gaussian with the Poisson variance plus electronic noise, ``N = n + sqrt(n + sigma_e^2) z``, clamped at
  ``count_floor`` before the log, so ``p_hat = ln(I0 / N)`` has variance about ``e^p / I0`` and saturates.

The body's own line integral ``p_b`` (water-equivalent, ``mu_w (1 + HU/1000)``, projected with
:func:`perturbations.ct_beam.project`) sets the photon count; the metal's ``p_m`` is the exact chord of an
ellipse (Kak & Slaney, 1988, eq. 3.4). The deficit
``d = [p_hat(p_b + p_m) - (p_b + f_z <p_m>)] - [p_hat(p_b) - p_b]`` uses the same normal deviates in both
brackets (the input image is taken to carry its own metal-free noise already), so ``d`` is exactly 0 on
every ray that misses the metal. The output is the input with the metal painted in (area fraction per
voxel, true metal HU) plus ``1000 FBP(d) / mu_w`` HU, clipped to ``[min_hu, max_hu]`` (the scanner's
range; voxels already outside it are left alone). All attenuation values are at an effective energy of
70 keV (a filtered 120 kVp body beam): NIST XCOM mass attenuation coefficients (Hubbell & Seltzer, NIST
SRD 126) interpolated log-log between 60 and 80 keV. Limitations: the body's own beam hardening (use
``ct_beam_hardening``), scatter and the hardening of tissue behind metal are not modelled; the implant
replaces tissue in the image but the body's line integral is not reduced by the displaced tissue (a
relative error below ``mu_w / mu_metal`` on metal rays, only in the noise variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from perturbations.base import (
    PERTURBATIONS,
    Perturbation,
    PerturbationSpec,
    Props,
    Severity,
    Spacing,
    check_batch,
    draw_seed,
)
from perturbations.ct_beam import _Geometry, _geometry, backproject, project, ramp_filter
from perturbations.ct_geometry import inplane_coordinates_mm
from perturbations.random import hash32, standard_normal

EFFECTIVE_ENERGY_KEV = 70.0
WATER_MU_PER_MM = 0.01937  # NIST mu/rho of water at 70 keV, 0.1937 cm^2/g, times 1 g/cm^3
MATERIALS = {  # name: (mu/rho at 70 keV in cm^2/g, NIST XCOM log-log interpolated; density g/cm^3)
    "titanium": (0.5446, 4.5),  # Ti-6Al-4V screws, rods, stems: mu 0.245 /mm, about 11,650 HU
    "steel": (0.8258, 7.9),  # stainless steel (iron's mu/rho): mu 0.652 /mm, about 32,700 HU
}
EDGE_SUBSAMPLES = 4  # sub-rays across the detector aperture for the exponential edge effect
COVERAGE_SUBSAMPLES = 4  # per axis, for the metal's area fraction in a voxel


def material_mu_per_mm(material: str) -> float:
    """Linear attenuation coefficient (1/mm) of a named implant material at the effective energy."""
    mass_attenuation, density = MATERIALS[material]
    return mass_attenuation * density / 10.0


class MetalSpec(PerturbationSpec):
    """Fixed settings of ``ct_metal``.

    Attributes:
        material: implant material (sets ``mu`` at 70 keV), unless ``mu_per_mm`` is given.
        mu_per_mm: linear attenuation of the metal at the effective energy, 1/mm (overrides ``material``).
        n_objects: 1, or 2 for a pair mirrored about the sagittal midline (bilateral hips, pedicle screws).
        aspect_ratio: minor / major axis of the elliptic cross-section (1: a round rod or screw).
        length_mm: extent of the implant along z, mm.
        max_offset: placement bound: the centre is at most this fraction of the half field of view from the
            isocentre in x, y and z (the phantoms centre the body).
        photons_per_ray: unattenuated photons per detector bin and view, ``I0``.
        electronic_noise_counts: standard deviation of the detector's electronic noise, counts.
        count_floor: smallest count kept before the log, counts.
        hardened_ratio: ``r``, attenuation per unit path of a fully hardened beam relative to the
            effective one (1: no beam hardening).
        hardening_scale: ``p_s``, metal line integral over which the beam hardens (dimensionless).
        exponential_edge: average intensities over the detector aperture and the slice (partial volume).
        detector_aperture_mm: width of a detector element's aperture at the isocentre, mm.
        max_hu: upper end of the scanner's CT-number range, HU.
        min_hu: lower end of that range, HU.
    """

    material: Literal["titanium", "steel"] = "titanium"
    mu_per_mm: float | None = Field(None, gt=0.0, le=20.0, description="metal attenuation [1/mm]")
    n_objects: int = Field(1, ge=1, le=2)
    aspect_ratio: float = Field(1.0, gt=0.0, le=1.0)
    length_mm: float = Field(40.0, gt=0.0, le=2000.0, description="extent along z [mm]")
    max_offset: float = Field(0.4, ge=0.0, le=0.9)
    photons_per_ray: float = Field(1e5, gt=10.0, le=1e15)
    electronic_noise_counts: float = Field(3.0, ge=0.0, le=1e4)
    count_floor: float = Field(1.0, gt=0.0, le=1e4)
    hardened_ratio: float = Field(0.5, gt=0.0, le=1.0)
    hardening_scale: float = Field(3.0, gt=0.0, le=1e3)
    exponential_edge: bool = True
    detector_aperture_mm: float = Field(1.0, gt=0.0, le=10.0, description="detector aperture [mm]")
    max_hu: float = Field(3071.0, ge=0.0, le=1e6)
    min_hu: float = Field(-1024.0, ge=-1e6, le=-1000.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class MetalParams:
    """One case's metal implant (positions as fractions of the half field of view, see :class:`MetalSpec`).

    Attributes:
        diameter_mm: major axis of the cross-section, mm (the severity; 0: no metal).
        aspect_ratio: minor / major axis.
        angle_rad: orientation of the major axis, from +x (W) towards +y (H), rad.
        n_objects: 1 or 2 (the second at ``(-x, y)``, mirrored orientation).
        x_frac: centre in x, fraction of the half width.
        y_frac: centre in y, fraction of the half height.
        z_frac: centre in z, fraction of the half depth.
        length_mm: extent along z, mm.
        mu_per_mm: metal attenuation at the effective energy, 1/mm.
        photons_per_ray: ``I0``.
        electronic_noise_counts: electronic noise SD, counts.
        count_floor: smallest count before the log.
        hardened_ratio: ``r``.
        hardening_scale: ``p_s``.
        exponential_edge: intensity averaging over the aperture and the slice.
        detector_aperture_mm: detector aperture at the isocentre, mm.
        max_hu: upper clip, HU.
        min_hu: lower clip, HU.
        seed: seed of the projection noise.
    """

    diameter_mm: float
    aspect_ratio: float
    angle_rad: float
    n_objects: int
    x_frac: float
    y_frac: float
    z_frac: float
    length_mm: float
    mu_per_mm: float
    photons_per_ray: float
    electronic_noise_counts: float
    count_floor: float
    hardened_ratio: float
    hardening_scale: float
    exponential_edge: bool
    detector_aperture_mm: float
    max_hu: float
    min_hu: float
    seed: int


def sample_metal(spec: MetalSpec, severity: float, rng: np.random.Generator) -> MetalParams:
    """An implant of major axis ``severity`` mm at a random place (same draws at any severity)."""
    radius, phi, pair_x, pair_y, angle, z = rng.uniform(size=6)
    if spec.n_objects == 1:  # uniform in the disk of radius max_offset
        x_frac = spec.max_offset * math.sqrt(radius) * math.cos(2 * math.pi * phi)
        y_frac = spec.max_offset * math.sqrt(radius) * math.sin(2 * math.pi * phi)
    else:  # a pair at (+-x, y), at least a quarter of the bound from the midline
        x_frac = spec.max_offset * (0.25 + 0.75 * pair_x)
        y_frac = spec.max_offset * (pair_y - 0.5)
    return MetalParams(
        diameter_mm=float(severity),
        aspect_ratio=spec.aspect_ratio,
        angle_rad=float(math.pi * angle),
        n_objects=spec.n_objects,
        x_frac=float(x_frac),
        y_frac=float(y_frac),
        z_frac=float(spec.max_offset * (2.0 * z - 1.0)),
        length_mm=spec.length_mm,
        mu_per_mm=spec.mu_per_mm if spec.mu_per_mm is not None else material_mu_per_mm(spec.material),
        photons_per_ray=spec.photons_per_ray,
        electronic_noise_counts=spec.electronic_noise_counts,
        count_floor=spec.count_floor,
        hardened_ratio=spec.hardened_ratio,
        hardening_scale=spec.hardening_scale,
        exponential_edge=spec.exponential_edge,
        detector_aperture_mm=spec.detector_aperture_mm,
        max_hu=spec.max_hu,
        min_hu=spec.min_hu,
        seed=draw_seed(rng),
    )


def slice_fractions(params: Sequence[MetalParams], depth: int, dz_mm: float) -> np.ndarray:
    """Fraction ``f_z`` of every slice's thickness the implant covers, ``(B, D)`` (host: from params only)."""
    z = (np.arange(depth) - (depth - 1) / 2) * dz_mm
    centre = np.array([p.z_frac for p in params]) * (depth - 1) / 2 * dz_mm
    half = np.array([p.length_mm / 2 if p.diameter_mm > 0 else 0.0 for p in params])
    lo = np.maximum(z[None] - dz_mm / 2, (centre - half)[:, None])
    hi = np.minimum(z[None] + dz_mm / 2, (centre + half)[:, None])
    return np.clip((hi - lo) / dz_mm, 0.0, 1.0)


def _objects(params: Sequence[MetalParams], h: int, w: int, spacing_mm: Spacing, like: Tensor) -> Tensor:
    """Per case and object: centre x, y, semi-axes a, b (mm), orientation (rad), weight: ``(B, 2, 6)``."""
    half_w, half_h = (w - 1) / 2 * spacing_mm[2], (h - 1) / 2 * spacing_mm[1]
    rows = []
    for p in params:
        cx, cy, a = p.x_frac * half_w, p.y_frac * half_h, p.diameter_mm / 2
        b, second = a * p.aspect_ratio, float(p.n_objects == 2)
        rows.append([[cx, cy, a, b, p.angle_rad, 1.0], [-cx, cy, a, b, math.pi - p.angle_rad, second]])
    return torch.tensor(rows, dtype=torch.float64, device=like.device)


def metal_chords(objects: Tensor, g: _Geometry, offsets_mm: Tensor) -> Tensor:
    """Exact chord length (mm) through the implant(s), ``(B, A, L, K)``, at ``s + offsets_mm`` ``(B, K)``."""
    cx, cy, a, b, theta, weight = (objects[..., i, None, None, None] for i in range(6))  # (B, J, 1, 1, 1)
    phi = g.angles.to(torch.float64).view(-1, 1, 1)
    s = g.bins.to(torch.float64).view(1, 1, 1, -1, 1) + offsets_mm.view(-1, 1, 1, 1, offsets_mm.shape[1])
    support2 = (a * torch.cos(phi - theta)) ** 2 + (b * torch.sin(phi - theta)) ** 2  # (B, J, A, 1, 1)
    u = s - (cx * torch.cos(phi) + cy * torch.sin(phi))
    chord = 2 * a * b / support2.clamp(min=1e-12) * torch.sqrt((support2 - u**2).clamp(min=0.0))
    return (weight * chord).sum(dim=1)


def metal_coverage(objects: Tensor, y_mm: Tensor, x_mm: Tensor, spacing_mm: Spacing) -> Tensor:
    """Area fraction of every voxel inside the implant(s), ``(B, H, W)`` (sub-sampled, at most 1)."""
    k = torch.arange(COVERAGE_SUBSAMPLES, dtype=torch.float64, device=objects.device) + 0.5
    k = k / COVERAGE_SUBSAMPLES - 0.5
    y = (y_mm.view(-1, 1, 1, 1) + k.view(1, 1, -1, 1) * spacing_mm[1]).unsqueeze(0)  # (1, H, 1, K, 1)
    x = (x_mm.view(1, -1, 1, 1) + k.view(1, 1, 1, -1) * spacing_mm[2]).unsqueeze(0)  # (1, 1, W, 1, K)
    total = torch.zeros(objects.shape[0], y.shape[1], x.shape[2], dtype=torch.float64, device=objects.device)
    for j in range(objects.shape[1]):
        cx, cy, a, b, theta, weight = (objects[:, j, i].view(-1, 1, 1, 1, 1) for i in range(6))
        du, dv = x - cx, y - cy
        u = du * torch.cos(theta) + dv * torch.sin(theta)
        v = -du * torch.sin(theta) + dv * torch.cos(theta)
        inside = (u / a.clamp(min=1e-9)) ** 2 + (v / b.clamp(min=1e-9)) ** 2 <= 1.0
        total = total + weight.view(-1, 1, 1) * inside.to(torch.float64).mean(dim=(-2, -1))
    return total.clamp(max=1.0)


def slice_seeds(seeds: Tensor, index: Tensor) -> Tensor:
    """A non-negative 63-bit seed per slice from its case's seed and its index in the case, both ``(S,)``."""
    lo = hash32((seeds & 0xFFFFFFFF) ^ hash32(index))
    hi = hash32(((seeds >> 32) & 0xFFFFFFFF) ^ hash32(index ^ 0x9E3779B9))
    return ((hi & 0x7FFFFFFF) << 32) | lo


def _column(params: Sequence[MetalParams], field: str, like: Tensor) -> Tensor:
    """One params field per case as float64 ``(B, 1, 1)`` on ``like``'s device."""
    values = [float(getattr(p, field)) for p in params]
    return torch.tensor(values, dtype=torch.float64, device=like.device).view(-1, 1, 1)


def metal_deficit(
    body: Tensor, params: Sequence[MetalParams], chords: Tensor, case: Tensor, fz: Tensor, noise: Tensor
) -> Tensor:
    """Measured minus ideal line integral caused by the metal, ``(S, A, L)`` float64 (see module doc).

    Args:
        body: body line integrals ``p_b`` of the selected slices, ``(S, A, L)`` float64.
        params: the batch's params (per case).
        chords: chord lengths through the metal, ``(B, A, L, K)`` mm.
        case: case index of every selected slice, ``(S,)`` int64.
        fz: slice fraction covered by the implant, ``(S, 1, 1)`` float64.
        noise: standard normal deviates, ``(S, A, L)``.
    """
    pm = _column(params, "mu_per_mm", body).unsqueeze(-1) * chords  # (B, A, L, K)
    r = _column(params, "hardened_ratio", body).unsqueeze(-1)
    ps = _column(params, "hardening_scale", body).unsqueeze(-1)
    hardened = r * pm + (1.0 - r) * ps * -torch.expm1(-pm / ps)
    transmitted = torch.exp(-hardened).mean(dim=-1)[case]  # (S, A, L), exactly 1 off the metal
    edge = _column(params, "exponential_edge", body)[case] > 0
    measured_metal = torch.where(  # intensity averages (exponential edge) or line-integral averages
        edge, -torch.log1p(-fz * (1.0 - transmitted)), fz * hardened.mean(dim=-1)[case]
    )
    ideal = fz * pm.mean(dim=-1)[case]
    i0 = _column(params, "photons_per_ray", body)[case]
    var_e = _column(params, "electronic_noise_counts", body)[case] ** 2
    floor = _column(params, "count_floor", body)[case]

    def log_counts(p: Tensor) -> Tensor:
        mean = i0 * torch.exp(-p)
        counts = (mean + torch.sqrt(mean + var_e) * noise).clamp(min=floor)
        return torch.log(i0 / counts)

    return (log_counts(body + measured_metal) - (body + ideal)) - (log_counts(body) - body)


def apply_metal(x: Tensor, spacing_mm: Spacing, params: Sequence[MetalParams]) -> Tensor:
    """Paint the implant into each case and add the FBP of its projection-domain deficit (module doc).

    Only slices the implant reaches are projected; the others are returned unchanged.

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_metal")
    b, c, d, h, w = x.shape
    fractions = slice_fractions(params, d, spacing_mm[0])  # (B, D), host arithmetic on params
    case_np, depth_np = np.nonzero(np.broadcast_to(fractions[:, None], (b, c, d)).reshape(b, c * d) > 0)
    if case_np.size == 0:
        return x
    dev = x.device
    case = torch.as_tensor(case_np, dtype=torch.int64, device=dev)
    within = torch.as_tensor(depth_np, dtype=torch.int64, device=dev)  # slice index within its case
    fz = torch.as_tensor(fractions[case_np, depth_np % d], dtype=torch.float64, device=dev).view(-1, 1, 1)
    flat = x.reshape(b * c * d, h, w)
    chosen = flat.index_select(0, case * (c * d) + within)

    g = _geometry(h, w, spacing_mm, x)
    objects = _objects(params, h, w, spacing_mm, x)
    step = (torch.arange(EDGE_SUBSAMPLES, dtype=torch.float64, device=dev) + 0.5) / EDGE_SUBSAMPLES - 0.5
    chords = metal_chords(objects, g, step * _column(params, "detector_aperture_mm", x).view(-1, 1))
    body = project((1.0 + chosen / 1000.0).clamp(min=0.0), g).to(torch.float64) * WATER_MU_PER_MM
    seeds = torch.tensor([p.seed for p in params], dtype=torch.int64, device=dev)[case]
    noise = standard_normal(slice_seeds(seeds, within), tuple(body.shape[1:]), torch.float64)
    deficit = metal_deficit(body, params, chords, case, fz, noise).to(x.dtype)
    y_mm, x_mm = inplane_coordinates_mm(x, spacing_mm)
    error = backproject(ramp_filter(deficit, g.pitch_mm), g, y_mm, x_mm) * (1000.0 / WATER_MU_PER_MM)

    mu = _column(params, "mu_per_mm", x)[case]
    metal_hu = (1000.0 * (mu / WATER_MU_PER_MM - 1.0)).to(x.dtype)
    fraction = (fz * metal_coverage(objects, y_mm, x_mm, spacing_mm)[case]).to(x.dtype)
    out = chosen + fraction * (metal_hu - chosen) + error
    top, bottom = (
        _column(params, "max_hu", x)[case].to(x.dtype),
        _column(params, "min_hu", x)[case].to(x.dtype),
    )
    out = torch.minimum(out, torch.maximum(top, chosen))
    out = torch.maximum(out, torch.minimum(bottom, chosen))
    return flat.index_copy(0, case * (c * d) + within, out).view_as(x)


PERTURBATIONS.register(
    "ct_metal",
    Perturbation(
        name="ct_metal",
        description="CT metal artefacts: an implant of given diameter (mm); beam hardening, exponential "
        "edge and photon starvation in the projections, FBP streaks",
        spec=MetalSpec,
        params=MetalParams,
        severity=Severity(
            name="metal_diameter_mm", unit="mm", low=0.0, high=100.0, nominal=0.0, harsher="higher"
        ),
        ladder=(2.0, 4.0, 8.0, 12.0, 20.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=True),
        sample=sample_metal,
        apply=apply_metal,
    ),
)
