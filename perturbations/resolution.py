"""Resolution loss along one axis (``anisotropy``) and wrong voxel spacing metadata (``wrong_spacing``).

``anisotropy`` follows TorchIO's ``RandomAnisotropy`` (Billot et al., MICCAI 2020): the volume is
resampled with **nearest neighbour** onto a grid whose spacing along one axis is ``m`` times larger
(``m`` = downsampling factor), then resampled back onto the original grid with **linear** (or nearest)
interpolation. The coarse grid is TorchIO's ``Resample(target=spacing)`` grid: ``n = floor(L / m)``
samples (``floor(L s / (s m))`` exactly as TorchIO computes it) centred on the original extent, i.e.
coarse sample ``k`` sits at input voxel position ``p_k = (L - 1) / 2 + (k - (n - 1) / 2) m``; it takes
input voxel ``floor(p_k + 1/2)`` (ITK rounds halves up). Output voxel ``j`` lies at coarse position
``q_j = (j - p_0) / m`` and is the linear interpolation of the two neighbouring coarse samples.

Both passes are composed into one two-tap gather along the axis with per-case index tensors, so a
batch with different factors per case is a single pass and the coarse grid is never materialised.

Difference to TorchIO: where ``q_j`` falls more than half a coarse voxel outside the coarse grid
(only when ``n m < L - 1``), SimpleITK writes its default pixel value 0; here the edge coarse sample
is repeated, which keeps the border anatomy instead of a black band.

``wrong_spacing`` leaves the image unchanged; the spacing handed to the model is wrong
(:func:`spacing_after`, registered as the perturbation's ``spacing_after``; the runner passes the
resulting spacing to the model).

This module also holds the helpers shared by :mod:`perturbations.intensity` and
:mod:`perturbations.pipeline`: axis letters, per-case gathers along an axis, per-case values with a
fallback computed from the case, and the image/mask kernel pair of a geometry-changing perturbation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import AfterValidator, Field
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

# --- shared helpers ---------------------------------------------------------------------------------

AXES = "DHW"
AxisLetter = Literal["D", "H", "W"]


def axis_dim(letter: str) -> int:
    """The dimension of spatial axis ``letter`` (``"D"``, ``"H"`` or ``"W"``) in ``(B, C, D, H, W)``."""
    return 2 + AXES.index(letter)


def check_axes(value: str) -> str:
    """Validate a string of distinct axis letters, e.g. ``"HW"``; returns it unchanged."""
    if not value or any(a not in AXES for a in value) or len(set(value)) != len(value):
        raise ValueError(f"axes must be distinct letters of 'DHW' (e.g. 'HW'), got {value!r}")
    return value


def check_axis_pair(value: str) -> str:
    """Validate exactly two distinct axis letters, e.g. ``"HW"``; returns it unchanged."""
    if len(check_axes(value)) != 2:
        raise ValueError(f"axes must name exactly two axes (e.g. 'HW'), got {value!r}")
    return value


Axes = Annotated[str, AfterValidator(check_axes)]
AxisPair = Annotated[str, AfterValidator(check_axis_pair)]


def along(values: Tensor, x: Tensor, dim: int) -> Tensor:
    """View per-case rows ``values (B, L)`` so that they broadcast along ``dim`` of ``x``."""
    shape = [1] * x.ndim
    shape[0], shape[dim] = values.shape
    return values.view(shape)


def take_along(x: Tensor, dim: int, index: Tensor) -> Tensor:
    """Gather ``x`` along ``dim`` with one index row per case.

    Args:
        x: ``(B, C, D, H, W)`` tensor of any dtype.
        dim: spatial dimension (2, 3 or 4).
        index: ``(B, L_out)`` int64 indices into ``x.shape[dim]``, on ``x``'s device.

    Returns:
        ``x`` with ``dim`` of length ``L_out``: ``out[b, ..., j, ...] = x[b, ..., index[b, j], ...]``.
    """
    size = list(x.shape)
    size[dim] = index.shape[1]
    return x.gather(dim, along(index, x, dim).expand(size))


def lerp_along(x: Tensor, dim: int, i0: Tensor, i1: Tensor, w: Tensor) -> Tensor:
    """Two-tap interpolation along ``dim``: ``x[i0] + w (x[i1] - x[i0])`` per case; exact where ``w`` is 0.

    Args:
        x: ``(B, C, D, H, W)`` floating tensor.
        dim: spatial dimension (2, 3 or 4).
        i0: ``(B, L)`` int64 indices of the left taps.
        i1: ``(B, L)`` int64 indices of the right taps.
        w: ``(B, L)`` weights of the right taps.
    """
    return torch.lerp(take_along(x, dim, i0), take_along(x, dim, i1), along(w.to(x.dtype), x, dim))


def case_flags(values: Sequence[bool], like: Tensor) -> Tensor:
    """Per-case booleans as a ``(B, 1, 1, 1, 1)`` bool tensor on ``like``'s device."""
    return torch.tensor(list(values), dtype=torch.bool, device=like.device).view(-1, 1, 1, 1, 1)


Core = Callable[[Tensor, Spacing, Sequence[Any], Tensor], Tensor]
Kernel = Callable[[Tensor, Spacing, Sequence[Any]], Tensor]


def check_mask(mask: Tensor, params: Sequence[Any], owner: str) -> None:
    """Check that ``mask`` is a ``(B, C, D, H, W)`` bool tensor with one params per case."""
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.ndim != 5:
        raise TypeError(f"{owner}: expected a bool mask of shape (B, C, D, H, W), got {mask!r:.80}")
    if len(params) != mask.shape[0]:
        raise ValueError(f"{owner}: expected {mask.shape[0]} params (one per case), got {len(params)}")


def given_or_own(x: Tensor, values: Sequence[float | None], own: Callable[..., Tensor]) -> Tensor:
    """Per-case values as ``(B, 1, 1, 1, 1)`` on ``x``'s device, computed from the case where ``None``.

    Args:
        x: ``(B, C, D, H, W)`` batch.
        values: one value per case, or ``None`` for ``own(x, dim=(1, 2, 3, 4), keepdim=True)`` of that case
            (e.g. ``torch.amin``), reduced on the device only when some value is ``None``.
        own: the reduction.
    """
    out = torch.tensor([0.0 if v is None else v for v in values], dtype=x.dtype, device=x.device)
    out = out.view(-1, 1, 1, 1, 1)
    if any(v is None for v in values):
        mine = case_flags([v is None for v in values], x)
        out = torch.where(mine, own(x, dim=(1, 2, 3, 4), keepdim=True), out)
    return out


def kernels(owner: str, core: Core) -> tuple[Kernel, Kernel]:
    """The ``apply`` (image, fill from the params) and ``apply_mask`` (bool, fill ``False``) of one core.

    Args:
        owner: perturbation name, for error messages.
        core: ``core(x, spacing_mm, params, fill)``, the geometric transform for any dtype; ``fill`` is a
            ``(B, 1, 1, 1, 1)`` tensor of ``x``'s dtype for voxels that have no source.
    """

    def apply(x: Tensor, spacing_mm: Spacing, params: Sequence[Any]) -> Tensor:
        check_batch(x, params, owner)
        return core(
            x,
            spacing_mm,
            params,
            given_or_own(x, [getattr(p, "fill_value", 0.0) for p in params], torch.amin),
        )

    def apply_mask(mask: Tensor, spacing_mm: Spacing, params: Sequence[Any]) -> Tensor:
        check_mask(mask, params, owner)
        return core(mask, spacing_mm, params, mask.new_zeros((mask.shape[0], 1, 1, 1, 1)))

    apply.__doc__ = f"``{owner}`` on an image batch ``(B, C, D, H, W)``; same shape, dtype and device out."
    apply_mask.__doc__ = f"``{owner}`` on a bool mask batch ``(B, C, D, H, W)`` (nearest neighbour)."
    return apply, apply_mask


def growing(name: str, unit: str, high: float, nominal: float = 0.0) -> Severity:
    """A severity from ``nominal`` (no error, also the lowest value) to ``high``, harsher when higher."""
    return Severity(name=name, unit=unit, low=nominal, high=high, nominal=nominal, harsher="higher")


def register(
    name: str,
    description: str,
    *,
    core: Core | None = None,
    random: bool = False,
    identity_at_nominal: bool = True,
    **fields: Any,
) -> None:
    """Register a perturbation of this family.

    Args:
        name: registry name.
        description: one-line description.
        core: for a geometry-changing perturbation, its transform (see :func:`kernels`), from which ``apply``
            and ``apply_mask`` are made; ``None`` for an intensity-only one, which passes ``apply``.
        random: whether the kernel draws a counter-based random field from the params' ``seed``.
        identity_at_nominal: whether ``apply`` at the nominal severity returns its input unchanged.
        **fields: the other :class:`Perturbation` fields (spec, params, severity, ladder, sample[, apply]).
    """
    if core is not None:
        fields["apply"], fields["apply_mask"] = kernels(name, core)
    props = Props(intensity_only=core is None, identity_at_nominal=identity_at_nominal, random=random)
    PERTURBATIONS.register(name, Perturbation(name=name, description=description, props=props, **fields))


# --- anisotropy -------------------------------------------------------------------------------------


def anisotropy_taps(size: int, spacing: float, factors: Tensor, nearest: Tensor) -> tuple[Tensor, ...]:
    """Index maps of a nearest downsample by ``factors`` then an upsample back (TorchIO's grids).

    Args:
        size: number of voxels ``L`` along the axis.
        spacing: voxel size along the axis in mm (only used as TorchIO uses it, in ``floor(L s / (s m))``).
        factors: ``(B, 1)`` float64 downsampling factors ``m >= 1`` (1 = identity).
        nearest: ``(B, 1)`` bool, nearest-neighbour upsampling instead of linear.

    Returns:
        ``(i0, i1, w)``: ``(B, L)`` int64 input indices of the two taps and float64 weight of ``i1``.
    """
    j = torch.arange(size, dtype=torch.float64, device=factors.device).view(1, -1)
    coarse = torch.floor(size * spacing / (spacing * factors)).clamp(min=1.0)
    coarse = torch.where(factors == 1.0, float(size), coarse)
    first = (size - 1) / 2 - (coarse - 1) / 2 * factors  # p_0, in input voxels
    q = (j - first) / factors  # position of output voxel j on the coarse grid
    k0 = torch.floor(q)
    w = q - k0
    k0 = torch.where(nearest & (w >= 0.5), k0 + 1, k0)  # nearest: the nearer tap (halves up, as ITK)
    w = torch.where(nearest, torch.zeros_like(w), w)

    def source(k: Tensor) -> Tensor:
        k = torch.minimum(k.clamp(min=0.0), coarse - 1)
        return torch.floor(first + k * factors + 0.5).clamp(0, size - 1).to(torch.int64)

    return source(k0), source(k0 + 1), w


class AnisotropySpec(PerturbationSpec):
    """Fixed settings of ``anisotropy``.

    Attributes:
        axis: the axis that loses resolution: ``"D"`` (slice direction, default), ``"H"`` or ``"W"``.
        interpolation: how the coarse samples are resampled back: ``"linear"`` (TorchIO's default) or
            ``"nearest"``.
    """

    axis: AxisLetter = Field("D", description="axis that loses resolution (D, H or W)")
    interpolation: Literal["linear", "nearest"] = Field("linear", description="upsampling interpolation")


@dataclass(frozen=True, slots=True, kw_only=True)
class AnisotropyParams:
    """One case's resolution loss.

    Attributes:
        axis: ``"D"``, ``"H"`` or ``"W"``.
        downsampling: spacing factor ``m >= 1`` of the coarse acquisition along ``axis`` (1 = none).
        interpolation: ``"linear"`` or ``"nearest"``.
    """

    axis: str
    downsampling: float
    interpolation: str


def sample_anisotropy(spec: AnisotropySpec, severity: float, rng: np.random.Generator) -> AnisotropyParams:
    """Parameters for downsampling factor ``severity`` (>= 1; deterministic: ``rng`` is not used)."""
    return AnisotropyParams(axis=spec.axis, downsampling=float(severity), interpolation=spec.interpolation)


def apply_anisotropy(x: Tensor, spacing_mm: Spacing, params: Sequence[AnisotropyParams]) -> Tensor:
    """Downsample each case along its axis (nearest) and resample back (linear or nearest).

    Shape:
        x: ``(B, C, D, H, W)``; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype and device out.
    """
    check_batch(x, params, "anisotropy")
    for letter, step in zip(AXES, spacing_mm, strict=True):
        factors = [p.downsampling if p.axis == letter else 1.0 for p in params]
        if all(f == 1.0 for f in factors):
            continue
        m = torch.tensor(factors, dtype=torch.float64, device=x.device).view(-1, 1)
        nearest = torch.tensor([p.interpolation == "nearest" for p in params], device=x.device).view(-1, 1)
        dim = axis_dim(letter)
        x = lerp_along(x, dim, *anisotropy_taps(x.shape[dim], step, m, nearest))
    return x


register(
    "anisotropy",
    "Resolution loss along one axis: nearest downsample by a factor, linear upsample back "
    "(TorchIO RandomAnisotropy)",
    spec=AnisotropySpec,
    params=AnisotropyParams,
    severity=growing("downsampling_factor", "coarse spacing / original spacing along the axis", 20.0, 1.0),
    ladder=(1.5, 2.0, 3.0, 4.0, 6.0),
    sample=sample_anisotropy,
    apply=apply_anisotropy,
)


# --- wrong_spacing: metadata only -------------------------------------------------------------------


class WrongSpacingSpec(PerturbationSpec):
    """Fixed settings of ``wrong_spacing``.

    Attributes:
        axes: axes whose spacing is wrong, letters of ``"DHW"`` (default ``"D"``: e.g. slice thickness
            read instead of the spacing between slices).
        direction: ``"larger"`` multiplies the reported spacing by the severity, ``"smaller"`` divides.
    """

    axes: Axes = Field("D", description="axes with a wrong spacing, letters of DHW")
    direction: Literal["larger", "smaller"] = Field("larger", description="reported spacing too large/small")


@dataclass(frozen=True, slots=True, kw_only=True)
class WrongSpacingParams:
    """One case's spacing error: reported spacing = true spacing x scale, per axis (1 = correct).

    Attributes:
        scale_d: factor on the D spacing.
        scale_h: factor on the H spacing.
        scale_w: factor on the W spacing.
    """

    scale_d: float
    scale_h: float
    scale_w: float


def sample_wrong_spacing(
    spec: WrongSpacingSpec, severity: float, rng: np.random.Generator
) -> WrongSpacingParams:
    """Parameters for a spacing error factor ``severity`` (>= 1; deterministic: ``rng`` is not used)."""
    factor = float(severity) if spec.direction == "larger" else 1.0 / float(severity)
    scales = {f"scale_{a.lower()}": factor if a in spec.axes else 1.0 for a in AXES}
    return WrongSpacingParams(**scales)


def spacing_after(spacing_mm: Spacing, params: WrongSpacingParams) -> Spacing:
    """The (wrong) spacing in mm handed to the model for one case with ``params``."""
    d, h, w = spacing_mm
    return (d * params.scale_d, h * params.scale_h, w * params.scale_w)


def apply_wrong_spacing(x: Tensor, spacing_mm: Spacing, params: Sequence[WrongSpacingParams]) -> Tensor:
    """Return ``x`` unchanged: the error is in the metadata, see :func:`spacing_after`."""
    check_batch(x, params, "wrong_spacing")
    return x


register(
    "wrong_spacing",
    "Wrong voxel spacing metadata: the image is unchanged, the model gets spacing x factor",
    spec=WrongSpacingSpec,
    params=WrongSpacingParams,
    severity=growing(
        "spacing_error_factor", "reported / true spacing (or its inverse: 'smaller')", 10.0, 1.0
    ),
    ladder=(1.1, 1.25, 1.5, 2.0, 3.0),
    sample=sample_wrong_spacing,
    apply=apply_wrong_spacing,
    spacing_after=spacing_after,
)
