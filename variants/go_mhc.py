"""`go-mhc` (arXiv 2604.02309, code itstorque/go-mHC): generalised orthostochastic H_res, a knob s.

    A     = skew(logits)  ∈ R^{ns × ns}      (ns(ns - 1)/2 free logits, the upper triangle)
    Q     = (I + A)⁻¹ (I - A)                (Cayley: orthogonal for any skew-symmetric A)
    H_ij  = (1/s) ‖Q[i·s:(i+1)·s, j·s:(j+1)·s]‖_F²    (block energies)

Each block row of an orthogonal Q has s orthonormal rows, so its energies sum to s: H is
exactly doubly stochastic and non-negative for every A, with no iterations. s = 1 is the plain
orthostochastic set (entries squared, variants/orthostochastic.py without Newton-Schulz's
inexactness); growing s approaches the whole Birkhoff polytope; the paper recommends s = 2.
Cost: an ns × ns solve per token and sub-layer (8 x 8 at n = 4, s = 2).

Logits = α_res · (x⃗'φ)_res + b_res as in mHC (variants/manifold.py: H_pre = σ, H_post = 2σ from
the same projection). Init trap (SCIENCE-FRONTIER): at Q = I every off-diagonal block energy is a
square of first-order terms, so ∂H/∂logits = 0 there and a zero b_res never leaves the identity.
b_res is a small random rotation instead: res_init_angle · (a skew-symmetric matrix of unit
spectral norm, per sub-layer, from the model seed), so H_res ≈ I with off-diagonal entries
~ angle² and every logit has a gradient from step 0 (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import UserError
from variants.ablation import MixingOptions, check_common
from variants.base import ResidualVariant
from variants.manifold import ManifoldResidual, check_projection_width
from variants.mhc import PrePostInit
from variants.options import doc

S_CHOICES = (1, 2, 3)


@dataclass
class GoMHCOptions(MixingOptions, PrePostInit):
    s: int = doc("block size s of the generalised orthostochastic map: Q is ns x ns (1 = plain orthostochastic; the "
                 "paper's default 2; 3)", 2)
    res_init_angle: float = doc("size of the initial random rotation of Q away from I (H_res off-diagonals ~ angle^2); "
                                "0 gives an identity H_res whose logits have zero gradient", 0.1)


def skew(logits: Tensor, m: int) -> Tensor:
    """(..., m(m-1)/2) upper-triangle logits -> (..., m, m) skew-symmetric A (A = U - Uᵀ)."""
    rows, cols = torch.triu_indices(m, m, offset=1, device=logits.device)
    upper = logits.new_zeros(*logits.shape[:-1], m * m).index_copy(-1, rows * m + cols, logits)
    a = upper.unflatten(-1, (m, m))
    return a - a.transpose(-1, -2)


def cayley(a: Tensor) -> Tensor:
    """(I + A)⁻¹ (I - A): orthogonal for skew-symmetric A (I + A is then always invertible)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    return torch.linalg.solve(eye + a, eye - a)


def block_energies(q: Tensor, n: int, s: int) -> Tensor:
    """(..., ns, ns) -> (..., n, n): (1/s) ‖Q_ij‖_F² over the s x s blocks."""
    blocks = q.unflatten(-1, (n, s)).unflatten(-3, (n, s))  # (..., n, s, n, s)
    return blocks.square().sum(dim=(-3, -1)) / s


def go_orthostochastic(logits: Tensor, n: int, s: int) -> Tensor:
    """(..., ns(ns-1)/2) logits -> (..., n, n) H_res, exactly doubly stochastic (module doc)."""
    return block_energies(cayley(skew(logits, n * s)), n, s)


class GoMHCResidual(ManifoldResidual):
    @property
    def widths(self) -> dict[str, int]:
        m = self.n * self.opts.s
        return {"pre": self.n, "post": self.n, "res": m * (m - 1) // 2}

    def res_bias(self) -> Tensor:
        m = self.n * self.opts.s
        g = torch.randn(m, m)
        a = g - g.T
        norm = torch.linalg.matrix_norm(a, ord=2)
        a = a / norm if norm > 0 else a
        rows, cols = torch.triu_indices(m, m, offset=1)
        return self.opts.res_init_angle * a[rows, cols]

    def res_map(self, logits: Tensor) -> Tensor:
        return go_orthostochastic(logits, self.n, self.opts.s)


class GoMHC(ResidualVariant):
    label = "go-mHC"
    colour = "#17becf"
    default_n_streams = 4
    residual_cls = GoMHCResidual
    options_cls = GoMHCOptions
    description = "go-mHC: H_res the s x s block energies of a Cayley-orthogonal ns x ns matrix, exactly doubly stochastic"
    paper = "go-mHC, generalised orthostochastic (arXiv 2604.02309)"
    n_range = (1, 16)
    backends = ("torch", "triton")  # projection, pre-mix and merge kernels; the Cayley map in PyTorch
    contract_options = ({}, {"s": 1}, {"mode": "static"}, {"fixed": "pre,post"})

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
        if self.opts.s not in S_CHOICES:
            raise UserError(f"variant.s={self.opts.s} is not one of {', '.join(map(str, S_CHOICES))} "
                            "(the block size of go-mHC's generalised orthostochastic map)")
        check_projection_width(self)
