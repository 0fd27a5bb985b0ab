"""`mhc`: Manifold-Constrained Hyper-Connections (DeepSeek, arXiv 2512.24880, §4.1 Eq. 7-9).

Same stream update as HC (`StreamResidual`); the coefficients differ in three ways: one
RMSNorm over the whole flattened residual x⃗ = vec(x_l) ∈ R^{nC} instead of per stream, ONE
projection φ ∈ R^{nC × (2n + n²)} for all three mappings (one GEMM, no tanh), and each mapping
is pushed onto a manifold: H_pre ≥ 0, H_post ∈ (0, 2), H_res doubly stochastic, so that the
product of H_res over any span of layers has forward and backward gain ≤ 1.

    x⃗' = RMSNorm(x⃗)                       (no weight: it would fold into φ)
    H̃_pre  = α_pre  · x⃗'φ_pre       + b_pre        H_pre  = σ(H̃_pre)            Eq. 17
    H̃_post = α_post · x⃗'φ_post      + b_post       H_post = 2σ(H̃_post)          Eq. 18
    H̃_res  = α_res  · mat(x⃗'φ_res)  + b_res        H_res  = Sinkhorn(H̃_res)     Eq. 19
    computed in the §4.3 order: x⃗φ first (Eq. 14), then scaled by 1/r, r = ‖x⃗‖₂/√(nC)
    (Eq. 15), then α and b (Eq. 16), all in fp32. mode=static keeps only b.

Initialisation (unconfirmed in the paper; chosen so that every parameter learns from step 0):
  b_pre, b_post  +m on stream (sub-layer index mod n), -m on the others (m =
          prepost_init_logit = 1, the public code's choice): H_pre = σ(±1) = 0.73 / 0.27,
          H_post = 2σ(±1) = 1.46 / 0.54. Each sub-layer reads mostly from, and writes mostly
          into, "its" stream, so the streams, identical copies of the embedding at the
          input, become different at once. The symmetric alternative (b_post = 0, H_post = 1
          everywhere, like HC) keeps all streams equal; a doubly stochastic H_res maps equal
          streams to themselves, so H_res and H_pre then get ~100x smaller gradients (measured
          on the test model: ~1e-9 vs ~1e-7 for b_res). Soft ±m rather than a hard one-hot
          leaves every stream a gradient through σ.
  b_res   0 on the diagonal, res_init_offdiag (-8) off it: H_res ≈ I (off-diagonal ≈ 3e-4),
          not `eye` logits, which would mix strongly from step 0 (a public trap).
  φ       N(0, 1/(nC)): x⃗' has unit RMS, so each entry of x⃗'φ is ≈ N(0, 1) and α (0.01)
          is literally the size of the input-dependent logits. With φ = 0 α's gradient
          would be exactly zero until φ had moved; here both learn from the first step.
  α       alpha_init (0.01).
  Two H_res are inert whatever the init (zero gradient): sub-layer 0's, which sees n
  identical copies of the embedding that any row-stochastic H_res leaves unchanged; and the
  last sub-layer's when its columns sum to 1 exactly (mhc-lite), since the streams are then
  summed and Σ_i (H x)_i = Σ_j x_j. mhc's last H_res acts only through Sinkhorn's column error.
Weight decay: φ (a matrix, like HC's θ) with decay; α and b without.
Implementation: Eq. 14-15 is kernels/project.py (the GEMM fused with the sum of squares),
Eq. 16-19 kernels/coefficients.py (α, b, σ, 2σ and all Sinkhorn rounds in one kernel); each
runs its PyTorch reference or its Triton kernel as `variant.backend` says.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from harness.config import VariantConfig
from harness.errors import UserError, did_you_mean
from kernels.coefficients import coefficient_heads, head_widths, heads_reason
from kernels.project import project, width_reason
from variants.ablation import check_common, parse_fixed
from variants.base import Mixing, ResidualVariant
from variants.hc import NORM_EPS, StreamResidual
from variants.sinkhorn import SK_MODES, compute_dtype


class MHCResidual(StreamResidual):
    """mHC coefficients; `widths`/`res_bias`/`res_kind` are the hooks mHC-lite replaces."""

    res_kind = "sinkhorn"  # H_res = SK(logits); mHC-lite: "perm" (mixture of permutations)

    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        n, m = self.n, cfg.prepost_init_logit
        own_stream = torch.full((n,), -m).index_fill_(0, torch.tensor(index % n), m)  # +m on (index mod n)
        init = {"pre": own_stream, "post": own_stream.clone(), "res": self.res_bias(cfg)}
        for name in self.learned:
            self.register_parameter(f"bias_{name}", nn.Parameter(init[name].float()))
            if self.dynamic:
                self.register_parameter(f"alpha_{name}", nn.Parameter(torch.full((1,), float(cfg.alpha_init))))  # 1-D: FSDP shards no 0-d tensors
        if self.dynamic and self.learned:
            fan_in, width = n * d_model, sum(self.widths[name] for name in self.learned)
            self.phi = nn.Parameter(torch.randn(fan_in, width) / math.sqrt(fan_in))

    # ------------------------------------------------------------------ hooks (mHC-lite)
    @property
    def widths(self) -> dict[str, int]:
        return {"pre": self.n, "post": self.n, "res": self.n * self.n}

    def res_bias(self, cfg: VariantConfig) -> Tensor:
        """(n, n) logits: 0 on the diagonal, res_init_offdiag elsewhere (≈ I after Sinkhorn)."""
        return torch.full((self.n, self.n), cfg.res_init_offdiag).fill_diagonal_(0.0)

    # ------------------------------------------------------------------ Eq. 14-19
    def coefficients(self, x: Tensor) -> Mixing:
        dt = compute_dtype(x)
        B, T = x.shape[:2]
        mix = None
        if self.dynamic and self.learned:
            mix = project(x.flatten(-2), self.phi, NORM_EPS, self.backend, self.cfg.precision)  # Eq. 14-15: RMSNorm(x⃗) φ, (B, T, W)
        alphas = [getattr(self, f"alpha_{m}").to(dt) for m in self.learned] if mix is not None else None
        biases = [getattr(self, f"bias_{m}").to(dt) for m in self.learned]
        c = self.cfg
        pre, post, res, logits = coefficient_heads(  # Eq. 16-19
            mix, alphas, biases, n=self.n, learned=self.learned, res_kind=self.res_kind, sk_iters=c.sk_iters,
            sk_mode=c.sk_mode, sk_tol=c.sk_tol, sk_max_iters=c.sk_max_iters, perms=getattr(self, "perms", None),
            batch_shape=(B, T), backend=self.backend)
        return Mixing(h_pre=pre, h_post=post, h_res=res, res_logits=logits)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "phi"]


class MHC(ResidualVariant):
    default_n_streams = 4
    residual_cls = MHCResidual

    def check(self) -> None:
        c = self.cfg
        check_common(c, self.n_streams)
        if c.sk_mode not in SK_MODES:
            raise UserError(f"variant.sk_mode={c.sk_mode!r} is not one of {', '.join(SK_MODES)}{did_you_mean(c.sk_mode, SK_MODES)}")
        if c.sk_iters < 0:
            raise UserError(f"variant.sk_iters must be >= 0 (0 = no normalisation), got {c.sk_iters}")
        if c.sk_mode == "converged" and not (c.sk_tol > 0 and c.sk_max_iters >= 1):
            raise UserError(f"variant.sk_mode=converged needs sk_tol > 0 and sk_max_iters >= 1, got {c.sk_tol} and {c.sk_max_iters}")
        check_kernel_coverage(c, self.residual_cls, self.n_streams)


def check_kernel_coverage(cfg: VariantConfig, residual_cls: type[MHCResidual], n: int) -> None:
    """backend=triton must run kernels; refuse the options they do not cover (auto falls back)."""
    if cfg.backend != "triton" or cfg.mode != "dynamic":
        return
    learned = [m for m in ("pre", "post", "res") if m not in parse_fixed(cfg.fixed)]
    why = heads_reason(n, learned, residual_cls.res_kind, cfg.sk_iters, cfg.sk_mode) or width_reason(
        sum(head_widths(n, learned, residual_cls.res_kind)))
    if why:
        raise UserError(f"variant.backend=triton for variant {cfg.name!r}: {why}; use variant.backend=torch (or auto)")
