"""The shared coefficient path of mHC's relatives that differ only in how H_res is made.

KromHC and orthostochastic H_res keep mHC's Eq. 14-18: one RMSNorm over the flattened streams,
one projection φ (the fused projection kernel with backend=triton), α and b per mapping,
H_pre = σ, H_post = 2σ; only the map from H_res's logits to H_res changes (`res_map`). Those
maps act on a few numbers per token, so they run in PyTorch (fp32) on either backend, while the
stream traffic (projection, pre-mix, post + residual merge) takes the Triton kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kernels.errors import UserError
from kernels.project import project, width_reason
from kernels.sinkhorn_reference import compute_dtype
from variants.base import Mixing
from variants.hc import NORM_EPS
from variants.mhc import MHCResidual


class ManifoldResidual(MHCResidual):
    """mHC with H_res = res_map(logits) computed in PyTorch; subclasses set widths, res_bias, res_map."""

    res_kind = "torch"  # no fused heads kernel: check_backends below allows triton for the stream ops

    def sinkhorn_options(self) -> dict:
        return {}

    def res_map(self, logits: Tensor) -> Tensor:
        """(B, T, width of res) logits -> (B, T, n, n) H_res."""
        raise NotImplementedError

    def coefficients(self, x: Tensor) -> Mixing:
        dt = compute_dtype(x)
        B, T = x.shape[:2]
        mix = None
        if self.dynamic and self.learned:
            mix = project(x.flatten(-2), self.phi, NORM_EPS, self.backend, self.opts.precision)  # Eq. 14-15
        parts = dict(zip(self.learned, mix.split([self.widths[m] for m in self.learned], dim=-1))) if mix is not None else {}

        def logits(name: str) -> Tensor:  # Eq. 16: α · x⃗'φ + b, or b alone (static mode)
            b = getattr(self, f"bias_{name}").to(dt).flatten()
            return b.expand(B, T, -1) if mix is None else getattr(self, f"alpha_{name}").to(dt) * parts[name] + b

        return Mixing(h_pre=torch.sigmoid(logits("pre")) if "pre" in self.learned else None,
                      h_post=2 * torch.sigmoid(logits("post")) if "post" in self.learned else None,
                      h_res=self.res_map(logits("res")) if "res" in self.learned else None)


def check_projection_width(variant) -> None:
    """backend=triton runs the projection kernel, which holds at most 256 output columns."""
    if variant.cfg.backend != "triton" or variant.opts.mode != "dynamic":
        return
    probe = variant.make(0)
    why = width_reason(sum(probe.widths[m] for m in probe.learned))
    if why:
        raise UserError(f"variant.backend=triton for variant {variant.cfg.name!r}: {why}; use variant.backend=torch (or auto)")
