"""Normalised projection, the GEMM of the dynamic coefficients (mHC Eq. 14-15, §3.2 kernel (1)):

    mix = RMSNorm(x) φ = (x φ) · 1/r,   1/r = rsqrt(mean(x²) + eps)     x: (..., K), φ: (K, W)

mHC: x = x⃗ = vec(x_l) (K = nC), W = n² + 2n (pre, post, res columns; mHC-lite: 2n + n!).
HC:  x = each stream (K = C), W = n + 2 (θ_pre, θ_post, θ_res side by side), the per-stream
     norm x̃ of HC Eq. 10-13; tanh and the rest stay in PyTorch (see variants/hc.py).
The GEMM is fused with the sum of squares, so the stream is read once forward and once
backward; the RMSNorm weight is omitted (it would fold into φ). fp32 out, whatever x's dtype.
On a CPU, backend=torch runs the same maths as one autograd.Function with a hand-written backward
(fp32/fp64 x; train.cpu_kernels=off runs the reference): two GEMMs each way and little else,
instead of autograd's ~15 ops over the whole stream tensor (the section below).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.backend import cpu_kernel_mode, dtype_reason, kernel_op, load, resolve
from kernels.precision import tf32_round
from kernels.sinkhorn_reference import compute_dtype

PRECISIONS = ("tf32", "tf32x3", "ieee")  # the default first
MAX_WIDTH = 256  # W held in one register tile by the backward kernel


# ---------------------------------------------------------------------------------------------
# Reference (the §4.3 order: x φ first, then scaled by 1/r)
# ---------------------------------------------------------------------------------------------
def project_reference(x: Tensor, phi: Tensor, eps: float) -> Tensor:
    v = x.to(compute_dtype(x))
    inv_r = torch.rsqrt(v.square().mean(dim=-1, keepdim=True) + eps)  # Eq. 15: 1/r
    return (v @ phi.to(v.dtype)) * inv_r  # Eq. 14, then / r


# ---------------------------------------------------------------------------------------------
# Custom ops around the kernels (one opaque node each for torch.compile), with their autograd
# ---------------------------------------------------------------------------------------------
def _fake(x, phi, eps, precision):
    return x.new_empty((x.shape[0], phi.shape[1]), dtype=torch.float32), x.new_empty(x.shape[0], dtype=torch.float32)


@kernel_op("project", fake=_fake)
def project_op(x: Tensor, phi: Tensor, eps: float, precision: str) -> tuple[Tensor, Tensor]:
    """x (R, K) contiguous, φ (K, W) fp32 contiguous -> mix (R, W) fp32, inv_r (R,) fp32."""
    return load("project_triton").forward(x, phi, eps, precision)


@kernel_op("project_backward", fake=lambda x, phi, mix, inv_r, dmix, precision: (torch.empty_like(x), torch.empty_like(phi)))
def project_backward_op(x: Tensor, phi: Tensor, mix: Tensor, inv_r: Tensor, dmix: Tensor,
                        precision: str) -> tuple[Tensor, Tensor]:
    return load("project_triton").backward(x, phi, mix, inv_r, dmix, precision)


def _setup(ctx, inputs, output):
    x, phi, _, ctx.precision = inputs
    ctx.save_for_backward(x, phi, *output)


def _backward(ctx, dmix, _dinv_r):
    x, phi, mix, inv_r = ctx.saved_tensors
    dx, dphi = project_backward_op(x, phi, mix, inv_r, dmix.float().contiguous(), ctx.precision)
    return dx, dphi, None, None


project_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# CPU fast path: the reference's maths as one autograd.Function with a hand-written backward.
# The two GEMMs are what the time should go to (MKL/oneDNN do them best), so they stay torch.mm;
# what goes is autograd's ~15 ops, most of them reading or writing the whole (R, K) stream tensor:
# here the stream is read by the norm and the GEMM forward, by two GEMMs and one fused update
# backward, with g = dmix / r:  dφ = xᵀ g,  dx = g φᵀ - x · (1/r)² / K · Σ_w dmix_w mix_w.
# Plain torch ops, so torch.compile traces it like any other code.
# ---------------------------------------------------------------------------------------------
class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, phi: Tensor, eps: float) -> Tensor:
        K = x.shape[-1]
        inv_r = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(K).add_(eps))
        mix = torch.mm(x, phi).mul_(inv_r)
        ctx.save_for_backward(x, phi, mix, inv_r)
        return mix

    @staticmethod
    def backward(ctx, dmix: Tensor):
        x, phi, mix, inv_r = ctx.saved_tensors
        g = dmix * inv_r
        coef = (dmix * mix).sum(-1, keepdim=True).mul_(inv_r.square().div_(-x.shape[-1]))
        return torch.mm(g, phi.t()).addcmul_(x, coef), torch.mm(x.t(), g), None


# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------
def width_reason(width: int) -> str | None:
    if width > MAX_WIDTH:
        return (f"the projection kernel holds at most {MAX_WIDTH} output columns in registers, got {width} "
                "(a wide GEMM like mHC-lite's n! columns at n >= 6 belongs to cuBLAS)")
    return None


def project(x: Tensor, phi: Tensor, eps: float, backend: str = "torch", precision: str = "tf32") -> Tensor:
    """mix = RMSNorm(x) φ over the last dim of x, in fp32; backend: torch | triton | auto."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    why = dtype_reason(x) or width_reason(phi.shape[1])
    *lead, K = x.shape
    if resolve(backend, x.device, why) == "torch":
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or cpu_kernel_mode() == "off":
            return project_reference(x, phi, eps)
        return _ProjectCPU.apply(x.reshape(-1, K), phi.to(x.dtype), eps).view(*lead, phi.shape[1])
    phi32 = phi.float()
    if precision == "tf32":  # round to nearest here, the tensor cores would truncate (kernels/precision.py);
        phi32 = phi32 + (tf32_round(phi32) - phi32).detach()  # the gradient passes straight through
    mix, _ = project_op(x.reshape(-1, K).contiguous(), phi32.contiguous(), eps, precision)
    return mix.view(*lead, phi.shape[1])
