r"""CT beam hardening: cupping and dark streaks from a first-order polychromatic line-integral error.

A polychromatic beam hardens along its path, so the measured line integral falls short of the
monochromatic one more and more with path length. To first order (Brooks & Di Chiro, Phys Med Biol
21:390, 1976; Herman, Phys Med Biol 24:81, 1979; Hsieh, *Computed Tomography*, 2nd ed., 2009, §7.6)

.. math:: p_{poly} = p - \beta\, p^2 .

Filtered back-projection of the deficit :math:`-\beta p^2` gives the artefact: a cupped profile in a
uniform object and dark streaks between dense objects (along a ray through two of them the cross
term :math:`2\beta p_1 p_2` is missing). Model, per axial slice:

* water-equivalent path length ``L = \int \max(0, 1 + HU/1000)\, dl`` (cm) on a parallel-beam sinogram
  computed on the device (bilinear ``grid_sample`` of the slice along every ray; detector pitch and
  ray step = the finer in-plane spacing; ``ceil(pi/2 * bins)`` views over 180 degrees);
* the error image :math:`\delta HU = -k\, \mathrm{FBP}(L^2)` (Ram-Lak filter, Kak & Slaney 1988,
  eq. 3.61; linear-interpolation back-projection).

For a water cylinder of radius ``a`` the exact error is :math:`-k (8/\pi) \sqrt{a^2 - r^2}` (the inverse
Abel transform of :math:`L(s)^2 = 4 (a^2 - s^2)`), so the severity is the **cupping depth** ``C`` in HU
at the centre of a reference water cylinder of diameter ``reference_diameter_mm`` (320 mm, the CTDI
body phantom): :math:`k = C \pi / (8 a_{ref})` HU/cm. Limitations: every material hardens like water
scaled by density (bone's extra photoelectric hardening, and so its stronger streaks, is not
modelled); no scatter, no metal (photon starvation needs a projection-domain noise model, not done);
objects beyond the image are not projected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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
    per_case,
)
from perturbations.ct_geometry import inplane_coordinates_mm

CHUNK_ELEMENTS = 2**24  # values per grid_sample call (memory bound of one chunk of views)


@dataclass(frozen=True, slots=True)
class _Geometry:
    """Parallel-beam geometry of an ``(h, w)`` slice: detector bins ``s`` (mm), views (rad), pitch (mm)."""

    bins: Tensor  # (L,), mm, also the ray sample positions t
    angles: Tensor  # (A,)
    pitch_mm: float
    x_norm: float  # mm per unit of grid_sample's normalised x (align_corners=True)
    y_norm: float


def _geometry(h: int, w: int, spacing_mm: Spacing, like: Tensor) -> _Geometry:
    """Detector bins covering the slice's diagonal, at the finer in-plane spacing."""
    pitch = min(spacing_mm[1:])
    half_diag = math.hypot((h - 1) / 2 * spacing_mm[1], (w - 1) / 2 * spacing_mm[2])
    half_bins = math.ceil(half_diag / pitch) + 1
    n_bins = 2 * half_bins + 1
    bins = (torch.arange(n_bins, device=like.device, dtype=like.dtype) - half_bins) * pitch
    n_views = math.ceil(math.pi / 2 * n_bins)
    angles = torch.arange(n_views, device=like.device, dtype=torch.float64) * (math.pi / n_views)
    return _Geometry(
        bins=bins,
        angles=angles.to(like.dtype),
        pitch_mm=pitch,
        x_norm=max((w - 1) / 2 * spacing_mm[2], 1e-6),
        y_norm=max((h - 1) / 2 * spacing_mm[1], 1e-6),
    )


def _chunks(n_views: int, per_view: int) -> list[slice]:
    """Slices of view indices with at most :data:`CHUNK_ELEMENTS` sampled values per chunk."""
    step = max(1, CHUNK_ELEMENTS // max(per_view, 1))
    return [slice(a, min(a + step, n_views)) for a in range(0, n_views, step)]


def project(
    slices: Tensor, g: _Geometry, angles: Tensor | None = None, shift_mm: Tensor | None = None
) -> Tensor:
    """Parallel-beam line integrals ``(S, A, L)`` (units of the values times mm) of ``slices (S, H, W)``.

    By default every slice is seen at the views ``g.angles``. ``angles`` ``(G, A)`` (rad) and ``shift_mm``
    ``(G, A)`` (mm, optional) give each of ``G`` equal runs of consecutive slices its own views: view ``a``
    of group ``k`` integrates along the rays of detector position ``s - shift_mm[k, a]`` at angle
    ``angles[k, a]`` (a rigidly moving object, :mod:`perturbations.ct_rigid_motion`).
    """
    views = g.angles.view(1, -1) if angles is None else angles
    groups = views.shape[0]
    per_group = slices.view(groups, -1, *slices.shape[1:])  # (G, S / G, H, W)
    s, t = g.bins.view(1, 1, 1, -1), g.bins.view(1, 1, -1, 1)  # detector bin along L, ray step along M
    out = []
    for view in _chunks(views.shape[1], slices.shape[0] * len(g.bins) ** 2):
        cos, sin = torch.cos(views[:, view])[..., None, None], torch.sin(views[:, view])[..., None, None]
        u = s if shift_mm is None else s - shift_mm[:, view, None, None]
        grid = torch.stack(((u * cos - t * sin) / g.x_norm, (u * sin + t * cos) / g.y_norm), dim=-1)
        image = per_group.unsqueeze(1).expand(-1, cos.shape[1], -1, -1, -1).flatten(0, 1)
        sampled = F.grid_sample(
            image, grid.flatten(0, 1), mode="bilinear", padding_mode="zeros", align_corners=True
        )
        out.append((sampled.sum(dim=2) * g.pitch_mm).unflatten(0, (groups, -1)))  # (G, Ac, S / G, L)
    return torch.cat(out, dim=1).transpose(1, 2).reshape(slices.shape[0], views.shape[1], -1)


def ramp_filter(sinogram: Tensor, pitch_mm: float) -> Tensor:
    """Convolve every projection (last axis) with the band-limited Ram-Lak kernel (zero padded, FFT)."""
    n = sinogram.shape[-1]
    size = 1 << (2 * n - 1).bit_length()
    k = torch.arange(size, device=sinogram.device, dtype=torch.float64)
    k = torch.minimum(k, size - k)  # circular distance
    h = torch.where(k % 2 == 1, -1.0 / (math.pi * k * pitch_mm) ** 2, torch.zeros_like(k))
    h[0] = 1.0 / (4.0 * pitch_mm**2)
    spectrum = torch.fft.rfft(sinogram, n=size) * torch.fft.rfft(h).real.to(sinogram.dtype)
    return torch.fft.irfft(spectrum, n=size)[..., :n] * pitch_mm


def backproject(filtered: Tensor, g: _Geometry, y_mm: Tensor, x_mm: Tensor) -> Tensor:
    """``(pi / A) sum_a q_a(x cos a + y sin a)`` on the slice grid: ``(S, H, W)`` from ``(S, A, L)``."""
    half = (len(g.bins) - 1) / 2 * g.pitch_mm
    y, x = y_mm.to(filtered.dtype).unsqueeze(0), x_mm.to(filtered.dtype).unsqueeze(0)  # (1, H, 1), (1, 1, W)
    total = torch.zeros(
        filtered.shape[0], y.shape[1], x.shape[2], dtype=filtered.dtype, device=filtered.device
    )
    for view in _chunks(len(g.angles), filtered.shape[0] * y.shape[1] * x.shape[2]):
        cos, sin = torch.cos(g.angles[view]).view(-1, 1, 1), torch.sin(g.angles[view]).view(-1, 1, 1)
        s = (x * cos + y * sin) / half  # (Ac, H, W)
        grid = torch.stack((s, torch.zeros_like(s)), dim=-1)
        q = filtered[:, view].transpose(0, 1).unsqueeze(2)  # (Ac, S, 1, L)
        total = total + F.grid_sample(q, grid, mode="bilinear", align_corners=True).sum(dim=0)
    return total * (math.pi / len(g.angles))


def fbp_of_squared_path(x: Tensor, spacing_mm: Spacing) -> Tensor:
    """``FBP(L^2)`` in cm for every axial slice of ``x`` (HU), ``L`` the water-equivalent path in cm."""
    b, c, d, h, w = x.shape
    g = _geometry(h, w, spacing_mm, x)
    water = (1.0 + x.reshape(b * c * d, h, w) / 1000.0).clamp(min=0.0)
    path_cm = project(water, g) / 10.0
    filtered = ramp_filter(path_cm**2, g.pitch_mm / 10.0)
    y_mm, x_mm = inplane_coordinates_mm(x, spacing_mm)
    return backproject(filtered, g, y_mm, x_mm).view(b, c, d, h, w)


class BeamHardeningSpec(PerturbationSpec):
    """Fixed settings of ``ct_beam_hardening``.

    Attributes:
        reference_diameter_mm: diameter of the water cylinder whose central cupping is the severity, mm.
    """

    reference_diameter_mm: float = Field(320.0, gt=10.0, le=1000.0, description="reference cylinder [mm]")


@dataclass(frozen=True, slots=True, kw_only=True)
class BeamHardeningParams:
    """One case's beam hardening.

    Attributes:
        cupping_hu: cupping depth at the centre of the reference water cylinder, HU (the severity).
        reference_diameter_mm: that cylinder's diameter, mm.
    """

    cupping_hu: float
    reference_diameter_mm: float


def sample_beam_hardening(
    spec: BeamHardeningSpec, severity: float, rng: np.random.Generator
) -> BeamHardeningParams:
    """Parameters for a cupping depth of ``severity`` HU (deterministic: ``rng`` is not used)."""
    return BeamHardeningParams(cupping_hu=float(severity), reference_diameter_mm=spec.reference_diameter_mm)


def apply_beam_hardening(x: Tensor, spacing_mm: Spacing, params: Sequence[BeamHardeningParams]) -> Tensor:
    """Add ``-k FBP(L^2)`` to each case, ``k = cupping_hu * pi / (8 a_ref)`` HU/cm (see module doc).

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_beam_hardening")
    if all(p.cupping_hu == 0 for p in params):
        return x
    a_ref_cm = per_case(params, "reference_diameter_mm", x) / 20.0
    k = per_case(params, "cupping_hu", x) * (math.pi / 8.0) / a_ref_cm
    return x - k * fbp_of_squared_path(x, spacing_mm)


PERTURBATIONS.register(
    "ct_beam_hardening",
    Perturbation(
        name="ct_beam_hardening",
        description="CT beam hardening (first order): cupping depth (HU) of a 320 mm water cylinder, streaks",
        spec=BeamHardeningSpec,
        params=BeamHardeningParams,
        severity=Severity(name="cupping_hu", unit="HU", low=0.0, high=500.0, nominal=0.0, harsher="higher"),
        ladder=(5.0, 10.0, 20.0, 40.0, 80.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=False),
        sample=sample_beam_hardening,
        apply=apply_beam_hardening,
    ),
)
