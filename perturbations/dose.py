r"""CT dose reduction: quantum noise whose standard deviation scales as dose^-1/2.

In CT, image noise is dominated by photon (quantum) noise; for a fixed reconstruction its standard
deviation scales with the inverse square root of the tube current-time product, i.e. of the dose
(Hanson, "Noise and contrast discrimination in CT", Radiology of the Skull and Brain, 1981;
Kalender, *Computed Tomography*, 3rd ed., 2011, §5.6). With ``sigma_ref`` the noise at the
reference dose, a scan at dose fraction ``d`` has total noise

.. math:: \sigma(d) = \sigma_{ref} / \sqrt{d}

and since independent noise adds in variance, an image that already carries ``sigma_0`` receives

.. math:: \sigma_{add} = \sqrt{\max(\sigma(d)^2 - \sigma_0^2, 0)}.

The noise is white (uncorrelated between voxels) here; kernel-shaped noise power spectra belong to
the reconstruction-kernel perturbation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    draw_seed,
    per_case,
)
from perturbations.random import add_normal


class CTDoseSpec(PerturbationSpec):
    """Fixed settings of ``ct_dose``.

    Attributes:
        reference_noise_hu: noise standard deviation at dose fraction 1.0, in HU (> 0).
        existing_noise_hu: noise already in the input image, in HU (0 for a noiseless phantom).
    """

    reference_noise_hu: float = Field(20.0, gt=0, description="noise std at full dose [HU]")
    existing_noise_hu: float = Field(0.0, ge=0, description="noise std already in the image [HU]")


@dataclass(frozen=True, slots=True, kw_only=True)
class CTDoseParams:
    """One case's dose reduction.

    Attributes:
        dose_fraction: dose relative to the reference dose (1.0 = reference).
        total_noise_hu: noise std of the simulated scan, ``reference_noise_hu / sqrt(dose_fraction)`` [HU].
        added_noise_hu: std of the noise actually added to the input [HU].
        seed: seed of the counter-based noise field.
    """

    dose_fraction: float
    total_noise_hu: float
    added_noise_hu: float
    seed: int


def sample_ct_dose(spec: CTDoseSpec, severity: float, rng: np.random.Generator) -> CTDoseParams:
    """Parameters for a scan at dose fraction ``severity`` (> 0)."""
    total = spec.reference_noise_hu / math.sqrt(severity)
    added = math.sqrt(max(total**2 - spec.existing_noise_hu**2, 0.0))
    return CTDoseParams(
        dose_fraction=float(severity), total_noise_hu=total, added_noise_hu=added, seed=draw_seed(rng)
    )


def apply_ct_dose(x: Tensor, spacing_mm: Spacing, params: Sequence[CTDoseParams]) -> Tensor:
    """Add white Gaussian noise of std ``added_noise_hu`` to each case of ``x``.

    Shape:
        x: ``(B, C, D, H, W)`` in HU; returns the same shape, dtype and device.
    """
    check_batch(x, params, "ct_dose")
    seeds = torch.tensor([p.seed for p in params], dtype=torch.int64, device=x.device)
    return add_normal(x, seeds, per_case(params, "added_noise_hu", x))


PERTURBATIONS.register(
    "ct_dose",
    Perturbation(
        name="ct_dose",
        description="CT dose reduction: white quantum noise with std = reference_noise_hu / sqrt(dose)",
        spec=CTDoseSpec,
        params=CTDoseParams,
        severity=Severity(
            name="dose_fraction",
            unit="fraction of reference dose",
            low=0.0,
            low_inclusive=False,
            high=10.0,
            nominal=1.0,
            harsher="lower",
        ),
        ladder=(0.5, 0.25, 0.1, 0.05, 0.02),
        props=Props(intensity_only=True, identity_at_nominal=False, random=True),
        sample=sample_ct_dose,
        apply=apply_ct_dose,
    ),
)
