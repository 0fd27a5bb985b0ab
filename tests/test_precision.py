"""tf32 as the tensor cores read it (truncation) and as the projection op rounds φ and dP (to
nearest): bit patterns, error bounds, and the measured accuracy the README states."""

import torch

from harness.bench.tf32_accuracy import accuracy
from kernels.precision import project_tf32, tf32_error_bound, tf32_round, tf32_truncate

LOW = (1 << 13) - 1  # the 13 mantissa bits tf32 drops


def test_tf32_values_keep_10_mantissa_bits():
    t = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 100
    for f in (tf32_round, tf32_truncate):
        assert (f(t).view(torch.int32) & LOW).eq(0).all(), f.__name__


def test_truncation_goes_toward_zero_and_rounding_to_the_nearest_neighbour():
    t = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    down = tf32_truncate(t)
    assert (down.abs() <= t.abs()).all() and ((t - down).abs() < 2.0 ** -10 * t.abs()).all()
    up = (down.view(torch.int32) + (1 << 13)).view(torch.float32)  # the next tf32 value away from zero
    nearest = torch.where((t - down).abs() <= (up - t).abs(), down, up)
    r = tf32_round(t)
    assert ((r - t).abs() <= (nearest - t).abs()).all() and ((r - t).abs() <= 2.0 ** -11 * t.abs()).all()


def test_round_ties_to_even():
    one_and_half_ulp = torch.tensor([1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11])  # halfway between tf32 neighbours
    assert tf32_round(one_and_half_ulp).tolist() == [1.0, 1.0 + 2 * 2.0 ** -10]


def test_the_bound_covers_the_emulated_projection():
    g = torch.Generator().manual_seed(2)
    x, phi = torch.randn(64, 512, generator=g), torch.randn(512, 24, generator=g) / 512 ** 0.5
    xd = x.double()
    inv_r = torch.rsqrt(xd.square().mean(dim=-1, keepdim=True) + 1e-6)
    exact = (xd @ phi.double()) * inv_r
    err = (project_tf32(x, phi, 1e-6) - exact).abs()
    assert (err <= tf32_error_bound(x, phi) * inv_r).all() and err.max() > 0


def test_accuracy_of_the_tf32_projection_is_about_2e_4():
    """What README/results state: bf16 streams lose only φ's rounding (~2e-4 rms relative), fp32
    streams also the hardware's truncation of x (about twice that)."""
    bf16, fp32 = accuracy(4, 256, torch.bfloat16, rows=64), accuracy(4, 256, torch.float32, rows=64)
    assert 5e-5 < bf16["mix_rms_rel"] < 4e-4 and bf16["mix_rms_rel"] < fp32["mix_rms_rel"] < 8e-4
    assert 0 < bf16["coefficients_max_abs"] < 1e-3
