"""Triton kernels of the coefficient heads (mHC Eq. 16-19, §3.2 kernels (2) and (3) fused).

Imported lazily by kernels/coefficients.py. Input: mix = RMSNorm(x⃗)φ (T, W) fp32 from the
projection kernel, per-column α (W,) and b (W,) fp32. Columns: pre at OFF_PRE (n), post at
OFF_POST (n), res at OFF_RES (n² logits, row-major [to, from]; mHC-lite: n! permutation
logits); an offset of -1 = that mapping is fixed (no columns). A program owns BLOCK_T tokens;
everything stays in registers: logits, σ, and all Sinkhorn rounds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.backend import empty, launcher, next_pow2, token_tiles
from kernels.sinkhorn_triton import MODES, NEG, TINY, sk_backward, sk_chunk, sk_forward
from kernels.tiles_triton import token_block


@triton.jit
def _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64, col, mask, col_mask, W):
    """Eq. 16: H̃ = α · mix + b; `col` (and `col_mask`) index columns, broadcast over tokens."""
    m = tl.load(mix_ptr + t64 * W + col, mask=mask, other=0.0)
    a = tl.load(alpha_ptr + col, mask=col_mask, other=0.0)
    b = tl.load(bias_ptr + col, mask=col_mask, other=0.0)
    return a * m + b


@triton.jit
def _perm_weights(L, fm):
    """mHC-lite: softmax over the n! permutation logits (padding excluded)."""
    Lm = tl.where(fm, L, NEG)
    e = tl.where(fm, tl.exp(Lm - tl.max(Lm, axis=1)[:, None]), 0.0)
    return e / tl.maximum(tl.sum(e, axis=1), TINY)[:, None]


# =============================================================================================
# Forward: H_pre = σ(H̃_pre) (Eq. 17), H_post = 2σ(H̃_post) (Eq. 18), H_res = SK(H̃_res) (Eq. 19)
#          or, for mHC-lite, H_res = Σ_k softmax(H̃_res)_k P_k
# =============================================================================================
@triton.jit
def _heads_fwd(mix_ptr, alpha_ptr, bias_ptr, perm_ptr, pre_ptr, post_ptr, res_ptr, logit_ptr, T, W,
               OFF_PRE: tl.constexpr, OFF_POST: tl.constexpr, OFF_RES: tl.constexpr, RES_KIND: tl.constexpr,
               N: tl.constexpr, N_PAD: tl.constexpr, F: tl.constexpr, F_PAD: tl.constexpr, NN_PAD: tl.constexpr,
               ITERS: tl.constexpr, MODE: tl.constexpr, EPS: tl.constexpr, BLOCK_T: tl.constexpr):
    t64, tm, i, m2 = token_block(T, N, N_PAD, BLOCK_T)
    if OFF_PRE >= 0:
        l = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None], OFF_PRE + i[None, :], m2, (i < N)[None, :], W)
        tl.store(pre_ptr + t64[:, None] * N + i[None, :], tl.sigmoid(l), mask=m2)
    if OFF_POST >= 0:
        l = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None], OFF_POST + i[None, :], m2, (i < N)[None, :], W)
        tl.store(post_ptr + t64[:, None] * N + i[None, :], 2.0 * tl.sigmoid(l), mask=m2)
    if RES_KIND == 1:  # Sinkhorn on the n×n logits
        m3 = m2[:, :, None] & (i < N)[None, None, :]
        cell = i[None, :, None] * N + i[None, None, :]
        cell_m = (i < N)[None, :, None] & (i < N)[None, None, :]
        L = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None, None], OFF_RES + cell, m3, cell_m, W)
        tl.store(logit_ptr + t64[:, None, None] * (N * N) + cell, L, mask=m3)
        tl.store(res_ptr + t64[:, None, None] * (N * N) + cell, sk_forward(L, m3, ITERS, MODE, EPS), mask=m3)
    if RES_KIND == 2:  # mHC-lite: convex combination of the n! permutation matrices
        f = tl.arange(0, F_PAD)
        q = tl.arange(0, NN_PAD)
        fm = tm[:, None] & (f < F)[None, :]
        L = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None], OFF_RES + f[None, :], fm, (f < F)[None, :], W)
        a = _perm_weights(L, fm)
        P = tl.load(perm_ptr + f[:, None] * (N * N) + q[None, :], mask=(f < F)[:, None] & (q < N * N)[None, :], other=0.0)
        H = tl.sum(a[:, :, None] * P[None, :, :], axis=1)
        tl.store(res_ptr + t64[:, None] * (N * N) + q[None, :], H, mask=tm[:, None] & (q < N * N)[None, :])


# =============================================================================================
# Backward: dH̃ (T, W) for every learned column; dα, db and dmix = α·dH̃ follow in PyTorch
# (T·W values). Sinkhorn's gradient recomputes the rounds from the logits (sinkhorn_triton).
# =============================================================================================
@triton.jit
def _heads_bwd(mix_ptr, alpha_ptr, bias_ptr, perm_ptr, gpre_ptr, gpost_ptr, gres_ptr, dl_ptr, T, W,
               OFF_PRE: tl.constexpr, OFF_POST: tl.constexpr, OFF_RES: tl.constexpr, RES_KIND: tl.constexpr,
               N: tl.constexpr, N_PAD: tl.constexpr, F: tl.constexpr, F_PAD: tl.constexpr, NN_PAD: tl.constexpr,
               ITERS: tl.constexpr, MODE: tl.constexpr, EPS: tl.constexpr, CHUNK: tl.constexpr, BLOCK_T: tl.constexpr):
    t64, tm, i, m2 = token_block(T, N, N_PAD, BLOCK_T)
    if OFF_PRE >= 0:
        l = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None], OFF_PRE + i[None, :], m2, (i < N)[None, :], W)
        s = tl.sigmoid(l)
        g = tl.load(gpre_ptr + t64[:, None] * N + i[None, :], mask=m2, other=0.0)
        tl.store(dl_ptr + t64[:, None] * W + OFF_PRE + i[None, :], g * (1.0 - s) * s, mask=m2)
    if OFF_POST >= 0:
        l = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None], OFF_POST + i[None, :], m2, (i < N)[None, :], W)
        s = tl.sigmoid(l)
        g = tl.load(gpost_ptr + t64[:, None] * N + i[None, :], mask=m2, other=0.0)
        tl.store(dl_ptr + t64[:, None] * W + OFF_POST + i[None, :], 2.0 * g * (1.0 - s) * s, mask=m2)
    if RES_KIND == 1:
        m3 = m2[:, :, None] & (i < N)[None, None, :]
        cell = i[None, :, None] * N + i[None, None, :]
        cell_m = (i < N)[None, :, None] & (i < N)[None, None, :]
        L = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None, None], OFF_RES + cell, m3, cell_m, W)
        G = tl.load(gres_ptr + t64[:, None, None] * (N * N) + cell, mask=m3, other=0.0)
        tl.store(dl_ptr + t64[:, None, None] * W + OFF_RES + cell, sk_backward(L, m3, G, ITERS, MODE, EPS, CHUNK), mask=m3)
    if RES_KIND == 2:
        f = tl.arange(0, F_PAD)
        q = tl.arange(0, NN_PAD)
        fm = tm[:, None] & (f < F)[None, :]
        L = _load_logits(mix_ptr, alpha_ptr, bias_ptr, t64[:, None], OFF_RES + f[None, :], fm, (f < F)[None, :], W)
        a = _perm_weights(L, fm)
        P = tl.load(perm_ptr + f[:, None] * (N * N) + q[None, :], mask=(f < F)[:, None] & (q < N * N)[None, :], other=0.0)
        G = tl.load(gres_ptr + t64[:, None] * (N * N) + q[None, :], mask=tm[:, None] & (q < N * N)[None, :], other=0.0)
        dA = tl.sum(G[:, None, :] * P[None, :, :], axis=2)  # dL/da_k = <G, P_k>
        dl = a * (dA - tl.sum(a * dA, axis=1)[:, None])  # softmax backward
        tl.store(dl_ptr + t64[:, None] * W + OFF_RES + f[None, :], dl, mask=fm)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------
def _meta(n: int, offsets: dict, res_kind: str, width_res: int, iters: int, mode: str, eps: float, T: int, device) -> dict:
    n_pad = next_pow2(n)
    kind = 0 if offsets["res"] < 0 else (1 if res_kind == "sinkhorn" else 2)
    f_pad, nn_pad = (max(2, next_pow2(width_res)), next_pow2(n * n)) if kind == 2 else (1, 1)
    per_token = n_pad * n_pad if kind != 2 else f_pad * nn_pad // 2  # the largest register tile per token
    bt, warps = token_tiles(T, per_token, device)
    return dict(OFF_PRE=offsets["pre"], OFF_POST=offsets["post"], OFF_RES=offsets["res"], RES_KIND=kind,
                N=n, N_PAD=n_pad, F=width_res if kind == 2 else 1, F_PAD=f_pad, NN_PAD=nn_pad,
                ITERS=iters, MODE=MODES.get(mode, 0), EPS=eps, BLOCK_T=bt, num_warps=warps)


@launcher
def forward(mix, alpha_w, bias_w, perms, n, offsets, res_kind, width_res, iters, mode, eps):
    """-> pre (T, n) | None, post (T, n) | None, res (T, n, n) | None, res logits (T, n, n) | None."""
    T, W = mix.shape
    dev = mix.device
    pre = empty((T, n), torch.float32, dev) if offsets["pre"] >= 0 else None
    post = empty((T, n), torch.float32, dev) if offsets["post"] >= 0 else None
    res = empty((T, n, n), torch.float32, dev) if offsets["res"] >= 0 else None
    logits = empty((T, n, n), torch.float32, dev) if offsets["res"] >= 0 and res_kind == "sinkhorn" else None
    if T:
        meta = _meta(n, offsets, res_kind, width_res, iters, mode, eps, T, mix.device)
        dummy = mix
        _heads_fwd[(triton.cdiv(T, meta["BLOCK_T"]),)](
            mix, alpha_w, bias_w, perms if perms is not None else dummy,
            *(o if o is not None else dummy for o in (pre, post, res, logits)), T, W, **meta)
    return pre, post, res, logits


@launcher
def backward(mix, alpha_w, bias_w, perms, gpre, gpost, gres, n, offsets, res_kind, width_res, iters, mode, eps):
    """-> dH̃ (T, W) fp32."""
    T, W = mix.shape
    dl = empty((T, W), torch.float32, mix.device)
    if T:
        meta = _meta(n, offsets, res_kind, width_res, iters, mode, eps, T, mix.device)
        meta["CHUNK"] = sk_chunk(iters, mode)
        dummy = mix
        _heads_bwd[(triton.cdiv(T, meta["BLOCK_T"]),)](
            mix, alpha_w, bias_w, perms if perms is not None else dummy,
            *(g if g is not None else dummy for g in (gpre, gpost, gres)), dl, T, W, **meta)
    return dl
