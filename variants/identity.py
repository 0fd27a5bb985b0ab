"""`identity`: the ordinary pre-norm residual x' = x + F(x), i.e. n = 1 with H_pre = H_post = H_res = 1.

The baseline every other variant is compared against. It still goes through the stream layout
(B, T, 1, C) so the model code is the same for all variants.
"""

from __future__ import annotations

from torch import Tensor

from variants.base import Mixing, Residual, ResidualVariant


class IdentityResidual(Residual):
    def prepare(self, x: Tensor) -> tuple[Tensor, Mixing]:
        return x[:, :, 0, :], Mixing()

    def merge(self, x: Tensor, y: Tensor, mix: Mixing) -> Tensor:
        return x + y.unsqueeze(2)


class Identity(ResidualVariant):
    label = "Baseline"
    colour = "#555555"
    audit = False  # no stream maths: nothing for the kernel compile gate
    default_n_streams = 1
    residual_cls = IdentityResidual
    description = "the plain pre-norm residual x + F(x): one stream, no mixing (the baseline)"
    paper = "the pre-norm residual of GPT-2 / nanoGPT"
    backends = ("torch", "triton")  # no stream maths to fuse: the same code under either, the baseline of both
