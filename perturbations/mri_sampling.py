r"""MRI k-space sampling artefacts: Gibbs ringing (truncation) and Cartesian undersampling (aliasing).

Both keep part of k-space and zero the rest before the inverse FFT (zero-filled reconstruction), with
frequencies named as in :mod:`perturbations.mri_common`: signed frequency ``k`` (cycles per field of
view) and normalised frequency ``rho = k / (n / 2)`` in [-1, 1).

**Gibbs ringing.** A finite acquisition window truncates k-space; the reconstruction is the object
convolved with a sinc, which overshoots at edges by about 9 % of the step (the Gibbs phenomenon) and rings
with period ``1 / k_max`` (Bernstein, King & Zhou, *Handbook of MRI Pulse Sequences*, 2004;
Czervionke et al., AJR 151:1219-1228, 1988). Here k-space is kept where ``|rho| <= 1 - f`` along each
truncated axis (a box, the shape of a Cartesian acquisition) and zeroed elsewhere; the severity ``f`` is
the **fraction of the k-space extent removed** along each truncated axis, so the acquired resolution is
the voxel size divided by ``1 - f``. MONAI's ``GibbsNoise(alpha)`` keeps a sphere of radius
``(1 - alpha) max(n) / sqrt(2)`` bins instead; for an object that varies along one axis only the two
coincide with ``f = 1 - sqrt(2) (1 - alpha)`` (tested).

**Undersampling.** Parallel imaging and compressed sensing skip phase-encode lines. With acceleration
``R`` (full lines / acquired lines) along the phase-encode ``axis`` and a fully sampled centre of
``2 floor(center_fraction * n / 2) + 1`` lines symmetric about ``k = 0`` (the fastMRI convention up to
one line: Zbontar et al., arXiv:1811.08839, 2018),
the outer lines are either *equispaced* (every ``R'``-th line symmetric about ``k = 0``, with ``R'``
raised so that the total stays ``n / R``: coherent fold-over aliasing at ``FOV / R'``) or *random*
(each outer line kept with probability ``(n / R - n_c) / (n - n_c)`` from the case's seed: incoherent,
noise-like aliasing). The zero-filled reconstruction shows the aliasing that an unaccelerated model sees
when reconstruction fails (Pruessmann et al., MRM 42:952-962, 1999; Lustig et al., MRM 58:1182-1195, 2007).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from torch import Tensor

from perturbations import base
from perturbations.mri_common import (
    EXACT_AT_NOMINAL,
    SEEDED_EXACT_AT_NOMINAL,
    ReconstructionSpec,
    along,
    case_floats,
    case_seeds,
    centred_frequency,
    line_filter,
    physical_severity,
    reconstruct,
    register,
    seeded_uniform,
    unshifted_abs_frequency,
)


class MRIGibbsSpec(base.PerturbationSpec):
    """Fixed settings of ``mri_gibbs``.

    Attributes:
        axes: spatial axes truncated (0, 1, 2 = D, H, W), each once; default all three.
    """

    axes: tuple[int, ...] = Field((0, 1, 2), min_length=1, max_length=3, description="truncated axes")

    @field_validator("axes")
    @classmethod
    def _distinct_spatial_axes(cls, axes: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(axes)) != len(axes) or not set(axes) <= {0, 1, 2}:
            raise ValueError(f"expected distinct axes among 0, 1, 2, got {list(axes)}")
        return tuple(sorted(axes))


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIGibbsParams:
    """One case's k-space truncation.

    Attributes:
        removed_fraction: fraction ``f`` of the k-space extent zeroed along each truncated axis.
        axes: the truncated axes as digits, e.g. ``"012"`` (D, H, W) or ``"1"``.
    """

    removed_fraction: float
    axes: str


REMOVED_FRACTION = physical_severity(
    ("removed_fraction", "fraction of the k-space extent removed per truncated axis"),
    (0.0, 1.0, 0.0, "higher"),
)


def sample_mri_gibbs(spec: MRIGibbsSpec, severity: float, rng: np.random.Generator) -> MRIGibbsParams:
    """Parameters for truncating a fraction ``severity`` of k-space (deterministic: ``rng`` is not used)."""
    return MRIGibbsParams(removed_fraction=float(severity), axes="".join(str(a) for a in spec.axes))


def apply_mri_gibbs(x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIGibbsParams]) -> Tensor:
    """Zero k-space outside ``|rho| <= 1 - removed_fraction`` along each case's truncated axes.

    The kept box is symmetric about ``k = 0``, so the reconstruction is real and one real FFT over the
    truncated axes suffices (one per distinct set of axes in the batch; a case's residual is exactly
    zero in the others' passes). ``removed_fraction`` 0 keeps every bin (the identity), 1 or more keeps
    only ``k = 0`` (the mean along those axes).

    Shape:
        x: ``(B, C, D, H, W)``; returns the same shape, dtype and device.
    """
    base.check_batch(x, params, "mri_gibbs")
    # The mask is computed in float64 whatever x's dtype, so that it does not depend on the dtype.
    cutoff = (1.0 - case_floats(params, "removed_fraction", x)).clamp_min(0.0).view(-1, 1)
    residual = torch.zeros((), dtype=x.dtype, device=x.device)
    for axes in sorted({p.axes for p in params}):
        dims = [2 + int(a) for a in axes]
        spectrum = torch.fft.rfftn(x, dim=dims)
        keep = torch.ones((1, 1, 1, 1, 1), dtype=torch.bool, device=x.device)
        for dim in dims:
            n, bins = x.shape[dim], spectrum.shape[dim]
            rho = unshifted_abs_frequency(n, bins, x.device).to(torch.float64).view(1, -1) / (n / 2)
            keep = keep & along(rho <= cutoff, dim)
        in_group = torch.tensor([p.axes == axes for p in params], device=x.device).view(-1, 1, 1, 1, 1)
        delta = (keep.to(x.dtype) - 1.0) * in_group
        residual = residual + torch.fft.irfftn(spectrum * delta, s=[x.shape[d] for d in dims], dim=dims)
    return x + residual


register(
    ("mri_gibbs", "MRI Gibbs ringing: k-space truncated to the central 1 - f of its extent per axis"),
    (MRIGibbsSpec, MRIGibbsParams, sample_mri_gibbs, apply_mri_gibbs),
    (REMOVED_FRACTION, (0.1, 0.25, 0.4, 0.55, 0.7), EXACT_AT_NOMINAL),
)


ACCELERATION = physical_severity(
    ("acceleration", "R = full / acquired phase-encode lines"), (1.0, 64.0, 1.0, "higher")
)


class MRIUndersamplingSpec(ReconstructionSpec):
    """Fixed settings of ``mri_undersampling``.

    Attributes:
        axis: phase-encode axis, 0, 1 or 2 (D, H, W); default 1.
        center_fraction: fraction of the lines fully sampled around ``k = 0`` (fastMRI: 0.08 at 4x).
        pattern: ``"equispaced"`` (coherent aliasing) or ``"random"`` (incoherent, seeded).
        output: ``"real"`` or ``"magnitude"`` image (see :class:`ReconstructionSpec`); the equispaced
            pattern is symmetric about ``k = 0``, so there both are the same for a non-negative image.
    """

    axis: int = Field(1, ge=0, le=2, description="phase-encode axis (0, 1, 2 = D, H, W)")
    center_fraction: float = Field(0.08, ge=0.0, le=1.0, description="fully sampled central fraction")
    pattern: Literal["equispaced", "random"] = Field("equispaced", description="outer line pattern")


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIUndersamplingParams:
    """One case's Cartesian undersampling.

    Attributes:
        acceleration: ``R``, full phase-encode lines / acquired lines (1 = fully sampled).
        axis: phase-encode axis (0, 1, 2 = D, H, W).
        center_fraction: fully sampled central fraction of the lines.
        pattern: ``"equispaced"`` or ``"random"``.
        seed: seed of the random pattern (drawn for both patterns, used by ``"random"``).
        output: ``"real"`` or ``"magnitude"``.
    """

    acceleration: float
    axis: int
    center_fraction: float
    pattern: str
    seed: int
    output: str = "real"


def sample_mri_undersampling(
    spec: MRIUndersamplingSpec, severity: float, rng: np.random.Generator
) -> MRIUndersamplingParams:
    """Parameters for acceleration ``severity`` (>= 1); draws only the pattern seed from ``rng``."""
    return MRIUndersamplingParams(acceleration=float(severity), seed=base.draw_seed(rng), **spec.model_dump())


def _outer_rule(p: MRIUndersamplingParams, n: int) -> tuple[int, float, float]:
    """``(centre half-width, equispaced spacing R', random keep probability)`` of a case on ``n`` lines.

    The centre is the ``2 h + 1`` lines ``|k| <= h = floor(center_fraction * n / 2)`` (symmetric about
    ``k = 0``; none for ``center_fraction`` 0, marked ``h = -1``); the outer lines are thinned so that
    ``n / R`` lines are acquired in all (or in expectation).
    """
    half = math.floor(p.center_fraction * n / 2) if p.center_fraction > 0 else -1
    n_c = min(2 * half + 1, n)
    outer_target = n / p.acceleration - n_c  # acquired outer lines for a total of n / R
    if outer_target >= n - n_c:
        return half, 1.0, 1.0
    if outer_target <= 0:
        return half, math.inf, 0.0
    return half, (n - n_c) / outer_target, outer_target / (n - n_c)


def sampled_lines(params: Sequence[MRIUndersamplingParams], n: int, like: Tensor) -> Tensor:
    """``(B, n)`` bool over the centred index ``i``: which phase-encode lines each case acquires."""
    rules = [_outer_rule(p, n) for p in params]
    k = centred_frequency(n, like.device).abs().view(1, -1)
    centre = k <= torch.tensor([r[0] for r in rules], device=like.device).view(-1, 1)
    spacing = torch.tensor([r[1] for r in rules], dtype=torch.float64, device=like.device).view(-1, 1)
    equispaced = torch.fmod(k.to(torch.float64), spacing) < 1.0
    probability = torch.tensor([r[2] for r in rules], dtype=torch.float64, device=like.device).view(-1, 1)
    random = seeded_uniform(case_seeds(params, like), n) < probability
    is_random = torch.tensor([p.pattern == "random" for p in params], device=like.device).view(-1, 1)
    return centre | torch.where(is_random, random, equispaced)


def _undersampling_delta(
    params: Sequence[MRIUndersamplingParams], like: Tensor
) -> Callable[[int, int], Tensor]:
    """``delta(axis, n) -> (B, n)``: -1 on the lines not acquired, else 0."""

    def delta(axis: int, n: int) -> Tensor:
        return sampled_lines(params, n, like).to(like.dtype) - 1.0

    return delta


def apply_mri_undersampling(
    x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIUndersamplingParams]
) -> Tensor:
    """Zero-filled reconstruction of each case from its acquired phase-encode lines.

    One 1-D FFT along the phase-encode axis; acceleration 1 acquires every line (the identity).

    Shape:
        x: ``(B, C, D, H, W)``; returns the same shape, dtype and device.
    """
    base.check_batch(x, params, "mri_undersampling")
    residual = line_filter(x, [p.axis for p in params], _undersampling_delta(params, x))
    return reconstruct(x, residual, params)


register(
    ("mri_undersampling", "MRI Cartesian undersampling by R along phase encoding, zero-filled (aliasing)"),
    (MRIUndersamplingSpec, MRIUndersamplingParams, sample_mri_undersampling, apply_mri_undersampling),
    (ACCELERATION, (2.0, 3.0, 4.0, 6.0, 8.0), SEEDED_EXACT_AT_NOMINAL),
)
