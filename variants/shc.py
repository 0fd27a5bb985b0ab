"""`shc` (arXiv 2603.20896, code 6zHAOyi/s2HC litgpt/hyper_conn/shc.py): H_res on the spectral sphere.

    m = n - 1,  J = 11ᵀ/n,  U_z ∈ R^{n × m} the Helmert basis of 1^⊥
    logits [r_U | r_V | r_S]  (m(m-1)/2, m(m-1)/2 and m of them: m² in all)
    U = Cayley(skew(tanh r_U)),  V = Cayley(skew(tanh r_V))     (m x m rotations)
    σ = tanh(r_S) ∈ (-1, 1)^m
    H_res = (J + U_z · U diag(σ) Vᵀ · U_zᵀ)ᵀ

U_zᵀ 1 = 0, so every row and column of H_res sums to 1 exactly; its singular values are 1 (the
direction of 1) and |σ_i| < 1, so its spectral norm is exactly 1. Unlike the Birkhoff polytope,
entries may be negative: the doubly-stochastic gap does not apply, and the diagnostics record
the spectral norm and the most negative entry instead. No iterations; an m x m solve per
rotation and token (3 x 3 at n = 4).

Logits = α_res · (x⃗'φ)_res + b_res as in mHC (variants/manifold.py: H_pre = σ, H_post = 2σ from the
same projection); the code's per-part scale and bias (γ tanh(a r + b)) are folded into α and b
(γ = 1, as the code's init). Init as the code's: the rotation logits at 0 (U = V = I) and the
singular-value logits at sv_init_logit = 4 (σ = 0.9993: H_res ≈ I). Their gradient there is
sech²(4) ≈ 1.3e-3 of the rotations': the singular values start nearly frozen, as the paper's do.
The code's matrix is the transpose of ours (it mixes with x' = Hᵀ x, SCIENCE-FRONTIER's
orientation trap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from variants.ablation import MixingOptions, check_common
from variants.base import ResidualVariant
from variants.go_mhc import cayley, skew
from variants.manifold import ManifoldResidual, check_projection_width
from variants.mhc import PrePostInit
from variants.options import doc


@dataclass
class SHCOptions(MixingOptions, PrePostInit):
    sv_init_logit: float = doc("initial logit of the n - 1 singular values σ = tanh(logit) (the code's 4: σ = 0.9993, "
                               "H_res ≈ I)", 4.0)


def helmert(n: int, dtype=torch.float32, device=None) -> Tensor:
    """(n, n - 1): orthonormal columns spanning 1^⊥ (column k - 1: 1/√(k(k+1)) in rows < k, -k/√(k(k+1)) in row k)."""
    u = torch.zeros(n, max(n - 1, 0), dtype=dtype, device=device)
    for k in range(1, n):
        u[:k, k - 1] = 1.0 / math.sqrt(k * (k + 1))
        u[k, k - 1] = -k / math.sqrt(k * (k + 1))
    return u


def spectral_sphere(logits: Tensor, n: int) -> Tensor:
    """(..., (n-1)²) logits -> (..., n, n) H_res with unit row and column sums and spectral norm 1."""
    m = n - 1
    if m == 0:
        return logits.new_ones(*logits.shape[:-1], 1, 1)
    k = m * (m - 1) // 2
    r_u, r_v, r_s = logits.split([k, k, m], dim=-1)
    u, v = cayley(skew(torch.tanh(r_u), m)), cayley(skew(torch.tanh(r_v), m))
    e = u * torch.tanh(r_s).unsqueeze(-2) @ v.transpose(-1, -2)  # U diag(σ) Vᵀ
    z = helmert(n, logits.dtype, logits.device)
    h = torch.full((n, n), 1.0 / n, dtype=logits.dtype, device=logits.device) + z @ e @ z.T
    return h.transpose(-1, -2)


class SHCResidual(ManifoldResidual):
    @property
    def widths(self) -> dict[str, int]:
        return {"pre": self.n, "post": self.n, "res": max(1, (self.n - 1) ** 2)}  # n = 1: one unused logit

    def res_bias(self) -> Tensor:
        m = self.n - 1
        bias = torch.zeros(max(1, m * m))
        if m:
            bias[m * (m - 1):] = self.opts.sv_init_logit  # the singular values; the rotations at 0 (U = V = I)
        return bias

    def res_map(self, logits: Tensor) -> Tensor:
        return spectral_sphere(logits, self.n)


class SHC(ResidualVariant):
    label = "sHC"
    colour = "#bcbd22"
    default_n_streams = 4
    residual_cls = SHCResidual
    options_cls = SHCOptions
    description = ("sHC: H_res = J + U_z (Cayley rotations x tanh singular values) U_zᵀ: unit row and column sums, "
                   "spectral norm 1, entries may be negative")
    paper = "sHC, spectral-sphere hyper-connections (arXiv 2603.20896)"
    n_range = (1, 16)
    backends = ("torch", "triton")  # projection, pre-mix and merge kernels; the sphere map in PyTorch
    contract_options = ({}, {"mode": "static"}, {"fixed": "pre,post"})

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
        check_projection_width(self)
