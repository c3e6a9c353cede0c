r"""MRI k-space corruption artefacts: ghosting and spikes (herringbone), following TorchIO's models.

Both follow Pérez-García et al., "TorchIO", CMPB 208:106236, 2021 (``torchio.Ghosting``,
``torchio.Spike``), with positions named by their index in the centred spectrum (see
:mod:`perturbations.mri_common`).

**Ghosting.** Periodic signal modulation during the acquisition (respiration, cardiac pulsation, flow)
modulates the phase-encode lines of k-space periodically. As TorchIO, every ``num_ghosts``-th plane
``i = 0, n_g, 2 n_g, ...`` of the centred spectrum along ``axis`` is multiplied by ``1 - intensity`` and
the central planes are then restored (``restore``: the fraction of the axis restored around the centre,
``round(restore * n)`` planes, rounded down to even; ``None`` restores the centre plane only). The comb
of modified planes makes ``num_ghosts`` replicas of the object spaced by ``FOV / num_ghosts``, each of
amplitude about ``intensity / num_ghosts`` of the object.

**Spike.** A corrupted k-space sample (electrostatic discharge, RF interference) adds a single bright
point to k-space, i.e. a plane wave of stripes (herringbone) to the image. As TorchIO, each spike adds
``intensity * max|K|`` (a real number) to the sample at position ``floor(u * n)`` per axis with
``u ~ U[0, 1)``, so the image receives ``(intensity * max|K| / N) cos(2 pi k . r / n)``; for a
non-negative image ``max|K|`` is the DC term ``N * mean``, and the stripe amplitude is ``intensity``
times the mean image intensity. Unlike TorchIO, which recomputes ``max|K|`` after each spike (so that
spikes brighter than the peak compound), every spike is relative to the original peak; the two agree for
one spike, or when no spike exceeds the peak.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from perturbations import base
from perturbations.mri_common import (
    EXACT_AT_NOMINAL,
    SEEDED_EXACT_AT_NOMINAL,
    UNIFORM_BITS,
    ReconstructionSpec,
    case_ints,
    case_seeds,
    line_filter,
    physical_severity,
    reconstruct,
    register,
    seeded_integers,
)


class MRIGhostingSpec(ReconstructionSpec):
    """Fixed settings of ``mri_ghosting`` (TorchIO ``Ghosting``'s ``num_ghosts``, ``axis``, ``restore``).

    Attributes:
        num_ghosts: period ``n_g`` of the modulated planes, i.e. the number of ghosts (1 to 64).
        axis: phase-encode axis, 0, 1 or 2 (D, H, W); default 1.
        restore: fraction of the axis restored around the k-space centre, or ``None`` for the centre
            plane only (TorchIO ``RandomGhosting``'s default 0.02).
        output: ``"real"`` (TorchIO) or ``"magnitude"`` image (see :class:`ReconstructionSpec`).
    """

    num_ghosts: int = Field(4, ge=1, le=64, description="number of ghosts (period of modulated planes)")
    axis: int = Field(1, ge=0, le=2, description="phase-encode axis (0, 1, 2 = D, H, W)")
    restore: float | None = Field(0.02, ge=0.0, le=1.0, description="fraction of k-space centre restored")


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIGhostingParams:
    """One case's ghosting (TorchIO ``Ghosting`` arguments).

    Attributes:
        intensity: fraction of the signal removed from each modulated plane (``1 - intensity`` is kept).
        num_ghosts: period of the modulated planes.
        axis: phase-encode axis (0, 1, 2 = D, H, W).
        restore: restored central fraction, or ``None`` for the centre plane.
        output: ``"real"`` or ``"magnitude"``.
    """

    intensity: float
    num_ghosts: int
    axis: int
    restore: float | None
    output: str = "real"


GHOST_INTENSITY = physical_severity(
    ("ghost_intensity", "fraction of the signal removed from every num_ghosts-th k-space plane"),
    (0.0, 1.0, 0.0, "higher"),
)


def sample_mri_ghosting(
    spec: MRIGhostingSpec, severity: float, rng: np.random.Generator
) -> MRIGhostingParams:
    """Parameters for ghosting of intensity ``severity`` (deterministic: ``rng`` is not used)."""
    return MRIGhostingParams(intensity=float(severity), **spec.model_dump())


def restored_planes(restore: float | None, n: int) -> tuple[int, int]:
    """``[start, stop)`` of the restored planes in the centred spectrum (TorchIO's slice; half-even round)."""
    mid = n // 2
    if restore is None:
        return mid, mid + 1
    half = round(restore * n) // 2
    return mid - half, mid + half


def _ghosting_delta(params: Sequence[MRIGhostingParams], like: Tensor) -> Callable[[int, int], Tensor]:
    """``delta(axis, n) -> (B, n)``: ``-intensity`` on the modulated, unrestored planes, else 0."""

    def delta(axis: int, n: int) -> Tensor:
        i = torch.arange(n, device=like.device).view(1, -1)
        bounds = torch.tensor([restored_planes(p.restore, n) for p in params], device=like.device)
        restored = (i >= bounds[:, :1]) & (i < bounds[:, 1:])
        modulated = (i % case_ints(params, "num_ghosts", like).view(-1, 1) == 0) & ~restored
        return -base.per_case(params, "intensity", like).view(-1, 1) * modulated

    return delta


def apply_mri_ghosting(x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIGhostingParams]) -> Tensor:
    """Scale every ``num_ghosts``-th k-space plane along each case's axis by ``1 - intensity``.

    One 1-D FFT along the phase-encode axis (the mask does not vary along the others); intensity 0 is
    the identity.

    Shape:
        x: ``(B, C, D, H, W)``; returns the same shape, dtype and device.
    """
    base.check_batch(x, params, "mri_ghosting")
    return reconstruct(x, line_filter(x, [p.axis for p in params], _ghosting_delta(params, x)), params)


register(
    ("mri_ghosting", "MRI ghosting: every n-th phase-encode plane of k-space attenuated (TorchIO Ghosting)"),
    (MRIGhostingSpec, MRIGhostingParams, sample_mri_ghosting, apply_mri_ghosting),
    (GHOST_INTENSITY, (0.1, 0.25, 0.5, 0.75, 1.0), EXACT_AT_NOMINAL),
)


class MRISpikeSpec(ReconstructionSpec):
    """Fixed settings of ``mri_spike``.

    Attributes:
        num_spikes: number of corrupted k-space samples (1 to 64), at seeded uniform positions.
        output: ``"real"`` (TorchIO) or ``"magnitude"`` image (see :class:`ReconstructionSpec`).
    """

    num_spikes: int = Field(1, ge=1, le=64, description="number of k-space spikes")


@dataclass(frozen=True, slots=True, kw_only=True)
class MRISpikeParams:
    """One case's spikes.

    Attributes:
        intensity: spike magnitude as a fraction of the peak k-space magnitude ``max|K|``.
        num_spikes: number of spikes.
        seed: seed of the spike positions.
        output: ``"real"`` or ``"magnitude"``.
    """

    intensity: float
    num_spikes: int
    seed: int
    output: str = "real"


SPIKE_INTENSITY = physical_severity(
    ("spike_intensity", "spike magnitude / peak k-space magnitude (stripe amplitude / mean intensity)"),
    (0.0, 10.0, 0.0, "higher"),
)


def sample_mri_spike(spec: MRISpikeSpec, severity: float, rng: np.random.Generator) -> MRISpikeParams:
    """Parameters for spikes of intensity ``severity``; draws only the position seed from ``rng``."""
    return MRISpikeParams(intensity=float(severity), seed=base.draw_seed(rng), **spec.model_dump())


def spike_positions(params: MRISpikeParams) -> np.ndarray:
    """A case's spike positions ``(num_spikes, 3)`` in [0, 1), TorchIO ``Spike``'s ``spikes_positions``."""
    draws = seeded_integers(torch.tensor([params.seed]), 3 * params.num_spikes)
    return draws.view(-1, 3).to(torch.float64).numpy() * 2.0**-UNIFORM_BITS


def _plane_waves(seeds: Tensor, count: int, shape: Sequence[int], dtype: torch.dtype) -> list[Tensor]:
    """Per axis, ``exp(2 pi i k r / n)`` ``(B, count, n)`` for each spike's signed frequency ``k``.

    The index is ``floor(u n) = (m n) >> 24`` in integers, exactly TorchIO's ``floor(position * n)``;
    the phase ``(k r) mod n`` is exact too.
    """
    draws = seeded_integers(seeds, 3 * count).view(-1, count, 3)
    waves = []
    for axis, n in enumerate(shape):
        k = ((draws[..., axis] * n) >> UNIFORM_BITS) - n // 2
        r = torch.arange(n, device=seeds.device)
        angle = ((k.unsqueeze(-1) * r) % n).to(dtype) * (2 * math.pi / n)
        waves.append(torch.polar(torch.ones_like(angle), angle))
    return waves


def apply_mri_spike(x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRISpikeParams]) -> Tensor:
    """Add each case's k-space spikes: the image gains their plane waves ``(A / N) exp(2 pi i k . r / n)``.

    ``A = intensity * max|K|`` per case and channel (from a real FFT); the waves are summed analytically
    (one outer product per spike) instead of a second FFT, so intensity 0 is the exact identity.

    Shape:
        x: ``(B, C, D, H, W)``; returns the same shape, dtype and device.
    """
    base.check_batch(x, params, "mri_spike")
    spatial = x.shape[2:]
    peak = torch.fft.rfftn(x, dim=(2, 3, 4)).abs().amax(dim=(2, 3, 4))  # (B, C)
    count = max(p.num_spikes for p in params)
    active = torch.arange(count, device=x.device) < case_ints(params, "num_spikes", x).view(-1, 1)
    scale = base.per_case(params, "intensity", x).view(-1, 1, 1) / math.prod(spatial)
    amplitude = scale * peak.unsqueeze(-1) * active.unsqueeze(1)  # (B, C, count)
    waves = _plane_waves(case_seeds(params, x), count, spatial, x.dtype)
    residual = torch.einsum("bcs,bsd,bsh,bsw->bcdhw", amplitude.to(waves[0].dtype), *waves)
    return reconstruct(x, residual, params)


register(
    ("mri_spike", "MRI spike (herringbone): bright k-space samples, relative to the k-space peak"),
    (MRISpikeSpec, MRISpikeParams, sample_mri_spike, apply_mri_spike),
    (SPIKE_INTENSITY, (0.05, 0.1, 0.2, 0.5, 1.0), SEEDED_EXACT_AT_NOMINAL),
)
