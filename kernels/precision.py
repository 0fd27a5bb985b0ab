"""What the tensor cores do to x·φ: tf32 emulated on the CPU, and its accuracy against fp64.

The projection kernel (kernels/project_triton.py) runs RMSNorm(x)φ on tensor cores in tf32 by
default, as the mHC paper does (§4.3). A tf32 tensor-core MMA reads each fp32 operand's sign,
exponent and top 10 mantissa bits and ignores the other 13 (Triton feeds the registers as they
are: the PTX of our kernels has no cvt.rna.tf32), i.e. it truncates toward zero: a relative
error below 2^-10 per operand, always toward zero, so the errors of a long sum add up instead
of cancelling (measured: the whole of mix ~4e-4 too small). Hence the op rounds the small
operands itself, to nearest, before the kernel (φ forward, dP = dmix/r backward: K·W and
R·W numbers); the truncation then changes nothing of them. A bf16 stream converts to fp32
exactly and loses nothing; only an fp32 stream is still truncated by the hardware.

`tf32_round` is that host rounding, `tf32_truncate` the hardware's reading, so the accuracy of
the GPU path can be stated (and tested) without a GPU: harness/bench/tf32_accuracy.py measures it on
the projection and on the coefficients it feeds, emulated here or on a device.
"""

from __future__ import annotations

import torch
from torch import Tensor

TF32_DROPPED_BITS = 13  # fp32 has 23 mantissa bits, tf32 keeps 10


def tf32_truncate(t: Tensor) -> Tensor:
    """fp32 `t` as a tf32 tensor core reads it: the low 13 mantissa bits cleared (toward zero)."""
    bits = t.float().contiguous().view(torch.int32)
    return (bits & ~((1 << TF32_DROPPED_BITS) - 1)).view(torch.float32)


def tf32_round(t: Tensor) -> Tensor:
    """fp32 `t` rounded to the nearest tf32 value (ties to even), still stored as fp32: a tensor
    core then reads it exactly. Finite values only (the project's φ and gradients)."""
    bits = t.float().contiguous().view(torch.int32)
    half = (1 << (TF32_DROPPED_BITS - 1)) - 1
    bits = bits + half + ((bits >> TF32_DROPPED_BITS) & 1)
    return (bits & ~((1 << TF32_DROPPED_BITS) - 1)).view(torch.float32)


def project_tf32(x: Tensor, phi: Tensor, eps: float) -> Tensor:
    """RMSNorm(x)φ as the tf32 kernel computes it: φ rounded to nearest by the op, x truncated
    by the tensor core (exact for a bf16 stream), accumulated in fp64 (the kernel accumulates in
    fp32: that error is much smaller and not what is measured here)."""
    xd = x.double()
    inv_r = torch.rsqrt(xd.square().mean(dim=-1, keepdim=True) + eps)
    return (tf32_truncate(x).double() @ tf32_round(phi).double()) * inv_r


def project_fp64(x: Tensor, phi: Tensor, eps: float) -> Tensor:
    """The exact projection in fp64 (the operands as given, no tf32)."""
    xd = x.double()
    return (xd @ phi.double()) * torch.rsqrt(xd.square().mean(dim=-1, keepdim=True) + eps)


def tf32_error_bound(a: Tensor, b: Tensor) -> Tensor:
    """Elementwise bound on |a' @ b' - a @ b| when a' and b' are a and b as tf32 (rounded or
    truncated): each operand off by < 2^-10 relative, so each product by
    < (2·2^-10 + 2^-20)|a||b| <= 2^-9 |a||b|; fp64 |a| @ |b| times that."""
    return 2.0 ** -9 * (a.double().abs() @ b.double().abs())
