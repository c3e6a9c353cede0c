r"""MRI intensity non-uniformity (bias field): TorchIO's smooth multiplicative polynomial field.

Receive-coil sensitivity and B1 inhomogeneity multiply the image by a smooth field. As TorchIO's
``RandomBiasField`` / ``BiasField`` (Pérez-García et al., "TorchIO", CMPB 208:106236, 2021, after Van
Leemput et al., IEEE TMI 18:897-908, 1999 and Sudre et al., MedIA 2017), the field is the exponential of
a polynomial of total degree ``order`` in coordinates normalised to [-1, 1] along each axis:

.. math:: b(x, y, z) = \exp \sum_{i + j + k \le order} c_{ijk}\, x^i y^j z^k,
   \qquad x_m = \frac{m - (n - 1)/2}{(n - 1)/2}

with ``x``, ``y``, ``z`` along the array axes D, H, W (TorchIO's first, second and third spatial axes)
and the coefficients listed in TorchIO's order (``i`` outermost, then ``j``, then ``k``). TorchIO draws
every coefficient from ``U(-n, n)``, which also scales the whole image by ``exp(c_000)``. Here the
non-constant coefficients are a seeded unit draw ``u_ijk ~ U(-1, 1)`` times a scale, and the scale and
``c_000`` are chosen so that the field spans exactly ``[1 / (1 + s), 1 + s]`` (symmetric in log) over the
normalised volume, evaluated on a 33^3 reference grid: the severity ``s`` is the **peak fractional
deviation** of the field, a grid-independent physical quantity. A BrainWeb intensity non-uniformity of
20 % (field 0.9 to 1.1) is about ``s = 0.1``; in general ``INU = 2 tanh(ln(1 + s))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from perturbations import base
from perturbations.mri_common import (
    SEEDED_EXACT_AT_NOMINAL,
    case_floats,
    case_ints,
    case_seeds,
    physical_severity,
    register,
    seeded_signed_uniform,
)

MAX_ORDER = 7
REFERENCE_GRID = 33
"""Points per axis of the grid over [-1, 1]^3 on which the field's extremes are set (odd: has 0 and ±1)."""
_DRAWS = (MAX_ORDER + 1) ** 3


PEAK_DEVIATION = physical_severity(
    ("peak_deviation", "fraction (field max 1 + s, min 1 / (1 + s))"), (0.0, 10.0, 0.0, "higher")
)


class MRIBiasFieldSpec(base.PerturbationSpec):
    """Fixed settings of ``mri_bias_field``.

    Attributes:
        order: total degree of the log-field polynomial (TorchIO's ``order``; 1 to 7, default 3).
    """

    order: int = Field(3, ge=1, le=MAX_ORDER, description="polynomial order of the log field")


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIBiasFieldParams:
    """One case's bias field.

    Attributes:
        peak_deviation: the field spans ``[1 / (1 + s), 1 + s]`` on the reference grid (``s``, fraction).
        order: total degree of the polynomial.
        scale: multiplier of the seeded unit coefficients ``u_ijk`` (non-constant terms).
        offset: the constant coefficient ``c_000`` (centres the log field).
        seed: seed of the unit coefficients.
    """

    peak_deviation: float
    order: int
    scale: float
    offset: float
    seed: int


def exponents(order: int) -> list[tuple[int, int, int]]:
    """The exponents ``(i, j, k)`` of the basis ``x^i y^j z^k`` in TorchIO's coefficient order."""
    return [
        (i, j, k) for i in range(order + 1) for j in range(order + 1 - i) for k in range(order + 1 - i - j)
    ]


def normalised_coordinates(n: int, like: Tensor) -> Tensor:
    """``(n,)`` voxel-centre coordinates mapped linearly onto [-1, 1] (0 for a single voxel), float64."""
    half = (n - 1) / 2
    return (torch.arange(n, dtype=torch.float64, device=like.device) - half) / max(half, 1.0)


def coefficient_grid(seeds: Tensor, orders: Tensor, scales: Tensor, offsets: Tensor, size: int) -> Tensor:
    """Dense coefficients ``c[b, i, j, k]`` ``(B, size, size, size)`` float64, zero above each case's order.

    The unit draw of exponent ``(i, j, k)`` is element ``64 i + 8 j + k`` of the case's seeded stream,
    whatever the order or batch, so the field of a case depends on its own params only.
    """
    draws = seeded_signed_uniform(seeds, _DRAWS).view(-1, MAX_ORDER + 1, MAX_ORDER + 1, MAX_ORDER + 1)
    draws = draws[:, :size, :size, :size]
    power = torch.arange(size, device=seeds.device)
    degree = power.view(-1, 1, 1) + power.view(1, -1, 1) + power.view(1, 1, -1)
    keep = (degree <= orders.view(-1, 1, 1, 1)) & (degree > 0)
    coeffs = torch.where(keep, draws * scales.view(-1, 1, 1, 1), torch.zeros_like(draws))
    constant = (degree == 0).to(torch.float64) * offsets.view(-1, 1, 1, 1)
    return coeffs + constant


def log_field(coeffs: Tensor, shape: Sequence[int]) -> Tensor:
    """``sum c_ijk x^i y^j z^k`` on the normalised grid of ``shape`` (D, H, W): ``(B, D, H, W)`` float64."""
    size = coeffs.shape[1]
    power = torch.arange(size, dtype=torch.float64, device=coeffs.device).view(-1, 1)
    tables = [normalised_coordinates(n, coeffs).view(1, -1) ** power for n in shape]  # (size, n) each
    return torch.einsum("bijk,id,jh,kw->bdhw", coeffs, *tables)


def _case_coefficients(params: Sequence[MRIBiasFieldParams], like: Tensor) -> Tensor:
    """Dense coefficients of a batch of params, on ``like``'s device."""
    size = max(p.order for p in params) + 1
    scales, offsets = case_floats(params, "scale", like), case_floats(params, "offset", like)
    return coefficient_grid(case_seeds(params, like), case_ints(params, "order", like), scales, offsets, size)


def bias_coefficients(params: MRIBiasFieldParams) -> list[float]:
    """A case's coefficients in TorchIO's order, for ``torchio.transforms.BiasField(coefficients, order)``."""
    dense = _case_coefficients([params], torch.empty(0))[0]
    return [float(dense[e]) for e in exponents(params.order)]


def sample_mri_bias_field(
    spec: MRIBiasFieldSpec, severity: float, rng: np.random.Generator
) -> MRIBiasFieldParams:
    """Parameters for a field of peak deviation ``severity`` (>= 0); draws only the seed from ``rng``.

    The unit polynomial (scale 1, no constant) is evaluated on the reference grid; the scale maps its
    range onto ``[-ln(1 + s), ln(1 + s)]`` and the offset centres it.
    """
    seed = base.draw_seed(rng)
    unit = MRIBiasFieldParams(peak_deviation=1.0, order=spec.order, scale=1.0, offset=0.0, seed=seed)
    values = log_field(_case_coefficients([unit], torch.empty(0)), (REFERENCE_GRID,) * 3)
    low, high = float(values.min()), float(values.max())
    half_range = math.log1p(severity) if severity > 0 else 0.0
    scale = 2.0 * half_range / (high - low) if high > low else 0.0
    return MRIBiasFieldParams(
        peak_deviation=float(severity),
        order=spec.order,
        scale=scale,
        offset=-scale * (high + low) / 2.0,
        seed=seed,
    )


def apply_mri_bias_field(x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIBiasFieldParams]) -> Tensor:
    """Multiply each case (all its channels) by its bias field ``exp(polynomial)``.

    The field is evaluated separably (one power table per axis, one contraction) in float64 and cast to
    ``x``'s dtype; peak deviation 0 gives a field of exactly 1 (the identity).

    Shape:
        x: ``(B, C, D, H, W)``; returns the same shape, dtype and device.
    """
    base.check_batch(x, params, "mri_bias_field")
    field = torch.exp(log_field(_case_coefficients(params, x), x.shape[2:]))
    return x * field.unsqueeze(1).to(x.dtype)


register(
    ("mri_bias_field", "MRI bias field: smooth multiplicative exp(polynomial) field spanning [1/(1+s), 1+s]"),
    (MRIBiasFieldSpec, MRIBiasFieldParams, sample_mri_bias_field, apply_mri_bias_field),
    (PEAK_DEVIATION, (0.05, 0.1, 0.2, 0.3, 0.5), SEEDED_EXACT_AT_NOMINAL),
)
