"""Triton kernels of the pre-mix h = Σ_i H_pre[i] x_i (mHC §3.2 kernel (4), "apply H_pre").

Imported lazily by kernels/premix.py. Layout: x (T, n, C) contiguous, H_pre (T, n) fp32 with
any strides (a static H_pre is an expanded view), h (T, C). Program (p, q) owns BLOCK_T
tokens and channels q·BLOCK_C ...; its tile is (BLOCK_T, N_PAD, BLOCK_C), masked in every
dimension, with each thread holding 16 contiguous bytes of every stream (see
kernels/backend.stream_tiles), so the sum over streams never leaves a thread. All arithmetic
is fp32 whatever the stream dtype; results are rounded once, on store. Every program issues
all of its loads before its first store.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.backend import empty, launcher, next_pow2, stream_tiles
from kernels.tiles_triton import coefficient, stream_tile


# =============================================================================================
# Forward: h[t, c] = Σ_i H_pre[t, i] x[t, i, c]          reads n·C, writes C per token
# =============================================================================================
@triton.jit
def _premix_fwd(x_ptr, w_ptr, h_ptr, T, C, stride_wt, stride_wi,
                N: tl.constexpr, N_PAD: tl.constexpr, HAS_W: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    t64, c, i, m2, mtc, m3, offs3 = stream_tile(T, C, N, N_PAD, BLOCK_T, BLOCK_C)
    w = coefficient(w_ptr, t64, i, stride_wt, stride_wi, m2, HAS_W, 1.0 / N)  # fixed H_pre = 1/n: the mean
    x = tl.load(x_ptr + offs3, mask=m3, other=0.0).to(tl.float32)
    h = tl.sum(x * w[:, :, None], axis=1)
    tl.store(h_ptr + t64[:, None] * C + c[None, :], h.to(h_ptr.dtype.element_ty), mask=mtc)


# =============================================================================================
# Backward: dx[t, i, c] = H_pre[t, i] dh[t, c]        dH_pre[t, i] = Σ_c x[t, i, c] dh[t, c]
# Program (p, q) writes its channel block's share of dH_pre into partial[t, q, i]; the launcher
# adds the S = cdiv(C, BLOCK_C) shares (T·S·n floats, deterministic, no atomics).
# Reads (n + 1)·C, writes n·C per token.
# =============================================================================================
@triton.jit
def _premix_bwd(x_ptr, w_ptr, dh_ptr, dx_ptr, part_ptr, T, C, S, stride_wt, stride_wi,
                N: tl.constexpr, N_PAD: tl.constexpr, HAS_W: tl.constexpr,
                BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    t64, c, i, m2, mtc, m3, offs3 = stream_tile(T, C, N, N_PAD, BLOCK_T, BLOCK_C)
    w = coefficient(w_ptr, t64, i, stride_wt, stride_wi, m2, HAS_W, 1.0 / N)
    dh = tl.load(dh_ptr + t64[:, None] * C + c[None, :], mask=mtc, other=0.0).to(tl.float32)
    if HAS_W:
        x = tl.load(x_ptr + offs3, mask=m3, other=0.0).to(tl.float32)
    tl.store(dx_ptr + offs3, (w[:, :, None] * dh[:, None, :]).to(dx_ptr.dtype.element_ty), mask=m3)
    if HAS_W:
        share = tl.sum(x * dh[:, None, :], axis=2)
        tl.store(part_ptr + (t64[:, None] * S + tl.program_id(1)) * N + i[None, :], share, mask=m2)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
@launcher
def forward(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """x (T, n, C) contiguous, w (T, n) fp32 or None -> h (T, C) in x.dtype."""
    T, n, C = x.shape
    h = empty((T, C), x.dtype, x.device)
    if T == 0 or C == 0:
        return h
    n_pad = next_pow2(n)
    bt, bc, warps = stream_tiles(n_pad, C, T, x.element_size())
    sw = w.stride() if w is not None else (0, 0)
    grid = (triton.cdiv(T, bt), triton.cdiv(C, bc))
    _premix_fwd[grid](x, w if w is not None else x, h, T, C, sw[0], sw[1],
                      N=n, N_PAD=n_pad, HAS_W=w is not None, BLOCK_T=bt, BLOCK_C=bc, num_warps=warps)
    return h


@launcher
def backward(x: torch.Tensor, w: torch.Tensor | None, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> dx (T, n, C) in x.dtype, dw (T, n) fp32 (None when w is None)."""
    T, n, C = x.shape
    dx = empty((T, n, C), x.dtype, x.device)
    if T == 0 or C == 0:
        return dx, (torch.zeros((T, n), dtype=torch.float32, device=x.device) if w is not None else None)
    n_pad = next_pow2(n)
    bt, bc, warps = stream_tiles(n_pad, C, T, x.element_size())
    S = triton.cdiv(C, bc)
    part = empty((T, S, n), torch.float32, x.device) if w is not None else None
    sw = w.stride() if w is not None else (0, 0)
    _premix_bwd[(triton.cdiv(T, bt), S)](x, w if w is not None else x, dh, dx, part if part is not None else dx, T, C, S,
                                         sw[0], sw[1], N=n, N_PAD=n_pad, HAS_W=w is not None,
                                         BLOCK_T=bt, BLOCK_C=bc, num_warps=warps)
    return dx, None if part is None else part.sum(dim=1) if S > 1 else part.squeeze(1)
