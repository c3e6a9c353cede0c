r"""CT rigid patient motion during the gantry rotation: views of one slice see different poses.

The views of an axial slice are acquired one after the other; if the patient moves during the
acquisition, the sinogram is inconsistent and filtered back-projection (FBP) shows doubled edges and
streaks (Hsieh, *Computed Tomography*, 2nd ed., 2009, §7.3; Kalender, *Computed Tomography*, 3rd ed.,
2011, §5.6). Model, per axial slice, on the parallel-beam geometry of :mod:`perturbations.ct_beam`
(``A`` views over 180 degrees, view ``a`` acquired at the fraction ``t_a = (a + 1/2) / A`` of the
acquisition): the patient moves rigidly from the pose at the start of the scan to the pose
``(T, alpha)`` (translation ``T = (T_x, T_y, T_z)`` mm, rotation ``alpha`` about the isocentre, from +x
towards +y), with weight ``f(t)``:

* ``step``: ``f = 1`` for ``t >= t0`` (a sudden movement, e.g. a cough or a jerk), else 0;
* ``drift``: ``f`` rises linearly from 0 at ``t0`` to 1 at the end of the acquisition.

For parallel rays a rigid in-plane motion only relabels the rays (exact, no image resampling): with
``n(phi) = (cos phi, sin phi)``, the object moved by ``R_alpha`` then ``T`` has the projection

.. math:: p'(\phi, s) = p(\phi - \alpha f, \; s - f\, n(\phi) \cdot T),

so :func:`perturbations.ct_beam.project` traces the static slice along shifted, rotated rays, one set per
case. A z translation makes view ``a`` of the slice at ``z`` see the anatomy that was at ``z - f T_z``: the
moved sinograms are interpolated linearly between slices (exact for the linear z interpolation of the
object; the end slices are repeated beyond the volume). The output is ``x + 1000 [FBP(p') - FBP(p)]``
with ``p`` the static sinogram of ``1 + HU/1000`` (air = 0, so the edge of the field of view does not
move): a case without
motion is returned exactly, views without motion contribute exactly nothing, and motion before the scan
(``t0 = 0``, step) gives the image moved by ``T``, up to the band limit of FBP. Only the views where some
case moves are projected. The ground-truth mask is not changed: it is the anatomy at the start of the
scan (TorchIO's ``RandomMotion`` makes the same choice). Limitations: parallel-beam (rebinned) data over
180 degrees, one pose per view, no fan-beam or helical interpolation, no deformation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
)
from perturbations.ct_beam import _geometry, backproject, project, ramp_filter
from perturbations.ct_geometry import inplane_coordinates_mm
from perturbations.resolution import lerp_along


class RigidMotionSpec(PerturbationSpec):
    """Fixed settings of ``ct_rigid_motion``.

    Attributes:
        profile: ``step`` (sudden move at ``t0``) or ``drift`` (linear from ``t0`` to the end).
        start_min: smallest motion onset ``t0``, fraction of the acquisition.
        start_max: largest motion onset ``t0``, fraction of the acquisition.
        rotation_deg_per_mm: in-plane rotation accompanying the translation, degrees per mm of amplitude.
        axes: ``xy`` (translation in the axial plane) or ``xyz`` (direction uniform on the sphere).
    """

    profile: Literal["step", "drift"] = "step"
    start_min: float = Field(0.2, ge=0.0, le=1.0)
    start_max: float = Field(0.8, ge=0.0, le=1.0)
    rotation_deg_per_mm: float = Field(0.0, ge=0.0, le=10.0, description="rotation [deg/mm]")
    axes: Literal["xy", "xyz"] = "xy"

    @model_validator(mode="after")
    def _ordered(self) -> RigidMotionSpec:
        if self.start_min > self.start_max:
            raise ValueError(f"start_min ({self.start_min}) must not exceed start_max ({self.start_max})")
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class RigidMotionParams:
    """One case's motion (the pose reached at full weight ``f = 1``).

    Attributes:
        amplitude_mm: translation magnitude, mm (the severity).
        tx_mm: translation along x (W), mm.
        ty_mm: translation along y (H), mm.
        tz_mm: translation along z (D), mm.
        rotation_deg: in-plane rotation about the isocentre, degrees (from +x towards +y).
        start_fraction: motion onset ``t0``, fraction of the acquisition.
        profile: ``step`` or ``drift``.
    """

    amplitude_mm: float
    tx_mm: float
    ty_mm: float
    tz_mm: float
    rotation_deg: float
    start_fraction: float
    profile: str


def sample_rigid_motion(
    spec: RigidMotionSpec, severity: float, rng: np.random.Generator
) -> RigidMotionParams:
    """A translation of ``severity`` mm in a random direction, onset uniform in ``[start_min, start_max]``."""
    azimuth, height, sign, start = rng.uniform(size=4)
    cz = 2.0 * height - 1.0 if spec.axes == "xyz" else 0.0
    radial = math.sqrt(1.0 - cz * cz)
    angle = 2.0 * math.pi * azimuth
    return RigidMotionParams(
        amplitude_mm=float(severity),
        tx_mm=float(severity * radial * math.cos(angle)),
        ty_mm=float(severity * radial * math.sin(angle)),
        tz_mm=float(severity * cz),
        rotation_deg=float(severity * spec.rotation_deg_per_mm * (1.0 if sign < 0.5 else -1.0)),
        start_fraction=float(spec.start_min + (spec.start_max - spec.start_min) * start),
        profile=spec.profile,
    )


def _moves(p: RigidMotionParams) -> bool:
    return any(v != 0.0 for v in (p.tx_mm, p.ty_mm, p.tz_mm, p.rotation_deg))


def motion_weights(params: Sequence[RigidMotionParams], n_views: int) -> np.ndarray:
    """Weight ``f(t_a)`` of the full pose at every view, ``(B, A)`` in [0, 1] (host: from params only)."""
    t = (np.arange(n_views) + 0.5) / n_views
    rows = []
    for p in params:
        t0 = p.start_fraction
        if p.profile == "step":
            f = (t >= t0).astype(np.float64)
        else:
            f = np.clip((t - t0) / max(1.0 - t0, 1e-12), 0.0, 1.0)
        rows.append(f if _moves(p) else np.zeros(n_views))
    return np.stack(rows)


def shift_slices(sinograms: Tensor, offset: Tensor) -> Tensor:
    """Sinograms ``(B, C, D, A, L)`` read at slice ``k + offset`` (``offset`` ``(B, A)``; linear, clamped)."""
    b, c, d, a, n = sinograms.shape
    k = torch.arange(d, dtype=torch.float64, device=offset.device)
    source = (k + offset.reshape(-1, 1)).clamp(0, d - 1)
    i0 = torch.floor(source).long()
    i1 = torch.clamp(i0 + 1, max=d - 1)
    per_view = sinograms.permute(0, 3, 1, 2, 4).reshape(b * a, c, d, n)  # one row per (case, view)
    moved = lerp_along(per_view, 2, i0, i1, source - i0)
    return moved.view(b, a, c, d, n).permute(0, 2, 3, 1, 4)


def apply_rigid_motion(x: Tensor, spacing_mm: Spacing, params: Sequence[RigidMotionParams]) -> Tensor:
    """Add ``1000 [FBP(p') - FBP(p)]`` of the motion-corrupted sinogram ``p'`` to each case (module doc).

    Shape:
        x: ``(B, C, D, H, W)`` in HU; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype, device.
    """
    check_batch(x, params, "ct_rigid_motion")
    b, c, d, h, w = x.shape
    g = _geometry(h, w, spacing_mm, x)
    n_views = len(g.angles)
    weights = motion_weights(params, n_views)
    moving = np.flatnonzero(weights.max(axis=0) > 0)  # views where some case moves
    if moving.size == 0:
        return x
    dev = x.device
    sub = dataclasses.replace(g, angles=g.angles[torch.as_tensor(moving, device=dev)])
    f = torch.as_tensor(weights[:, moving], dtype=torch.float64, device=dev)  # (B, Am)

    def column(field: str) -> Tensor:
        return torch.tensor([getattr(p, field) for p in params], dtype=torch.float64, device=dev).view(-1, 1)

    phi = sub.angles.to(torch.float64).view(1, -1)
    angles = phi - f * torch.deg2rad(column("rotation_deg"))
    shift = f * (column("tx_mm") * torch.cos(phi) + column("ty_mm") * torch.sin(phi))
    mu = 1.0 + x.reshape(b * c * d, h, w) / 1000.0
    static = project(mu, sub)
    moved = project(mu, sub, angles.to(x.dtype), shift.to(x.dtype))
    if any(p.tz_mm != 0.0 for p in params):
        shape = (b, c, d, *moved.shape[1:])
        moved = shift_slices(moved.view(shape), -f * column("tz_mm") / spacing_mm[0]).reshape(moved.shape)
    still = (f == 0).repeat_interleave(c * d, dim=0).unsqueeze(-1)  # (B C D, Am, 1)
    diff = torch.where(still, torch.zeros_like(moved), moved - static)
    y_mm, x_mm = inplane_coordinates_mm(x, spacing_mm)
    error = backproject(ramp_filter(diff, sub.pitch_mm), sub, y_mm, x_mm)
    return x + (error * (1000.0 * len(moving) / n_views)).view_as(x)


PERTURBATIONS.register(
    "ct_rigid_motion",
    Perturbation(
        name="ct_rigid_motion",
        description="CT rigid patient motion during the rotation: translation amplitude (mm), step or drift, "
        "views see different poses, FBP streaks and doubled edges",
        spec=RigidMotionSpec,
        params=RigidMotionParams,
        severity=Severity(
            name="motion_amplitude_mm", unit="mm", low=0.0, high=100.0, nominal=0.0, harsher="higher"
        ),
        ladder=(1.0, 2.0, 4.0, 6.0, 10.0),
        props=Props(intensity_only=True, identity_at_nominal=True, random=True),
        sample=sample_rigid_motion,
        apply=apply_rigid_motion,
    ),
)
