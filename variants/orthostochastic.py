"""`orthostochastic`: H_res = O ⊙ O, O the orthogonal polar factor of the logits from a few
Newton-Schulz steps (tokenbender / mwdgdx mHC forks, `mhc_h_res_proj="orthostochastic"`).

    X_0 = L / (‖L‖_F + 1e-7);   X ← a X + (b A + c A²) X, A = X Xᵀ, (a, b, c) = (3, -3.2, 1.2)
    O = X_{ns_steps};           H_res = O ⊙ O      (entries squared: non-negative, exactly)

An orthogonal O has unit rows and columns, so O ⊙ O is doubly stochastic (orthostochastic
matrices lie inside the Birkhoff polytope); after a finite number of steps O is only nearly
orthogonal, and the diagnostics' row/column gaps show how nearly. Zero singular values stay 0,
so a rank-deficient L gives a matrix that is not doubly stochastic.

L = α_res · mat(x⃗'φ_res) + b_res, per token, with H_pre = σ and H_post = 2σ from the same
projection (variants/manifold.py), so it compares with mHC; mode=static is the forks' setting
(per-layer L, no projection). The forks' H_pre, H_post are softmaxes; here they are mHC's.

The maths (reference and CPU kernel) is kernels/orthostochastic.py.

Init trap (SCIENCE-FAMILY §3): the polar factor of any symmetric positive-definite L is I, and
at O = I the off-diagonal entries of H_res are squares of first-order terms, so their gradient
is zero: an identity init that never learns to mix. The forks' L (0 diagonal, -8 elsewhere)
instead gives a uniform H_res. Here b_res = I + res_init_angle · S, S a random skew-symmetric
matrix of unit spectral norm (per sub-layer, from the model seed): O starts a small rotation
away from I, H_res ≈ I with off-diagonal entries ~ angle², and every entry has a gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import UserError
from kernels.orthostochastic import NS_COEFFS, newton_schulz, orthostochastic  # noqa: F401 (re-exported)
from variants.ablation import MixingOptions, check_common
from variants.base import ResidualVariant
from variants.manifold import ManifoldResidual, check_projection_width
from variants.mhc import PrePostInit
from variants.options import doc


@dataclass
class OrthostochasticOptions(MixingOptions, PrePostInit):
    res_init_angle: float = doc("initial rotation of O away from I (radians; H_res off-diagonals ~ angle^2); 0 "
                                "gives an identity H_res whose mixing never learns", 0.1)
    ns_steps: int = doc("Newton-Schulz steps towards the orthogonal polar factor (the forks' 5)", 5)


class OrthostochasticResidual(ManifoldResidual):
    def res_bias(self) -> Tensor:
        n = self.n
        s = torch.randn(n, n)
        s = s - s.T
        norm = torch.linalg.matrix_norm(s, ord=2)
        s = s / norm if norm > 0 else s
        return torch.eye(n) + self.opts.res_init_angle * s

    def res_map(self, logits: Tensor) -> Tensor:
        return orthostochastic(logits.unflatten(-1, (self.n, self.n)), self.opts.ns_steps)


class Orthostochastic(ResidualVariant):
    label = "orthostochastic"
    colour = "#e377c2"
    default_n_streams = 4
    residual_cls = OrthostochasticResidual
    options_cls = OrthostochasticOptions
    description = "H_res = O ⊙ O, O the Newton-Schulz polar factor of the logits: doubly stochastic as far as O is orthogonal"
    paper = "orthostochastic H_res of the tokenbender/mwdgdx mHC forks (no paper)"
    n_range = (1, 16)
    backends = ("torch", "triton")  # projection, pre-mix and merge kernels; Newton-Schulz in PyTorch
    contract_options = ({}, {"mode": "static"}, {"fixed": "pre,post"})

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
        if self.opts.ns_steps < 1:
            raise UserError(f"variant.ns_steps must be >= 1, got {self.opts.ns_steps}")
        check_projection_width(self)
