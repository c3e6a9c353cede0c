r"""CT reconstruction kernel: in-plane MTF filtering and noise with the kernel's noise power spectrum.

**MTF model.** A kernel's in-plane modulation transfer function is radially symmetric,

.. math:: \mathrm{MTF}(f) = (1 + a u^2)\, e^{-u^p}, \qquad u = f / f_c,

with ``f`` the radial spatial frequency in lp/cm, ``f_c`` a cut-off, ``p`` the exponent (``p = 2``:
Gaussian) and ``a >= 0`` an edge-enhancement boost that makes the MTF overshoot 1 at mid frequencies,
as bone kernels do. Each named kernel in :data:`KERNELS` is given by its MTF50 and MTF10 (the
frequencies where the MTF falls to 0.5 and 0.1; AAPM TG-233, Samei et al., Med Phys 46:e735, 2019)
and its boost; ``p`` and ``f_c`` are solved so that the model passes through both points. A severity
given directly as an MTF50 takes ``p`` and ``a`` interpolated linearly in MTF50 between the named
kernels (clamped at the ends) and ``f_c`` from the MTF50, so a named kernel's MTF50 reproduces it.

**Image.** The phantom is ideal (MTF 1 up to the grid's Nyquist frequency), so the kernel is applied as
the filter ``MTF(f)`` in the in-plane (y, x) frequency domain of every axial slice, after edge-replicate
padding by at least :data:`PAD_MM` (up to a 2-3-5-smooth FFT length) so that the circular FFT does not
wrap across the image. Frequencies above Nyquist (``5 / spacing_mm`` lp/cm) do not exist on the grid: at
4 mm voxels (Nyquist 1.25 lp/cm) every clinical kernel is close to the identity.

**Noise.** Filtered back-projection shapes quantum noise by the ramp filter and the kernel: the 2-D
noise power spectrum is :math:`\mathrm{NPS}(f) \propto f\, \mathrm{MTF}(f)^2` (Kijewski & Judy, Phys Med
Biol 32:565, 1987; Boedeker, Cooper & McNitt-Gray, Phys Med Biol 52:4027, 2007; Solomon, Christianson &
Samei, Med Phys 39:6048, 2012; ICRU Report 87, 2012). Kernel noise is a counter-based white normal field
filtered in-plane by :math:`\sqrt{f}\,|\mathrm{MTF}(f)|` and scaled so its pixel SD is the requested one
(independent between slices, i.e. slice interval >= slice thickness). The pixel variance is the integral
of the NPS, :math:`\sigma^2 \propto \int_0^\infty f^2\, \mathrm{MTF}(f)^2\, df`, which for the model is
:math:`f_c^3 \sum_k c_k \Gamma((k+1)/p) / (p\, 2^{(k+1)/p})` with ``c_2 = 1, c_4 = 2a, c_6 = a^2``:
``ct_kernel`` scales the noise of ``reference_kernel`` by the square root of the ratio of these
integrals.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
    draw_seed,
    per_case,
)
from perturbations.ct_geometry import case_seeds, inplane_frequency_lpcm
from perturbations.dose import CTDoseSpec, sample_ct_dose
from perturbations.random import standard_normal

PAD_MM = 12.0  # in-plane replicate padding: > 5 PSF sigmas of the softest allowed kernel (MTF50 1 lp/cm)
KernelName = Literal["soft", "standard", "sharp", "bone"]


@dataclass(frozen=True, slots=True)
class KernelMTF:
    """A named kernel's specification.

    Attributes:
        mtf50_lpcm: frequency where the MTF is 0.5, lp/cm.
        mtf10_lpcm: frequency where the MTF is 0.1, lp/cm.
        boost: edge-enhancement coefficient ``a`` of the model (0: no overshoot).
    """

    mtf50_lpcm: float
    mtf10_lpcm: float
    boost: float


# Representative body kernels, within the published ranges of clinical FBP kernels (soft 3-4,
# standard 4.5-5, sharp 6-7, bone >= 8 lp/cm at MTF50); not one vendor's values. See docs/perturbations-ct.md.
KERNELS: dict[str, KernelMTF] = {
    "soft": KernelMTF(3.4, 5.6, 0.0),
    "standard": KernelMTF(4.6, 7.2, 0.0),
    "sharp": KernelMTF(6.5, 9.5, 0.0),
    "bone": KernelMTF(8.5, 11.8, 1.5),
}
_U = np.linspace(0.0, 25.0, 5001)  # u = f / f_c, where the model's level crossings are searched


def mtf_model(f_lpcm: Any, cutoff_lpcm: float, exponent: float, boost: float) -> Any:
    """The MTF model ``(1 + a u^2) exp(-u^p)`` at ``f_lpcm`` (NumPy array or float), ``u = f / f_c``."""
    u = np.asarray(f_lpcm, dtype=np.float64) / cutoff_lpcm
    return (1.0 + boost * u**2) * np.exp(-(u**exponent))


def _last_crossing(level: float, exponent: float, boost: float) -> float:
    """The largest ``u`` where the model (``f_c = 1``) falls through ``level`` (bisection, 1e-12)."""
    g = mtf_model(_U, 1.0, exponent, boost)
    i = int(np.flatnonzero(g > level)[-1])
    lo, hi = float(_U[i]), float(_U[i + 1])
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mtf_model(mid, 1.0, exponent, boost) > level else (lo, mid)
    return 0.5 * (lo + hi)


def _exponent_for(ratio: float, boost: float) -> float:
    """The exponent ``p`` giving ``MTF10 / MTF50 = ratio`` at this boost (the ratio falls with ``p``)."""
    lo, hi = 1.0, 16.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        above = _last_crossing(0.1, mid, boost) / _last_crossing(0.5, mid, boost) > ratio
        lo, hi = (mid, hi) if above else (lo, mid)
    return 0.5 * (lo + hi)


@functools.cache
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MTF50 (lp/cm), exponent and boost of the named kernels, by increasing MTF50."""
    rows = sorted(KERNELS.values(), key=lambda k: k.mtf50_lpcm)
    exps = [_exponent_for(k.mtf10_lpcm / k.mtf50_lpcm, k.boost) for k in rows]
    return (
        np.array([k.mtf50_lpcm for k in rows]),
        np.array(exps),
        np.array([k.boost for k in rows]),
    )


@dataclass(frozen=True, slots=True)
class KernelShape:
    """The model parameters of one kernel.

    Attributes:
        mtf50_lpcm: MTF50, lp/cm.
        mtf10_lpcm: MTF10 of the model, lp/cm.
        cutoff_lpcm: ``f_c``, lp/cm.
        exponent: ``p``.
        boost: ``a``.
    """

    mtf50_lpcm: float
    mtf10_lpcm: float
    cutoff_lpcm: float
    exponent: float
    boost: float


@functools.lru_cache(maxsize=256)
def kernel_shape(mtf50_lpcm: float) -> KernelShape:
    """Model parameters of the kernel with this MTF50 (shape interpolated between the named kernels)."""
    mtf50s, exps, boosts = _table()
    p = float(np.interp(mtf50_lpcm, mtf50s, exps))
    a = float(np.interp(mtf50_lpcm, mtf50s, boosts))
    cutoff = mtf50_lpcm / _last_crossing(0.5, p, a)
    return KernelShape(mtf50_lpcm, cutoff * _last_crossing(0.1, p, a), cutoff, p, a)


def named_kernel(name: str) -> KernelShape:
    """Model parameters of a named kernel (:data:`KERNELS`)."""
    return kernel_shape(KERNELS[name].mtf50_lpcm)


def noise_power(shape: KernelShape) -> float:
    r"""``\int_0^\infty f^2 MTF(f)^2 df`` in (lp/cm)^3: proportional to the FBP pixel noise variance."""
    p, a = shape.exponent, shape.boost

    def moment(k: int) -> float:  # \int_0^\infty u^k exp(-2 u^p) du
        return math.gamma((k + 1) / p) / (p * 2.0 ** ((k + 1) / p))

    return shape.cutoff_lpcm**3 * (moment(2) + 2.0 * a * moment(4) + a * a * moment(6))


def nps_peak_lpcm(shape: KernelShape) -> float:
    """Frequency of the maximum of ``f MTF(f)^2`` (the analytic NPS peak), lp/cm, to 1e-4 lp/cm."""
    f = np.linspace(0.0, 25.0 * shape.cutoff_lpcm, 250_001)
    nps = f * mtf_model(f, shape.cutoff_lpcm, shape.exponent, shape.boost) ** 2
    return float(f[int(np.argmax(nps))])


# ---------------------------------------------------------------------------------------------------
# Batched torch kernels. Params of both perturbations carry cutoff_lpcm, exponent and boost.


def _mtf(f: Tensor, params: Sequence[Any], x: Tensor) -> Tensor:
    """Per-case MTF on the frequency grid ``f`` (lp/cm, float64): ``(B, 1, 1, *f.shape)`` in float64."""
    u = f / per_case(params, "cutoff_lpcm", x).double()
    boost = per_case(params, "boost", x).double()
    return (1.0 + boost * u**2) * torch.exp(-(u ** per_case(params, "exponent", x).double()))


def fast_fft_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def filter_inplane(x: Tensor, transfer: Tensor) -> Tensor:
    """Multiply every axial slice's ``rfft2`` by ``transfer`` (broadcast, ``(..., H, W // 2 + 1)``)."""
    spectrum = torch.fft.rfft2(x, norm="ortho")
    return torch.fft.irfft2(spectrum * transfer.to(x.dtype), s=x.shape[-2:], norm="ortho")


def kernel_noise(x: Tensor, spacing_mm: Spacing, params: Sequence[Any], sd_field: str) -> Tensor:
    r"""Zero-mean noise with NPS ``∝ f MTF(f)^2`` in-plane and pixel SD ``params.<sd_field>`` (HU).

    A white counter-based normal field (seeded by ``params.seed``) is filtered by
    :math:`\sqrt{f}\,\mathrm{MTF}(f)`, normalised by the grid mean of ``f MTF^2`` so that the pixel
    variance is exactly the requested one in expectation. The field is stationary, so it is filtered
    circularly on the smallest 2-3-5-smooth grid covering ``(H, W)`` and cropped.
    """
    c, d, h, w = x.shape[1:]
    hf, wf = fast_fft_size(h), fast_fft_size(w)
    f = inplane_frequency_lpcm(hf, wf, spacing_mm, x)
    nps = f * _mtf(f, params, x) ** 2
    # Mean over the full (hf, wf) grid from the rfft half: inner columns stand for two.
    weight = torch.full((f.shape[-1],), 2.0, dtype=torch.float64, device=x.device)
    weight[0] = 1.0
    if wf % 2 == 0:
        weight[-1] = 1.0
    mean = (nps * weight).sum(dim=(-2, -1), keepdim=True) / (hf * wf)
    amplitude = torch.sqrt(nps / mean.clamp(min=1e-30)) * per_case(params, sd_field, x).double()
    white = standard_normal(case_seeds(params, x), (c, d, hf, wf), dtype=x.dtype)
    return filter_inplane(white, amplitude)[..., :h, :w]


# ---------------------------------------------------------------------------------------------------
# ct_kernel


class CTKernelSpec(PerturbationSpec):
    """Fixed settings of ``ct_kernel``.

    Attributes:
        reference_noise_hu: noise SD with ``reference_kernel``, HU; 0 adds no noise (resolution only).
        reference_kernel: the named kernel at which ``reference_noise_hu`` holds.
    """

    reference_noise_hu: float = Field(0.0, ge=0.0, le=1000.0, description="noise SD at reference kernel [HU]")
    reference_kernel: KernelName = Field("standard", description="kernel of reference_noise_hu")


@dataclass(frozen=True, slots=True, kw_only=True)
class CTKernelParams:
    """One case's reconstruction kernel.

    Attributes:
        mtf50_lpcm: the kernel's MTF50, lp/cm (the severity).
        mtf10_lpcm: the kernel's MTF10, lp/cm.
        cutoff_lpcm: model cut-off ``f_c``, lp/cm.
        exponent: model exponent ``p``.
        boost: model edge enhancement ``a``.
        noise_sd_hu: pixel SD of the kernel-shaped noise added, HU (0: none).
        seed: seed of the counter-based noise field.
    """

    mtf50_lpcm: float
    mtf10_lpcm: float
    cutoff_lpcm: float
    exponent: float
    boost: float
    noise_sd_hu: float
    seed: int


def _model_fields(shape: KernelShape) -> dict[str, float]:
    """The model parameters recorded in every kernel params: ``cutoff_lpcm``, ``exponent``, ``boost``."""
    return {"cutoff_lpcm": shape.cutoff_lpcm, "exponent": shape.exponent, "boost": shape.boost}


def sample_ct_kernel(spec: CTKernelSpec, severity: float, rng: np.random.Generator) -> CTKernelParams:
    """Parameters of the kernel with MTF50 ``severity`` lp/cm and its noise SD."""
    seed = draw_seed(rng)
    shape = kernel_shape(float(severity))
    ratio = noise_power(shape) / noise_power(named_kernel(spec.reference_kernel))
    return CTKernelParams(
        mtf50_lpcm=shape.mtf50_lpcm,
        mtf10_lpcm=shape.mtf10_lpcm,
        **_model_fields(shape),
        noise_sd_hu=spec.reference_noise_hu * math.sqrt(ratio),
        seed=seed,
    )


def apply_ct_kernel(x: Tensor, spacing_mm: Spacing, params: Sequence[CTKernelParams]) -> Tensor:
    """Filter each case's axial slices by its kernel's MTF and add its kernel-shaped noise.

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_kernel")
    b, c, d, h, w = x.shape
    mh, mw = (math.ceil(PAD_MM / s) for s in spacing_mm[1:])
    hp, wp = fast_fft_size(h + 2 * mh), fast_fft_size(w + 2 * mw)
    padded = F.pad(x.reshape(b * c * d, h, w), (mw, wp - w - mw, mh, hp - h - mh), mode="replicate")
    f = inplane_frequency_lpcm(hp, wp, spacing_mm, x)
    y = filter_inplane(padded.view(b, c, d, hp, wp), _mtf(f, params, x))[..., mh : mh + h, mw : mw + w]
    if any(p.noise_sd_hu > 0 for p in params):
        y = y + kernel_noise(x, spacing_mm, params, "noise_sd_hu")
    return y.contiguous()


# ---------------------------------------------------------------------------------------------------
# ct_dose_nps


class CTDoseNPSSpec(PerturbationSpec):
    """Fixed settings of ``ct_dose_nps``.

    Attributes:
        reference_noise_hu: noise SD at dose fraction 1.0 with ``kernel``, HU (> 0).
        existing_noise_hu: noise already in the input, HU (0 for a noiseless phantom).
        kernel: named kernel whose NPS shapes the noise.
    """

    reference_noise_hu: float = Field(20.0, gt=0.0, description="noise SD at full dose [HU]")
    existing_noise_hu: float = Field(0.0, ge=0.0, description="noise SD already in the image [HU]")
    kernel: KernelName = Field("standard", description="kernel shaping the noise power spectrum")


@dataclass(frozen=True, slots=True, kw_only=True)
class CTDoseNPSParams:
    """One case's dose reduction with kernel-shaped noise.

    Attributes:
        dose_fraction: dose relative to the reference dose.
        kernel: name of the kernel shaping the NPS.
        cutoff_lpcm: the kernel's model cut-off ``f_c``, lp/cm.
        exponent: the kernel's model exponent ``p``.
        boost: the kernel's model edge enhancement ``a``.
        total_noise_hu: noise SD of the simulated scan, ``reference_noise_hu / sqrt(dose_fraction)``, HU.
        added_noise_hu: SD of the noise actually added, HU.
        seed: seed of the counter-based noise field.
    """

    dose_fraction: float
    kernel: str
    cutoff_lpcm: float
    exponent: float
    boost: float
    total_noise_hu: float
    added_noise_hu: float
    seed: int


def sample_ct_dose_nps(spec: CTDoseNPSSpec, severity: float, rng: np.random.Generator) -> CTDoseNPSParams:
    """Parameters for a scan at dose fraction ``severity``: ``ct_dose``'s noise levels, kernel-shaped."""
    white = sample_ct_dose(
        CTDoseSpec(reference_noise_hu=spec.reference_noise_hu, existing_noise_hu=spec.existing_noise_hu),
        severity,
        rng,
    )
    shape = named_kernel(spec.kernel)
    return CTDoseNPSParams(
        dose_fraction=white.dose_fraction,
        kernel=spec.kernel,
        **_model_fields(shape),
        total_noise_hu=white.total_noise_hu,
        added_noise_hu=white.added_noise_hu,
        seed=white.seed,
    )


def apply_ct_dose_nps(x: Tensor, spacing_mm: Spacing, params: Sequence[CTDoseNPSParams]) -> Tensor:
    """Add noise of SD ``added_noise_hu`` with the kernel's NPS to each case of ``x``.

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_dose_nps")
    return x + kernel_noise(x, spacing_mm, params, "added_noise_hu")


PERTURBATIONS.register(
    "ct_kernel",
    Perturbation(
        name="ct_kernel",
        description="CT reconstruction kernel given by its MTF50 (lp/cm): in-plane MTF filter, f*MTF^2 noise",
        spec=CTKernelSpec,
        params=CTKernelParams,
        severity=Severity(
            name="mtf50_lpcm",
            unit="lp/cm",
            low=1.0,
            high=15.0,
            nominal=KERNELS["standard"].mtf50_lpcm,
            harsher="lower",
        ),
        ladder=(4.0, 3.4, 2.8, 2.2, 1.6),
        props=Props(intensity_only=True, identity_at_nominal=False, random=True),
        sample=sample_ct_kernel,
        apply=apply_ct_kernel,
    ),
)

_CT_DOSE = PERTURBATIONS.get("ct_dose")
PERTURBATIONS.register(
    "ct_dose_nps",
    Perturbation(
        name="ct_dose_nps",
        description="CT dose reduction: noise SD = reference_noise_hu / sqrt(dose), NPS of a named kernel",
        spec=CTDoseNPSSpec,
        params=CTDoseNPSParams,
        severity=_CT_DOSE.severity,
        ladder=_CT_DOSE.ladder,
        props=Props(intensity_only=True, identity_at_nominal=False, random=True),
        sample=sample_ct_dose_nps,
        apply=apply_ct_dose_nps,
    ),
)
