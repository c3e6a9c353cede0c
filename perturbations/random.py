"""Counter-based random fields: the same noise for a given seed on every device and batch layout.

``torch.Generator`` streams differ between CPU and CUDA and depend on the order of draws, so a case's
noise would change with the batch it happens to be in. Here each value is a pure function of
``(seed, index)``, computed with integer operations that are exact on every device:

* :func:`uniform_bits`: 32-bit words from the ``lowbias32`` integer hash (C. Wellons, "Prospecting for
  hash functions", 2018) applied twice to the counter, keyed by both halves of the seed;
* :func:`standard_normal` / :func:`add_normal`: SplitMix64 words (G. Steele, D. Lea, C. Flood, "Fast
  splittable pseudorandom number generators", OOPSLA 2014), ``mix64(key + j * GOLDEN_GAMMA)``, two
  23-bit uniforms from each word's 32-bit halves, and a float32 Box-Muller transform.

The words of a normal field come from torch int64 operations on any device, or on the CPU from numpy
``uint64`` operations (logical shifts need no masks, products are native: about twice as fast), bit for
bit the same; the float steps are the same torch operations on every device. Every step gives a value
the same result whatever its position in an array (torch's vectorised ``log``/``cos``/``sin``/``sqrt``
also handle array tails), so a case's field depends neither on the batch it is in nor on the chunks it
is computed in, and CPU and CUDA differ only in the last bits of ``log``, ``sqrt``, ``cos`` and ``sin``.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
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


# --- SplitMix64 words ---------------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _int64(c: int) -> int:
    """The int64 (two's complement) value of the 64-bit pattern ``c``."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's Weyl increment: word ``j`` of a stream is ``mix64(key + j * GOLDEN_GAMMA)`` (mod 2**64)."""
MIX64_SHIFTS = (30, 27, 31)
MIX64_MULTIPLIERS = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
"""SplitMix64's finaliser (D. Stafford's "Mix13"): ``z ^= z >> 30; z *= m1; z ^= z >> 27; z *= m2;
z ^= z >> 31`` on unsigned 64-bit values."""
NORMAL_DOMAIN = 0x6A09E667F3BCC909
"""XORed into a seed before it is mixed into a key, so normal streams differ from other uses of a seed."""
FLOAT_MANTISSA = 0x007FFFFF007FFFFF
FLOAT_ONE = 0x3F8000003F800000
"""A word ``w`` becomes two float32 values in [1, 2): the bit patterns ``(w & FLOAT_MANTISSA) | FLOAT_ONE``
read as two float32 (the low 23 bits of each 32-bit half as the significand)."""
U1_OFFSET = 1.0 - 2.0**-24
"""``u1 = f - U1_OFFSET = (k + 1/2) / 2**23`` for ``f = 1 + k / 2**23``: exact, in (0, 1)."""


def mix64(z: Tensor) -> Tensor:
    """SplitMix64's finaliser of 64-bit patterns held in an int64 tensor (a new tensor).

    int64 products wrap modulo 2**64 on the CPU and CUDA; ``>>`` on int64 is arithmetic, so each
    logical shift clears the copies of the sign bit with a mask.
    """
    z = z.clone()
    tmp = torch.empty_like(z)
    for step, shift in enumerate(MIX64_SHIFTS):
        torch.bitwise_right_shift(z, shift, out=tmp)
        z.bitwise_xor_(tmp.bitwise_and_((1 << (64 - shift)) - 1))
        if step < 2:
            z.mul_(_int64(MIX64_MULTIPLIERS[step]))
    return z


def _mix64_int(z: int) -> int:
    """:func:`mix64` of one unsigned 64-bit Python integer."""
    for step, shift in enumerate(MIX64_SHIFTS):
        z ^= z >> shift
        if step < 2:
            z = (z * MIX64_MULTIPLIERS[step]) & _MASK64
    return z


def stream_keys(seeds: Tensor) -> Tensor:
    """``(B,)`` int64 SplitMix64 stream keys of the normal fields, ``mix64(seed ^ NORMAL_DOMAIN)``."""
    return mix64(seeds.to(torch.int64).reshape(-1) ^ _int64(NORMAL_DOMAIN))


def normal_words(seeds: Tensor, start: int, count: int) -> Tensor:
    """``(B, count)`` int64: words ``start .. start + count - 1`` of each case's normal stream.

    Word ``j`` of case ``b`` is ``mix64(stream_keys(seeds)[b] + j * GOLDEN_GAMMA)``.
    """
    j = torch.arange(start, start + count, dtype=torch.int64, device=seeds.device)
    return mix64(j.mul_(_int64(GOLDEN_GAMMA)).view(1, -1) + stream_keys(seeds).view(-1, 1))


# --- the normal field ----------------------------------------------------------------------------------
#
# A case's field of n values holds P = ceil(n / 2) Box-Muller pairs and uses the words 0 .. 2H-1 of its
# stream, H = ceil(P / 2). Each word gives two float32 values in [1, 2) (FLOAT_MANTISSA, FLOAT_ONE; its
# low 32-bit half first), so words 0 .. H-1 give the floats f_r of the pairs' radii and words H .. 2H-1
# the floats f_a of their angles: pair p has u1 = f_r[p] - U1_OFFSET, R = sqrt(-2 ln u1) (times the
# case's scale) and theta = f_a[p] * TWO_PI, and gives value p = R cos(theta) and value P + p =
# R sin(theta).

TWO_PI = float(np.float32(2.0 * math.pi))
"""The angle is ``f_a`` times this float32 constant (rounded to float32, or computed in float64)."""
CHUNK_PAIRS = 1 << 20
"""Pairs (of all the cases in a chunk together) per step of the CPU path: 8 MiB of words."""
WORD_BLOCK = 1 << 17
"""Words per job of the CPU path: 1 MiB, about a core's L2 cache."""


def _check_scale(scale: Tensor | None, b: int) -> Tensor | None:
    if scale is None:
        return None
    scale = torch.as_tensor(scale).reshape(-1)
    if scale.numel() != b:
        raise ValueError(f"expected {b} scale values (one per case), got {scale.numel()}")
    return scale


def _box_muller(
    bits: Tensor,
    m: int,
    r2: float | Tensor,
    cos_out: Tensor,
    sin_out: Tensor,
    x: tuple[Tensor, Tensor] | None,
) -> None:
    """The float steps, shared by both paths: pairs from the float bit pairs ``bits`` into the outputs.

    Args:
        bits: ``(Bc, 2, half)`` int64 words turned into float32 bit pairs, row ``[:, 0]`` the radius words
            and ``[:, 1]`` the angle words of ``m <= 2 half`` pairs; used as scratch.
        m: number of pairs.
        r2: ``-2`` or ``(Bc, 1)`` values ``-2 scale**2``.
        cos_out: ``(Bc, m)`` output of the cosine values, in the compute dtype.
        sin_out: ``(Bc, m_sin)`` (``m_sin <= m``) output of the sine values.
        x: optional ``(x_cos, x_sin)`` of the outputs' shapes, added (one fused multiply-add per value).
    """
    floats = bits.view(torch.float32)[:, :, :m]  # (Bc, 2, m): f_r, f_a
    if cos_out.dtype != torch.float32:
        floats = floats.to(cos_out.dtype)
    radius = floats[:, 0].sub_(U1_OFFSET)  # u1 in (0, 1), exact
    angle = floats[:, 1].mul_(TWO_PI)
    radius.log_().mul_(r2).sqrt_()  # sqrt(-2 ln u1) (* scale)
    m_sin = sin_out.shape[1]
    torch.cos(angle, out=cos_out)
    torch.sin(angle[:, :m_sin], out=sin_out)
    if x is None:
        cos_out.mul_(radius)
        sin_out.mul_(radius[:, :m_sin])
    else:
        torch.addcmul(x[0], cos_out, radius, out=cos_out)
        torch.addcmul(x[1], sin_out, radius[:, :m_sin], out=sin_out)


def _outputs(out: Tensor, x: Tensor | None, rows: slice, start: int, m: int) -> tuple:
    """Views of the cosine and sine parts of pairs ``start .. start + m - 1`` in ``out`` (and ``x``)."""
    n = out.shape[1]
    pairs = (n + 1) // 2
    cos_part = slice(start, start + m)
    sin_part = slice(pairs + start, pairs + start + min(m, n - pairs - start))  # odd n: one sine fewer
    views = (out[rows, cos_part], out[rows, sin_part])
    return views, (None if x is None else (x[rows, cos_part], x[rows, sin_part]))


def _r2(scale: Tensor | None, rows: slice, dtype: torch.dtype, device: torch.device) -> float | Tensor:
    if scale is None:
        return -2.0
    return scale[rows].to(device, dtype).square().mul(-2.0).view(-1, 1)


def _torch_field(
    seeds: Tensor, n: int, compute: torch.dtype, scale: Tensor | None, x: Tensor | None
) -> Tensor:
    """The ``(B, n)`` field, or ``x + scale * field``, with torch operations on ``seeds``' device."""
    b, pairs = seeds.numel(), (n + 1) // 2
    h = (pairs + 1) // 2
    bits = normal_words(seeds, 0, 2 * h).bitwise_and_(FLOAT_MANTISSA).bitwise_or_(FLOAT_ONE).view(b, 2, h)
    out = torch.empty((b, n), dtype=compute, device=seeds.device)
    flat = None if x is None else x.reshape(b, n).to(compute)
    (cos_out, sin_out), xs = _outputs(out, flat, slice(None), 0, pairs)
    _box_muller(bits, pairs, _r2(scale, slice(None), compute, seeds.device), cos_out, sin_out, xs)
    return out


# CPU path: the words from numpy uint64 operations (logical shifts need no masks, products are native) in
# blocks that stay in the L2 cache, shared by torch.get_num_threads() threads (numpy releases the GIL; a
# block is one job, so the loop runs over the cases and blocks of a batch), into a reused buffer; then the
# float steps above, as torch operations on torch's intra-op threads. Numpy is not used for the float steps
# on purpose: torch's OpenMP threads spin for a few milliseconds after each parallel operation, and Python
# threads running then share the cores with them.

_U64 = np.uint64
_SHIFTS = tuple(_U64(s) for s in MIX64_SHIFTS)
_MULTIPLIERS = tuple(_U64(m) for m in MIX64_MULTIPLIERS)
_WEYL = np.arange(WORD_BLOCK, dtype=_U64) * _U64(GOLDEN_GAMMA)
_SCRATCH = threading.local()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()


def _forget_pool() -> None:
    """After a fork the child has none of the parent's threads: start a new pool when it needs one."""
    global _POOL, _POOL_SIZE, _POOL_LOCK
    _POOL, _POOL_SIZE, _POOL_LOCK = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool(workers: int) -> ThreadPoolExecutor:
    """The module's pool of ``workers`` helper threads (rebuilt when the count changes)."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE != workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phantom-noise")
            _POOL_SIZE = workers
        return _POOL


def _words_buffer(size: int) -> np.ndarray:
    """The calling thread's reused uint64 buffer for the words of one chunk (at least ``size``)."""
    words = getattr(_SCRATCH, "words", None)
    if words is None or words.shape[0] < size:
        words = _SCRATCH.words = np.empty(max(size, 1024), dtype=_U64)
    return words


def _numpy_words_into(z: np.ndarray, key: int, first: int, weyl: np.ndarray = _WEYL) -> None:
    """``z`` ``(m,)`` uint64 := words ``first .. first + m - 1`` of stream ``key`` (``m <= len(weyl)``).

    The words of :func:`normal_words`, with unsigned arithmetic (products modulo 2**64, logical shifts).
    """
    m = z.shape[0]
    t = getattr(_SCRATCH, "shifted", None)
    if t is None or t.shape[0] < m:
        t = _SCRATCH.shifted = np.empty(max(m, WORD_BLOCK), dtype=_U64)
    t = t[:m]
    np.add(weyl[:m], _U64((key + first * GOLDEN_GAMMA) & _MASK64), out=z)
    for step, shift in enumerate(_SHIFTS):
        np.right_shift(z, shift, out=t)
        np.bitwise_xor(z, t, out=z)
        if step < 2:
            np.multiply(z, _MULTIPLIERS[step], out=z)


def _host_keys(seeds: Tensor) -> list[int]:
    """:func:`stream_keys` as unsigned Python integers, computed on the host."""
    return [_mix64_int((seed & _MASK64) ^ NORMAL_DOMAIN) for seed in seeds.tolist()]


def numpy_normal_words(seeds: Tensor, start: int, count: int) -> Tensor:
    """The CPU path's words ``start .. start + count - 1``, ``(B, count)`` int64 (for tests).

    Equal bit for bit to :func:`normal_words`.
    """
    keys = _host_keys(seeds)
    out = torch.empty((len(keys), count), dtype=torch.int64)
    words = out.numpy().view(_U64)
    for i, key in enumerate(keys):
        for j in range(0, count, WORD_BLOCK):
            _numpy_words_into(words[i, j : j + WORD_BLOCK], key, start + j)
    return out


def _fill_words(z: np.ndarray, keys: list[int], firsts: tuple[int, int]) -> None:
    """``z`` ``(Bc, 2, half)`` := float bit pairs of each case's words ``firsts[r] ..`` (row ``r``).

    Block by block on ``torch.get_num_threads()`` threads, the calling one included.
    """
    half = z.shape[2]
    jobs = [(i, r, j) for i in range(z.shape[0]) for r in range(2) for j in range(0, half, WORD_BLOCK)]

    def run(share: list[tuple[int, int, int]]) -> None:
        for i, r, j in share:
            block = z[i, r, j : j + WORD_BLOCK]
            _numpy_words_into(block, keys[i], firsts[r] + j)
            np.bitwise_and(block, _U64(FLOAT_MANTISSA), out=block)
            np.bitwise_or(block, _U64(FLOAT_ONE), out=block)

    workers = min(torch.get_num_threads(), len(jobs)) if z.size >= WORD_BLOCK else 1  # small: no hand-off
    helpers = [_pool(workers - 1).submit(run, jobs[k::workers]) for k in range(1, workers)]
    run(jobs[0::workers])
    for future in helpers:
        future.result()


def _cpu_field(seeds: Tensor, n: int, scale: Tensor | None, x: Tensor | None) -> Tensor:
    """The ``(B, n)`` float32 field, or ``x + scale * field``, on the CPU: numpy words, torch float steps."""
    b, pairs = seeds.numel(), (n + 1) // 2
    h = (pairs + 1) // 2
    keys = _host_keys(seeds)
    out = torch.empty((b, n), dtype=torch.float32)
    if pairs == 0 or b == 0:
        return out
    flat = None if x is None else x.reshape(b, n).to(torch.float32)
    if pairs >= CHUNK_PAIRS:  # slices of one case's pairs (an even count: two pairs per word)
        cases, step = 1, CHUNK_PAIRS - CHUNK_PAIRS % 2
    else:  # whole cases
        cases, step = max(1, CHUNK_PAIRS // max(pairs, 1)), pairs + pairs % 2
    words = _words_buffer(min(cases, b) * step)
    for b0 in range(0, b, cases):
        rows = slice(b0, min(b, b0 + cases))
        bc = rows.stop - b0
        r2 = _r2(scale, rows, torch.float32, out.device)
        for start in range(0, pairs, step):
            m = min(step, pairs - start)
            half = (m + 1) // 2
            z = words[: bc * 2 * half].reshape(bc, 2, half)
            _fill_words(z, keys[b0 : b0 + bc], (start // 2, h + start // 2))
            (cos_out, sin_out), xs = _outputs(out, flat, rows, start, m)
            _box_muller(torch.from_numpy(z.view(np.int64)), m, r2, cos_out, sin_out, xs)
    return out


def _normal(
    seeds: Tensor, n: int, dtype: torch.dtype, scale: Tensor | None, x: Tensor | None, backend: str
) -> Tensor:
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend must be 'auto' or 'torch', got {backend!r}")
    scale = _check_scale(scale, seeds.numel())
    device = seeds.device
    if backend == "auto" and device.type == "cpu" and dtype != torch.float64 and sys.byteorder == "little":
        return _cpu_field(seeds, n, scale, x)
    return _torch_field(seeds, n, torch.float64 if dtype == torch.float64 else torch.float32, scale, x)


def standard_normal(
    seeds: Tensor,
    shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
    scale: Tensor | None = None,
    backend: str = "auto",
) -> Tensor:
    """Standard normal field ``(B, *shape)``; case ``b`` depends only on ``seeds[b]`` (and ``shape``).

    Args:
        seeds: int64 tensor ``(B,)`` on the target device, one seed per case.
        shape: shape of one case's field, e.g. ``(C, D, H, W)``.
        dtype: floating dtype of the result (computed in float32, or in float64 for float64).
        scale: optional per-case factors (``B`` values): the result is ``scale[b]`` times the field, the
            factor folded into the Box-Muller radius (equal to ``scale * field`` up to rounding).
        backend: ``"auto"`` (on the CPU, the integer steps with numpy) or ``"torch"`` (torch operations
            throughout, as on other devices). The two give the same words and, on the CPU, the same values
            bit for bit.

    Returns:
        Tensor of shape ``(B, *shape)`` with values ~ N(0, 1) (tails cut at ``sqrt(48 ln 2)`` ≈ 5.77).
    """
    z = _normal(seeds, math.prod(shape), dtype, scale, None, backend)
    return z.to(dtype).view(seeds.numel(), *shape)


def add_normal(x: Tensor, seeds: Tensor, scale: Tensor, backend: str = "auto") -> Tensor:
    """``x + scale[b] * standard_normal(seeds, x.shape[1:])[b]`` for each case ``b``, as a new tensor.

    The scale is folded into the Box-Muller radius and ``x`` is added by one fused multiply-add per value
    (the field is :func:`standard_normal`'s up to float rounding). ``x`` is not modified.

    Args:
        x: ``(B, ...)`` floating tensor.
        seeds: int64 ``(B,)`` seeds on ``x``'s device.
        scale: ``B`` per-case standard deviations.
        backend: as for :func:`standard_normal`.
    """
    if x.requires_grad:  # the fused steps write into their output: keep the sum differentiable in x
        return x + standard_normal(seeds, tuple(x.shape[1:]), x.dtype, scale, backend)
    z = _normal(seeds, x[0].numel(), x.dtype, scale, x, backend)
    return z.to(x.dtype).view(x.shape)
