"""Counter-based random fields: the same noise for a given seed on every device and batch layout.

``torch.Generator`` streams differ between CPU and CUDA and depend on the order of draws, so a
case's noise would change with the batch it happens to be in. Here each voxel's value is a pure
function of ``(seed, voxel index)``: an integer hash (``lowbias32``, C. Wellons, "Prospecting for
hash functions", 2018) turns the counter into uniform bits, and the Box-Muller transform turns
pairs of uniforms into standard normal values. Integer arithmetic is exact on every device, so
CPU and CUDA agree up to the last ulp of ``log``/``cos``; a whole batch with one seed per case is
drawn in a few elementwise passes, without a Python loop over cases.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF


def _mul32(x: Tensor, c: int) -> Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` in int64, without signed overflow."""
    hi = ((x * (c >> 16)) & 0xFFFF) << 16
    return (hi + x * (c & 0xFFFF)) & _MASK32


def hash32(x: Tensor) -> Tensor:
    """The ``lowbias32`` integer hash of 32-bit values held in an int64 tensor."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _keys(seeds: Tensor) -> tuple[Tensor, Tensor]:
    """Two 32-bit stream keys mixed from both halves of each 64-bit seed (a 64-bit stream identity)."""
    lo, hi = seeds & _MASK32, (seeds >> 32) & _MASK32
    k1 = hash32(lo ^ hash32(hi ^ 0x9E3779B9))
    k2 = hash32(hi ^ hash32(lo ^ 0x85EBCA6B) ^ 0x27D4EB2F)
    return k1, k2


def uniform_bits(seeds: Tensor, n: int) -> Tensor:
    """Uniform 32-bit integers, ``(B, n)`` int64, one independent stream per seed in ``seeds`` (B,)."""
    k1, k2 = _keys(seeds.to(torch.int64).view(-1, 1))
    counter = torch.arange(n, device=seeds.device, dtype=torch.int64).view(1, -1)
    return hash32(hash32(counter ^ k1) ^ k2)


def standard_normal(seeds: Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal field ``(B, *shape)``; case ``b`` depends only on ``seeds[b]``.

    Args:
        seeds: int64 tensor ``(B,)`` on the target device, one seed per case.
        shape: shape of one case's field, e.g. ``(C, D, H, W)``.
        dtype: floating dtype of the result.

    Returns:
        Tensor of shape ``(B, *shape)`` with values ~ N(0, 1) (tails cut at about 5.9).
    """
    n = math.prod(shape)
    half = (n + 1) // 2
    bits = uniform_bits(seeds, 2 * half)
    # 24 high bits -> float in (0, 1), exactly representable in float32.
    u = ((bits >> 8).to(torch.float64) + 0.5) * (1.0 / 2**24)
    u1, u2 = u[:, :half], u[:, half:]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :n]
    return z.to(dtype).view(seeds.shape[0], *shape)
