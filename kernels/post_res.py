"""Post + residual merge of a multi-stream residual (mHC Eq. 3, §3.2 kernel (5)):

    x' = H_res · x + H_post^T · y        x: (..., n, C), y = F(h): (..., C),
                                         H_post: (..., n), H_res: (..., n, n) -> x': (..., n, C)

with (H_res·x)_i = Σ_j H_res[i, j] x_j. None is the fixed mapping (H_post = 1, H_res = I).
Fused, one pass reads (n + 1)·C and writes n·C per token; the unfused reference reads and
writes the intermediate H_res·x and H_post^T·y as well. Backward: dx = H_res^T g,
dy = Σ_i H_post[i] g_i, and the C-sums dH_res = g x^T, dH_post = g y, in fp32.
On a CPU, backend=torch runs kernels/post_res_cpu.cpp for fp32/fp64 streams in eager mode: one
pass per token instead of a batched n x n by n x C matmul per token plus the elementwise ops
around it. Under torch.compile the reference runs, which inductor fuses with its neighbours.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from kernels import cpu_build
from kernels.backend import (
    absent,
    dtype_reason,
    empty_like,
    kernel_op,
    load,
    resolve,
    use_cpu_kernel,
)
from kernels.premix import cpu_dtype_reason


# ---------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------
def post_res_reference(x: Tensor, y: Tensor, h_post: Tensor | None, h_res: Tensor | None) -> Tensor:
    y = y.to(x.dtype).unsqueeze(-2)  # (..., 1, C), broadcast over the n streams
    mixed = x if h_res is None else h_res.to(x.dtype) @ x  # (..., n, n) @ (..., n, C)
    written = y if h_post is None else h_post.to(x.dtype).unsqueeze(-1) * y
    return mixed + written


# ---------------------------------------------------------------------------------------------
# Custom ops around the kernels (one opaque node each for torch.compile), with their autograd
# ---------------------------------------------------------------------------------------------
@kernel_op("post_res", fake=lambda x, y, post, res: torch.empty_like(x))
def post_res_op(x: Tensor, y: Tensor, post: Optional[Tensor], res: Optional[Tensor]) -> Tensor:
    """x (T, n, C), y (T, C) contiguous; post (T, n), res (T, n, n) fp32 or None (1, I) -> x'."""
    return load("post_res_triton").forward(x, y, post, res)


def _backward_fake(x, y, post, res, g):
    return (torch.empty_like(x), torch.empty_like(y), torch.empty_like(post) if post is not None else absent(x),
            torch.empty_like(res) if res is not None else absent(x))


@kernel_op("post_res_backward", fake=_backward_fake)
def post_res_backward_op(x: Tensor, y: Tensor, post: Optional[Tensor], res: Optional[Tensor],
                         g: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dy, dpost, dres = load("post_res_triton").backward(x, y, post, res, g)
    return dx, dy, dpost if dpost is not None else absent(x), dres if dres is not None else absent(x)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, g):
    x, y, post, res = ctx.saved_tensors
    dx, dy, dpost, dres = post_res_backward_op(x, y, post, res, g.contiguous())
    return dx, dy, dpost if post is not None else None, dres if res is not None else None


post_res_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# CPU kernels (kernels/post_res_cpu.cpp): every tensor in the stream dtype (fp32 or fp64)
# ---------------------------------------------------------------------------------------------
def _cpu_forward(x: Tensor, y: Tensor, post: Optional[Tensor], res: Optional[Tensor]) -> Tensor:
    out = empty_like(x)
    cpu_build.call("post_res_forward", x, y, post, res, out, x.shape[0], x.shape[1], x.shape[2])
    return out


def _cpu_backward(x: Tensor, y: Tensor, post: Optional[Tensor], res: Optional[Tensor], g: Tensor):
    dx, dy = empty_like(x), empty_like(y)
    dpost = None if post is None else empty_like(post)
    dres = None if res is None else empty_like(res)
    cpu_build.call("post_res_backward", x, y, post, res, g, dx, dy, dpost, dres, x.shape[0], x.shape[1], x.shape[2])
    return dx, dy, dpost, dres


class _PostResCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, post: Optional[Tensor], res: Optional[Tensor]) -> Tensor:  # ctx first: a separate setup_context costs a signature bind per call
        _setup(ctx, (x, y, post, res), None)
        return _cpu_forward(x, y, post, res)

    @staticmethod
    def backward(ctx, g):
        return _cpu_backward(*ctx.saved_tensors, g.contiguous())




# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------
def post_res(x: Tensor, y: Tensor, h_post: Tensor | None, h_res: Tensor | None, backend: str = "torch") -> Tensor:
    """x' = H_res·x + H_post^T·y (None = fixed 1 / I); backend: torch | triton | auto."""
    *lead, n, C = x.shape
    if resolve(backend, x.device, dtype_reason(x, y)) == "torch":
        if torch.compiler.is_compiling() or not use_cpu_kernel(x.device, cpu_dtype_reason(x, y)):
            return post_res_reference(x, y, h_post, h_res)  # compiled: inductor fuses the reference with its neighbours
        flat = lambda h, *tail: None if h is None else h.to(x.dtype).expand(*lead, *tail).reshape(-1, *tail).contiguous()  # noqa: E731
        return _PostResCPU.apply(x.reshape(-1, n, C).contiguous(), y.to(x.dtype).expand(*lead, C).reshape(-1, C).contiguous(),
                            flat(h_post, n), flat(h_res, n, n)).view(x.shape)
    flat = lambda h, *tail: None if h is None else h.expand(*lead, *tail).reshape(-1, *tail).float()  # noqa: E731
    out = post_res_op(x.reshape(-1, n, C).contiguous(), y.expand(*lead, C).reshape(-1, C).contiguous(),
                      flat(h_post, n), flat(h_res, n, n))  # autograd sums broadcast coefficients back
    return out.view(x.shape)
