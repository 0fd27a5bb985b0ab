"""Orthostochastic H_res = O ⊙ O, O the Newton-Schulz polar factor of the logits (variants/orthostochastic.py):

    X_0 = L / (‖L‖_F + 1e-7);   X ← a X + (b A + c A²) X, A = X Xᵀ, (a, b, c) = (3, -3.2, 1.2)
    O = X_{steps};              H_res = O ⊙ O

The reference is the variant's maths in PyTorch (autograd unrolls the steps: about 15 small ops
per step and sub-layer, each stored for the backward). On a CPU, fp32/fp64 logits with n <= 16
run kernels/orthostochastic_cpu.cpp instead: the steps over tiles of tokens, and a backward that
recomputes them. On any other device the reference runs (the triton backend keeps this map in
PyTorch: n x n per token is no work for a GPU kernel of its own).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import cpu_build
from kernels.backend import eager_or_compiled, empty_like, use_cpu_kernel
from kernels.sinkhorn import MAX_CPU_STREAMS

NS_COEFFS = (3.0, -3.2, 1.2)
NS_EPS = 1e-7


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def newton_schulz(L: Tensor, steps: int, eps: float = NS_EPS) -> Tensor:
    """(..., n, n) -> the nearly orthogonal polar factor of each matrix (fp32 or fp64)."""
    a, b, c = NS_COEFFS
    x = L / (torch.linalg.matrix_norm(L, keepdim=True) + eps)
    for _ in range(steps):
        A = x @ x.transpose(-1, -2)
        x = a * x + (b * A + c * (A @ A)) @ x
    return x


def orthostochastic_reference(L: Tensor, steps: int) -> Tensor:
    o = newton_schulz(L, steps)
    return o * o


# ---------------------------------------------------------------------------------------------
# CPU kernels (kernels/orthostochastic_cpu.cpp)
# ---------------------------------------------------------------------------------------------
def _cpu_forward(L: Tensor, steps: int) -> Tensor:
    H = empty_like(L)
    cpu_build.call("orthostochastic_forward", L, H, L.shape[0], L.shape[-1], steps, NS_EPS)
    return H


def _cpu_backward(L: Tensor, G: Tensor, steps: int) -> Tensor:
    dL = empty_like(L)
    cpu_build.call("orthostochastic_backward", L, G, dL, L.shape[0], L.shape[-1], steps, NS_EPS)
    return dL


@torch.library.custom_op("mhc_bench::orthostochastic_cpu", mutates_args=())
def orthostochastic_cpu_op(L: Tensor, steps: int) -> Tensor:
    """L (T, n, n) fp32/fp64 contiguous -> H_res (T, n, n), same dtype."""
    return _cpu_forward(L, steps)


@torch.library.custom_op("mhc_bench::orthostochastic_cpu_backward", mutates_args=())
def orthostochastic_cpu_backward_op(L: Tensor, G: Tensor, steps: int) -> Tensor:
    return _cpu_backward(L, G, steps)


def _setup(ctx, inputs, output):
    L, ctx.steps = inputs
    ctx.save_for_backward(L)  # only the logits: the steps are recomputed in backward


def _cpu_op_backward(ctx, g):
    (L,) = ctx.saved_tensors
    return orthostochastic_cpu_backward_op(L, g.to(L.dtype).contiguous(), ctx.steps), None


orthostochastic_cpu_op.register_fake(lambda L, steps: torch.empty_like(L))
orthostochastic_cpu_backward_op.register_fake(lambda L, G, steps: torch.empty_like(L))
orthostochastic_cpu_op.register_autograd(_cpu_op_backward, setup_context=_setup)


class _OrthostochasticCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, L: Tensor, steps: int) -> Tensor:  # ctx first: a separate setup_context costs a signature bind per call
        _setup(ctx, (L, steps), None)
        return _cpu_forward(L, steps)

    @staticmethod
    def backward(ctx, g):
        (L,) = ctx.saved_tensors
        return _cpu_backward(L, g.to(L.dtype).contiguous(), ctx.steps), None


orthostochastic_cpu = eager_or_compiled(_OrthostochasticCPU, orthostochastic_cpu_op)


def cpu_reason(L: Tensor, steps: int) -> str | None:
    """Why the CPU kernel cannot take these logits (None = it can)."""
    if L.dtype not in cpu_build.DTYPES:
        return f"the CPU kernel takes float32/float64 logits, got {L.dtype}"
    if L.shape[-1] > MAX_CPU_STREAMS:
        return f"the CPU kernel takes n <= {MAX_CPU_STREAMS} streams, got {L.shape[-1]}"
    if steps < 0:
        return f"Newton-Schulz steps must be >= 0, got {steps}"
    return None


# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------
def orthostochastic(L: Tensor, steps: int) -> Tensor:
    """H_res = O ⊙ O of (..., n, n) logits (module doc): the CPU kernel where it applies, else the reference."""
    if use_cpu_kernel(L.device, cpu_reason(L, steps)):
        n = L.shape[-1]
        return orthostochastic_cpu(L.reshape(-1, n, n).contiguous(), steps).view(L.shape)
    return orthostochastic_reference(L, steps)
