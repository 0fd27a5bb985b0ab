"""`mhc-lite` (arXiv 2601.05732): H_res as a convex combination of all n! permutation matrices.

    a     = softmax(α_res · x⃗'W_res + b_res)  ∈ R^{n!}
    H_res = Σ_k a_k P_k

A convex combination of permutation matrices is exactly doubly stochastic (Birkhoff-von
Neumann) for every input, with no iterations and no finite-k error: mHC-lite's answer to
Sinkhorn's inexact column sums on badly scaled logits. H_pre and H_post are mHC's; W_res is
simply more columns of the one projection φ (nC × (2n + n!)), initialised the same way.
b_res: 0 for the identity permutation, res_init_offdiag (-8, the public code's value) for the
others, so H_res ≈ I at init. Only practical for small n: n! columns (n = 4: 24; 8: 40,320).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.sinkhorn_reference import permutation_matrices, permutation_mixture  # noqa: F401 (re-exported)
from variants.ablation import MixingOptions, check_common
from variants.base import ResidualVariant
from variants.mhc import ManifoldInit, MHCResidual, check_kernel_coverage
from variants.registry import VariantConfig

MAX_STREAMS = 8  # 8! = 40,320 permutations; 9! = 362,880 columns of φ per sub-layer is absurd


@dataclass
class MHCLiteOptions(MixingOptions, ManifoldInit):
    """mHC's options without Sinkhorn's: H_res needs no iterations."""


class MHCLiteResidual(MHCResidual):
    res_kind = "perm"  # no n×n logits exist here, so log(1/ν) is not reported for mhc-lite

    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        self.register_buffer("perms", permutation_matrices(self.n), persistent=False)

    @property
    def widths(self) -> dict[str, int]:
        return {"pre": self.n, "post": self.n, "res": math.factorial(self.n)}

    def res_bias(self) -> Tensor:
        bias = torch.full((math.factorial(self.n),), self.opts.res_init_offdiag)
        bias[0] = 0.0  # the identity permutation
        return bias

    def sinkhorn_options(self) -> dict:
        return {}


class MHCLite(ResidualVariant):
    label = "mHC-lite"
    colour = "#2ca02c"
    default_n_streams = 4
    residual_cls = MHCLiteResidual
    options_cls = MHCLiteOptions
    description = "mHC with H_res a softmax mixture of the n! permutation matrices: exactly doubly stochastic"
    paper = "mHC-lite (arXiv 2601.05732)"
    n_range = (1, MAX_STREAMS)  # n! columns of phi: 8! = 40,320 is the practical limit
    backends = ("torch", "triton")
    contract_options = ({}, {"fixed": "post"}, {"mode": "static"}, {"expand": "lss"})

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
        check_kernel_coverage(self.cfg, self.residual_cls, self.n_streams)
