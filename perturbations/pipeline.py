"""Pipeline geometry errors: orientation flip, axis swap, missing or duplicated slices, field-of-view cut.

Every perturbation here changes geometry, so each has an ``apply_mask`` that applies the same transform
to a ground-truth mask (nearest neighbour: a mask stays a bool mask). No perturbation changes the
tensor shape: a batch keeps one shape. Where voxels have no source (a cut field of view, a zeroed
slice, the margins of a non-square transpose) they take the params' ``fill_value`` (``None``: each
case's minimum, i.e. air in CT, background in MR) in the image and ``False`` in the mask.

All kernels are batched gathers or ``torch.where`` selections with per-case index tensors built on the
device; the only Python loops run over the three axes (or the distinct axis pairs), never over cases
or voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from perturbations.base import (
    PerturbationSpec,
    Spacing,
    draw_seed,
)
from perturbations.random import uniform_bits
from perturbations.resolution import (
    AXES,
    Axes,
    AxisLetter,
    AxisPair,
    along,
    axis_dim,
    case_flags,
    growing,
    lerp_along,
    register,
    take_along,
)

PROBABILITY_LADDER = (0.05, 0.1, 0.2, 0.5, 1.0)


def fill_field() -> Any:
    """The pydantic field of a spec's ``fill_value`` (``None``: each case's minimum)."""
    return Field(None, description="value where voxels have no source [image units]; null = case minimum")


# --- orientation_flip -------------------------------------------------------------------------------


class FlipSpec(PerturbationSpec):
    """Fixed settings of ``orientation_flip``.

    Attributes:
        axis: the flipped axis: ``"W"`` (default; left-right in an axial slice), ``"H"`` (anterior-
            posterior) or ``"D"`` (head-foot, e.g. a reversed slice order).
    """

    axis: AxisLetter = Field("W", description="flipped axis (D, H or W)")


@dataclass(frozen=True, slots=True, kw_only=True)
class FlipParams:
    """One case's flip: ``axis`` (``"D"``, ``"H"`` or ``"W"``) and whether it is ``flipped``."""

    axis: str
    flipped: bool


def sample_flip(spec: FlipSpec, severity: float, rng: np.random.Generator) -> FlipParams:
    """Flip with probability ``severity`` (one uniform is always drawn: common random numbers)."""
    return FlipParams(axis=spec.axis, flipped=bool(rng.random() < severity))


def flip_core(x: Tensor, spacing_mm: Spacing, params: Sequence[FlipParams], fill: Tensor) -> Tensor:
    """Reverse the cases' axis where ``flipped``.

    When every case flips the same axis (a whole batch at probability 1) the result is one ``flip`` copy;
    otherwise flipped and unflipped cases are selected per case.
    """
    for letter in sorted({p.axis for p in params if p.flipped}):
        chosen = [p.flipped and p.axis == letter for p in params]
        if all(chosen):
            x = x.flip(axis_dim(letter))
        else:
            x = torch.where(case_flags(chosen, x), x.flip(axis_dim(letter)), x)
    return x


register(
    "orientation_flip",
    "Orientation error: the volume is mirrored along one axis (e.g. left-right)",
    core=flip_core,
    spec=FlipSpec,
    params=FlipParams,
    severity=growing("flip_probability", "probability per case", 1.0),
    ladder=PROBABILITY_LADDER,
    sample=sample_flip,
)


# --- axis_swap --------------------------------------------------------------------------------------


class AxisSwapSpec(PerturbationSpec):
    """Fixed settings of ``axis_swap``.

    Attributes:
        axes: the two swapped axes, default ``"HW"`` (an in-plane transpose).
        fill_value: value of voxels outside the transposed volume when the two axes differ in length.
    """

    axes: AxisPair = Field("HW", description="the two swapped axes, letters of DHW")
    fill_value: float | None = fill_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class AxisSwapParams:
    """One case's axis swap: ``axes`` (two letters), ``swapped``, ``fill_value`` (``None``: case minimum)."""

    axes: str
    swapped: bool
    fill_value: float | None


def sample_axis_swap(spec: AxisSwapSpec, severity: float, rng: np.random.Generator) -> AxisSwapParams:
    """Swap with probability ``severity`` (one uniform is always drawn: common random numbers)."""
    return AxisSwapParams(axes=spec.axes, swapped=bool(rng.random() < severity), fill_value=spec.fill_value)


def fit_centred(t: Tensor, shape: torch.Size, fill: Tensor) -> Tensor:
    """Centre-crop or centre-pad (with ``fill``, ``(B, 1, 1, 1, 1)``) ``t`` to ``shape``."""
    if t.shape == shape:
        return t
    for dim in (2, 3, 4):
        if t.shape[dim] > shape[dim]:
            t = t.narrow(dim, (t.shape[dim] - shape[dim]) // 2, shape[dim])
    out = fill.expand(shape).clone()
    starts = [(shape[d] - t.shape[d]) // 2 for d in (2, 3, 4)]
    region = [slice(s, s + n) for s, n in zip(starts, t.shape[2:], strict=True)]
    out[(slice(None), slice(None), *region)] = t
    return out


def axis_swap_core(x: Tensor, spacing_mm: Spacing, params: Sequence[AxisSwapParams], fill: Tensor) -> Tensor:
    """Transpose the cases' two axes where ``swapped``; unequal lengths are centre-cropped/padded back."""
    for pair in sorted({p.axes for p in params if p.swapped}):
        on = case_flags([p.swapped and p.axes == pair for p in params], x)
        swapped = x.transpose(axis_dim(pair[0]), axis_dim(pair[1]))
        x = torch.where(on, fit_centred(swapped, x.shape, fill), x)
    return x


register(
    "axis_swap",
    "Transpose error: two axes swapped (default H and W, an in-plane transpose)",
    core=axis_swap_core,
    spec=AxisSwapSpec,
    params=AxisSwapParams,
    severity=growing("swap_probability", "probability per case", 1.0),
    ladder=PROBABILITY_LADDER,
    sample=sample_axis_swap,
)


# --- missing_slices and duplicated_slices ------------------------------------------------------------


def chosen_slices(params: Sequence[Any], letter: str, size: int, like: Tensor, skip_first: bool) -> Tensor:
    """``(B, L)`` bool: the slices hit in each case whose ``axis`` is ``letter`` (none in other cases).

    Case ``b`` hits ``k = min(floor(fraction L + 1/2), L - 1)`` slices: those with the ``k`` smallest keys of
    the counter-based uniform stream of its ``seed`` (so the set for a smaller fraction is a subset of the
    set for a larger one). ``skip_first`` never hits slice 0 (it has no previous slice).
    """
    seeds = torch.tensor([p.seed for p in params], dtype=torch.int64, device=like.device)
    keys = uniform_bits(seeds, size)
    if skip_first:
        keys = torch.cat([torch.full_like(keys[:, :1], 2**32), keys[:, 1:]], dim=1)
    rank = keys.argsort(dim=1, stable=True).argsort(dim=1)
    fractions = [p.fraction if p.axis == letter else 0.0 for p in params]
    k = torch.tensor(fractions, dtype=torch.float64, device=like.device).view(-1, 1)
    k = torch.floor(k * size + 0.5).clamp(max=size - 1)
    return rank < k


def previous_kept(hit: Tensor) -> Tensor:
    """``(B, L)`` index of the nearest slice at or before each position that is not hit (-1 if none)."""
    j = torch.arange(hit.shape[1], device=hit.device).expand_as(hit)
    return torch.where(hit, -1, j).cummax(dim=1).values


def next_kept(hit: Tensor) -> Tensor:
    """``(B, L)`` index of the nearest slice at or after each position that is not hit (L if none)."""
    size = hit.shape[1]
    return size - 1 - previous_kept(hit.flip(1)).flip(1)


def slice_axes(params: Sequence[Any]) -> list[str]:
    """The distinct axes of the cases that hit any slice, in D, H, W order."""
    return [a for a in AXES if any(p.axis == a and p.fraction > 0 for p in params)]


SLICE_LADDER = (0.02, 0.05, 0.1, 0.2, 0.3)


class SliceSpec(PerturbationSpec):
    """Base of the slice-error specs. Attributes: ``axis``, the slice axis, default ``"D"``."""

    axis: AxisLetter = Field("D", description="slice axis (D, H or W)")


class MissingSlicesSpec(SliceSpec):
    """Fixed settings of ``missing_slices``.

    Attributes:
        mode: what stands in a missing slice: ``"fill"`` (default; ``fill_value``, i.e. a blank slice) or
            ``"interpolate"`` (linear between the nearest present slices on either side; at the ends, the
            nearest present slice).
        fill_value: image value of a blank slice (``None``: the case's minimum).
    """

    mode: Literal["fill", "interpolate"] = Field("fill", description="blank (fill) or interpolated slices")
    fill_value: float | None = fill_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class MissingSlicesParams:
    """One case's missing slices.

    Attributes:
        axis: slice axis letter.
        fraction: fraction of the slices that are missing.
        mode: ``"fill"`` or ``"interpolate"``.
        fill_value: blank-slice value (``None``: case minimum).
        seed: seed of the counter-based stream that picks the slices (see :func:`chosen_slices`).
    """

    axis: str
    fraction: float
    mode: str
    fill_value: float | None
    seed: int


def sample_missing_slices(
    spec: MissingSlicesSpec, severity: float, rng: np.random.Generator
) -> MissingSlicesParams:
    """Parameters for a fraction ``severity`` of missing slices; positions come from the drawn ``seed``."""
    return MissingSlicesParams(
        axis=spec.axis,
        fraction=float(severity),
        mode=spec.mode,
        fill_value=spec.fill_value,
        seed=draw_seed(rng),
    )


def missing_slices_core(
    x: Tensor, spacing_mm: Spacing, params: Sequence[MissingSlicesParams], fill: Tensor
) -> Tensor:
    """Replace the chosen slices by ``fill`` or by interpolation (a mask takes the nearer present slice)."""
    for letter in slice_axes(params):
        dim = axis_dim(letter)
        size = x.shape[dim]
        hit = chosen_slices(params, letter, size, x, skip_first=False)
        before, after = previous_kept(hit), next_kept(hit)
        i0 = torch.where(before < 0, after, before)
        i1 = torch.where(after >= size, i0, after)
        j = torch.arange(size, device=x.device)
        w = torch.where(i1 > i0, (j - i0).double() / (i1 - i0).clamp(min=1), 0.0)
        if x.dtype == torch.bool:
            moved = take_along(x, dim, torch.where(w > 0.5, i1, i0))
        else:
            moved = lerp_along(x, dim, i0, i1, w)
        blank = case_flags([p.mode == "fill" for p in params], x) & along(hit, x, dim)
        x = torch.where(blank, fill, moved)
    return x


register(
    "missing_slices",
    "Missing slices: a fraction of the slices is blank (fill) or interpolated from its neighbours",
    core=missing_slices_core,
    spec=MissingSlicesSpec,
    params=MissingSlicesParams,
    severity=growing("missing_fraction", "fraction of slices", 0.5),
    ladder=SLICE_LADDER,
    random=True,
    sample=sample_missing_slices,
)


class DuplicatedSlicesSpec(SliceSpec):
    """Fixed settings of ``duplicated_slices``.

    Attributes:
        shift: ``False`` (default): a duplicated slice replaces the slice after it. ``True``: it is inserted,
            every later slice moves one place on and the last slices drop off the end (naive stacking of a
            series with a repeated instance).
    """

    shift: bool = Field(
        False, description="insert duplicates and shift later slices (true) or replace (false)"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class DuplicatedSlicesParams:
    """One case's duplicated slices: ``axis``, ``fraction`` of slices, ``shift`` and the position ``seed``."""

    axis: str
    fraction: float
    shift: bool
    seed: int


def sample_duplicated_slices(
    spec: DuplicatedSlicesSpec, severity: float, rng: np.random.Generator
) -> DuplicatedSlicesParams:
    """Parameters for a fraction ``severity`` of duplicated slices; positions come from the drawn ``seed``."""
    return DuplicatedSlicesParams(
        axis=spec.axis, fraction=float(severity), shift=spec.shift, seed=draw_seed(rng)
    )


def duplicated_slices_core(
    x: Tensor, spacing_mm: Spacing, params: Sequence[DuplicatedSlicesParams], fill: Tensor
) -> Tensor:
    """Each chosen output slice repeats the slice before it (replacing, or shifting the rest on)."""
    for letter in slice_axes(params):
        dim = axis_dim(letter)
        hit = chosen_slices(params, letter, x.shape[dim], x, skip_first=True)
        j = torch.arange(x.shape[dim], device=x.device)
        shift = torch.tensor([p.shift for p in params], device=x.device).view(-1, 1)
        source = torch.where(shift, j - hit.cumsum(dim=1), previous_kept(hit))
        x = take_along(x, dim, source)
    return x


register(
    "duplicated_slices",
    "Duplicated slices: a fraction of the slices repeats the previous slice (replacing or shifting)",
    core=duplicated_slices_core,
    spec=DuplicatedSlicesSpec,
    params=DuplicatedSlicesParams,
    severity=growing("duplicated_fraction", "fraction of slices", 0.5),
    ladder=SLICE_LADDER,
    random=True,
    sample=sample_duplicated_slices,
)


# --- crop_pad ---------------------------------------------------------------------------------------


class CropPadSpec(PerturbationSpec):
    """Fixed settings of ``crop_pad``.

    Attributes:
        axes: the cut axes, default ``"HW"`` (in-plane field of view).
        fill_value: value of the cut margins (``None``: the case's minimum, e.g. -1000 HU air).
    """

    axes: Axes = Field("HW", description="cut axes, letters of DHW")
    fill_value: float | None = fill_field()


@dataclass(frozen=True, slots=True, kw_only=True)
class CropPadParams:
    """One case's field-of-view cut: ``margin_mm`` from each side of each of ``axes``, then ``fill_value``."""

    margin_mm: float
    axes: str
    fill_value: float | None


def sample_crop_pad(spec: CropPadSpec, severity: float, rng: np.random.Generator) -> CropPadParams:
    """Parameters for a cut of ``severity`` mm per side (deterministic: ``rng`` is not used)."""
    return CropPadParams(margin_mm=float(severity), axes=spec.axes, fill_value=spec.fill_value)


def crop_pad_core(x: Tensor, spacing_mm: Spacing, params: Sequence[CropPadParams], fill: Tensor) -> Tensor:
    """Keep the central region, ``round(margin_mm / spacing)`` voxels in from each side; fill the rest."""
    keep = case_flags([True] * len(params), x)
    for letter, step in zip(AXES, spacing_mm, strict=True):
        dim = axis_dim(letter)
        cut = [int(p.margin_mm / step + 0.5) if letter in p.axes else 0 for p in params]
        if any(cut):
            n = torch.tensor(cut, device=x.device).view(-1, 1)
            j = torch.arange(x.shape[dim], device=x.device)
            keep = keep & along((j >= n) & (j < x.shape[dim] - n), x, dim)
    return torch.where(keep, x, fill)


register(
    "crop_pad",
    "Field-of-view cut: a margin in mm cropped from each side and padded back with a fill value",
    core=crop_pad_core,
    spec=CropPadSpec,
    params=CropPadParams,
    severity=growing("margin_mm", "mm cut from each side", 500.0),
    ladder=(10.0, 20.0, 40.0, 60.0, 80.0),
    sample=sample_crop_pad,
)
