"""Triton kernels of the normalised projection mix = RMSNorm(x⃗) φ (mHC Eq. 14-15, §3.2 kernel (1)).

Imported lazily by kernels/project.py. x (R, K) contiguous in the stream dtype, φ (K, W) fp32
contiguous, mix (R, W) fp32, inv_r (R,) fp32. The GEMM over K is fused with the sum of
squares of the same x tiles, so x is read exactly once; 1/r scales the finished row (the
paper's order: x⃗φ first, then / r). fp32 accumulation; the dot's input precision is the
`precision` argument ("ieee" by default: exact fp32; "tf32"/"tf32x3" trade bits for speed
on tensor cores, the paper uses tf32).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.backend import empty, interpreting, launcher, next_pow2, sm_count
from kernels.precision import tf32_round


# =============================================================================================
# Forward (Eq. 14-15): acc = x φ and ss = Σ x² in one sweep over K; mix = acc · rsqrt(ss/K + eps).
# Program (p, s) owns BLOCK_R rows and the s-th slice of K (split-K: enough programs to fill
# the GPU when there are few rows). With one slice the program finishes the rows itself;
# otherwise it writes its partial acc and ss and the launcher adds the slices (S·R·(W + 1)
# floats, deterministic). The dot runs on tensor cores unless PRECISION is "ieee".
# =============================================================================================
@triton.jit
def _project_fwd(x_ptr, phi_ptr, mix_ptr, invr_ptr, acc_ptr, ss_ptr, R, K, W, k_per_split, eps,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_W: tl.constexpr,
                 SPLIT: tl.constexpr, PRECISION: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    w = tl.arange(0, BLOCK_W)
    split = tl.program_id(1)
    r64 = r.to(tl.int64)
    rm, wm = r < R, w < W
    acc = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.float32)
    ss = tl.zeros((BLOCK_R,), dtype=tl.float32)
    k_end = tl.minimum(K, (split + 1) * k_per_split)
    for k0 in range(split * k_per_split, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        km = k < k_end
        a = tl.load(x_ptr + r64[:, None] * K + k[None, :], mask=rm[:, None] & km[None, :], other=0.0).to(tl.float32)
        b = tl.load(phi_ptr + k[:, None].to(tl.int64) * W + w[None, :], mask=km[:, None] & wm[None, :], other=0.0)
        ss += tl.sum(a * a, axis=1)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    if SPLIT:
        base = split.to(tl.int64) * R + r64
        tl.store(acc_ptr + base[:, None] * W + w[None, :], acc, mask=rm[:, None] & wm[None, :])
        tl.store(ss_ptr + base, ss, mask=rm)
    else:
        inv_r = tl.rsqrt(ss / K + eps)
        tl.store(mix_ptr + r64[:, None] * W + w[None, :], acc * inv_r[:, None], mask=rm[:, None] & wm[None, :])
        tl.store(invr_ptr + r, inv_r, mask=rm)


# =============================================================================================
# Backward. With dP = dmix · inv_r and coef = -(Σ_w dmix · mix) · inv_r² / K (per row):
#     dx = dP φ^T + coef · x        dφ = x^T dP
# A program owns a K slice and walks a range of rows: x is read once for both products, its
# φ^T slice is loaded once, and dφ accumulates on the tensor cores (per row split; the
# splits' partial sums are added afterwards, so the result is deterministic, no atomics).
# =============================================================================================
@triton.jit
def _project_bwd(x_ptr, phi_ptr, dp_ptr, coef_ptr, dx_ptr, dphi_ptr, R, K, W, rows_per_split,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, W_PAD: tl.constexpr, PRECISION: tl.constexpr):
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    split = tl.program_id(1)
    w = tl.arange(0, W_PAD)
    km, wm = k < K, w < W
    phi_t = tl.load(phi_ptr + k[None, :].to(tl.int64) * W + w[:, None], mask=wm[:, None] & km[None, :], other=0.0)
    dphi = tl.zeros((BLOCK_K, W_PAD), dtype=tl.float32)
    r_start = split * rows_per_split
    r_end = tl.minimum(R, r_start + rows_per_split)
    for r0 in range(r_start, r_end, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rm = r < r_end
        r64 = r.to(tl.int64)
        a = tl.load(x_ptr + r64[:, None] * K + k[None, :], mask=rm[:, None] & km[None, :], other=0.0).to(tl.float32)
        d = tl.load(dp_ptr + r64[:, None] * W + w[None, :], mask=rm[:, None] & wm[None, :], other=0.0)
        cf = tl.load(coef_ptr + r, mask=rm, other=0.0)
        dx = tl.dot(d, phi_t, input_precision=PRECISION) + cf[:, None] * a
        tl.store(dx_ptr + r64[:, None] * K + k[None, :], dx.to(dx_ptr.dtype.element_ty), mask=rm[:, None] & km[None, :])
        dphi = tl.dot(tl.trans(a), d, dphi, input_precision=PRECISION)
    tl.store(dphi_ptr + split.to(tl.int64) * K * W + k[:, None].to(tl.int64) * W + w[None, :], dphi,
             mask=km[:, None] & wm[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _blocks(R: int, K: int, W: int, elem: int, backward: bool, precision: str) -> tuple[int, int, int, int]:
    """(BLOCK_R, BLOCK_K, W_PAD, num_warps); tl.dot needs every dim >= 16, and Hopper's
    warp-group MMA 64 rows per 4 warps. The fp32 accumulators ((BLOCK_R, W_PAD) forward; dx's
    (BLOCK_R, BLOCK_K) and dφ's (BLOCK_K, W_PAD) backward) and an fp32 tile of x must fit the
    registers with room to spare: no spills on sm_90a or sm_100a at any precision (the compile
    gate checks). tf32x3 keeps three products' operands live, and ieee (fp32 FMA, no tensor
    cores) holds the dot's operands broadcast in registers, so their backward tiles are smaller."""
    w_pad = max(16, next_pow2(W))
    if interpreting():
        return max(16, min(next_pow2(R), 64)), max(16, min(next_pow2(K), 512)), w_pad, 1
    bk = 64 if w_pad <= 64 and (elem < 4 or backward) else 32
    if backward and precision != "tf32":
        bk = 32 if w_pad <= 64 else 16
    br = 64
    if backward and precision != "tf32":
        br = 32 if w_pad <= 64 else 16
    if backward and w_pad >= 256:  # dφ, φ and dp tiles 256 wide: at 64 x 32 they spilled (go-mhc, n = 8)
        br = min(br, 32)
    return br, bk, w_pad, 8 if w_pad >= 128 or (backward and precision == "tf32x3") else 4


@launcher
def forward(x: torch.Tensor, phi: torch.Tensor, eps: float, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """x (R, K) contiguous, φ (K, W) fp32 contiguous -> mix (R, W) fp32, inv_r (R,) fp32."""
    R, K = x.shape
    W = phi.shape[1]
    mix = empty((R, W), torch.float32, x.device)
    inv_r = empty((R,), torch.float32, x.device)
    if R == 0:
        return mix, inv_r
    br, bk, w_pad, warps = _blocks(R, K, W, x.element_size(), False, precision)
    row_blocks, k_steps = triton.cdiv(R, br), triton.cdiv(K, bk)
    # split K when the rows alone give fewer than two programs per SM, keeping >= 4 K steps each
    splits = 1 if interpreting() else max(1, min(triton.cdiv(2 * sm_count(x.device), row_blocks), k_steps // 4))
    k_per_split = triton.cdiv(k_steps, splits) * bk
    splits = triton.cdiv(K, k_per_split)
    acc = empty((splits, R, W), torch.float32, x.device) if splits > 1 else mix
    ss = empty((splits, R), torch.float32, x.device) if splits > 1 else inv_r
    _project_fwd[(row_blocks, splits)](x, phi, mix, inv_r, acc, ss, R, K, W, k_per_split, eps,
                                       BLOCK_R=br, BLOCK_K=bk, BLOCK_W=w_pad, SPLIT=splits > 1, PRECISION=precision,
                                       num_warps=warps, **({} if interpreting() else {"num_stages": 3}))
    if splits > 1:
        torch.rsqrt(ss.sum(dim=0) / K + eps, out=inv_r)
        torch.mul(acc.sum(dim=0), inv_r[:, None], out=mix)
    return mix, inv_r


@launcher
def backward(x, phi, mix, inv_r, dmix, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """-> dx (R, K) in x.dtype, dφ (K, W) fp32."""
    R, K = x.shape
    W = phi.shape[1]
    dx = empty((R, K), x.dtype, x.device)
    if R == 0:
        return dx, torch.zeros((K, W), dtype=torch.float32, device=x.device)
    # per-row scalars of the RMS backward: R·W values, negligible next to the R·K stream
    dp = (dmix * inv_r[:, None]).contiguous()
    if precision == "tf32":  # round to nearest: the tensor core would truncate (kernels/precision.py)
        dp = tf32_round(dp)
    coef = (-(dmix * mix).sum(dim=1) * inv_r.square() / K).contiguous()
    br, bk, w_pad, warps = _blocks(R, K, W, x.element_size(), True, precision)
    k_blocks = triton.cdiv(K, bk)
    row_blocks = triton.cdiv(R, br)
    # about two programs per SM (more would only add a partial wave at this kernel's occupancy)
    splits = 1 if interpreting() else max(1, min(row_blocks, 2 * sm_count(x.device) // k_blocks))
    rows_per_split = triton.cdiv(row_blocks, splits) * br
    splits = triton.cdiv(R, rows_per_split)
    dphi = empty((splits, K, W), torch.float32, x.device)
    _project_bwd[(k_blocks, splits)](x, phi, dp, coef, dx, dphi, R, K, W, rows_per_split,
                                     BLOCK_R=br, BLOCK_K=bk, W_PAD=w_pad, PRECISION=precision, num_warps=warps,
                                     **({} if interpreting() else {"num_stages": 1}))
    return dx, dphi[0] if splits == 1 else dphi.sum(dim=0)
