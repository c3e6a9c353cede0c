r"""CT respiratory motion during a helical acquisition: slices reconstructed at different breathing phases.

A helical scan covers the volume slice by slice in time: the slice at position ``z_k`` is acquired at
``t_k = k dz / v`` for a table speed ``v`` (mm/s). Breathing moves the thoracic and upper abdominal
organs mostly cranio-caudally; following Lujan et al. (Med Phys 26:715, 1999), the displacement is

.. math:: d(t) = -A \cos^{2n}(\pi t / T - \phi), \quad n = 2,

with ``A`` the peak-to-peak amplitude in mm (diaphragm excursion: about 10-20 mm in quiet breathing;
Seppenwoolde et al., IJROBP 53:822, 2002), ``T`` the breathing period and ``phi`` the phase at the
start of the scan. The model moves each slice's content rigidly: slice ``k`` shows the anatomy at
``z_k + d(t_k)`` (linear interpolation along z; the nearest slice for masks). Where the breathing phase
changes quickly between consecutive slices, structures are stretched, compressed or duplicated across
slices: the classic saw-tooth diaphragm and the "mushroom" artefact of lesions near it. Chest wall and
spine move less than the diaphragm in reality; a single rigid displacement per slice is the documented
simplification. Sources outside the volume take the nearest end slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from perturbations.base import PerturbationSpec, Spacing
from perturbations.resolution import growing, lerp_along, register, take_along

LUJAN_POWER = 4  # cos^(2n) with n = 2 (Lujan et al. 1999)


class RespiratoryMotionSpec(PerturbationSpec):
    """Fixed settings of ``ct_respiratory_motion``.

    Attributes:
        period_s: breathing period, s.
        table_speed_mm_s: table speed of the helical scan, mm/s (slice ``k`` is acquired at ``k dz / v``).
    """

    period_s: float = Field(4.0, gt=0.5, le=20.0, description="breathing period [s]")
    table_speed_mm_s: float = Field(40.0, gt=1.0, le=500.0, description="table speed [mm/s]")


@dataclass(frozen=True, slots=True, kw_only=True)
class RespiratoryMotionParams:
    """One case's breathing.

    Attributes:
        amplitude_mm: peak-to-peak cranio-caudal amplitude, mm.
        period_s: breathing period, s.
        table_speed_mm_s: table speed, mm/s.
        phase_rad: breathing phase at the first slice, in [0, pi).
    """

    amplitude_mm: float
    period_s: float
    table_speed_mm_s: float
    phase_rad: float


def sample_respiratory_motion(
    spec: RespiratoryMotionSpec, severity: float, rng: np.random.Generator
) -> RespiratoryMotionParams:
    """Parameters for a peak-to-peak amplitude ``severity`` mm; the breathing phase is drawn uniformly."""
    return RespiratoryMotionParams(
        amplitude_mm=float(severity),
        period_s=spec.period_s,
        table_speed_mm_s=spec.table_speed_mm_s,
        phase_rad=float(rng.uniform(0.0, math.pi)),
    )


def displacement_mm(
    params: Sequence[RespiratoryMotionParams], depth: int, dz_mm: float, like: Tensor
) -> Tensor:
    """Cranio-caudal displacement ``d(t_k)`` of each slice, ``(B, D)`` float64 mm, on ``like``'s device."""

    def column(field: str) -> Tensor:
        return torch.tensor([getattr(p, field) for p in params], dtype=torch.float64, device=like.device)

    k = torch.arange(depth, dtype=torch.float64, device=like.device).view(1, -1)
    t = k * dz_mm / column("table_speed_mm_s").view(-1, 1)
    angle = math.pi * t / column("period_s").view(-1, 1) - column("phase_rad").view(-1, 1)
    return -column("amplitude_mm").view(-1, 1) * torch.cos(angle) ** LUJAN_POWER


def respiratory_core(
    x: Tensor, spacing_mm: Spacing, params: Sequence[RespiratoryMotionParams], fill: Tensor
) -> Tensor:
    """Resample every slice from its displaced position (linear; nearest for bool masks)."""
    depth, dz = x.shape[2], spacing_mm[0]
    k = torch.arange(depth, dtype=torch.float64, device=x.device)
    source = (k + displacement_mm(params, depth, dz, x) / dz).clamp(0.0, depth - 1.0)
    if x.dtype == torch.bool:
        return take_along(x, 2, torch.round(source).long())
    i0 = torch.floor(source).long()
    i1 = torch.clamp(i0 + 1, max=depth - 1)
    return lerp_along(x, 2, i0, i1, source - i0)


register(
    "ct_respiratory_motion",
    "CT respiratory motion: slices acquired at different breathing phases (Lujan model), amplitude in mm",
    core=respiratory_core,
    spec=RespiratoryMotionSpec,
    params=RespiratoryMotionParams,
    severity=growing("breathing_amplitude_mm", "mm peak to peak", 50.0),
    ladder=(2.0, 5.0, 10.0, 15.0, 20.0),
    sample=sample_respiratory_motion,
)
