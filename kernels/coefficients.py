"""Coefficient heads of mHC and mHC-lite (mHC Eq. 16-19; §3.2 kernels (2) small ops + (3) Sinkhorn):

    H̃_m  = α_m · mix_m + b_m        for each learned mapping m in (pre, post, res)   Eq. 16
    H_pre = σ(H̃_pre)   H_post = 2σ(H̃_post)                                        Eq. 17-18
    H_res = SK(H̃_res) (mHC, Eq. 19)   or   Σ_k softmax(H̃_res)_k P_k (mHC-lite)

`mix` (..., W) is the output of the projection op (kernels/project.py), whose columns are the
learned mappings side by side in MAPPINGS order. The whole chain (α, b, σ, 2σ and every
Sinkhorn round, or the permutation softmax) is one kernel with everything in registers; its
backward recomputes from `mix` (the logits are α·mix + b: saving mix is saving the logits)
and runs Sinkhorn's exact finite-k backward on-chip. One program handles many tokens.

Coverage of the Triton path, and why the rest runs the reference:
  - Sinkhorn 'converged' mode: a data-dependent round count per matrix (up to sk_max_iters), no kernel.
  - mHC-lite for n >= 6: n! >= 720 permutation columns do not fit a register tile (and the
    projection is then a real GEMM, cuBLAS's job). The variants refuse backend=triton there.
  - static mode (no `mix`): the coefficients are per-layer constants, n² + 2n numbers per
    call; there is no per-token work to fuse, so the reference computes them.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from kernels.backend import absent, kernel_op, load, resolve
from kernels.sinkhorn import mode_reason
from kernels.sinkhorn import sinkhorn as torch_backend_sinkhorn
from kernels.sinkhorn_reference import KERNEL_EPS, permutation_mixture, sinkhorn

MAPPINGS = ("pre", "post", "res")
RES_KINDS = ("sinkhorn", "perm")
MAX_PERM_STREAMS = 5  # mHC-lite kernel: n! <= 120 permutation logits per token in registers


def head_widths(n: int, learned: Sequence[str], res_kind: str) -> list[int]:
    res = n * n if res_kind == "sinkhorn" else math.factorial(n)
    return [{"pre": n, "post": n, "res": res}[m] for m in learned]


# ---------------------------------------------------------------------------------------------
# Reference (the maths of variants/mhc.py and variants/mhc_lite.py)
# ---------------------------------------------------------------------------------------------
def heads_reference(mix: Tensor | None, alphas: Sequence[Tensor] | None, biases: Sequence[Tensor], *, n: int,
                    learned: Sequence[str], res_kind: str = "sinkhorn", sk_iters: int = 20, sk_mode: str = "paper",
                    sk_tol: float = 1e-6, sk_max_iters: int = 2000, perms: Tensor | None = None,
                    batch_shape: Sequence[int] = (), sinkhorn_fn=None) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """(H_pre, H_post, H_res, H_res logits) with None for fixed mappings. mix None = static mode:
    the logits are the biases, broadcast to `batch_shape`. `sinkhorn_fn(logits, iters, mode)`
    replaces the reference Sinkhorn for the paper and kernel modes (the CPU kernel)."""
    proj = {} if mix is None else dict(zip(learned, mix.split(head_widths(n, learned, res_kind), dim=-1)))
    out: dict[str, Tensor | None] = dict.fromkeys(MAPPINGS)
    res_logits = None
    for k, name in enumerate(learned):
        b = biases[k].flatten()
        logits = b.expand(*batch_shape, -1) if mix is None else alphas[k] * proj[name] + b  # Eq. 16
        if name == "pre":
            out["pre"] = torch.sigmoid(logits)  # Eq. 17
        elif name == "post":
            out["post"] = 2 * torch.sigmoid(logits)  # Eq. 18
        elif res_kind == "sinkhorn":
            res_logits = logits.unflatten(-1, (n, n))  # row-major: [i, j] = from stream j to i
            if sinkhorn_fn is not None and sk_mode != "converged":
                out["res"] = sinkhorn_fn(res_logits, sk_iters, sk_mode)  # Eq. 19
            else:
                out["res"] = sinkhorn(res_logits, sk_iters, sk_mode, sk_tol, sk_max_iters)  # Eq. 19
        else:
            out["res"] = permutation_mixture(logits, perms)
    return out["pre"], out["post"], out["res"], res_logits


# ---------------------------------------------------------------------------------------------
# Custom ops around the kernels (one opaque node each for torch.compile), with their autograd.
# The op takes α and b per column (alpha_w, bias_w: (W,)); the caller builds them from the
# parameters with differentiable torch ops, so autograd sums the per-column dα back to each α.
# ---------------------------------------------------------------------------------------------
def _offsets(off_pre: int, off_post: int, off_res: int) -> dict:
    return {"pre": off_pre, "post": off_post, "res": off_res}


def _heads_fake(mix, alpha_w, bias_w, perms, n, off_pre, off_post, off_res, res_kind, width_res, iters, mode):
    T = mix.shape[0]
    f32 = lambda *s: mix.new_empty((T, *s), dtype=torch.float32)  # noqa: E731
    return (f32(n) if off_pre >= 0 else absent(mix), f32(n) if off_post >= 0 else absent(mix),
            f32(n, n) if off_res >= 0 else absent(mix), f32(n, n) if off_res >= 0 and res_kind == "sinkhorn" else absent(mix))


@kernel_op("coefficient_heads", fake=_heads_fake)
def heads_op(mix: Tensor, alpha_w: Tensor, bias_w: Tensor, perms: Optional[Tensor], n: int, off_pre: int, off_post: int,
             off_res: int, res_kind: str, width_res: int, iters: int, mode: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """mix (T, W) fp32 contiguous -> H_pre (T, n), H_post (T, n), H_res (T, n, n), H_res logits (T, n, n);
    an output of a fixed mapping (offset -1) is empty."""
    outs = load("coefficients_triton").forward(mix, alpha_w, bias_w, perms, n, _offsets(off_pre, off_post, off_res),
                                               res_kind, width_res, iters, mode, KERNEL_EPS)
    return tuple(o if o is not None else absent(mix) for o in outs)


@kernel_op("coefficient_heads_backward", fake=lambda mix, *args: torch.empty_like(mix))
def heads_backward_op(mix: Tensor, alpha_w: Tensor, bias_w: Tensor, perms: Optional[Tensor], gpre: Optional[Tensor],
                      gpost: Optional[Tensor], gres: Optional[Tensor], n: int, off_pre: int, off_post: int, off_res: int,
                      res_kind: str, width_res: int, iters: int, mode: str) -> Tensor:
    """-> dH̃ (T, W): the gradient of the logits α·mix + b of every learned column."""
    return load("coefficients_triton").backward(mix, alpha_w, bias_w, perms, gpre, gpost, gres, n,
                                                _offsets(off_pre, off_post, off_res), res_kind, width_res, iters,
                                                mode, KERNEL_EPS)


def _setup(ctx, inputs, output):
    mix, alpha_w, bias_w, perms, *cfg = inputs
    ctx.cfg = cfg
    ctx.save_for_backward(mix, alpha_w, bias_w, perms)


def _backward(ctx, gpre, gpost, gres, _glogits):
    mix, alpha_w, bias_w, perms = ctx.saved_tensors
    n, off_pre, off_post, off_res = ctx.cfg[:4]

    def grad(g, offset, *shape):  # an output not used downstream has a zero gradient
        if offset < 0:
            return None
        return torch.zeros((mix.shape[0], *shape), device=mix.device) if g is None else g.float().contiguous()

    dl = heads_backward_op(mix, alpha_w, bias_w, perms, grad(gpre, off_pre, n), grad(gpost, off_post, n),
                           grad(gres, off_res, n, n), *ctx.cfg)
    # Eq. 16, H̃ = α·mix + b: dmix = α·dH̃, and per column dα = Σ_t dH̃·mix, db = Σ_t dH̃
    return dl * alpha_w, (dl * mix).sum(dim=0), dl.sum(dim=0), None, *[None] * len(ctx.cfg)


heads_op.register_autograd(_backward, setup_context=_setup)


# ---------------------------------------------------------------------------------------------
# Public op
# ---------------------------------------------------------------------------------------------
def heads_reason(n: int, learned: Sequence[str], res_kind: str, sk_iters: int, sk_mode: str) -> str | None:
    """Why the fused kernel cannot run this configuration (None = it can)."""
    if res_kind not in RES_KINDS:
        raise ValueError(f"res_kind must be one of {', '.join(RES_KINDS)}, got {res_kind!r}")
    if "res" in learned:
        if res_kind == "sinkhorn":
            return mode_reason(sk_mode, sk_iters)
        if n > MAX_PERM_STREAMS:
            return (f"the mHC-lite kernel mixes at most {math.factorial(MAX_PERM_STREAMS)} permutations "
                    f"(n <= {MAX_PERM_STREAMS}), got n = {n} ({math.factorial(n):,})")
    return None


def coefficient_heads(mix: Tensor | None, alphas: Sequence[Tensor] | None, biases: Sequence[Tensor], *, n: int,
                      learned: Sequence[str], res_kind: str = "sinkhorn", sk_iters: int = 20, sk_mode: str = "paper",
                      sk_tol: float = 1e-6, sk_max_iters: int = 2000, perms: Tensor | None = None,
                      batch_shape: Sequence[int] = (), backend: str = "torch"):
    """(H_pre, H_post, H_res, H_res logits | None) from the projection `mix`; backend: torch | triton | auto.

    alphas/biases: one scalar α and one bias (n, n×n or n!) per learned mapping, in `learned`
    order. mix None (static mode) always runs the reference (see the module doc).
    """
    learned = tuple(learned)
    if mix is None or not learned:
        backend = "torch"
    why = None if backend == "torch" else heads_reason(n, learned, res_kind, sk_iters, sk_mode)
    if why is None and mix is not None and mix.dtype == torch.float64:
        why = "float64 (gradcheck) runs the reference"
    device = mix.device if mix is not None else (biases[0].device if biases else torch.device("cpu"))
    if resolve(backend, device, why) == "torch":  # on a CPU the Sinkhorn op runs its CPU kernel where it applies
        return heads_reference(mix, alphas, biases, n=n, learned=learned, res_kind=res_kind, sk_iters=sk_iters,
                               sk_mode=sk_mode, sk_tol=sk_tol, sk_max_iters=sk_max_iters, perms=perms,
                               batch_shape=batch_shape, sinkhorn_fn=torch_backend_sinkhorn)
    widths = head_widths(n, learned, res_kind)
    offsets, col = dict.fromkeys(MAPPINGS, -1), 0
    for name, w in zip(learned, widths):
        offsets[name], col = col, col + w
    lead, W = mix.shape[:-1], mix.shape[-1]
    alpha_w = torch.cat([a.float().reshape(1).expand(w) for a, w in zip(alphas, widths)])
    bias_w = torch.cat([b.float().flatten() for b in biases])
    perm2 = None if res_kind != "perm" or perms is None else perms.reshape(perms.shape[0], -1).float().contiguous()
    outs = heads_op(mix.reshape(-1, W).float().contiguous(), alpha_w, bias_w, perm2, n, offsets["pre"], offsets["post"],
                    offsets["res"], res_kind, widths[-1] if "res" in learned else 0, sk_iters, sk_mode)
    shapes = ((n,), (n,), (n, n), (n, n))
    present = (offsets["pre"] >= 0, offsets["post"] >= 0, offsets["res"] >= 0, offsets["res"] >= 0 and res_kind == "sinkhorn")
    pre, post, res, logits = (o.view(*lead, *s) if p else None for o, s, p in zip(outs, shapes, present))
    return pre, post, res, None if logits is None else logits.detach()  # the logits are for diagnostics
