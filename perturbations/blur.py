"""Gaussian blur with a physical width: full width at half maximum (FWHM) in millimetres.

A Gaussian point-spread function with standard deviation ``sigma`` has
``FWHM = 2 sqrt(2 ln 2) sigma ≈ 2.3548 sigma``; per axis the kernel's sigma in voxels is
``FWHM_mm / 2.3548 / spacing_mm``. The kernel is the sampled Gaussian truncated at 4 sigma and
normalised to sum 1, with half-sample symmetric padding; this matches
``scipy.ndimage.gaussian_filter(mode="reflect")`` and so TorchIO's ``Blur`` (whose ``std`` is in mm),
which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
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

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
TRUNCATE_SIGMAS = 4.0


class GaussianBlurSpec(PerturbationSpec):
    """``gaussian_blur`` has no fixed settings: the severity is the FWHM in mm."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GaussianBlurParams:
    """One case's blur.

    Attributes:
        fwhm_mm: full width at half maximum of the isotropic Gaussian PSF, in mm (0 = no blur).
    """

    fwhm_mm: float


def sample_gaussian_blur(
    spec: GaussianBlurSpec, severity: float, rng: np.random.Generator
) -> GaussianBlurParams:
    """Parameters for a blur of FWHM ``severity`` mm (deterministic: ``rng`` is not used)."""
    return GaussianBlurParams(fwhm_mm=float(severity))


def symmetric_indices(size: int, radius: int) -> list[int]:
    """Indices of a half-sample symmetric padding by ``radius`` (scipy's ``mode="reflect"``)."""
    period = 2 * size
    out = []
    for i in range(-radius, size + radius):
        j = i % period
        out.append(j if j < size else period - 1 - j)
    return out


def kernel_radius(sigma_vox: float) -> int:
    """Half-width in voxels of a kernel truncated at 4 sigma (scipy's rule)."""
    return int(TRUNCATE_SIGMAS * sigma_vox + 0.5)


def gaussian_kernels(sigmas_vox: Sequence[float], radius: int, like: Tensor) -> Tensor:
    """Sampled, normalised Gaussian kernels ``(len(sigmas), 2 radius + 1)``; sigma 0 gives a delta.

    Each kernel is truncated at its own 4 sigma (zero taps beyond), so a case's result does not
    depend on the other cases of its batch.
    """
    k = torch.arange(-radius, radius + 1, dtype=torch.float64, device=like.device)
    sig = torch.tensor(list(sigmas_vox), dtype=torch.float64, device=like.device).view(-1, 1)
    own = torch.tensor([kernel_radius(s) for s in sigmas_vox], dtype=torch.float64, device=like.device)
    safe = torch.where(sig > 0, sig, torch.ones_like(sig))
    w = torch.exp(-0.5 * (k / safe) ** 2) * (k.abs() <= own.view(-1, 1))
    delta = (k == 0).to(torch.float64).expand_as(w)
    w = torch.where(sig > 0, w, delta)
    return (w / w.sum(dim=1, keepdim=True)).to(like.dtype)


def _blur_axis(x: Tensor, sigmas_vox: Sequence[float], axis: int) -> Tensor:
    """Convolve ``x`` (B, C, D, H, W) along spatial ``axis`` (2, 3 or 4) with one kernel per case."""
    if max(sigmas_vox) <= 0:
        return x
    radius = kernel_radius(max(sigmas_vox))
    size = x.shape[axis]
    idx = torch.tensor(symmetric_indices(size, radius), device=x.device)
    padded = x.index_select(axis, idx).movedim(axis, -1)  # (B, C, a, b, L + 2r)
    b = padded.shape[0]
    rows = padded[0, ..., 0].numel()  # 1-D lines per case
    kernels = gaussian_kernels(sigmas_vox, radius, x)  # (B, K)
    # Depthwise convolution: every line is its own channel with its case's kernel. One call for the
    # whole batch, no loop over cases; much faster on CPU than a one-channel conv over many rows.
    weight = kernels.repeat_interleave(rows, dim=0).unsqueeze(1)  # (B * rows, 1, K)
    out = F.conv1d(padded.reshape(1, b * rows, padded.shape[-1]), weight, groups=b * rows)
    return out.reshape(*padded.shape[:-1], size).movedim(-1, axis)


def apply_gaussian_blur(x: Tensor, spacing_mm: Spacing, params: Sequence[GaussianBlurParams]) -> Tensor:
    """Blur each case of ``x`` with an isotropic Gaussian PSF of its ``fwhm_mm``.

    Shape:
        x: ``(B, C, D, H, W)``; ``spacing_mm`` is ``(D, H, W)`` voxel size in mm. Same shape out.
    """
    check_batch(x, params, "gaussian_blur")
    for axis, step in zip((2, 3, 4), spacing_mm, strict=True):
        x = _blur_axis(x, [p.fwhm_mm / FWHM_PER_SIGMA / step for p in params], axis)
    return x


PERTURBATIONS.register(
    "gaussian_blur",
    Perturbation(
        name="gaussian_blur",
        description="Isotropic Gaussian blur (system PSF / smoothing) with FWHM given in mm",
        spec=GaussianBlurSpec,
        params=GaussianBlurParams,
        severity=Severity(name="fwhm_mm", unit="mm", low=0.0, high=100.0, nominal=0.0, harsher="higher"),
        ladder=(1.0, 2.0, 4.0, 8.0, 12.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=False),
        sample=sample_gaussian_blur,
        apply=apply_gaussian_blur,
    ),
)
