"""`hc`: Hyper-Connections (Zhu et al., arXiv 2409.19606), the unconstrained n-stream residual.

    x_{l+1} = H_res · x_l + H_post^T · F(H_pre · x_l)        x_l: (n, C) per token

static:   H_pre (n), H_post (n), H_res (n×n) are plain parameters b.
dynamic:  from each stream's own normalised input x̃_i = RMSNorm(x_i) (over C, HC Eq. 10-13)
              H_pre[i]    = α_pre  · tanh(x̃_i θ_pre)     + b_pre[i]       θ_pre:  C -> 1
              H_post[i]   = α_post · tanh(x̃_i θ_post)    + b_post[i]      θ_post: C -> 1
              H_res[j, i] = α_res  · tanh(x̃_i θ_res)[j]  + b_res[j, i]    θ_res:  C -> n
          HC writes its residual matrix as A_r with H' = A_r^T H: row i of A_r comes from
          stream i and says where stream i goes, i.e. it is column i of our H_res.
init:     b_pre one-hot on stream (sub-layer index mod n), b_post = 1, b_res = I, θ = 0,
          α = alpha_init (0.01). With θ = 0 the model starts as exactly the identity-residual
          model (all streams equal the ordinary residual); θ gets gradient α·x̃·g at once and
          α follows as soon as θ has moved (tested: no parameter is stuck at its init).
decay:    θ (matrices) with weight decay, b and α without (as in the HC paper).

This file also holds `StreamResidual`, the stream update every mixing variant shares (apply
H_pre; apply H_res and H_post and merge); HC, mHC and mHC-lite differ only in `coefficients`.
The maths of each step lives in kernels/ (reference + Triton kernel + one public function);
`variant.backend` (torch | triton | auto) picks the implementation. With backend=triton the
HC projection x̃θ (the part that reads the streams) is the fused RMSNorm-GEMM kernel; tanh,
α and b act on n(n + 2) numbers per token and stay in PyTorch (a fused epilogue would save
three tiny launches, and no stream traffic).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kernels.post_res import post_res
from kernels.premix import premix
from kernels.project import project
from kernels.sinkhorn_reference import compute_dtype
from variants.ablation import MAPPINGS, MixingOptions, check_common, parse_fixed
from variants.base import Mixing, Residual, ResidualVariant
from variants.registry import VariantConfig

NORM_EPS = 1e-6


def no_autocast(x: Tensor):
    """Coefficients in fp32 and the stream update in x's dtype, even inside bf16 autocast.

    Under autocast a matmul on the fp32 residual stream would silently come back as bf16 and
    the stream would be accumulated in bf16 from the first merge on. Meta tensors (the kernel
    compile gate) have no autocast to leave.
    """
    if x.device.type == "meta":
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, enabled=False)


# =============================================================================================
# The stream update (mHC §3.2 kernels (4) "apply H_pre" and (5) "apply H_post, H_res, merge")
# =============================================================================================
def apply_pre(x: Tensor, h_pre: Tensor | None, backend: str = "torch") -> Tensor:
    """Branch input h = Σ_i H_pre[i] x_i: (B, T, n, C) -> (B, T, C). None = 1/n (the mean)."""
    return premix(x, h_pre, backend)


def apply_merge(x: Tensor, y: Tensor, h_post: Tensor | None, h_res: Tensor | None, backend: str = "torch") -> Tensor:
    """New streams H_res·x + H_post^T·y: (B, T, n, C). None = the fixed default (1, I)."""
    return post_res(x, y, h_post, h_res, backend)


class StreamResidual(Residual):
    """prepare/merge around `coefficients(x) -> Mixing`; subclasses only compute coefficients."""

    recomputable = True  # coefficients, pre-mix and merge: the mHC paper's recompute (variants/recompute.py)

    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        self.fixed = parse_fixed(self.opts.fixed)
        self.learned = tuple(m for m in MAPPINGS if m not in self.fixed)
        self.dynamic = self.opts.mode == "dynamic"
        self.backend = cfg.backend

    def coefficients(self, x: Tensor) -> Mixing:
        """Per-token H_pre (B,T,n), H_post (B,T,n), H_res (B,T,n,n); None for fixed ones."""
        raise NotImplementedError

    def prepare(self, x: Tensor) -> tuple[Tensor, Mixing]:
        with no_autocast(x):
            mix = self.coefficients(x)
            return apply_pre(x, mix.h_pre, self.backend), mix

    def merge(self, x: Tensor, y: Tensor, mix: Mixing) -> Tensor:
        # A learned mapping that is missing here would silently become its default (the public
        # "H_res never applied" bug); refuse instead.
        for name in MAPPINGS:
            if (getattr(mix, f"h_{name}") is None) != (name in self.fixed):
                want = "None (fixed)" if name in self.fixed else "a tensor (learned)"
                raise RuntimeError(f"{type(self).__name__}.merge: H_{name} must be {want}")
        with no_autocast(x):
            return apply_merge(x, y, mix.h_post, mix.h_res, self.backend)


# =============================================================================================
# HC coefficients: H = α · tanh(x̃ θ) + b   (static: H = b)
# =============================================================================================
class HCResidual(StreamResidual):
    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        n, C = self.n, d_model
        init = {
            "pre": F.one_hot(torch.tensor(index % n), n).float(),  # read one stream
            "post": torch.ones(n),  # write the branch into every stream
            "res": torch.eye(n),  # carry every stream unchanged
        }
        theta_out = {"pre": 1, "post": 1, "res": n}
        for name in self.learned:
            self.register_parameter(f"bias_{name}", nn.Parameter(init[name]))
            if self.dynamic:
                self.register_parameter(f"alpha_{name}", nn.Parameter(torch.full((1,), float(self.opts.alpha_init))))  # 1-D: FSDP shards no 0-d tensors
                self.register_parameter(f"theta_{name}", nn.Parameter(torch.zeros(C, theta_out[name])))

    def coefficients(self, x: Tensor) -> Mixing:
        dt = compute_dtype(x)
        B, T = x.shape[:2]
        proj = {}
        if self.dynamic and self.learned:
            # x̃_i θ for all heads at once: θ_pre | θ_post | θ_res side by side, C -> (1 | 1 | n)
            theta = torch.cat([getattr(self, f"theta_{name}").to(dt) for name in self.learned], dim=1)
            xt = project(x, theta, NORM_EPS, self.backend, self.opts.precision)  # RMSNorm per stream, then θ: (B, T, n, W)
            widths = [getattr(self, f"theta_{name}").shape[1] for name in self.learned]
            proj = dict(zip(self.learned, xt.split(widths, dim=-1)))

        def head(name: str) -> Tensor | None:
            if name in self.fixed:
                return None
            b = getattr(self, f"bias_{name}").to(dt)
            if not self.dynamic:
                return b.expand(B, T, *b.shape)
            alpha = getattr(self, f"alpha_{name}").to(dt)
            d = torch.tanh(proj[name])  # (B, T, n, 1) or, for res, (B, T, n_from, n_to)
            d = d.squeeze(-1) if name != "res" else d.transpose(-1, -2)  # res: [to, from]
            return alpha * d + b

        return Mixing(h_pre=head("pre"), h_post=head("post"), h_res=head("res"))

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("theta_")]


class HC(ResidualVariant):
    label = "HC"
    colour = "#ff7f0e"
    default_n_streams = 4
    residual_cls = HCResidual
    options_cls = MixingOptions
    description = "Hyper-Connections: n streams, static + tanh-dynamic H_pre, H_post, H_res, unconstrained"
    paper = "Zhu et al., Hyper-Connections, ICLR 2025 (arXiv 2409.19606)"
    n_range = (1, 64)
    backends = ("torch", "triton")
    contract_options = ({}, {"mode": "static"}, {"fixed": "pre,res"})

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
