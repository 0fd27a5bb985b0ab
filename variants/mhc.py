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
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from kernels.coefficients import coefficient_heads, head_widths, heads_reason
from kernels.errors import UserError
from kernels.project import project, width_reason
from kernels.sinkhorn_reference import SK_MODES, compute_dtype
from variants.ablation import MixingOptions, check_common, parse_fixed
from variants.base import Mixing, ResidualVariant
from variants.hc import NORM_EPS, StreamResidual
from variants.options import doc
from variants.registry import VariantConfig


@dataclass
class PrePostInit:
    """The initial H_pre/H_post biases every variant with mHC's heads shares (module doc: why these)."""

    prepost_init_logit: float = doc("initial H_pre/H_post bias logits: +m on stream (sub-layer index mod n), -m on "
                                    "the others (breaks the streams' symmetry)", 1.0)


@dataclass
class ManifoldInit(PrePostInit):
    """Initial biases of the manifold-constrained variants (module doc: why these)."""

    res_init_offdiag: float = doc("initial H_res bias logits off the diagonal (mhc; diagonal 0) or of the "
                                  "non-identity permutations (mhc-lite); -8 is near the identity", -8.0)


@dataclass
class MHCOptions(MixingOptions, ManifoldInit):
    sk_iters: int = doc("Sinkhorn-Knopp rounds k; paper: exp, then k x [column, row]; kernel: row softmax, then k "
                        "column normalisations; 0 = none", 20)
    sk_mode: str = doc("'paper' (column then row, rows exact), 'kernel' (row softmax first, column last, as in "
                       "DeepSeek's public kernels), 'converged' (to sk_tol)", "paper", choices=SK_MODES)
    sk_tol: float = doc("converged mode: each H_res stops when its max |row/column sum - 1| <= this", 1e-6)
    sk_max_iters: int = doc("converged mode: round cap per H_res (badly scaled logits can need more; diagnostics "
                            "record sk_rounds and sk_capped, training warns when a matrix hits it)", 2000)


class MHCResidual(StreamResidual):
    """mHC coefficients; `widths`/`res_bias`/`res_kind` are the hooks mHC-lite replaces."""

    res_kind = "sinkhorn"  # H_res = SK(logits); mHC-lite: "perm" (mixture of permutations)

    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        self.sk = self.sinkhorn_options()
        n, m = self.n, self.opts.prepost_init_logit
        own_stream = torch.full((n,), -m).index_fill_(0, torch.tensor(index % n), m)  # +m on (index mod n)
        init = {"pre": own_stream, "post": own_stream.clone(), "res": self.res_bias()}
        for name in self.learned:
            self.register_parameter(f"bias_{name}", nn.Parameter(init[name].float()))
            if self.dynamic:
                self.register_parameter(f"alpha_{name}", nn.Parameter(torch.full((1,), float(self.opts.alpha_init))))  # 1-D: FSDP shards no 0-d tensors
        if self.dynamic and self.learned:
            fan_in, width = n * d_model, sum(self.widths[name] for name in self.learned)
            self.phi = nn.Parameter(torch.randn(fan_in, width) / math.sqrt(fan_in))

    # ------------------------------------------------------------------ hooks (mHC-lite)
    @property
    def widths(self) -> dict[str, int]:
        return {"pre": self.n, "post": self.n, "res": self.n * self.n}

    def res_bias(self) -> Tensor:
        """(n, n) logits: 0 on the diagonal, res_init_offdiag elsewhere (≈ I after Sinkhorn)."""
        return torch.full((self.n, self.n), self.opts.res_init_offdiag).fill_diagonal_(0.0)

    def sinkhorn_options(self) -> dict:
        """The Sinkhorn settings H_res is normalised with (mHC-lite has none)."""
        o = self.opts
        return dict(sk_iters=o.sk_iters, sk_mode=o.sk_mode, sk_tol=o.sk_tol, sk_max_iters=o.sk_max_iters)

    # ------------------------------------------------------------------ Eq. 14-19
    def coefficients(self, x: Tensor) -> Mixing:
        dt = compute_dtype(x)
        B, T = x.shape[:2]
        mix = None
        if self.dynamic and self.learned:
            mix = project(x.flatten(-2), self.phi, NORM_EPS, self.backend, self.opts.precision)  # Eq. 14-15: RMSNorm(x⃗) φ, (B, T, W)
        alphas = [getattr(self, f"alpha_{m}").to(dt) for m in self.learned] if mix is not None else None
        biases = [getattr(self, f"bias_{m}").to(dt) for m in self.learned]
        pre, post, res, logits = coefficient_heads(  # Eq. 16-19
            mix, alphas, biases, n=self.n, learned=self.learned, res_kind=self.res_kind, **self.sk,
            perms=getattr(self, "perms", None), batch_shape=(B, T), backend=self.backend)
        return Mixing(h_pre=pre, h_post=post, h_res=res, res_logits=logits)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "phi"]


class MHC(ResidualVariant):
    label = "mHC"
    colour = "#1f77b4"
    default_n_streams = 4
    residual_cls = MHCResidual
    options_cls = MHCOptions
    description = "manifold-constrained HC: sigmoid H_pre, 2 sigmoid H_post, Sinkhorn-normalised (doubly stochastic) H_res"
    paper = "DeepSeek 2025, mHC: Manifold-Constrained Hyper-Connections (arXiv 2512.24880)"
    n_range = (1, 64)
    backends = ("torch", "triton")
    contract_options = ({}, {"sk_mode": "kernel", "sk_iters": 3}, {"sk_mode": "converged", "sk_max_iters": 50}, {"mode": "static"}, {"fixed": "res"},
                        {"fixed": "pre,post"}, {"expand": "lss"})

    def check(self) -> None:
        c = self.opts
        check_common(self.cfg, self.n_streams)
        if c.sk_iters < 0:
            raise UserError(f"variant.sk_iters must be >= 0 (0 = no normalisation), got {c.sk_iters}")
        if c.sk_mode == "converged" and not (c.sk_tol > 0 and c.sk_max_iters >= 1):
            raise UserError(f"variant.sk_mode=converged needs sk_tol > 0 and sk_max_iters >= 1, got {c.sk_tol} and {c.sk_max_iters}")
        check_kernel_coverage(self.cfg, self.residual_cls, self.n_streams)


def check_kernel_coverage(cfg: VariantConfig, residual_cls: type[MHCResidual], n: int) -> None:
    """backend=triton must run kernels; refuse the options they do not cover (auto falls back)."""
    o = cfg.opts()
    if cfg.backend != "triton" or o.mode != "dynamic":
        return
    learned = [m for m in ("pre", "post", "res") if m not in parse_fixed(o.fixed)]
    sk = (o.sk_iters, o.sk_mode) if residual_cls.res_kind == "sinkhorn" else (0, "paper")
    why = heads_reason(n, learned, residual_cls.res_kind, *sk) or width_reason(
        sum(head_widths(n, learned, residual_cls.res_kind)))
    if why:
        raise UserError(f"variant.backend=triton for variant {cfg.name!r}: {why}; use variant.backend=torch (or auto)")
