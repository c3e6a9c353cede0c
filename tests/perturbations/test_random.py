import math

import numpy as np
import pytest
import torch
from scipy import stats

from perturbations import random as rnd
from perturbations.random import (
    add_normal,
    hash32,
    normal_words,
    numpy_normal_words,
    standard_normal,
    uniform_bits,
)

MASK64 = (1 << 64) - 1


def test_hash32_matches_reference_values():
    # lowbias32 computed with Python integers (mod 2**32) as the reference implementation.
    def ref(x):
        x &= 0xFFFFFFFF
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 12345, 0x7FFFFFFF, 0xFFFFFFFF, 0xDEADBEEF]
    assert hash32(torch.tensor(values, dtype=torch.int64)).tolist() == [ref(v) for v in values]


def test_uniform_bits_are_uniform():
    bits = uniform_bits(torch.tensor([7]), 200_000)[0]
    u = (bits.double() + 0.5) / 2**32
    assert stats.kstest(u.numpy(), "uniform").pvalue > 0.01


def test_uniform_bits_are_unchanged():
    """Ring artefacts, MRI draws and slice picks read these words: they must not change."""
    assert uniform_bits(torch.tensor([7, 2**62 + 5]), 3).tolist() == [
        [3080864552, 1416483462, 3832729962],
        [2056048354, 1074447684, 2552087381],
    ]


# --- SplitMix64 words: exact integers, the same from torch and from the numpy CPU path ------------------


def _mix64(z):
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def _word(seed, j):
    key = _mix64((seed & MASK64) ^ rnd.NORMAL_DOMAIN)
    return _mix64((key + j * rnd.GOLDEN_GAMMA) & MASK64)


def test_normal_words_are_splitmix64_of_the_seed_key():
    seeds = [1, 2, 2**62 + 5, -7, 0]
    words = normal_words(torch.tensor(seeds), 100, 300)
    assert [[w & MASK64 for w in row] for row in words.tolist()] == [
        [_word(s, 100 + j) for j in range(300)] for s in seeds
    ]


def test_numpy_cpu_path_gives_the_torch_words_bit_for_bit():
    seeds = torch.tensor([3, 2**62 + 1, -5])
    assert torch.equal(numpy_normal_words(seeds, 11, 70_001), normal_words(seeds, 11, 70_001))


def _reference_field(seed, n):
    """Float64 Box-Muller from the Python-integer words, with the layout of ``standard_normal``."""
    pairs = (n + 1) // 2
    h = (pairs + 1) // 2
    out = np.empty(2 * pairs)
    for p in range(pairs):
        radius_bits = _word(seed, p // 2) >> (32 * (p % 2))
        angle_bits = _word(seed, h + p // 2) >> (32 * (p % 2))
        u1 = 1.0 + (radius_bits & 0x7FFFFF) / 2**23 - rnd.U1_OFFSET
        f_a = np.float32(1.0 + (angle_bits & 0x7FFFFF) / 2**23)
        theta = float(np.float32(f_a * np.float32(2.0 * math.pi)))  # the float32 angle, as computed
        r = math.sqrt(-2.0 * math.log(u1))
        out[p], out[pairs + p] = r * math.cos(theta), r * math.sin(theta)
    return out[:n]


@pytest.mark.parametrize("n", [1, 2, 3, 8, 1001])
def test_field_layout_matches_a_float64_reference(n):
    seeds = torch.tensor([9, 2**61 + 3])
    z = standard_normal(seeds, (n,))
    for b, seed in enumerate(seeds.tolist()):
        ref = _reference_field(seed, n)
        assert np.abs(z[b].double().numpy() - ref).max() < 2e-6  # float32 log/cos/sin/sqrt


@pytest.mark.parametrize("chunk", [None, 1000, 999, 7])
@pytest.mark.parametrize("shape", [(7,), (2, 5, 9), (1, 33, 40, 51)])
def test_cpu_path_equals_the_torch_path_bit_for_bit(shape, chunk, monkeypatch):
    """Same words (numpy on the CPU, torch elsewhere) and the same torch float steps: equal values, in
    whole-case chunks and in slices of a case's pairs."""
    if chunk is not None:
        monkeypatch.setattr(rnd, "CHUNK_PAIRS", chunk)
    seeds = torch.tensor([4, 5, 2**62 + 9])
    assert torch.equal(standard_normal(seeds, shape), standard_normal(seeds, shape, backend="torch"))
    x = torch.randn(3, *shape) * 100
    scale = torch.tensor([1.5, 0.0, 30.0])
    assert torch.equal(add_normal(x, seeds, scale), add_normal(x, seeds, scale, backend="torch"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_gives_the_cpu_words_and_field():
    seeds = torch.tensor([4, 5, 2**62 + 9])
    assert torch.equal(normal_words(seeds.cuda(), 0, 5000).cpu(), normal_words(seeds, 0, 5000))
    z_gpu = standard_normal(seeds.cuda(), (3, 40, 41)).cpu()
    torch.testing.assert_close(z_gpu, standard_normal(seeds, (3, 40, 41)), atol=2e-5, rtol=0)


# --- layout independence and replay ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_field_depends_only_on_seed_and_shape(backend, monkeypatch):
    seeds = torch.tensor([1, 2, 2**62 + 5, -7])
    shape = (3, 20, 31, 17)

    def standard_normal(seeds, shape):
        return rnd.standard_normal(seeds, shape, backend=backend)

    batch = standard_normal(seeds, shape)
    assert torch.equal(batch, standard_normal(seeds, shape))  # replay
    for b in range(4):
        assert torch.equal(batch[b], standard_normal(seeds[b : b + 1], shape)[0])
    assert torch.equal(batch.flip(0), standard_normal(seeds.flip(0), shape))  # order of the batch
    monkeypatch.setattr(rnd, "CHUNK_PAIRS", 1000)  # other chunk boundaries (slices of a case's pairs)
    assert torch.equal(batch, standard_normal(seeds, shape))
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        assert torch.equal(batch, standard_normal(seeds, shape))  # another number of threads
    finally:
        torch.set_num_threads(threads)


def test_scale_and_add_are_the_field_up_to_rounding():
    seeds = torch.tensor([11, 12])
    field = standard_normal(seeds, (4, 100))
    scale = torch.tensor([3.0, 0.25])
    scaled = standard_normal(seeds, (4, 100), scale=scale)
    torch.testing.assert_close(scaled, field * scale.view(-1, 1, 1), atol=1e-5, rtol=1e-6)
    x = torch.randn(2, 4, 100) * 50
    expected = x + field * scale.view(-1, 1, 1)
    torch.testing.assert_close(add_normal(x, seeds, scale), expected, atol=1e-4, rtol=0)
    assert torch.equal(add_normal(x, seeds, torch.zeros(2)), x)  # zero scale: exactly x
    with pytest.raises(ValueError, match="expected 2 scale values"):
        add_normal(x, seeds, torch.ones(3))


def test_float64_field_is_the_float32_field_more_precisely():
    seeds = torch.tensor([21])
    z32 = standard_normal(seeds, (5000,))
    z64 = standard_normal(seeds, (5000,), dtype=torch.float64)
    assert z64.dtype == torch.float64
    assert float((z64 - z32.double()).abs().max()) < 1e-5


# --- statistics at n = 1e6 ------------------------------------------------------------------------------

N = 1_000_000


@pytest.fixture(scope="module")
def field():
    """Four cases of 1e6 values (100^3), seeds 1, 2 (adjacent), 2**62 + 5 and a random 63-bit seed."""
    seeds = torch.tensor([1, 2, 2**62 + 5, 6_543_210_987_654_321])
    return standard_normal(seeds, (100, 100, 100)).double()


def test_values_follow_the_standard_normal_distribution(field):
    bound = 5.0 / math.sqrt(N)
    for z in field.flatten(1):
        v = z.numpy()
        assert stats.kstest(v, "norm").pvalue > 1e-3  # measured p = 0.016 to 0.98 (D <= 1.6e-3)
        assert abs(v.mean()) < bound and abs(v.std() - 1.0) < bound
        assert abs(stats.skew(v)) < 5 * math.sqrt(6 / N) and abs(stats.kurtosis(v)) < 5 * math.sqrt(24 / N)
        assert np.abs(v).max() <= math.sqrt(48 * math.log(2)) + 1e-5  # the cut of the 23-bit u1
        for k in (2.0, 3.0, 4.0):  # tail fractions within 5 binomial standard deviations
            p = 2 * stats.norm.sf(k)
            assert abs((np.abs(v) > k).mean() - p) < 5 * math.sqrt(p * (1 - p) / N), k


def test_neighbours_and_cases_are_uncorrelated(field):
    bound = 3.0 / math.sqrt(N)
    for z in field:
        flat = z.flatten()
        assert abs(float(torch.corrcoef(torch.stack([flat[:-1], flat[1:]]))[0, 1])) < bound  # lag 1
        for dim in range(3):  # neighbours along every axis of the volume
            a, b = z.narrow(dim, 0, 99).flatten(), z.narrow(dim, 1, 99).flatten()
            assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < bound, dim
        half = N // 2  # the cosine and sine of one Box-Muller pair
        assert abs(float(torch.corrcoef(torch.stack([flat[:half], flat[half:]]))[0, 1])) < bound
        assert abs(float(torch.corrcoef(torch.stack([flat[:half] ** 2, flat[half:] ** 2]))[0, 1])) < bound
    corr = torch.corrcoef(field.flatten(1))
    assert float((corr - torch.eye(4, dtype=corr.dtype)).abs().max()) < bound  # incl. seeds 1 and 2


def test_consecutive_values_are_independent(field):
    """Chi-square on a 10 x 10 grid of normal deciles of (z_i, z_i+1): a joint test, not just correlation."""
    edges = stats.norm.ppf(np.linspace(0, 1, 11)[1:-1])
    for z in field.flatten(1):
        cells = np.searchsorted(edges, z.numpy())
        table = np.bincount(cells[:-1:2] * 10 + cells[1::2], minlength=100)
        assert stats.chisquare(table).pvalue > 1e-3
