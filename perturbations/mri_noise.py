r"""MRI thermal noise in magnitude images: Rician noise at a given signal-to-noise ratio.

An MR image is reconstructed from complex k-space data whose thermal noise is white, zero-mean Gaussian
with the same standard deviation ``sigma`` in the real and imaginary channels; the Fourier transform keeps
it white and Gaussian in image space. The magnitude image of a true signal ``A`` (real, zero phase) is

.. math:: M = \sqrt{(A + n_1)^2 + n_2^2}, \qquad n_1, n_2 \sim \mathcal{N}(0, \sigma^2),

which follows a Rice distribution with mean

.. math:: E[M] = \sigma \sqrt{\pi / 2}\; L_{1/2}\!\left(-\frac{A^2}{2 \sigma^2}\right)

(Gudbjartsson & Patz, "The Rician distribution of noisy MRI data", MRM 34:910-914, 1995). At high SNR
``M`` is nearly Gaussian around ``A``; at low SNR it is biased upward (the noise floor, ``E[M] =
sigma sqrt(pi / 2)`` where ``A = 0``). The severity is the SNR, ``reference_signal / sigma``, with the
reference signal a fixed setting of the spec (never measured from the image, so that replay depends on the
recorded params only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from perturbations import base
from perturbations.mri_common import case_seeds, physical_severity, register
from perturbations.random import standard_normal

SNR = physical_severity(
    ("snr", "reference_signal / noise sigma per complex channel"),
    (0.0, 1e4, 100.0, "lower"),
    low_inclusive=False,
)
RICIAN_PROPS = base.Props(intensity_only=True, identity_at_nominal=False, random=True)


class MRIRicianNoiseSpec(base.PerturbationSpec):
    """Fixed settings of ``mri_rician_noise``.

    Attributes:
        reference_signal: the signal of the reference tissue, in the image's intensity units (> 0); the
            noise is ``sigma = reference_signal / snr``. The default 1.0 suits images normalised so that
            the reference tissue is 1.
    """

    reference_signal: float = Field(1.0, gt=0, description="reference tissue signal [image units]")


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIRicianNoiseParams:
    """One case's Rician noise.

    Attributes:
        snr: signal-to-noise ratio, ``reference_signal / sigma``.
        sigma: standard deviation of the Gaussian noise in each of the real and imaginary channels
            [image units].
        seed: seed of the counter-based noise fields (real and imaginary channels).
    """

    snr: float
    sigma: float
    seed: int


def sample_mri_rician_noise(
    spec: MRIRicianNoiseSpec, severity: float, rng: np.random.Generator
) -> MRIRicianNoiseParams:
    """Parameters for a magnitude image at SNR ``severity`` (> 0); draws only the noise seed from ``rng``."""
    sigma = spec.reference_signal / severity
    return MRIRicianNoiseParams(snr=float(severity), sigma=sigma, seed=base.draw_seed(rng))


def apply_mri_rician_noise(
    x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIRicianNoiseParams]
) -> Tensor:
    """Magnitude of ``(x + sigma n1) + i sigma n2`` for each case, channel and voxel.

    The two standard-normal fields come from the case's seed (shape ``(2, C, D, H, W)``: the first half is
    the real channel, the second the imaginary one), so a case's noise does not depend on its batch.

    Shape:
        x: ``(B, C, D, H, W)`` signal ``A`` (real; a magnitude image is non-negative); returns the same
        shape, dtype and device.
    """
    base.check_batch(x, params, "mri_rician_noise")
    sigma = base.per_case(params, "sigma", x)
    noise = standard_normal(case_seeds(params, x), (2, *x.shape[1:]), dtype=x.dtype, scale=sigma)
    return torch.hypot(noise[:, 0].add_(x), noise[:, 1])


register(
    ("mri_rician_noise", "MRI thermal noise: magnitude of complex Gaussian noise (Rician) at an SNR"),
    (MRIRicianNoiseSpec, MRIRicianNoiseParams, sample_mri_rician_noise, apply_mri_rician_noise),
    (SNR, (40.0, 20.0, 10.0, 5.0, 2.0), RICIAN_PROPS),
)
