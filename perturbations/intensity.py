r"""Intensity-mapping errors: a gamma (contrast) curve and a wrong DICOM rescale slope or intercept.

``gamma`` is TorchIO's ``Gamma`` / ``RandomGamma`` on a normalised image: with a window
``[lo, hi]`` (fixed, or each case's min and max) the image is mapped to ``u = (x - lo) / (hi - lo)``,
raised sign-preservingly to the power ``gamma = exp(±severity)`` and mapped back,

.. math:: x' = lo + (hi - lo)\, \mathrm{sign}(u) |u|^{\gamma}.

With the window ``[0, 1]`` this is exactly ``tio.Gamma(gamma)``; with the per-case min/max window it
is MONAI's ``AdjustContrast`` (which adds 1e-7 to the range).

``intensity_rescale_error`` models a wrong ``RescaleSlope`` / ``RescaleIntercept`` (DICOM PS3.3
C.11.1.1.2): stored values ``SV = (x - b) / m`` are converted back with a wrong intercept
(``x' = x + e``: e.g. the intercept ignored, +1024 HU) or a wrong slope ``k m``
(``x' = k x + (1 - k) b``: e.g. a slope of 2 ignored). Both are affine, ``x' = k x + c``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

from perturbations.base import (
    PerturbationSpec,
    Severity,
    Spacing,
    check_batch,
    per_case,
)
from perturbations.resolution import given_or_own, growing, register

Sign = Literal["positive", "negative", "random"]


def draw_sign(choice: Sign, rng: np.random.Generator) -> float:
    """+1.0 or -1.0 as the spec asks; ``"random"`` draws one uniform from ``rng`` (always, for every choice).

    Drawing for every choice keeps the rng stream the same whatever the spec says.
    """
    heads = bool(rng.random() < 0.5)
    if choice == "random":
        return 1.0 if heads else -1.0
    return 1.0 if choice == "positive" else -1.0


class WindowSpec(PerturbationSpec):
    """Base of specs that normalise intensities by a window.

    Attributes:
        window: ``[low, high]`` in image units (e.g. HU) mapped to ``[0, 1]``; ``None`` (default) uses each
            case's own minimum and maximum.
    """

    window: tuple[float, float] | None = Field(
        None, description="[low, high] intensity window; null = min/max"
    )

    @field_validator("window")
    @classmethod
    def _window(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"window must be [low, high] with low < high, got {list(v)}")
        return v


def window_fields(spec: WindowSpec) -> dict[str, float | None]:
    """The ``window_low`` / ``window_high`` params fields of ``spec`` (``None`` = per-case min/max)."""
    lo, hi = spec.window if spec.window is not None else (None, None)
    return {"window_low": lo, "window_high": hi}


def window_bounds(x: Tensor, params: Sequence[object]) -> tuple[Tensor, Tensor]:
    """Per-case window ``(low, high - low)`` as ``(B, 1, 1, 1, 1)`` tensors on ``x``'s device.

    Cases whose params have ``window_low`` ``None`` use their own min and max over all channels and
    voxels (computed on the device). A zero width (constant image) is replaced by 1.
    """
    lo = given_or_own(x, [p.window_low for p in params], torch.amin)
    hi = given_or_own(x, [p.window_high for p in params], torch.amax)
    width = hi - lo
    return lo, torch.where(width > 0, width, torch.ones_like(width))


# --- gamma ------------------------------------------------------------------------------------------


class GammaSpec(WindowSpec):
    """Fixed settings of ``gamma``.

    Attributes:
        sign: sign of ``log gamma``: ``"positive"`` (gamma > 1, darker mid-tones), ``"negative"``
            (gamma < 1, brighter), or ``"random"`` (default, drawn per case as TorchIO's ``RandomGamma``).
        window: see :class:`WindowSpec`; ``[0, 1]`` reproduces ``tio.Gamma`` on the raw values.
    """

    sign: Sign = Field("random", description="sign of log gamma: positive, negative or random")


@dataclass(frozen=True, slots=True, kw_only=True)
class GammaParams:
    """One case's gamma curve.

    Attributes:
        gamma: exponent (1 = identity).
        window_low: intensity mapped to 0, or ``None`` for the case's minimum.
        window_high: intensity mapped to 1, or ``None`` for the case's maximum.
    """

    gamma: float
    window_low: float | None
    window_high: float | None


def sample_gamma(spec: GammaSpec, severity: float, rng: np.random.Generator) -> GammaParams:
    """Parameters for ``|ln gamma| = severity``; the sign comes from the spec (or ``rng``)."""
    return GammaParams(gamma=math.exp(draw_sign(spec.sign, rng) * float(severity)), **window_fields(spec))


def apply_gamma(x: Tensor, spacing_mm: Spacing, params: Sequence[GammaParams]) -> Tensor:
    """Apply each case's sign-preserving power law in its normalised window.

    Shape:
        x: ``(B, C, D, H, W)``; same shape, dtype and device out. ``gamma == 1`` returns the case unchanged.
    """
    check_batch(x, params, "gamma")
    lo, width = window_bounds(x, params)
    g = per_case(params, "gamma", x)
    u = x - lo  # a new tensor: the steps below work in place on it, never on x
    u.mul_(1.0 / width)
    # |u|^g as exp(g ln|u|): vectorised log and exp take about half the time of pow (0^g: exp(-inf) = 0).
    if all(p.window_low is None for p in params):
        u.log_().mul_(g).exp_()  # the case's own minimum is the window's low end: u >= 0
    else:
        u = u.abs().log_().mul_(g).exp_().copysign_(u)  # a fixed window: sign-preserving
    out = u.mul_(width).add_(lo)  # lo + width * u^g
    return torch.where(g == 1.0, x, out) if any(p.gamma == 1.0 for p in params) else out


register(
    "gamma",
    "Contrast curve: sign-preserving power law x^gamma in a normalised window (TorchIO Gamma, MONAI "
    "AdjustContrast)",
    spec=GammaSpec,
    params=GammaParams,
    severity=growing("abs_log_gamma", "|ln gamma| (natural log)", 2.0),
    ladder=(0.05, 0.1, 0.2, 0.3, 0.5),
    sample=sample_gamma,
    apply=apply_gamma,
)


# --- intensity_rescale_error ------------------------------------------------------------------------


class RescaleErrorSpec(PerturbationSpec):
    """Fixed settings of ``intensity_rescale_error``.

    Attributes:
        kind: ``"intercept"`` (default: a constant offset) or ``"slope"`` (a wrong rescale slope).
        sign: sign of the error at ``reference_hu``: ``"positive"`` (default), ``"negative"`` or ``"random"``.
        intercept_hu: the true rescale intercept ``b`` (stored value 0), HU; only used by ``"slope"``.
        reference_hu: intensity at which the severity (the error in HU) is measured for ``"slope"``.
    """

    kind: Literal["intercept", "slope"] = Field("intercept", description="wrong intercept or wrong slope")
    sign: Sign = Field("positive", description="sign of the error: positive, negative or random")
    intercept_hu: float = Field(-1024.0, description="true rescale intercept [HU]")
    reference_hu: float = Field(1000.0, description="intensity where a slope error is measured [HU]")

    @field_validator("reference_hu")
    @classmethod
    def _reference(cls, v: float, info: ValidationInfo) -> float:
        if v <= info.data.get("intercept_hu", -1024.0):
            raise ValueError(f"reference_hu must be above intercept_hu, got {v}")
        return v


@dataclass(frozen=True, slots=True, kw_only=True)
class RescaleErrorParams:
    """One case's rescale error ``x' = slope_factor x + offset_hu``.

    Attributes:
        kind: ``"intercept"`` or ``"slope"``.
        error_hu: signed error at the reference intensity, HU (the signed severity).
        slope_factor: wrong slope / true slope (1 for an intercept error).
        offset_hu: additive term, HU.
    """

    kind: str
    error_hu: float
    slope_factor: float
    offset_hu: float


def sample_rescale_error(
    spec: RescaleErrorSpec, severity: float, rng: np.random.Generator
) -> RescaleErrorParams:
    """Parameters for an error of ``severity`` HU (at ``reference_hu`` for a slope error).

    Raises:
        ValueError: a negative slope error so large that the slope would not stay positive.
    """
    error = draw_sign(spec.sign, rng) * float(severity)
    if spec.kind == "intercept":
        return RescaleErrorParams(kind="intercept", error_hu=error, slope_factor=1.0, offset_hu=error)
    k = 1.0 + error / (spec.reference_hu - spec.intercept_hu)
    if k <= 0:
        raise ValueError(f"a slope error of {error} HU at {spec.reference_hu} HU leaves no positive slope")
    return RescaleErrorParams(
        kind="slope", error_hu=error, slope_factor=k, offset_hu=(1.0 - k) * spec.intercept_hu
    )


def apply_rescale_error(x: Tensor, spacing_mm: Spacing, params: Sequence[RescaleErrorParams]) -> Tensor:
    """Map each case through ``slope_factor x + offset_hu`` (exact identity for 1 and 0).

    Shape:
        x: ``(B, C, D, H, W)`` in HU; same shape, dtype and device out.
    """
    check_batch(x, params, "intensity_rescale_error")
    return x * per_case(params, "slope_factor", x) + per_case(params, "offset_hu", x)


register(
    "intensity_rescale_error",
    "Wrong DICOM rescale intercept (offset) or slope; severity = error in HU",
    spec=RescaleErrorSpec,
    params=RescaleErrorParams,
    severity=growing("rescale_error_hu", "HU (at reference_hu for slope errors)", 4096.0),
    ladder=(10.0, 24.0, 100.0, 500.0, 1024.0),
    sample=sample_rescale_error,
    apply=apply_rescale_error,
)


# --- lossy_compression ------------------------------------------------------------------------------

# ITU-T T.81 (JPEG) Annex K.1, table K.1: luminance quantisation table for quality 50.
JPEG_LUMINANCE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
BLOCK = 8


def dct_matrix(like: Tensor) -> Tensor:
    """The orthonormal 8-point DCT-II matrix ``T[u, i]`` on ``like``'s device (JPEG's FDCT is ``T B T^T``)."""
    u = torch.arange(BLOCK, dtype=torch.float64, device=like.device).view(-1, 1)
    i = torch.arange(BLOCK, dtype=torch.float64, device=like.device).view(1, -1)
    t = torch.cos((2 * i + 1) * u * math.pi / (2 * BLOCK)) * math.sqrt(2.0 / BLOCK)
    t[0] = t[0] / math.sqrt(2.0)
    return t.to(like.dtype)


def quantisation_tables(params: Sequence[LossyCompressionParams], like: Tensor) -> Tensor:
    """Per-case IJG-scaled luminance tables ``(B, 8, 8)``: ``floor((T50 s + 50) / 100)`` in ``[1, max]``.

    ``s = 5000 / q`` below quality 50, else ``200 - 2 q`` (libjpeg ``jpeg_quality_scaling``); ``max`` is 255
    for 8 bits (baseline) and 32767 for 12 bits (libjpeg uses the same tables at 12 bits).
    """
    q = per_case(params, "quality", like).view(-1, 1, 1).double().clamp(1.0, 100.0)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    base = torch.tensor(JPEG_LUMINANCE, dtype=torch.float64, device=like.device)
    top = torch.tensor(
        [255.0 if p.bits == 8 else 32767.0 for p in params], dtype=torch.float64, device=like.device
    )
    table = torch.floor((base * scale + 50.0) / 100.0)
    return torch.minimum(table.clamp(min=1.0), top.view(-1, 1, 1)).to(like.dtype)


class LossyCompressionSpec(WindowSpec):
    """Fixed settings of ``lossy_compression``.

    Attributes:
        bits: sample precision of the codec: 8 (default; baseline JPEG) or 12 (extended JPEG, as in DICOM
            transfer syntax 1.2.840.10008.1.2.4.51).
        window: intensities mapped to ``[0, 2^bits - 1]`` (clipped outside); ``None``: each case's min/max.
    """

    bits: Literal[8, 12] = Field(8, description="codec sample precision [bits]")


@dataclass(frozen=True, slots=True, kw_only=True)
class LossyCompressionParams:
    """One case's compression: JPEG ``quality`` (1-100), ``bits``, and the window (``None``: min/max)."""

    quality: float
    bits: int
    window_low: float | None
    window_high: float | None


def sample_lossy_compression(
    spec: LossyCompressionSpec, severity: float, rng: np.random.Generator
) -> LossyCompressionParams:
    """Parameters for JPEG quality ``severity`` (deterministic: ``rng`` is not used)."""
    return LossyCompressionParams(quality=float(severity), bits=spec.bits, **window_fields(spec))


def apply_lossy_compression(
    x: Tensor, spacing_mm: Spacing, params: Sequence[LossyCompressionParams]
) -> Tensor:
    """JPEG-like round trip of every axial (H, W) slice: window to integers, 8x8 DCT, quantise, invert.

    Slices are padded to a multiple of 8 by edge replication (as encoders do) and cropped back; the decoded
    samples are rounded and clipped to ``[0, 2^bits - 1]`` before mapping back through the window.

    Shape:
        x: ``(B, C, D, H, W)``; same shape, dtype and device out.
    """
    check_batch(x, params, "lossy_compression")
    lo, width = window_bounds(x, params)
    top = torch.tensor([2.0**p.bits - 1 for p in params], dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)
    shift = (top + 1) / 2
    v = torch.round((x - lo).div(width).clamp(0.0, 1.0) * top) - shift
    b, c, d, h, w = x.shape
    v = torch.nn.functional.pad(v, (0, -w % BLOCK, 0, -h % BLOCK, 0, 0), mode="replicate")
    hb, wb = v.shape[3] // BLOCK, v.shape[4] // BLOCK
    blocks = v.reshape(b, c, d, hb, BLOCK, wb, BLOCK)
    t = dct_matrix(x)
    coef = torch.einsum("ui,bcdyixj,vj->bcdyuxv", t, blocks, t)
    table = quantisation_tables(params, x).view(b, 1, 1, 1, BLOCK, 1, BLOCK)
    coef = torch.round(coef / table) * table
    rec = torch.einsum("ui,bcdyuxv,vj->bcdyixj", t, coef, t).reshape(v.shape)[..., :h, :w]
    decoded = torch.minimum((torch.round(rec) + shift).clamp(min=0.0), top)
    return lo + decoded / top * width


register(
    "lossy_compression",
    "JPEG-like lossy compression of each axial slice: 8x8 DCT quantised by quality (1-100)",
    identity_at_nominal=False,
    spec=LossyCompressionSpec,
    params=LossyCompressionParams,
    severity=Severity(
        name="jpeg_quality", unit="IJG quality", low=1.0, high=100.0, nominal=100.0, harsher="lower"
    ),
    ladder=(90.0, 75.0, 50.0, 25.0, 10.0),
    sample=sample_lossy_compression,
    apply=apply_lossy_compression,
)
