"""`frac`: Frac-Connections (arXiv 2503.14125; lucidrains/hyper-connections with num_fracs = m):
split the hidden state into m fractions instead of widening it into n streams.

The residual state of a token stays C wide, held as m fractions x_1 … x_m of width d = C/m
(`variant.n_streams` = m; the streams of the model's (B, T, m, d) layout). Around a sub-layer F,
with three m x m matrices per token (the dynamic Frac-Connection, DFC):

    branch input     h   = concat_f2 ( Σ_f1 H_pre[f2, f1] x_f1 )             fed to F as (B, T, C)
    new state        x'_f2 = Σ_f1 H_res[f2, f1] x_f1 + Σ_f1 H_post[f2, f1] y_f1,   y = F(h) split in m

    H_m = S_m + α_m · tanh(x̂ W_m)     x̂_f = RMSNorm(x_f) over its d channels (HC's per-stream norm)

with the row of H_pre, H_res (f2 = 0..m-1) read off fraction f1's own projection: W_pre and
W_res are d x m (column f2), W_post d x m likewise. Unconstrained, like HC: no sigmoid, no
Sinkhorn. Memory traffic and activations stay those of a C-wide residual (the point of FC).

Layout and init, chosen deliberately (SCIENCE-FAMILY §2: the reference reshapes its columns so
that at init fraction 0 is duplicated into the branch input and every fraction receives y_0 +
y_1): S_pre = S_res = S_post = I and W = 0, so at init every output fraction reads its own
fraction and F's output goes back where it came from: exactly the plain residual x + F(x). W
gets a gradient α x̂ g at once and α as soon as W has moved (as HC's θ).
The Triton stream kernels mix with a 1 x n H_pre and broadcast one y to every stream; FC's
m x m mixing of y's fractions is neither, so this variant runs the PyTorch maths only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.errors import UserError
from kernels.sinkhorn_reference import compute_dtype
from variants.ablation import MODES
from variants.base import Mixing, Residual, ResidualVariant
from variants.hc import NORM_EPS, no_autocast
from variants.options import doc
from variants.registry import VariantConfig

HEAD_ORDER = ("pre", "res", "post")  # the order of Frac's heads and parameters


@dataclass
class FracOptions:
    mode: str = doc("dynamic (S + α tanh(x̂W), per token) or static (S alone) mixing", "dynamic", choices=MODES)
    alpha_init: float = doc("initial value of the dynamic scales alpha", 0.01)


class FracResidual(Residual):
    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        m, d = self.n, d_model // self.n
        self.dynamic = self.opts.mode == "dynamic"
        for name in HEAD_ORDER:
            self.register_parameter(f"static_{name}", nn.Parameter(torch.eye(m)))
            if self.dynamic:
                self.register_parameter(f"alpha_{name}", nn.Parameter(torch.full((1,), float(self.opts.alpha_init))))
                self.register_parameter(f"weight_{name}", nn.Parameter(torch.zeros(d, m)))

    def coefficients(self, x: Tensor) -> dict[str, Tensor]:
        """{mapping: (B, T, m, m)} with [.., f2, f1] = how much fraction f1 feeds output fraction f2."""
        dt = compute_dtype(x)
        B, T, m, _ = x.shape
        out = {}
        xn = F.rms_norm(x.to(dt), (x.shape[-1],), eps=NORM_EPS) if self.dynamic else None
        for name in HEAD_ORDER:
            s = getattr(self, f"static_{name}").to(dt)
            if not self.dynamic:
                out[name] = s.expand(B, T, m, m)
                continue
            dyn = torch.tanh(xn @ getattr(self, f"weight_{name}").to(dt))  # (B, T, f1, f2)
            out[name] = s + getattr(self, f"alpha_{name}").to(dt) * dyn.transpose(-1, -2)
        return out

    def prepare(self, x: Tensor) -> tuple[Tensor, Mixing]:
        with no_autocast(x):
            c = self.coefficients(x)
            h = (c["pre"].to(x.dtype) @ x).flatten(-2)  # (B, T, m, d) -> (B, T, C)
        return h, Mixing(h_pre=c["pre"], h_post=c["post"], h_res=c["res"])

    def merge(self, x: Tensor, y: Tensor, mix: Mixing) -> Tensor:
        with no_autocast(x):
            ys = y.to(x.dtype).unflatten(-1, (self.n, -1))  # (B, T, m, d)
            return mix.h_res.to(x.dtype) @ x + mix.h_post.to(x.dtype) @ ys

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("weight_")]


class Frac(ResidualVariant):
    label = "Frac-Connections"
    colour = "#8c564b"
    default_n_streams = 4
    residual_cls = FracResidual
    options_cls = FracOptions
    description = "Frac-Connections: the C-wide state split into m fractions, mixed by m x m H_pre/H_res/H_post (unconstrained)"
    paper = "Frac-Connections (arXiv 2503.14125)"
    n_range = (1, 64)  # here n_streams is the number of fractions m; d_model must divide by it
    contract_options = ({}, {"mode": "static"})
    contract_n = 4  # fractions of the contract's widths (4, 8, 32)

    def check(self) -> None:
        if self.d_model % self.n_streams:
            raise UserError(f"variant 'frac' splits model.d_model={self.d_model} into variant.n_streams="
                            f"{self.n_streams} fractions: it must divide evenly")

    def expand(self, emb: Tensor) -> Tensor:
        """Embedding (B, T, C) -> its m fractions (B, T, m, C/m): the state stays C wide."""
        return emb.unflatten(-1, (self.n_streams, -1))

    def reduce(self, x: Tensor) -> Tensor:
        """Fractions (B, T, m, d) -> the state (B, T, C), fed to the final norm."""
        return x.flatten(-2)
