"""Kernels the compile gate must refuse; compiled by tests/test_kernel_compile.py through the audit.

`annotated_global`: a module global merely annotated `tl.constexpr` (the interpreter accepts
it, Triton's compiler does not: the trap the heads and Sinkhorn kernels once fell into).
`register_hog`: a 64 x 256 fp32 tile in one warp, all of it live until both of its sums are
known, needs 512 registers per thread, past the 255 a thread can have, so ptxas spills.
"""

import torch
import triton
import triton.language as tl

SCALE: tl.constexpr = 2.0  # wrong on purpose: must be SCALE = tl.constexpr(2.0)


@triton.jit
def _annotated_global(x_ptr, n):
    i = tl.arange(0, 128)
    tl.store(x_ptr + i, tl.load(x_ptr + i, mask=i < n) * SCALE, mask=i < n)


@triton.jit
def _register_hog(x_ptr, out_ptr):
    r = tl.arange(0, 64)
    c = tl.arange(0, 256)
    x = tl.load(x_ptr + r[:, None] * 256 + c[None, :])
    tl.store(out_ptr + r[:, None] * 256 + c[None, :], x * tl.sum(x, axis=0)[None, :] + tl.sum(x, axis=1)[:, None])


def annotated_global(T, n, C, dtype):
    _annotated_global[(1,)](torch.empty(T, device="meta"), T)


def register_hog(T, n, C, dtype):
    _register_hog[(1,)](torch.empty(64 * 256, device="meta"), torch.empty(64 * 256, device="meta"), num_warps=1)
