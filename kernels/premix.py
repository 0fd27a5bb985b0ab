"""Pre-mix, the branch input of a multi-stream residual (mHC Eq. 3, §3.2 kernel (4)):

    h = H_pre · x = Σ_i H_pre[i] x_i          x: (..., n, C), H_pre: (..., n) -> h: (..., C)

H_pre = None is the fixed mapping 1/n (the streams' mean). Per token the op reads n·C stream
values and writes C; backward reads (n + 1)·C and writes n·C, plus n fp32 sums for dH_pre.
The reference is the maths every variant ran before the kernels existed; the Triton path
(kernels/premix_triton.py) computes in fp32 and rounds once, where the reference rounds H_pre
to the stream dtype first.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kernels.backend import absent, dtype_reason, kernel_op, load, resolve


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
# Public op
# ---------------------------------------------------------------------------------------------
def premix(x: Tensor, h_pre: Tensor | None, backend: str = "torch") -> Tensor:
    """h = Σ_i H_pre[i] x_i over the stream dim (-2); backend: torch | triton | auto."""
    if resolve(backend, x.device, dtype_reason(x)) == "torch":
        return premix_reference(x, h_pre)
    *lead, n, C = x.shape
    w = None if h_pre is None else h_pre.expand(*lead, n).reshape(-1, n).float()  # autograd sums a broadcast back
    return premix_op(x.reshape(-1, n, C).contiguous(), w).view(*lead, C)
