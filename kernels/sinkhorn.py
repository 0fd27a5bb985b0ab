"""Sinkhorn-Knopp on per-token H_res logits (mHC Eq. 19, §3.2 kernel (3)), as its own op.

    H_res = SK(L)        L: (..., n, n) logits -> (..., n, n), fp32 whatever L's dtype

The reference is kernels/sinkhorn_reference.py (the maths the variants run; its module doc
defines the 'paper' and 'kernel' conventions, and why 'paper' runs in the log domain). The
Triton kernels (kernels/sinkhorn_triton.py) keep the matrix in registers for all k rounds; the
backward saves only the logits and recomputes the iterations on-chip, so it is the exact
gradient of the finite-k map. The fused coefficient kernel (kernels/coefficients.py) uses the
same device functions; this op exists to test and time them alone. 'converged' has a data-dependent round count per matrix (up to
sk_max_iters, thousands for badly scaled logits), so it has no kernel: a reference to measure against.

On a CPU, backend=torch runs kernels/sinkhorn_cpu.cpp for the paper and kernel modes (n <= 16,
fp32 or fp64): the linear-domain recursion over tiles of tokens, exact at small logit ranges and
handing the rare token with a large range to the log-domain recursion, with a backward that
recomputes the iterates (its file says why that is the reference's map to round-off).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels import cpu_build
from kernels.backend import (
    eager_or_compiled,
    empty_like,
    kernel_op,
    load,
    resolve,
    use_cpu_kernel,
)
from kernels.sinkhorn_reference import KERNEL_EPS, compute_dtype
from kernels.sinkhorn_reference import sinkhorn as sinkhorn_reference

KERNEL_MODES = ("paper", "kernel")


def mode_reason(mode: str, iters: int) -> str | None:
    """Why the kernels cannot run this Sinkhorn configuration (None = they can)."""
    if mode not in KERNEL_MODES:
        return f"Sinkhorn mode {mode!r} has no kernel (its round count depends on the whole batch); kernels run {', '.join(KERNEL_MODES)}"
    if iters < 0:
        return f"Sinkhorn iterations must be >= 0, got {iters}"
    return None


@kernel_op("sinkhorn", fake=lambda L, iters, mode: torch.empty_like(L))
def sinkhorn_op(L: Tensor, iters: int, mode: str) -> Tensor:
    """L (T, n, n) fp32 contiguous logits -> H_res (T, n, n) fp32."""
    return load("sinkhorn_triton").forward(L, iters, mode, KERNEL_EPS)


@kernel_op("sinkhorn_backward", fake=lambda L, G, iters, mode: torch.empty_like(L))
def sinkhorn_backward_op(L: Tensor, G: Tensor, iters: int, mode: str) -> Tensor:
    return load("sinkhorn_triton").backward(L, G, iters, mode, KERNEL_EPS)


def _setup(ctx, inputs, output):
    L, ctx.iters, ctx.mode = inputs
    ctx.save_for_backward(L)  # only the logits: the iterates are recomputed in backward


def _backward(ctx, g):
    (L,) = ctx.saved_tensors
    return sinkhorn_backward_op(L, g.float().contiguous(), ctx.iters, ctx.mode), None, None


sinkhorn_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# CPU kernels (kernels/sinkhorn_cpu.cpp)
# ---------------------------------------------------------------------------------------------
CPU_MODES = ("paper", "kernel")  # the C++ `mode` argument is the index
MAX_CPU_STREAMS = 16  # kernels/cpu_common.h MAX_STREAMS


def cpu_reason(n: int, iters: int, mode: str) -> str | None:
    """Why the CPU kernel cannot run this Sinkhorn configuration (None = it can)."""
    if mode not in CPU_MODES:
        return f"Sinkhorn mode {mode!r} has no CPU kernel"
    if iters < 0:
        return f"Sinkhorn iterations must be >= 0, got {iters}"
    if n > MAX_CPU_STREAMS:
        return f"the CPU kernel takes n <= {MAX_CPU_STREAMS} streams, got {n}"
    return None


def _cpu_forward(L: Tensor, iters: int, mode: str) -> Tensor:
    H = empty_like(L)
    cpu_build.call("sinkhorn_forward", L, H, L.shape[0], L.shape[-1], iters, CPU_MODES.index(mode), KERNEL_EPS)
    return H


def _cpu_backward(L: Tensor, G: Tensor, iters: int, mode: str) -> Tensor:
    dL = empty_like(L)
    cpu_build.call("sinkhorn_backward", L, G, dL, L.shape[0], L.shape[-1], iters, CPU_MODES.index(mode), KERNEL_EPS)
    return dL


@torch.library.custom_op("mhc_bench::sinkhorn_cpu", mutates_args=())
def sinkhorn_cpu_op(L: Tensor, iters: int, mode: str) -> Tensor:
    """L (T, n, n) fp32/fp64 contiguous logits -> H_res (T, n, n), same dtype."""
    return _cpu_forward(L, iters, mode)


@torch.library.custom_op("mhc_bench::sinkhorn_cpu_backward", mutates_args=())
def sinkhorn_cpu_backward_op(L: Tensor, G: Tensor, iters: int, mode: str) -> Tensor:
    return _cpu_backward(L, G, iters, mode)


sinkhorn_cpu_op.register_fake(lambda L, iters, mode: torch.empty_like(L))
sinkhorn_cpu_backward_op.register_fake(lambda L, G, iters, mode: torch.empty_like(L))


def _cpu_op_backward(ctx, g):
    (L,) = ctx.saved_tensors
    return sinkhorn_cpu_backward_op(L, g.to(L.dtype).contiguous(), ctx.iters, ctx.mode), None, None


sinkhorn_cpu_op.register_autograd(_cpu_op_backward, setup_context=_setup)


class _SinkhornCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, L: Tensor, iters: int, mode: str) -> Tensor:  # ctx first: a separate setup_context costs a signature bind per call
        _setup(ctx, (L, iters, mode), None)
        return _cpu_forward(L, iters, mode)

    @staticmethod
    def backward(ctx, g):
        (L,) = ctx.saved_tensors
        return _cpu_backward(L, g.to(L.dtype).contiguous(), ctx.iters, ctx.mode), None, None


sinkhorn_cpu = eager_or_compiled(_SinkhornCPU, sinkhorn_cpu_op)


# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------
def sinkhorn(logits: Tensor, iters: int = 20, mode: str = "paper", backend: str = "torch") -> Tensor:
    """H_res = SK(logits) over the last two dims; backend: torch | triton | auto (module doc)."""
    why = mode_reason(mode, iters)
    if why is None and logits.dtype == torch.float64:
        why = "float64 logits (gradcheck) run the reference"
    n = logits.shape[-1]
    if resolve(backend, logits.device, why) == "torch":
        if use_cpu_kernel(logits.device, cpu_reason(n, iters, mode)):
            L = logits.to(compute_dtype(logits)).reshape(-1, n, n).contiguous()
            return sinkhorn_cpu(L, iters, mode).view(logits.shape)
        return sinkhorn_reference(logits, iters, mode)
    return sinkhorn_op(logits.reshape(-1, n, n).float().contiguous(), iters, mode).view(logits.shape)
