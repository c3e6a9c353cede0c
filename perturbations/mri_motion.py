r"""MRI rigid motion during the acquisition: k-space assembled from differently positioned objects.

Following Shaw et al., "MRI k-space motion artefact augmentation", MIDL 2019 (PMLR 102:427-436) as
implemented by TorchIO's ``Motion`` (Pérez-García et al., CMPB 208:106236, 2021): the subject takes
``T + 1`` poses during the scan (the original and ``T`` rigid transforms); the k-space of each pose is
computed and k-space is assembled from segments along the last array axis (W), split at
``floor(n_W t_m)`` for the motion times ``t_1 < ... < t_T`` in (0, 1). As TorchIO, the segment
containing the k-space centre (``t = 0.5``) comes from the original pose, so the image stays registered
to the ground truth, and the pose that would have filled it fills the first segment instead.

Each transform rotates about the centre of the voxel grid by Euler angles ``(theta_D, theta_H, theta_W)``
about the array axes, composed as SimpleITK's ``Euler3DTransform`` (``R = R_W R_D R_H``), and translates
by ``t`` mm; as there, it maps output points to the points sampled in the input
(``p -> R (p - c) + c + t``), with trilinear interpolation (``torch.nn.functional.grid_sample``) and the
image minimum outside the field of view. Draws from the case's seed: angles ``U(-a_r, a_r)``,
translations ``U(-a_t, a_t)`` per axis, times ``(m + 1) / (T + 1)`` jittered by ``U(-0.3, 0.3) / (T + 1)``
(TorchIO's scheme). The severity is the motion amplitude ``a_t`` in mm; rotations reach
``a_r = a_t / rotation_radius_mm`` rad, i.e. they displace a point at ``rotation_radius_mm`` from the
centre by up to ``a_t`` (the 50 mm head-radius convention of Power et al., NeuroImage 59:2142-2154, 2012).

Since the image is a mixture of poses, no single geometric transform maps the ground truth: the mask is
left in the original pose (the pose of the k-space centre), and the perturbation counts as intensity-only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from perturbations import base
from perturbations.mri_common import (
    SEEDED_EXACT_AT_NOMINAL,
    ReconstructionSpec,
    case_floats,
    case_ints,
    case_seeds,
    centred_index,
    physical_severity,
    register,
    seeded_signed_uniform,
)

TIME_JITTER = 0.3
"""Largest jitter of a motion time, as a fraction of the time step ``1 / (T + 1)`` (TorchIO: 0.3)."""
_DRAWS = 7  # per transform: 3 angles, 3 translations, 1 time


AMPLITUDE = physical_severity(
    ("amplitude_mm", "mm (max translation per axis; rotation up to amplitude / rotation_radius_mm rad)"),
    (0.0, 100.0, 0.0, "higher"),
)


class MRIMotionSpec(ReconstructionSpec):
    """Fixed settings of ``mri_motion``.

    Attributes:
        num_transforms: number of movements ``T`` during the scan (1 to 8; TorchIO's default 2).
        rotation_radius_mm: radius at which a rotation displaces a point by the amplitude; ``None`` for
            translations only.
        output: ``"real"`` (TorchIO) or ``"magnitude"`` image (see :class:`ReconstructionSpec`).
    """

    num_transforms: int = Field(2, ge=1, le=8, description="number of movements during the scan")
    rotation_radius_mm: float | None = Field(50.0, gt=0, description="radius for rotation amplitude [mm]")


@dataclass(frozen=True, slots=True, kw_only=True)
class MRIMotionParams:
    """One case's motion.

    Attributes:
        amplitude_mm: the severity: maximum translation per axis [mm].
        max_translation_mm: half-width of the translation draws [mm] (= ``amplitude_mm``).
        max_rotation_deg: half-width of the rotation draws [degrees].
        num_transforms: number of movements.
        seed: seed of the angles, translations and times.
        output: ``"real"`` or ``"magnitude"``.
    """

    amplitude_mm: float
    max_translation_mm: float
    max_rotation_deg: float
    num_transforms: int
    seed: int
    output: str = "real"


def sample_mri_motion(spec: MRIMotionSpec, severity: float, rng: np.random.Generator) -> MRIMotionParams:
    """Parameters for motion of amplitude ``severity`` mm; draws only the seed from ``rng``."""
    radius = spec.rotation_radius_mm
    return MRIMotionParams(
        amplitude_mm=float(severity),
        max_translation_mm=float(severity),
        max_rotation_deg=math.degrees(severity / radius) if radius else 0.0,
        num_transforms=spec.num_transforms,
        seed=base.draw_seed(rng),
        output=spec.output,
    )


def motion_schedule(params: Sequence[MRIMotionParams], like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The seeded movements of each case, float64 on ``like``'s device.

    Returns:
        ``degrees`` ``(B, T, 3)`` about D, H, W; ``translation_mm`` ``(B, T, 3)`` along D, H, W; ``times``
        ``(B, T)`` in (0, 1), increasing. ``T`` is the batch's largest ``num_transforms``; a case's extra
        transforms are the identity at time 2 (an empty k-space segment).
    """
    count = max(p.num_transforms for p in params)
    u = seeded_signed_uniform(case_seeds(params, like), _DRAWS * count).view(-1, count, _DRAWS)
    n_t = case_ints(params, "num_transforms", like).view(-1, 1)
    index = torch.arange(count, device=like.device).view(1, -1)
    active = (index < n_t).unsqueeze(-1)
    max_rot = case_floats(params, "max_rotation_deg", like).view(-1, 1, 1)
    max_trans = case_floats(params, "max_translation_mm", like).view(-1, 1, 1)
    step = 1.0 / (n_t + 1)
    times = (index + 1) * step + TIME_JITTER * step * u[..., 6]
    return (
        u[..., :3] * max_rot * active,
        u[..., 3:6] * max_trans * active,
        torch.where(index < n_t, times, 2.0),
    )


def rotation_matrices(degrees: Tensor) -> Tensor:
    """``R = R_W(c) R_D(a) R_H(b)`` ``(..., 3, 3)`` from angles ``(a, b, c)`` ``(..., 3)`` in degrees.

    SimpleITK's ``Euler3DTransform`` convention with x, y, z = D, H, W (TorchIO's array axes).
    """
    cos, sin = torch.cos(torch.deg2rad(degrees)).unbind(-1), torch.sin(torch.deg2rad(degrees)).unbind(-1)
    one, zero = torch.ones_like(cos[0]), torch.zeros_like(cos[0])

    def matrix(rows: list[list[Tensor]]) -> Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    r_d = matrix([[one, zero, zero], [zero, cos[0], -sin[0]], [zero, sin[0], cos[0]]])
    r_h = matrix([[cos[1], zero, sin[1]], [zero, one, zero], [-sin[1], zero, cos[1]]])
    r_w = matrix([[cos[2], -sin[2], zero], [sin[2], cos[2], zero], [zero, zero, one]])
    return r_w @ r_d @ r_h


def _sampling_grid(
    rotation: Tensor, translation: Tensor, shape: Sequence[int], spacing: base.Spacing
) -> Tensor:
    """``affine_grid`` thetas ``(N, 3, 4)`` for ``p -> R (p - c) + c + t`` in mm, c the grid centre.

    With ``align_corners=False`` voxel ``i`` sits at normalised ``u = (2 i + 1) / n - 1``, so
    ``(i - (n - 1) / 2) s = (n s / 2) u``; with ``E = diag(n s / 2)`` the map is ``u -> E^-1 R E u + E^-1 t``,
    reordered from (D, H, W) to grid_sample's (x, y, z) = (W, H, D).
    """
    extents = [n * s / 2.0 for n, s in zip(shape, spacing, strict=True)]
    half = torch.tensor(extents, dtype=torch.float64, device=rotation.device)
    linear = rotation * half.view(1, 3) / half.view(3, 1)
    theta = torch.cat([linear, (translation / half).unsqueeze(-1)], dim=-1)  # (N, 3, 4) in D, H, W order
    return torch.cat([theta[:, :, :3].flip(-1, -2), theta[:, :, 3:].flip(-2)], dim=-1)


def grid_terms(theta: Tensor, shape: Sequence[int], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The separable terms of ``F.affine_grid(theta, (N, C, *shape), align_corners=False)``.

    The grid is ``theta @ (u_W, u_H, u_D, 1)`` at the normalised voxel centres ``u = (2 i + 1) / n - 1``:
    each of its coordinates is a ``(D, H)`` plane plus a ``(W,)`` row, computed here in float64.

    Returns:
        ``plane`` ``(N, 3, D, H, 1)`` and ``row`` ``(N, 3, 1, 1, W)`` in ``dtype``, coordinates in
        grid_sample's (x, y, z) order.
    """
    n = theta.shape[0]
    d, h, w = shape
    u_w, u_h, u_d = (
        (torch.arange(size, dtype=torch.float64, device=theta.device) * 2.0 + 1.0) / size - 1.0
        for size in (w, h, d)
    )
    th = theta.view(n, 3, 4, 1, 1)
    plane = th[:, :, 2] * u_d.view(d, 1) + th[:, :, 1] * u_h.view(1, h) + th[:, :, 3]  # (N, 3, D, H)
    row = theta[:, :, 0].unsqueeze(-1) * u_w  # (N, 3, W)
    return plane.to(dtype).unsqueeze(-1), row.to(dtype).view(n, 3, 1, 1, w)


def affine_sampling_grid(
    theta: Tensor,
    shape: Sequence[int],
    dtype: torch.dtype,
    slices: tuple[int, int] | None = None,
    terms: tuple[Tensor, Tensor] | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """``F.affine_grid(theta, (N, C, *shape), align_corners=False)`` from its separable terms.

    The :func:`grid_terms` are added once at full size into one contiguous ``(N, 3, D, H, W)`` block
    (vectorised along W) instead of multiplying a ``(N, D, H, W, 4)`` base grid by ``theta``; the result is
    its ``(N, D, H, W, 3)`` view (grid_sample reads any strides). Equal to ``affine_grid`` up to rounding.

    Args:
        theta: ``(N, 3, 4)`` float64.
        shape: ``(D, H, W)``.
        dtype: dtype of the grid.
        slices: ``(start, stop)``: only the output slices ``start .. stop - 1`` along D (all if ``None``).
        terms: the :func:`grid_terms` of ``theta``, if already computed.
        out: optional ``(N, 3, stop - start, H, W)`` buffer for the grid.

    Returns:
        ``(N, D, H, W, 3)`` grid in grid_sample's (x, y, z) order (``stop - start`` slices if given).
    """
    plane, row = grid_terms(theta, shape, dtype) if terms is None else terms
    if slices is not None:
        plane = plane[:, :, slices[0] : slices[1]]
    return torch.add(plane, row, out=out).permute(0, 2, 3, 4, 1)


def segment_masks(times: Tensor, n: int) -> Tensor:
    """``(B, T, n)`` masks over unshifted W bins: where k-space comes from transform ``m`` (TorchIO's order).

    Segment ``s`` of the centred spectrum is ``[floor(n t_s), floor(n t_(s+1)))`` (``t_0 = 0``,
    ``t_(T+1) = 1``). The segment holding the DC bin keeps the original pose, and the transform that
    would have filled it fills segment 0. (TorchIO picks that segment as the one after the first time
    above 0.5, which is not the DC segment when ``floor(n t) = n // 2`` for a ``t`` just above 0.5.)
    """
    bounds = torch.floor(n * times).clamp(max=n)  # (B, T)
    i = centred_index(n, times.device).view(1, 1, -1)
    segment = (bounds.unsqueeze(-1) <= i).sum(dim=1)  # (B, n): segment of each bin
    centre = (bounds <= n // 2).sum(dim=1, keepdim=True)  # (B, 1): the segment holding the DC bin
    pose = torch.where(segment == centre, 0, torch.where(segment == 0, centre, segment))
    transform = torch.arange(1, times.shape[1] + 1, device=times.device).view(1, -1, 1)
    return pose.unsqueeze(1) == transform


def hermitian_weights(masks: Tensor) -> tuple[Tensor, Tensor]:
    """Weights of the ``rfft`` bins ``k = 0 .. n // 2`` that give the real and imaginary residual.

    For real moved images ``d_m`` (``D_m(-k) = conj(D_m(k))``), the assembled spectrum ``S = sum_m M_m D_m``
    has ``Re IFFT(S) = irfft(sum_m D_m (M_m(k) + M_m(-k)) / 2)`` and
    ``Im IFFT(S) = irfft(sum_m D_m (M_m(k) - M_m(-k)) / 2i)``: both are inverse transforms of Hermitian
    half spectra.

    Args:
        masks: ``(B, T, n)`` bool or float masks over the unshifted bins.

    Returns:
        ``(even, odd)``, ``(B, T, n // 2 + 1)`` float64: ``(M(k) + M(-k)) / 2`` and ``(M(k) - M(-k)) / 2``.
    """
    n = masks.shape[-1]
    m = masks.to(torch.float64)
    k = torch.arange(n // 2 + 1, device=masks.device)
    plus, minus = m[..., k], m[..., (-k) % n]
    return (plus + minus) / 2.0, (plus - minus) / 2.0


CHUNK_POINTS = 1 << 19
"""Output points resampled per step (all pairs together): slabs of whole D slices, so that the grid, the
moved slab and its spectrum stay a few MiB each."""


def _residual_parts(
    x: Tensor,
    spacing_mm: base.Spacing,
    motion: tuple[Tensor, Tensor, Tensor],
    imaginary: bool,
    pairs: Sequence[tuple[int, int]] | None = None,
    plus_x: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Real and (if ``imaginary``) imaginary parts of the residual of :func:`motion_residual`, real tensors.

    The (case, transform) ``pairs`` that may move (all ``B * T`` if ``None``; chosen on the host from the
    params, so that nothing waits for the device) are resampled together by ``grid_sample`` (input
    ``x - min``: TorchIO's default value outside the field of view is the image minimum, and grid_sample
    pads with zeros), slab by slab along D (the W transforms act within each slab); per slab, ``rfft``
    along W of ``moved - (x - min)``, the Hermitian segment weights of :func:`hermitian_weights` (zero
    for a pose that does not move), and one ``irfft`` per part. With ``plus_x`` the real part is
    ``x + residual.real``.
    """
    degrees, translation_mm, times = motion
    b, c, *shape = x.shape
    d, h, w = shape
    if pairs is None:
        pairs = [(i, m) for i in range(b) for m in range(times.shape[1])]
    real = torch.empty_like(x)
    imag = torch.zeros_like(x) if imaginary else None
    if not pairs:
        return (real.copy_(x) if plus_x else real.zero_()), imag
    moving = ((degrees != 0) | (translation_mm != 0)).any(dim=-1)  # (B, T)
    masks = segment_masks(times, w) & moving.unsqueeze(-1)  # a still pose changes nothing
    case, slot = torch.tensor(pairs, dtype=torch.int64, device=x.device).unbind(-1)
    rotation = rotation_matrices(degrees[case, slot])
    theta = _sampling_grid(rotation, translation_mm[case, slot], shape, spacing_mm)
    even, odd = hermitian_weights(masks[case, slot])  # (N, w // 2 + 1) each
    even = even.to(x.dtype)
    complex_dtype = torch.complex128 if x.dtype == torch.float64 else torch.complex64
    odd = odd.to(torch.complex128).mul(-1j).to(complex_dtype)
    source = x - x.amin(dim=(2, 3, 4), keepdim=True)  # (B, C, D, H, W), minus each channel's minimum
    source = source.expand(len(pairs), *source.shape[1:]) if b == 1 else source.index_select(0, case)
    step = max(1, CHUNK_POINTS // (len(pairs) * c * h * w))
    terms = grid_terms(theta, shape, x.dtype)
    buffer = torch.empty((len(pairs), 3, min(step, d), h, w), dtype=x.dtype, device=x.device)
    for start in range(0, d, step):
        stop = min(d, start + step)
        grid = affine_sampling_grid(theta, shape, x.dtype, (start, stop), terms, buffer[:, :, : stop - start])
        moved = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        moved.sub_(source[:, :, start:stop])  # moved pose minus original, both relative to the minimum
        spectra = torch.fft.rfft(moved, dim=-1)  # (N, C, slab, H, w // 2 + 1)
        part = _assemble(spectra, even, case, b, w, in_place=not imaginary)
        if plus_x:
            torch.add(part, x[:, :, start:stop], out=real[:, :, start:stop])
        else:
            real[:, :, start:stop] = part
        if imag is not None:
            # Im IFFT(S) = irfft(sum_m D_m (M(k) - M(-k)) / 2i): the odd weights times -i.
            imag[:, :, start:stop] = _assemble(spectra, odd, case, b, w, in_place=True)
    return real, imag


def _assemble(spectra: Tensor, weights: Tensor, case: Tensor, b: int, w: int, in_place: bool) -> Tensor:
    """``irfft`` along W (length ``w``) of ``sum`` over each case's pairs of ``spectra * weights``.

    Args:
        spectra: ``(N, C, D, H, w // 2 + 1)`` complex, one row per (case, transform) pair.
        weights: ``(N, w // 2 + 1)`` real or complex bin weights.
        case: ``(N,)`` case of each pair.
        b: number of cases.
        w: length of the W axis.
        in_place: whether ``spectra`` may be overwritten.
    """
    shaped = weights.view(-1, 1, 1, 1, weights.shape[-1])
    if b == 1:  # one case: a chain of multiply-adds over its pairs
        total = spectra[:1].mul_(shaped[:1]) if in_place else spectra[:1] * shaped[:1]
        for i in range(1, spectra.shape[0]):
            total.addcmul_(spectra[i : i + 1], shaped[i : i + 1])
        return torch.fft.irfft(total, n=w, dim=-1)
    weighted = spectra.mul_(shaped) if in_place else spectra * shaped
    total = torch.zeros((b, *weighted.shape[1:]), dtype=weighted.dtype, device=weighted.device)
    total.index_add_(0, case, weighted)
    return torch.fft.irfft(total, n=w, dim=-1)


def motion_residual(
    x: Tensor, spacing_mm: base.Spacing, degrees: Tensor, translation_mm: Tensor, times: Tensor
) -> Tensor:
    """The complex residual of motion for explicit movements (the kernel of :func:`apply_mri_motion`).

    All (case, transform) pairs are resampled together by ``grid_sample``, slab by slab along D; k-space
    is combined along W only (the segments do not depend on D and H): the assembled k-space is
    ``FFT(x + r)`` with ``r = IFFT_W(sum_m mask_m FFT_W(moved_m - x))``, computed with real FFTs (see
    :func:`hermitian_weights`). A transform whose angles and translation are all zero contributes
    nothing (exactly).

    Args:
        x: ``(B, C, D, H, W)``.
        spacing_mm: voxel size ``(D, H, W)`` in mm.
        degrees: ``(B, T, 3)`` Euler angles about D, H, W in degrees.
        translation_mm: ``(B, T, 3)`` translations along D, H, W in mm.
        times: ``(B, T)`` increasing motion times in (0, 1); a time >= 1 gives an empty segment.

    Returns:
        ``r``, complex ``(B, C, D, H, W)``.
    """
    real, imag = _residual_parts(x, spacing_mm, (degrees, translation_mm, times), imaginary=True)
    assert imag is not None
    return torch.complex(real, imag)


def apply_mri_motion(x: Tensor, spacing_mm: base.Spacing, params: Sequence[MRIMotionParams]) -> Tensor:
    """Assemble each case's k-space (along W) from its original pose and its seeded movements.

    Amplitude 0 draws only zero movements: the identity. ``output: real`` needs only the real part of
    the residual (one inverse FFT); ``magnitude`` also computes its imaginary part.

    Shape:
        x: ``(B, C, D, H, W)``; ``spacing_mm`` is ``(D, H, W)`` in mm. Same shape, dtype and device out.
    """
    base.check_batch(x, params, "mri_motion")
    magnitude = [p.output == "magnitude" for p in params]
    pairs = [
        (i, m)
        for i, p in enumerate(params)
        if p.max_translation_mm > 0 or p.max_rotation_deg > 0
        for m in range(p.num_transforms)
    ]
    out, imag = _residual_parts(x, spacing_mm, motion_schedule(params, x), any(magnitude), pairs, True)
    if imag is None:
        return out
    flags = torch.tensor(magnitude, device=x.device).view(-1, 1, 1, 1, 1)
    return torch.where(flags, torch.hypot(out, imag), out)


def torchio_motion_arguments(
    params: MRIMotionParams, shape: Sequence[int], spacing_mm: base.Spacing
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ``ScalarImage`` affine and ``torchio.transforms.Motion`` arguments equivalent to ``params``.

    A host-side helper for comparisons, never used by :func:`apply_mri_motion`. The affine
    ``diag(-s_D, -s_H, s_W)`` makes TorchIO's LPS axes the array axes and puts the physical origin at the
    grid centre: TorchIO 1.2.1 sets the rotation centre on its Euler transforms but drops it when it turns
    them into matrices, so its rotations are about the physical origin.

    Returns:
        ``(affine, {"degrees", "translation", "times"})`` for ``T = num_transforms`` movements.
    """
    degrees, translation, times = (
        t[0, : params.num_transforms] for t in motion_schedule([params], torch.empty(0))
    )
    centre_ras = [s * (n - 1) / 2 * sign for s, n, sign in zip(spacing_mm, shape, (1, 1, -1), strict=True)]
    affine = np.diag([-spacing_mm[0], -spacing_mm[1], spacing_mm[2], 1.0])
    affine[:3, 3] = centre_ras
    return affine, {"degrees": degrees.numpy(), "translation": translation.numpy(), "times": times.numpy()}


register(
    ("mri_motion", "MRI rigid motion: k-space segments from moved poses (Shaw et al. 2019, TorchIO Motion)"),
    (MRIMotionSpec, MRIMotionParams, sample_mri_motion, apply_mri_motion),
    (AMPLITUDE, (1.0, 2.0, 4.0, 6.0, 10.0), SEEDED_EXACT_AT_NOMINAL),
)
