"""`kromhc` (arXiv 2601.21579, code wz1119/KromHC): H_res as a Kronecker product of 2 x 2 doubly
stochastic factors, exact by construction, no iterations.

    n = 2^K streams; per token and factor k = 1..K:
    p_k   = σ(α_res · (x⃗'φ)_{res,k} + b_res,k)          (the reference's 2-way softmax is σ of the difference)
    U_k   = [[p_k, 1 - p_k], [1 - p_k, p_k]]            a convex mix of I and the swap
    H_res = U_1 ⊗ U_2 ⊗ … ⊗ U_K                         U_1 acts on the most significant bit of the stream index

Row and column sums of A ⊗ B are products of the factors' sums, so H_res is exactly doubly
stochastic (to rounding), and with 2 x 2 factors also symmetric. H_pre = σ, H_post = 2σ from the
same projection as mHC (variants/manifold.py), so φ has 2n + K columns (mHC: 2n + n²; the
reference's W has 2 logits per factor, one redundant). Expressivity is small: K degrees of
freedom per token (2 at n = 4, against 9 for the Birkhoff polytope); a 3-cycle is unreachable.

Init, as our mHC's so the two compare (SCIENCE-FAMILY notes the reference's): b_pre, b_post ±m on
stream (index mod n); b_res,k = res_init_offdiag (-8) less than the identity's logit 0, so
p_k = σ(8) ≈ 0.99966 and H_res ≈ I; φ ~ N(0, 1/(nC)), not the reference's W = 0, so α learns
from step 0 (with W = 0 its gradient is zero until W has moved).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.errors import UserError
from variants.ablation import MixingOptions, check_common
from variants.base import ResidualVariant
from variants.manifold import ManifoldResidual, check_projection_width
from variants.mhc import ManifoldInit


@dataclass
class KromHCOptions(MixingOptions, ManifoldInit):
    """mHC's options without Sinkhorn's; res_init_offdiag is each factor's swap logit at init."""


def kron_factors(p: Tensor) -> Tensor:
    """(..., K) mixing weights -> (..., 2^K, 2^K) H_res = ⊗_k [[p_k, 1 - p_k], [1 - p_k, p_k]]."""
    h = torch.ones(*p.shape[:-1], 1, 1, dtype=p.dtype, device=p.device)
    for k in range(p.shape[-1]):
        q = p[..., k, None, None]
        u = torch.cat([torch.cat([q, 1 - q], -1), torch.cat([1 - q, q], -1)], -2)  # (..., 2, 2)
        m = h.shape[-1]
        h = (h[..., :, None, :, None] * u[..., None, :, None, :]).reshape(*p.shape[:-1], 2 * m, 2 * m)
    return h


class KromHCResidual(ManifoldResidual):
    @property
    def widths(self) -> dict[str, int]:
        return {"pre": self.n, "post": self.n, "res": self.n.bit_length() - 1}

    def res_bias(self) -> Tensor:
        """Per factor the logit of I against the swap: p = σ(-res_init_offdiag) ≈ 1 at -8."""
        return torch.full((self.n.bit_length() - 1,), -self.opts.res_init_offdiag)

    def res_map(self, logits: Tensor) -> Tensor:
        return kron_factors(torch.sigmoid(logits))


class KromHC(ResidualVariant):
    label = "KromHC"
    colour = "#9467bd"
    default_n_streams = 4
    residual_cls = KromHCResidual
    options_cls = KromHCOptions
    description = "KromHC: H_res a Kronecker product of 2 x 2 doubly stochastic factors (exact, no iterations)"
    paper = "KromHC (arXiv 2601.21579)"
    n_range = (1, 16)
    backends = ("torch", "triton")  # projection, pre-mix and merge kernels; the K factors in PyTorch
    contract_options = ({}, {"mode": "static"}, {"fixed": "pre,post"})
    contract_n = 4

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
        if self.n_streams & (self.n_streams - 1):
            raise UserError(f"variant 'kromhc' needs a power-of-2 variant.n_streams (2 x 2 factors), got {self.n_streams}")
        check_projection_width(self)
