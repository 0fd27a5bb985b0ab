"""Triton Sinkhorn-Knopp on (BLOCK_T, N_PAD, N_PAD) register tiles, forward and exact backward.

Imported lazily by kernels/sinkhorn.py and kernels/coefficients_triton.py (whose fused
coefficient kernel calls `sk_forward` / `sk_backward` on the logits it has just formed).
The two finite-k conventions of variants/sinkhorn.py, bit for bit the same algebra:

    MODE 0 (paper)   M⁰ = exp(L - max L); ITERS × [normalise columns, normalise rows];
                     ITERS = 0: exp(L) with no shift and no normalisation.   (mHC Eq. 19)
    MODE 1 (kernel)  softmax_rows(L) + eps, then columns, then (ITERS - 1) × [rows, columns],
                     every sum offset by eps; ITERS = 0: the row softmax + eps alone.

Backward (mHC §3.2 kernel (3)): only the logits are kept. The iterates are recomputed in
registers with the very same operations as the forward (so bit for bit the forward's), going
backwards round by round: to back-propagate through round s the kernel needs M^(s-1); it keeps
one checkpoint iterate, rebuilt from M⁰ whenever the backward crosses into the next chunk of
~√k rounds, and replays the rest of the chunk from it: about k^1.5 instead of k²/2 replayed
rounds (k = 20: 70 instead of 190), and no memory traffic. The gradient is the exact derivative of the k-step map (not the implicit-
function gradient of the converged projection). Padded rows/columns (i, j >= n) hold 0
throughout and their gradient is masked to 0.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from kernels.backend import empty, launcher, next_pow2, token_tiles

# Module constants a kernel reads must BE tl.constexpr objects: the compiler refuses a global that
# is merely annotated `x: tl.constexpr = v` (the interpreter accepts it).
TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(torch.float32).tiny: the 0-sum floor
NEG = tl.constexpr(-1.0e30)  # stands in for -inf on padded logits (keeps exp/max finite)


# ---------------------------------------------------------------------------------------------
# Normalisation steps are written out inline below: sums over axis 1 (over rows i) are column
# sums, over axis 2 row sums. (Helper functions would compile to the same code, but the CPU
# interpreter pays a large fixed cost per nested jit call, and these run k² times.)
# ---------------------------------------------------------------------------------------------
@triton.jit
def _exp_shifted(L, mask):
    """exp(L - max_valid L) per matrix; 0 on padding."""
    Lm = tl.where(mask, L, NEG)
    shift = tl.max(tl.max(Lm, axis=2), axis=1)
    return tl.where(mask, tl.exp(Lm - shift[:, None, None]), 0.0)


@triton.jit
def _softmax_rows(L, mask):
    Lm = tl.where(mask, L, NEG)
    e = tl.where(mask, tl.exp(Lm - tl.max(Lm, axis=2)[:, :, None]), 0.0)
    return e / tl.maximum(tl.sum(e, axis=2), TINY)[:, :, None]


# =============================================================================================
# Forward   (mHC Eq. 19: H_res = SK(H̃_res))
# =============================================================================================
@triton.jit
def sk_forward(L, mask, ITERS: tl.constexpr, MODE: tl.constexpr, EPS: tl.constexpr):
    if MODE == 0:
        if ITERS == 0:
            m = tl.where(mask, tl.exp(tl.where(mask, L, 0.0)), 0.0)
        else:
            m = _exp_shifted(L, mask)
            for _ in range(ITERS):  # columns, then rows; a 0 sum (all underflowed) is floored at tiny
                m = m / tl.maximum(tl.sum(m, axis=1), TINY)[:, None, :]
                m = m / tl.maximum(tl.sum(m, axis=2), TINY)[:, :, None]
    else:
        m = tl.where(mask, _softmax_rows(L, mask) + EPS, 0.0)
        if ITERS > 0:
            m = m / (tl.sum(m, axis=1) + EPS)[:, None, :]
            for _ in range(ITERS - 1):  # rows, then columns, each sum + eps
                m = m / (tl.sum(m, axis=2) + EPS)[:, :, None]
                m = m / (tl.sum(m, axis=1) + EPS)[:, None, :]
    return m


# =============================================================================================
# Backward: dL from G = dL/dH_res, recomputing the iterates from the logits
# =============================================================================================
@triton.jit
def sk_backward(L, mask, G, ITERS: tl.constexpr, MODE: tl.constexpr, EPS: tl.constexpr, CHUNK: tl.constexpr):
    """dL from G = dL/dH; CHUNK (`sk_chunk`) is the checkpoint spacing (module doc)."""
    G = tl.where(mask, G, 0.0)
    if MODE == 0:
        if ITERS == 0:
            dL = G * tl.where(mask, tl.exp(tl.where(mask, L, 0.0)), 0.0)
        else:
            m0 = _exp_shifted(L, mask)
            ck = m0  # the checkpoint: M^ck_at
            ck_at = tl.program_id(0) * 0
            for r in range(ITERS):  # back through round s = ITERS - r, which needs M^(s-1)
                need = ITERS - 1 - r
                base = (need // CHUNK) * CHUNK
                if base != ck_at:  # moved down into the next chunk: rebuild its checkpoint from M⁰
                    ck = m0
                    for _ in range(base):
                        ck = ck / tl.maximum(tl.sum(ck, axis=1), TINY)[:, None, :]
                        ck = ck / tl.maximum(tl.sum(ck, axis=2), TINY)[:, :, None]
                    ck_at = base
                m = ck
                for _ in range(need - base):  # replay rounds base+1 .. s-1
                    m = m / tl.maximum(tl.sum(m, axis=1), TINY)[:, None, :]
                    m = m / tl.maximum(tl.sum(m, axis=2), TINY)[:, :, None]
                cs = tl.sum(m, axis=1)
                csf = tl.maximum(cs, TINY)
                mc = m / csf[:, None, :]
                rs = tl.sum(mc, axis=2)
                rsf = tl.maximum(rs, TINY)
                out = mc / rsf[:, :, None]
                # rows: out = mc / max(rowsum, tiny); the floor passes no gradient below tiny
                gr = tl.where(rs >= TINY, tl.sum(G * out, axis=2) / rsf, 0.0)
                dmc = tl.where(mask, G / rsf[:, :, None] - gr[:, :, None], 0.0)
                # columns: mc = m / max(colsum, tiny)
                gc = tl.where(cs >= TINY, tl.sum(dmc * mc, axis=1) / csf, 0.0)
                G = tl.where(mask, dmc / csf[:, None, :] - gc[:, None, :], 0.0)
            dL = G * m0  # d exp; the shift is a detached constant
    else:
        p = _softmax_rows(L, mask)
        m0 = tl.where(mask, p + EPS, 0.0)
        if ITERS > 0:
            # steps u = 0 .. 2·ITERS - 2: even = columns, odd = rows; y = m / (sum + eps)
            # has dm = (dy - Σ dy·y) / (sum + eps) along the normalised axis. CHUNK is even,
            # so every checkpoint sits before a column step.
            ck = m0
            ck_at = tl.program_id(0) * 0
            for r in range(2 * ITERS - 1):
                u = 2 * ITERS - 2 - r  # back through step u, which needs the state after steps 0 .. u-1
                base = (u // CHUNK) * CHUNK
                if base != ck_at:
                    ck = m0
                    for _ in range(base // 2):
                        ck = ck / (tl.sum(ck, axis=1) + EPS)[:, None, :]
                        ck = ck / (tl.sum(ck, axis=2) + EPS)[:, :, None]
                    ck_at = base
                m = ck
                for _ in range((u - base) // 2):
                    m = m / (tl.sum(m, axis=1) + EPS)[:, None, :]
                    m = m / (tl.sum(m, axis=2) + EPS)[:, :, None]
                if (u - base) % 2 == 1:
                    m = m / (tl.sum(m, axis=1) + EPS)[:, None, :]
                if u % 2 == 0:
                    s = tl.sum(m, axis=1) + EPS
                    y = m / s[:, None, :]
                    G = tl.where(mask, (G - tl.sum(G * y, axis=1)[:, None, :]) / s[:, None, :], 0.0)
                else:
                    s = tl.sum(m, axis=2) + EPS
                    y = m / s[:, :, None]
                    G = tl.where(mask, (G - tl.sum(G * y, axis=2)[:, :, None]) / s[:, :, None], 0.0)
        # the + eps is a constant; the row softmax: dL = p (G - Σ_j G p)
        dL = tl.where(mask, p * (G - tl.sum(G * p, axis=2)[:, :, None]), 0.0)
    return dL


# =============================================================================================
# Stand-alone op on (T, n, n) logits (the coefficient kernel fuses the same helpers)
# =============================================================================================
@triton.jit
def _sinkhorn_fwd(L_ptr, out_ptr, T, N: tl.constexpr, N_PAD: tl.constexpr,
                  ITERS: tl.constexpr, MODE: tl.constexpr, EPS: tl.constexpr, BLOCK_T: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.arange(0, N_PAD)
    mask = (t < T)[:, None, None] & (i < N)[None, :, None] & (i < N)[None, None, :]
    offs = t.to(tl.int64)[:, None, None] * (N * N) + i[None, :, None] * N + i[None, None, :]
    L = tl.load(L_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, sk_forward(L, mask, ITERS, MODE, EPS), mask=mask)


@triton.jit
def _sinkhorn_bwd(L_ptr, G_ptr, dL_ptr, T, N: tl.constexpr, N_PAD: tl.constexpr,
                  ITERS: tl.constexpr, MODE: tl.constexpr, EPS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.arange(0, N_PAD)
    mask = (t < T)[:, None, None] & (i < N)[None, :, None] & (i < N)[None, None, :]
    offs = t.to(tl.int64)[:, None, None] * (N * N) + i[None, :, None] * N + i[None, None, :]
    L = tl.load(L_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    G = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(dL_ptr + offs, sk_backward(L, mask, G, ITERS, MODE, EPS, CHUNK), mask=mask)


MODES = {"paper": 0, "kernel": 1}


def sk_chunk(iters: int, mode: str) -> int:
    """Checkpoint spacing of the backward: ~sqrt of the number of normalisation steps (even in
    kernel mode, whose steps alternate columns and rows)."""
    c = max(1, math.isqrt(max(iters, 1)))
    return c if mode == "paper" else 2 * c


@launcher
def forward(L, iters: int, mode: str, eps: float):
    """L (T, n, n) fp32 contiguous -> H (T, n, n) fp32."""
    T, n, _ = L.shape
    out = empty(L.shape, L.dtype, L.device)
    if T:
        n_pad = next_pow2(n)
        bt, warps = token_tiles(T, n_pad * n_pad, L.device)
        _sinkhorn_fwd[(triton.cdiv(T, bt),)](L, out, T, N=n, N_PAD=n_pad, ITERS=iters, MODE=MODES[mode],
                                             EPS=eps, BLOCK_T=bt, num_warps=warps)
    return out


@launcher
def backward(L, G, iters: int, mode: str, eps: float):
    T, n, _ = L.shape
    dL = empty(L.shape, L.dtype, L.device)
    if T:
        n_pad = next_pow2(n)
        bt, warps = token_tiles(T, n_pad * n_pad, L.device)
        _sinkhorn_bwd[(triton.cdiv(T, bt),)](L, G, dL, T, N=n, N_PAD=n_pad, ITERS=iters, MODE=MODES[mode],
                                             EPS=eps, CHUNK=sk_chunk(iters, mode), BLOCK_T=bt, num_warps=warps)
    return dL
