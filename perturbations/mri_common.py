"""Helpers shared by the MRI perturbations: seeded uniform draws, k-space index maps and FFT filters.

Conventions of every ``mri_*`` module:

* **k-space** is the discrete Fourier transform over the spatial axes of a ``(B, C, D, H, W)`` batch,
  held in torch's natural (unshifted) bin order. As in TorchIO, a position in k-space is named by its
  index ``i`` in the *centred* (``fftshift``-ed) spectrum: unshifted bin ``j`` of an axis of length
  ``n`` sits at ``i = (j + n // 2) mod n``, and its signed frequency is ``k = i - n // 2`` (DC at 0;
  for even ``n`` the Nyquist bin is ``k = -n / 2``).
* A k-space operation is computed as a **residual**, ``z = x + IFFT(delta * FFT(x))`` with
  ``delta = multiplier - 1``: where ``delta`` is zero the input passes through bit for bit (every MRI
  perturbation is the exact identity where its severity says so), and a mask that depends on one axis
  only needs a 1-D FFT along that axis, the transforms along the other axes cancelling.
* The reconstruction ``x + residual`` is complex where the k-space change is not conjugate-symmetric;
  :func:`reconstruct` returns its real part (TorchIO's convention, the default) or its magnitude (what
  a scanner displays) as the spec's ``output`` says.
* Randomness (spike positions, motion draws, bias coefficients, sampling patterns) comes only from the
  case's integer ``seed`` through :func:`perturbations.random.uniform_bits`, as 24-bit uniforms
  ``m / 2**24``: exact integers on every device, so a case's draws depend on nothing but its seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from perturbations.base import PERTURBATIONS, Perturbation, PerturbationSpec, Props, Severity
from perturbations.random import uniform_bits

UNIFORM_BITS = 24
"""Resolution of the seeded uniforms: ``u = m / 2**24`` with integer ``m``, exact in float32 and float64."""


def case_seeds(params: Sequence[Any], x: Tensor) -> Tensor:
    """The per-case ``seed`` fields as an int64 tensor ``(B,)`` on ``x``'s device."""
    return torch.tensor([p.seed for p in params], dtype=torch.int64, device=x.device)


def case_ints(params: Sequence[Any], field: str, x: Tensor) -> Tensor:
    """One integer field of the per-case params as an int64 tensor ``(B,)`` on ``x``'s device."""
    return torch.tensor([int(getattr(p, field)) for p in params], dtype=torch.int64, device=x.device)


def case_floats(params: Sequence[Any], field: str, x: Tensor) -> Tensor:
    """One float field of the per-case params as a float64 tensor ``(B,)`` on ``x``'s device."""
    return torch.tensor([float(getattr(p, field)) for p in params], dtype=torch.float64, device=x.device)


def seeded_integers(seeds: Tensor, n: int) -> Tensor:
    """``(B, n)`` int64 integers ``m`` uniform in ``[0, 2**24)``, one independent stream per seed."""
    return uniform_bits(seeds, n) >> (32 - UNIFORM_BITS)


def seeded_uniform(seeds: Tensor, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(B, n)`` uniforms ``u = m / 2**24`` in ``[0, 1)`` from seeds ``(B,)``; exact in any float dtype."""
    return seeded_integers(seeds, n).to(dtype) * 2.0**-UNIFORM_BITS


def seeded_signed_uniform(seeds: Tensor, n: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(B, n)`` uniforms ``2 u - 1`` in ``[-1, 1)``: TorchIO's ``U(-a, a)`` draws once scaled by ``a``."""
    return 2.0 * seeded_uniform(seeds, n, dtype) - 1.0


def centred_index(n: int, device: torch.device) -> Tensor:
    """``(n,)`` int64: the index in the centred spectrum of each unshifted FFT bin, ``(j + n // 2) mod n``."""
    return (torch.arange(n, device=device) + n // 2) % n


def centred_frequency(n: int, device: torch.device) -> Tensor:
    """``(n,)`` int64: the signed frequency ``k = i - n // 2`` of each centred index ``i``."""
    return torch.arange(n, device=device) - n // 2


def unshifted_abs_frequency(n: int, bins: int, device: torch.device) -> Tensor:
    """``(bins,)`` int64: ``|k| = min(j, n - j)`` of the first ``bins`` unshifted bins ``j`` of ``n``.

    ``bins`` is ``n``, or ``n // 2 + 1`` for the last axis of a real FFT.
    """
    j = torch.arange(bins, device=device)
    return torch.minimum(j, n - j)


def along(values: Tensor, dim: int, ndim: int = 5) -> Tensor:
    """View per-case vectors ``(B, n)`` as ``(B, 1, .., n, .., 1)``, ``n`` at ``dim`` of ``ndim`` dims."""
    shape = [1] * ndim
    shape[0], shape[dim] = values.shape[0], values.shape[1]
    return values.reshape(shape)


def kspace_filter(y: Tensor, multiplier: Tensor, dims: Sequence[int]) -> Tensor:
    """``IFFT(multiplier * FFT(y))`` over ``dims``: a complex tensor.

    Args:
        y: real tensor.
        multiplier: real or complex tensor broadcastable to ``y``, in unshifted bin order along ``dims``.
        dims: the axes transformed (the others are untouched, so a multiplier that varies along one
            axis only needs that axis here).
    """
    spectrum = torch.fft.fftn(y, dim=tuple(dims))
    return torch.fft.ifftn(spectrum * multiplier, dim=tuple(dims))


def line_filter(x: Tensor, axes: Sequence[int], delta: Callable[[int, int], Tensor]) -> Tensor:
    """The complex residual ``IFFT_a(delta * FFT_a(x))`` of each case along its own k-space axis ``a``.

    Args:
        x: batch ``(B, C, D, H, W)``.
        axes: per case, the spatial axis (0, 1, 2 = D, H, W) its mask varies along.
        delta: ``delta(axis, n) -> (B, n)``, the multiplier minus one over the centred index ``i`` of an
            axis of length ``n`` (rows of cases filtered along another axis are ignored).

    Returns:
        The residual to add to ``x`` (see :func:`reconstruct`); one 1-D FFT pass per distinct axis in
        ``axes`` (usually one), and a case's residual is exactly zero along the other axes.
    """
    case_axis = torch.tensor(list(axes), device=x.device).view(-1, 1)
    residual = None
    for axis in sorted(set(axes)):
        n = x.shape[2 + axis]
        rows = delta(axis, n) * (case_axis == axis)
        term = kspace_filter(x, along(rows[:, centred_index(n, x.device)], 2 + axis), dims=(2 + axis,))
        residual = term if residual is None else residual + term
    return residual


Output = Literal["real", "magnitude"]


class ReconstructionSpec(PerturbationSpec):
    """Base of the specs of the k-space perturbations whose reconstruction may be complex.

    Attributes:
        output: ``"real"``: the real part of the reconstruction (TorchIO's convention; keeps signed
            images signed); ``"magnitude"``: its modulus, the magnitude image a scanner displays (keeps the
            k-space energy; a negative input becomes positive).
    """

    output: Output = Field("real", description="image returned: real part (TorchIO) or magnitude")


def reconstruct(x: Tensor, residual: Tensor, params: Sequence[Any]) -> Tensor:
    """The image ``z = x + residual`` (complex) as each case's ``output``, ``Re z`` or ``|z|``, in x's dtype.

    Where the residual is zero the real part is ``x`` bit for bit (and so is the magnitude of ``x >= 0``).
    """
    if all(p.output == "real" for p in params):
        return x + residual.real.to(x.dtype)
    z = x + residual
    magnitude = torch.tensor([p.output == "magnitude" for p in params], device=x.device).view(-1, 1, 1, 1, 1)
    return torch.where(magnitude, z.abs(), z.real).to(x.dtype)


EXACT_AT_NOMINAL = Props(intensity_only=True, identity_at_nominal=True, random=False)
"""Props of a deterministic MRI perturbation that is the exact identity at its nominal severity."""
SEEDED_EXACT_AT_NOMINAL = Props(intensity_only=True, identity_at_nominal=True, random=True)
"""Props of a seeded MRI perturbation that is the exact identity at its nominal severity."""


def physical_severity(
    label: tuple[str, str], scale: tuple[float, float, float, str], low_inclusive: bool = True
) -> Severity:
    """A :class:`Severity` from ``(name, unit)`` and ``(low, high, nominal, harsher)``."""
    bounds = dict(zip(("low", "high", "nominal", "harsher"), scale, strict=True))
    return Severity(name=label[0], unit=label[1], low_inclusive=low_inclusive, **bounds)


def register(
    label: tuple[str, str],
    kernel: tuple[type[PerturbationSpec], type, Callable[..., Any], Callable[..., Tensor]],
    scale: tuple[Severity, tuple[float, ...], Props],
    **extra: Any,
) -> Perturbation:
    """Register an MRI perturbation in :data:`perturbations.base.PERTURBATIONS`.

    Args:
        label: ``(name, description)``.
        kernel: ``(spec, params, sample, apply)``, see :mod:`perturbations.base`.
        scale: ``(severity, ladder, props)``: the physical severity, its default five levels (mildest
            first) and the properties the generic tests check.
        extra: further :class:`perturbations.base.Perturbation` fields (e.g. ``check_phantom``).
    """
    keys = ("spec", "params", "sample", "apply", "severity", "ladder", "props")
    fields = dict(zip(keys, (*kernel, *scale), strict=True)) | extra
    return PERTURBATIONS.register(label[0], Perturbation(name=label[0], description=label[1], **fields))
