r"""CT artefacts in image space: HU calibration error, ring artefacts and a truncated scan field of view.

**HU calibration** (``ct_hu_calibration``). CT numbers are :math:`1000 (\mu - \mu_w) / \mu_w`, fixed by
the scanner's air and water calibration. A drifted calibration is an affine error about a pivot (water,
0 HU, by default): :math:`HU' = s\,(HU - HU_p) + HU_p + o` with scale ``s`` and offset ``o`` (the ACR CT
accreditation phantom tolerates water within +-7 HU, ACR CT Quality Control Manual, 2017; AAPM Report
39, 1993). Severity: the offset ``o`` in HU; ``scale`` and ``pivot_hu`` are fixed.

**Rings** (``ct_ring``). A detector channel whose gain is off by a constant gives, after
back-projection, a ring about the isocentre at the channel's distance from it (Hsieh, *Computed
Tomography*, 2nd ed., 2009, §7.5; Barrett & Keat, RadioGraphics 24:1679, 2004). The added field in
every axial slice is :math:`\sum_j \pm A\, \exp(-(r - r_j)^2 / 2\sigma^2)`: ``n_rings`` rings of peak
amplitude ``A`` (the severity, HU) and random sign, radii drawn from the case's seed by stratified
sampling of ``[min_radius_mm, max_radius_mm]`` (one ring per stratum, kept 10 % of a stratum from its
edges so rings never overlap), FWHM ``ring_width_mm`` but never below one in-plane voxel (a thinner
ring cannot be sampled). Rings are the same in every slice (one detector row calibration for the
whole volume).

**Truncation** (``ct_truncation``). When the patient extends beyond the scan field of view (SFOV, the
circle covered by the fan at every view), nothing outside it is reconstructed and the projections are
truncated: filtered back-projection then over-estimates attenuation near the SFOV edge, a bright rim
fading towards the centre (Ohnesorge et al., Med Phys 27:39, 2000; Hsieh et al., Med Phys 31:2385,
2004). The severity is how far the body reaches beyond the SFOV, ``t`` in mm: the SFOV is the circle
about the isocentre of radius ``R = r_body - t``, with ``r_body`` the largest distance from the
isocentre of a pixel whose mean over the slices exceeds ``body_threshold_hu`` (the z-mean keeps noisy
air out). So every case is truncated by the same depth whatever its habitus, and a phantom smaller
than a real SFOV can still be truncated. Phenomenological model, per axial slice: outside the circle
the image is ``fill_hu`` (default -1000 HU, air, as scanners show it); inside,

.. math:: HU' = HU + A_{rim}\, m\, (1 - d / L)^2 \quad (0 \le d = R - r < L), \qquad HU' = HU \; (d \ge L)

where ``m`` is the mean water-equivalent attenuation ``clamp((HU + 1000) / 1000, 0, 2)`` of the
slice's voxels in the band ``R < r <= R + L`` just outside the SFOV (what the truncated projections
miss). ``A_rim`` (``rim_hu``) and ``L`` (``rim_width_mm``) are fixed. Beyond ``L`` inside the SFOV
nothing changes. This is not a reconstruction of truncated projections: the rim's angular variation
and the global bias of real truncation are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, model_validator
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
from perturbations.blur import FWHM_PER_SIGMA
from perturbations.ct_geometry import case_seeds, inplane_radius_mm
from perturbations.random import uniform_bits

# ---------------------------------------------------------------------------------------------------
# ct_hu_calibration


class HUCalibrationSpec(PerturbationSpec):
    """Fixed settings of ``ct_hu_calibration``.

    Attributes:
        scale: multiplicative error of the HU scale about ``pivot_hu`` (1 = none).
        pivot_hu: the CT number the scale error leaves fixed, HU (0: water; -1000: air).
    """

    scale: float = Field(1.0, gt=0.5, lt=2.0, description="HU scale factor about pivot_hu")
    pivot_hu: float = Field(0.0, ge=-1024.0, le=3071.0, description="CT number kept by the scale [HU]")


@dataclass(frozen=True, slots=True, kw_only=True)
class HUCalibrationParams:
    """One case's calibration error.

    Attributes:
        offset_hu: offset added, HU (the severity).
        scale: scale factor about ``pivot_hu``.
        pivot_hu: pivot of the scale, HU.
    """

    offset_hu: float
    scale: float
    pivot_hu: float


def sample_hu_calibration(
    spec: HUCalibrationSpec, severity: float, rng: np.random.Generator
) -> HUCalibrationParams:
    """Parameters for an offset of ``severity`` HU (deterministic: ``rng`` is not used)."""
    return HUCalibrationParams(offset_hu=float(severity), scale=spec.scale, pivot_hu=spec.pivot_hu)


def apply_hu_calibration(x: Tensor, spacing_mm: Spacing, params: Sequence[HUCalibrationParams]) -> Tensor:
    """``x * s + (o + p (1 - s))`` per case: exactly ``x`` for ``s = 1, o = 0``.

    Shape:
        x: ``(B, C, D, H, W)`` in HU. Same shape, dtype and device out.
    """
    check_batch(x, params, "ct_hu_calibration")
    scale = per_case(params, "scale", x)
    intercept = per_case(params, "offset_hu", x) + per_case(params, "pivot_hu", x) * (1.0 - scale)
    return x * scale + intercept


# ---------------------------------------------------------------------------------------------------
# ct_ring

MAX_RINGS = 64


class RingSpec(PerturbationSpec):
    """Fixed settings of ``ct_ring``.

    Attributes:
        n_rings: number of rings per case.
        min_radius_mm: smallest ring radius, mm.
        max_radius_mm: largest ring radius, mm.
        ring_width_mm: FWHM of a ring's radial profile, mm (at least one in-plane voxel is used).
    """

    n_rings: int = Field(5, ge=1, le=MAX_RINGS, description="rings per case")
    min_radius_mm: float = Field(5.0, ge=0.0, description="smallest ring radius [mm]")
    max_radius_mm: float = Field(180.0, gt=0.0, le=1000.0, description="largest ring radius [mm]")
    ring_width_mm: float = Field(1.0, gt=0.0, le=50.0, description="ring FWHM [mm]")

    @model_validator(mode="after")
    def _radii(self) -> RingSpec:
        if self.max_radius_mm <= self.min_radius_mm:
            raise ValueError(
                f"max_radius_mm must exceed min_radius_mm (got {self.min_radius_mm} and {self.max_radius_mm})"
            )
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class RingParams:
    """One case's ring artefact.

    Attributes:
        amplitude_hu: peak amplitude of every ring, HU (the severity).
        n_rings: number of rings.
        min_radius_mm: smallest ring radius, mm.
        max_radius_mm: largest ring radius, mm.
        ring_width_mm: requested ring FWHM, mm.
        seed: seed of the ring radii and signs.
    """

    amplitude_hu: float
    n_rings: int
    min_radius_mm: float
    max_radius_mm: float
    ring_width_mm: float
    seed: int


def sample_ring(spec: RingSpec, severity: float, rng: np.random.Generator) -> RingParams:
    """Parameters for rings of amplitude ``severity`` HU; radii and signs follow from ``seed``."""
    return RingParams(
        amplitude_hu=float(severity),
        n_rings=spec.n_rings,
        min_radius_mm=spec.min_radius_mm,
        max_radius_mm=spec.max_radius_mm,
        ring_width_mm=spec.ring_width_mm,
        seed=draw_seed(rng),
    )


def ring_field(x: Tensor, spacing_mm: Spacing, params: Sequence[RingParams]) -> Tensor:
    """The added ring field ``(B, 1, 1, H, W)`` in HU (radially symmetric about the isocentre)."""
    n = max(p.n_rings for p in params)
    # Counters 0..63 place the rings, 64..127 give their signs: a case's draws do not depend on the batch.
    u = ((uniform_bits(case_seeds(params, x), 2 * MAX_RINGS) >> 8).to(torch.float64) + 0.5) / 2**24
    j = torch.arange(n, device=x.device, dtype=torch.float64)
    r = inplane_radius_mm(x, spacing_mm).double()  # (H, W)
    lo = per_case(params, "min_radius_mm", x).double().view(-1, 1)
    # Rings outside the image are invisible: the strata cover the radii the slice shows.
    hi = per_case(params, "max_radius_mm", x).double().view(-1, 1).clamp(max=r.max())
    hi = torch.maximum(hi, lo + min(spacing_mm[1:]))
    count = per_case(params, "n_rings", x).double().view(-1, 1)
    radii = lo + (hi - lo) * (j + 0.1 + 0.8 * u[:, :n]) / count  # (B, n), one per stratum
    # Signs +-1; rings beyond a case's own n_rings get 0.
    sign = torch.where(u[:, MAX_RINGS : MAX_RINGS + n] < 0.5, -1.0, 1.0) * (j < count)
    width = per_case(params, "ring_width_mm", x).double().view(-1, 1).clamp(min=min(spacing_mm[1:]))
    sigma = width / FWHM_PER_SIGMA
    rings = torch.exp(-0.5 * ((r - radii[..., None, None]) / sigma[..., None, None]) ** 2)
    field = (sign[..., None, None] * rings).sum(dim=1)  # (B, H, W)
    return (field[:, None, None] * per_case(params, "amplitude_hu", x).double()).to(x.dtype)


def apply_ring(x: Tensor, spacing_mm: Spacing, params: Sequence[RingParams]) -> Tensor:
    """Add each case's concentric rings to every axial slice.

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_ring")
    return x + ring_field(x, spacing_mm, params)


# ---------------------------------------------------------------------------------------------------
# ct_truncation


class TruncationSpec(PerturbationSpec):
    """Fixed settings of ``ct_truncation``.

    Attributes:
        fill_hu: value outside the scan field of view, HU.
        rim_hu: rim brightening for a water-equivalent object all around the SFOV edge, HU.
        rim_width_mm: how far into the SFOV the rim reaches (and the band outside it that is probed), mm.
        body_threshold_hu: the body is where the z-mean of the volume exceeds this, HU.
    """

    fill_hu: float = Field(-1000.0, ge=-3024.0, le=3071.0, description="value outside the SFOV [HU]")
    rim_hu: float = Field(
        150.0, ge=0.0, le=2000.0, description="rim amplitude per water-equivalent unit [HU]"
    )
    rim_width_mm: float = Field(20.0, gt=0.0, le=200.0, description="rim width [mm]")
    body_threshold_hu: float = Field(-500.0, ge=-1000.0, le=1000.0, description="body outline threshold [HU]")


@dataclass(frozen=True, slots=True, kw_only=True)
class TruncationParams:
    """One case's truncation.

    Attributes:
        truncation_mm: how far the body reaches radially beyond the SFOV circle, mm (the severity).
        fill_hu: value outside the SFOV, HU.
        rim_hu: rim amplitude per water-equivalent unit of truncated object, HU.
        rim_width_mm: rim width, mm.
        body_threshold_hu: body outline threshold on the z-mean image, HU.
    """

    truncation_mm: float
    fill_hu: float
    rim_hu: float
    rim_width_mm: float
    body_threshold_hu: float


def sample_truncation(spec: TruncationSpec, severity: float, rng: np.random.Generator) -> TruncationParams:
    """Parameters for a body reaching ``severity`` mm beyond the SFOV (deterministic: ``rng`` unused)."""
    return TruncationParams(
        truncation_mm=float(severity),
        fill_hu=spec.fill_hu,
        rim_hu=spec.rim_hu,
        rim_width_mm=spec.rim_width_mm,
        body_threshold_hu=spec.body_threshold_hu,
    )


def sfov_radius_mm(x: Tensor, spacing_mm: Spacing, params: Sequence[TruncationParams]) -> Tensor:
    """Each case's SFOV radius ``(B, 1, 1, 1, 1)``, mm: body radius minus ``truncation_mm``.

    The body radius is the largest distance from the isocentre of a pixel whose mean over all slices
    and channels exceeds ``body_threshold_hu`` (the z-mean keeps noisy air out of the outline).
    """
    r = inplane_radius_mm(x, spacing_mm)
    body = x.mean(dim=(1, 2), keepdim=True) > per_case(params, "body_threshold_hu", x)  # (B, 1, 1, H, W)
    body_radius = torch.where(body, r, torch.zeros_like(r)).amax(dim=(-2, -1), keepdim=True)
    return body_radius - per_case(params, "truncation_mm", x)


def apply_truncation(x: Tensor, spacing_mm: Spacing, params: Sequence[TruncationParams]) -> Tensor:
    """Blank each case outside its SFOV circle and brighten the rim inside it (see module doc).

    ``truncation_mm = 0`` is the identity.

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_truncation")
    depth = sfov_radius_mm(x, spacing_mm, params) - inplane_radius_mm(x, spacing_mm)  # > 0 inside
    width = per_case(params, "rim_width_mm", x)
    band = ((depth < 0) & (depth >= -width)).to(x.dtype)  # (B, 1, 1, H, W), just outside the SFOV
    water = ((x + 1000.0) / 1000.0).clamp(0.0, 2.0)
    m = (water * band).sum(dim=(-2, -1), keepdim=True) / band.sum(dim=(-2, -1), keepdim=True).clamp(min=1.0)
    fade = (1.0 - depth / width).clamp(0.0, 1.0) ** 2 * (depth >= 0)
    truncated = x + per_case(params, "rim_hu", x) * m * fade
    truncated = torch.where(depth < 0, per_case(params, "fill_hu", x).expand_as(x), truncated)
    return torch.where(per_case(params, "truncation_mm", x) > 0, truncated, x)


PERTURBATIONS.register(
    "ct_hu_calibration",
    Perturbation(
        name="ct_hu_calibration",
        description="CT number calibration error: HU' = scale (HU - pivot) + pivot + offset, offset in HU",
        spec=HUCalibrationSpec,
        params=HUCalibrationParams,
        severity=Severity(name="hu_offset", unit="HU", low=-500.0, high=500.0, nominal=0.0, harsher="higher"),
        ladder=(2.0, 5.0, 10.0, 20.0, 40.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=False),
        sample=sample_hu_calibration,
        apply=apply_hu_calibration,
    ),
)
PERTURBATIONS.register(
    "ct_ring",
    Perturbation(
        name="ct_ring",
        description="CT ring artefacts: concentric rings about the isocentre, peak amplitude in HU",
        spec=RingSpec,
        params=RingParams,
        severity=Severity(
            name="ring_amplitude_hu", unit="HU", low=0.0, high=1000.0, nominal=0.0, harsher="higher"
        ),
        ladder=(5.0, 10.0, 20.0, 40.0, 80.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=True),
        sample=sample_ring,
        apply=apply_ring,
    ),
)
PERTURBATIONS.register(
    "ct_truncation",
    Perturbation(
        name="ct_truncation",
        description="CT truncation: body reaches this many mm beyond the scan FOV; fill outside, bright rim",
        spec=TruncationSpec,
        params=TruncationParams,
        severity=Severity(
            name="truncation_mm", unit="mm", low=0.0, high=500.0, nominal=0.0, harsher="higher"
        ),
        ladder=(10.0, 20.0, 40.0, 60.0, 80.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=False),
        sample=sample_truncation,
        apply=apply_truncation,
    ),
)
