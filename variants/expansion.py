"""How the embedding becomes n streams: copies (the papers'), or learned stream scaling (LSS).

The stream-collapse paper (arXiv 2606.03483, code brain-lab-research/hc-stream-collapse
`StreamExpandLSS`) finds that after an early phase H_res stays near I and one stream carries the
signal: the widened model behaves like a single-stream residual, in part because n identical
copies of the embedding start every stream alike. LSS scales copy s per channel by a trained
λ_s ∈ R^C, so the streams differ from the first sub-layer on:

    x_s = emb ⊙ λ_s,    λ ∈ R^{n × C},  init 0.6 + U(-b, b), b = √(6 / (C + n))  (Xavier uniform, as the code)

The reduction (the streams' sum) is unchanged. Weight decay: none here, where the reference's
optimiser decays it as a 2-D parameter: λ is a per-channel gain like RMSNorm's weight (exempt in
both), and decay would pull every stream's scale towards 0 alike, a confound in a test of whether
the streams stay balanced. With λ = 1 the expansion is the plain copy, bit for bit (tested).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

EXPANDS = ("copy", "lss")
LSS_INIT = 0.6


class StreamScale(nn.Module):
    """Learned stream scaling: (B, T, C) -> (B, T, n, C), copy s scaled by λ_s (module doc)."""

    def __init__(self, n: int, d_model: int):
        super().__init__()
        bound = math.sqrt(6.0 / (d_model + n))
        self.scale = nn.Parameter(LSS_INIT + torch.empty(n, d_model).uniform_(-bound, bound))

    def forward(self, emb: Tensor) -> Tensor:
        return emb.unsqueeze(2) * self.scale.to(emb.dtype)
