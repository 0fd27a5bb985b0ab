"""Pre-mix, the branch input of a multi-stream residual (mHC Eq. 3, §3.2 kernel (4)):

    h = H_pre · x = Σ_i H_pre[i] x_i          x: (..., n, C), H_pre: (..., n) -> h: (..., C)

H_pre = None is the fixed mapping 1/n (the streams' mean). Per token the op reads n·C stream
values and writes C; backward reads (n + 1)·C and writes n·C, plus n fp32 sums for dH_pre.
The reference is the maths every variant ran before the kernels existed; the Triton path
(kernels/premix_triton.py) computes in fp32 and rounds once, where the reference rounds H_pre
to the stream dtype first. On a CPU, backend=torch runs kernels/premix_cpu.cpp for fp32/fp64
streams in eager mode: one pass per token instead of a batched 1 x n by n x C matmul per token.
Under torch.compile the reference runs, which inductor fuses with the ops around it (measured
faster than calling the kernel as an opaque op: results/bench-cpu/).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kernels import cpu_build
from kernels.backend import (
    absent,
    dtype_reason,
    empty,
    empty_like,
    kernel_op,
    load,
    resolve,
    use_cpu_kernel,
)


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def premix_reference(x: Tensor, h_pre: Tensor | None) -> Tensor:
    if h_pre is None:
        return x.mean(dim=-2)
    return (h_pre.to(x.dtype).unsqueeze(-2) @ x).squeeze(-2)


# ---------------------------------------------------------------------------------------------
# Custom ops around the kernels (one opaque node each for torch.compile), with their autograd
# ---------------------------------------------------------------------------------------------
@kernel_op("premix", fake=lambda x, w: x.new_empty((x.shape[0], x.shape[2])))
def premix_op(x: Tensor, w: Optional[Tensor]) -> Tensor:
    """x (T, n, C) contiguous, w (T, n) fp32 or None (1/n) -> h (T, C)."""
    return load("premix_triton").forward(x, w)


@kernel_op("premix_backward", fake=lambda x, w, dh: (torch.empty_like(x), torch.empty_like(w) if w is not None else absent(x)))
def premix_backward_op(x: Tensor, w: Optional[Tensor], dh: Tensor) -> tuple[Tensor, Tensor]:
    dx, dw = load("premix_triton").backward(x, w, dh)
    return dx, dw if dw is not None else absent(x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dh):
    x, w = ctx.saved_tensors
    dx, dw = premix_backward_op(x, w, dh.contiguous())
    return dx, dw if w is not None else None


premix_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# CPU kernels (kernels/premix_cpu.cpp): x and w in the stream dtype (fp32 or fp64)
# ---------------------------------------------------------------------------------------------
def _cpu_forward(x: Tensor, w: Optional[Tensor]) -> Tensor:
    h = empty((x.shape[0], x.shape[2]), x.dtype, x.device)
    cpu_build.call("premix_forward", x, w, h, x.shape[0], x.shape[1], x.shape[2])
    return h


def _cpu_backward(x: Tensor, w: Optional[Tensor], dh: Tensor) -> tuple[Tensor, Optional[Tensor]]:
    dx, dw = empty_like(x), None if w is None else empty_like(w)
    cpu_build.call("premix_backward", x, w, dh, dx, dw, x.shape[0], x.shape[1], x.shape[2])
    return dx, dw


class _PremixCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Optional[Tensor]) -> Tensor:  # ctx first: a separate setup_context costs a signature bind per call
        _setup(ctx, (x, w), None)
        return _cpu_forward(x, w)

    @staticmethod
    def backward(ctx, dh):
        x, w = ctx.saved_tensors
        return _cpu_backward(x, w, dh.contiguous())


CPU_DTYPES = (torch.float32, torch.float64)


def cpu_dtype_reason(*tensors: Tensor) -> str | None:
    """Why the CPU stream kernels cannot take these tensors (None = they can)."""
    for t in tensors:
        if t.dtype not in CPU_DTYPES:
            return f"the CPU kernels take float32/float64 streams, got {t.dtype}"
    return None


# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------
def premix(x: Tensor, h_pre: Tensor | None, backend: str = "torch") -> Tensor:
    """h = Σ_i H_pre[i] x_i over the stream dim (-2); backend: torch | triton | auto."""
    *lead, n, C = x.shape
    if resolve(backend, x.device, dtype_reason(x)) == "torch":
        if torch.compiler.is_compiling() or not use_cpu_kernel(x.device, cpu_dtype_reason(x)):
            return premix_reference(x, h_pre)  # compiled: inductor fuses the reference with its neighbours
        w = None if h_pre is None else h_pre.to(x.dtype).expand(*lead, n).reshape(-1, n).contiguous()
        return _PremixCPU.apply(x.reshape(-1, n, C).contiguous(), w).view(*lead, C)
    w = None if h_pre is None else h_pre.expand(*lead, n).reshape(-1, n).float()  # autograd sums a broadcast back
    return premix_op(x.reshape(-1, n, C).contiguous(), w).view(*lead, C)
