import torch
from scipy import stats

from perturbations.random import hash32, standard_normal, uniform_bits


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


def test_standard_normal_moments_and_seed_streams():
    z = standard_normal(torch.tensor([1, 2, 2**62 + 5]), (50_000,))
    assert torch.equal(z[0], standard_normal(torch.tensor([1]), (50_000,))[0])
    for row in z:
        assert abs(float(row.mean())) < 0.02 and abs(float(row.std()) - 1.0) < 0.02
    assert abs(float(torch.corrcoef(z)[0, 1])) < 0.02 and abs(float(torch.corrcoef(z)[1, 2])) < 0.02
