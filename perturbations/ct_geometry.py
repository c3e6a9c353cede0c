r"""CT grid geometry shared by the CT perturbations, and ``ct_slice_thickness`` (z-resolution).

Grid convention (as :mod:`phantoms.render`): axes ``(D, H, W) = (z, y, x)``; voxel ``(k, j, i)`` has
its centre at ``y = (j - (H-1)/2) s_y`` mm (likewise z, x), so the isocentre (the scanner's axis of
rotation) is the centre of every axial slice.

**Slice thickness.** A reconstructed slice of nominal thickness ``T`` is the object convolved in z with
the slice sensitivity profile (SSP) whose FWHM is ``T`` (IEC 61223-3-5; Kalender, *Computed
Tomography*, 3rd ed., 2011, §2.4; Polacin, Kalender & Marchal, Radiology 185:29, 1992). The input is
taken as a contiguous reconstruction whose own SSP is as wide as its z spacing ``dz`` (thickness =
interval), so:

* ``profile: gaussian``: SSPs compose in variance, the added kernel is a sampled Gaussian of
  :math:`\mathrm{FWHM}_{add} = \sqrt{T^2 - dz^2}` and the total SSP has FWHM ``T``;
* ``profile: rect``: the voxels are read as piecewise constant slabs (rect SSP of width ``dz``) and
  averaged over a window of width ``T`` (fractional weights at both ends), i.e. the thick slice is the
  mean of the thin ones it covers; the total SSP is the trapezoid ``rect(dz) * rect(T)`` of FWHM ``T``.

``T <= dz`` is the identity. Noise already in the input is averaged the same way, so its standard
deviation falls roughly as ``sqrt(dz / T)``, as for a thicker slice's larger photon count.
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
)
from perturbations.blur import FWHM_PER_SIGMA, gaussian_kernels, kernel_radius, symmetric_indices


def inplane_coordinates_mm(x: Tensor, spacing_mm: Spacing) -> tuple[Tensor, Tensor]:
    """Voxel-centre coordinates about the isocentre in mm: ``y`` ``(H, 1)`` and ``x`` ``(1, W)``, float64."""
    h, w = x.shape[-2:]
    y = (torch.arange(h, device=x.device, dtype=torch.float64) - (h - 1) / 2) * spacing_mm[1]
    xx = (torch.arange(w, device=x.device, dtype=torch.float64) - (w - 1) / 2) * spacing_mm[2]
    return y.view(h, 1), xx.view(1, w)


def inplane_radius_mm(x: Tensor, spacing_mm: Spacing) -> Tensor:
    """Distance of every in-plane voxel centre from the isocentre, ``(H, W)`` in mm, ``x``'s dtype."""
    y, xx = inplane_coordinates_mm(x, spacing_mm)
    return torch.sqrt(y**2 + xx**2).to(x.dtype)


def inplane_frequency_lpcm(h: int, w: int, spacing_mm: Spacing, like: Tensor) -> Tensor:
    """Radial spatial frequency of the ``rfft2`` grid of an ``(h, w)`` slice, ``(h, w // 2 + 1)`` in lp/cm.

    ``spacing_mm`` is the ``(D, H, W)`` voxel size; one cycle per mm is 10 lp/cm.
    """
    fy = torch.fft.fftfreq(h, d=spacing_mm[1], device=like.device, dtype=torch.float64) * 10.0
    fx = torch.fft.rfftfreq(w, d=spacing_mm[2], device=like.device, dtype=torch.float64) * 10.0
    return torch.sqrt(fy.view(-1, 1) ** 2 + fx.view(1, -1) ** 2)


def case_seeds(params: Sequence, x: Tensor) -> Tensor:
    """The ``seed`` of every case's params as an int64 tensor ``(B,)`` on ``x``'s device."""
    return torch.tensor([p.seed for p in params], dtype=torch.int64, device=x.device)


# ---------------------------------------------------------------------------------------------------
# ct_slice_thickness


class SliceThicknessSpec(PerturbationSpec):
    """Fixed settings of ``ct_slice_thickness``.

    Attributes:
        profile: shape of the slice sensitivity profile, ``"gaussian"`` or ``"rect"`` (see module doc).
    """

    profile: Literal["gaussian", "rect"] = Field("gaussian", description="slice sensitivity profile shape")


@dataclass(frozen=True, slots=True, kw_only=True)
class SliceThicknessParams:
    """One case's reconstructed slice thickness.

    Attributes:
        thickness_mm: FWHM of the total slice sensitivity profile, mm (<= z spacing: identity).
        profile: ``"gaussian"`` or ``"rect"``.
    """

    thickness_mm: float
    profile: str


def sample_slice_thickness(
    spec: SliceThicknessSpec, severity: float, rng: np.random.Generator
) -> SliceThicknessParams:
    """Parameters for slices of thickness ``severity`` mm (deterministic: ``rng`` is not used)."""
    return SliceThicknessParams(thickness_mm=float(severity), profile=spec.profile)


def _rect_kernels(widths_vox: Sequence[float], radius: int, like: Tensor) -> Tensor:
    """Box averages of width ``t`` voxels over unit slabs, ``(B, 2 radius + 1)``; ``t <= 1`` is a delta.

    Tap ``k`` is the overlap of the slab ``[k - 1/2, k + 1/2]`` with ``[-t/2, t/2]``, divided by ``t``.
    """
    k = torch.arange(-radius, radius + 1, dtype=torch.float64, device=like.device).view(1, -1)
    t = torch.tensor(list(widths_vox), dtype=torch.float64, device=like.device).clamp(min=1.0).view(-1, 1)
    overlap = torch.minimum(k + 0.5, t / 2) - torch.maximum(k - 0.5, -t / 2)
    return (overlap.clamp(min=0.0) / t).to(like.dtype)


def _ssp_kernels(params: Sequence[SliceThicknessParams], dz: float, like: Tensor) -> tuple[Tensor, int]:
    """Per-case z kernels ``(B, 2 r + 1)`` (Gaussian or rect rows) and their common radius ``r``."""
    widths = [p.thickness_mm / dz for p in params]
    sigmas = [math.sqrt(max(w * w - 1.0, 0.0)) / FWHM_PER_SIGMA for w in widths]
    gauss = [p.profile == "gaussian" for p in params]
    radius = max(
        kernel_radius(s) if g else math.ceil((max(w, 1.0) + 1.0) / 2.0) - 1
        for s, w, g in zip(sigmas, widths, gauss, strict=True)
    )
    is_gauss = torch.tensor(gauss, device=like.device).view(-1, 1)
    kernels = torch.where(
        is_gauss, gaussian_kernels(sigmas, radius, like), _rect_kernels(widths, radius, like)
    )
    return kernels, radius


def apply_slice_thickness(x: Tensor, spacing_mm: Spacing, params: Sequence[SliceThicknessParams]) -> Tensor:
    """Convolve each case of ``x`` in z with its slice sensitivity profile.

    One kernel per case, half-sample symmetric padding at the first and last slice, a sum over the
    kernel's taps (no loop over cases or voxels).

    Shape:
        x: ``(B, C, D, H, W)``; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype and device out.
    """
    check_batch(x, params, "ct_slice_thickness")
    kernels, radius = _ssp_kernels(params, spacing_mm[0], x)
    if radius == 0:
        return x
    d = x.shape[2]
    idx = torch.tensor(symmetric_indices(d, radius), device=x.device)
    padded = x.index_select(2, idx)
    out = torch.zeros_like(x)
    for k in range(2 * radius + 1):
        out = out + kernels[:, k].view(-1, 1, 1, 1, 1) * padded.narrow(2, k, d)
    return out


PERTURBATIONS.register(
    "ct_slice_thickness",
    Perturbation(
        name="ct_slice_thickness",
        description="CT slice thickness: z convolution with a slice sensitivity profile of FWHM = thickness",
        spec=SliceThicknessSpec,
        params=SliceThicknessParams,
        severity=Severity(
            name="slice_thickness_mm", unit="mm", low=0.0, high=50.0, nominal=0.0, harsher="higher"
        ),
        ladder=(2.0, 3.0, 5.0, 7.5, 10.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=False),
        sample=sample_slice_thickness,
        apply=apply_slice_thickness,
    ),
)
