"""Sinkhorn-Knopp on per-token H_res logits (mHC Eq. 19, §3.2 kernel (3)), as its own op.

    H_res = SK(L)        L: (..., n, n) logits -> (..., n, n), fp32 whatever L's dtype

The reference is kernels/sinkhorn_reference.py (the maths the variants run; its module doc
defines the 'paper' and 'kernel' conventions, and why 'paper' runs in the log domain). The
Triton kernels (kernels/sinkhorn_triton.py) keep the matrix in registers for all k rounds; the
backward saves only the logits and recomputes the iterations on-chip, so it is the exact
gradient of the finite-k map. The fused coefficient kernel (kernels/coefficients.py) uses the
same device functions; this op exists to test and time them alone. 'converged' has a data-dependent round count per matrix (up to
sk_max_iters, thousands for badly scaled logits), so it has no kernel: a reference to measure against.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.backend import kernel_op, load, resolve
from kernels.sinkhorn_reference import KERNEL_EPS
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


def sinkhorn(logits: Tensor, iters: int = 20, mode: str = "paper", backend: str = "torch") -> Tensor:
    """H_res = SK(logits) over the last two dims; backend: torch | triton | auto."""
    why = mode_reason(mode, iters)
    if why is None and logits.dtype == torch.float64:
        why = "float64 logits (gradcheck) run the reference"
    if resolve(backend, logits.device, why) == "torch":
        return sinkhorn_reference(logits, iters, mode)
    n = logits.shape[-1]
    return sinkhorn_op(logits.reshape(-1, n, n).float().contiguous(), iters, mode).view(logits.shape)
