"""Triton Sinkhorn-Knopp on (BLOCK_T, N_PAD, N_PAD) register tiles, forward and exact backward.

Imported lazily by kernels/sinkhorn.py and kernels/coefficients_triton.py (whose fused
coefficient kernel calls `sk_forward` / `sk_backward` on the logits it has just formed).
The two finite-k conventions of kernels/sinkhorn_reference.py, bit for bit the same algebra:

    MODE 0 (paper)   log M⁰ = L; ITERS × [normalise columns, normalise rows], each in the
                     log domain (x - logsumexp x); H = exp(log M) at the end.
                     ITERS = 0: exp(L) with no normalisation.                 (mHC Eq. 19)
    MODE 1 (kernel)  softmax_rows(L) + eps, then columns, then (ITERS - 1) × [rows, columns],
                     every sum offset by eps; ITERS = 0: the row softmax + eps alone.

MODE 0 stays finite at any logit range: its logsumexp subtracts the column's (row's) max
first, so each sum is >= 1 (a linear-domain sum of exp(L - max L) is 0 once a whole column
sits ~87 below the max, and the backward divides by it); see kernels/sinkhorn_reference.py.

Backward (mHC §3.2 kernel (3)): only the logits are kept. The iterates are recomputed in
registers with the very same operations as the forward (so bit for bit the forward's), going
backwards round by round: to back-propagate through round s the kernel needs M^(s-1); it keeps
one checkpoint iterate, rebuilt from M⁰ whenever the backward crosses into the next chunk of
~√k rounds, and replays the rest of the chunk from it: about k^1.5 instead of k²/2 replayed
rounds (k = 20: 70 instead of 190), and no memory traffic. The gradient is the exact derivative
of the k-step map (not the implicit-function gradient of the converged projection). In MODE 0,
y = x - logsumexp(x) along an axis has dx = dy - softmax(x) Σ dy along it, and softmax(x) is
exp(y), the step's own output; H = exp(log M) adds dlog M = G·H. Padded rows/columns
(i, j >= n) hold log M = NEG (M = 0) throughout and their gradient is masked to 0.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from kernels.backend import empty, launcher, next_pow2, token_tiles

# Module constants a kernel reads must BE tl.constexpr objects: the compiler refuses a global that
# is merely annotated `x: tl.constexpr = v` (the interpreter accepts it).
TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(torch.float32).tiny: floors a padded row's 0 sum
NEG = tl.constexpr(-1.0e30)  # stands in for -inf on padded logits (keeps exp/max finite)


# ---------------------------------------------------------------------------------------------
# Normalisation steps: sums over axis 1 (over rows i) are column sums, over axis 2 row sums.
# MODE 0's log-domain steps are helpers; MODE 1's are written out inline (helpers would compile
# to the same code, but the CPU interpreter pays a fixed cost per nested jit call).
# ---------------------------------------------------------------------------------------------
@triton.jit
def _log_cols(x, mask):
    """x - logsumexp over each column, as (x - max) - log Σ exp(x - max): the sum is >= 1
    (its largest term is exp(0)), and only the small log Σ is rounded against the result.
    Padding stays NEG; a fully padded column (max = NEG) gives z = 0 there, never log 0."""
    z = x - tl.max(x, axis=1)[:, None, :]
    return tl.where(mask, z - tl.log(tl.sum(tl.exp(z), axis=1))[:, None, :], NEG)


@triton.jit
def _log_rows(x, mask):
    """x - logsumexp over each row (as _log_cols)."""
    z = x - tl.max(x, axis=2)[:, :, None]
    return tl.where(mask, z - tl.log(tl.sum(tl.exp(z), axis=2))[:, :, None], NEG)


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
            x = tl.where(mask, L, NEG)  # log M⁰
            for _ in range(ITERS):  # columns, then rows
                x = _log_rows(_log_cols(x, mask), mask)
            m = tl.where(mask, tl.exp(x), 0.0)
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
            x0 = tl.where(mask, L, NEG)  # log M⁰
            ck = x0  # the checkpoint: log M^ck_at
            ck_at = tl.program_id(0) * 0
            for r in range(ITERS):  # back through round s = ITERS - r, which needs log M^(s-1)
                need = ITERS - 1 - r
                base = (need // CHUNK) * CHUNK
                if base != ck_at:  # moved down into the next chunk: rebuild its checkpoint from log M⁰
                    ck = x0
                    for _ in range(base):
                        ck = _log_rows(_log_cols(ck, mask), mask)
                    ck_at = base
                x = ck
                for _ in range(need - base):  # replay rounds base+1 .. s-1
                    x = _log_rows(_log_cols(x, mask), mask)
                c = _log_cols(x, mask)
                ey = tl.exp(_log_rows(c, mask))  # M^s; 0 on padding
                if r == 0:  # the last round: G is dL/dH, and H = exp(log M^ITERS)
                    G = G * ey
                # rows: y = c - logsumexp_j c, softmax_j(c) = exp(y)
                G = G - ey * tl.sum(G, axis=2)[:, :, None]
                # columns: c = x - logsumexp_i x, softmax_i(x) = exp(c)
                G = tl.where(mask, G - tl.exp(c) * tl.sum(G, axis=1)[:, None, :], 0.0)
            dL = G  # log M⁰ = L
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
