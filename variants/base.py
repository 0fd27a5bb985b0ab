"""The residual-variant interface every connection (identity, HC, mHC, mHC-lite, ...) implements.

A model with `n` residual streams carries `x` of shape (B, T, n, C). Around each sub-layer F
(attention or MLP) a variant

    prepare:  x            -> h = H_pre . x            (B, T, C)   the branch input
    merge:    x, y = F(h)  -> H_res . x + H_post^T . y  (B, T, n, C)

and, once per model, `expand`s the embedding into n streams and `reduce`s the streams before
the final norm. The transformer block only ever calls `residual(x, F)`, so it never branches
on a variant's name, and n = 1 / fixed coefficients run through the same code path.

The coefficients a sub-layer used are returned as a `Mixing` (per token, never pooled over
time, so causality is structural) and, while `recording` is on, kept for diagnostics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor, nn

from kernels.errors import UserError, did_you_mean
from variants.expansion import StreamScale
from variants.options import BACKENDS, NoOptions

if TYPE_CHECKING:  # annotations only: the registry finds variants, a variant never needs the registry
    from variants.registry import VariantConfig


@dataclass
class Mixing:
    """Per-token mixing coefficients of one sub-layer; None = the fixed default.

    Fixed defaults are the paper's "disabled mapping": H_pre = 1/n, H_post = 1, H_res = I
    (for n = 1 all three are 1, the ordinary residual).
    """

    h_pre: Tensor | None = None  # (B, T, n)
    h_post: Tensor | None = None  # (B, T, n)
    h_res: Tensor | None = None  # (B, T, n, n)
    res_logits: Tensor | None = None  # (B, T, n, n) pre-normalisation H_res logits, if any

    def detach(self) -> "Mixing":
        """A copy cut from autograd that owns its memory.

        A copy, not a view: static coefficients can be views of parameters, and under FSDP a
        block's unsharded parameters are freed right after its forward.
        """
        return Mixing(*(None if t is None else t.detach().clone() for t in (self.h_pre, self.h_post, self.h_res, self.res_logits)))

    def dense(self, n: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(h_pre, h_post, h_res) as tensors, filling fixed ones with their defaults."""
        shape = like.shape[:2]
        opts = dict(device=like.device, dtype=torch.float32)
        pre = self.h_pre if self.h_pre is not None else torch.full((*shape, n), 1.0 / n, **opts)
        post = self.h_post if self.h_post is not None else torch.ones((*shape, n), **opts)
        res = self.h_res if self.h_res is not None else torch.eye(n, **opts).expand(*shape, n, n)
        return pre, post, res


def largest_stream_share(x: Tensor) -> Tensor:
    """(B, T, n, C) streams -> (B, T): the largest stream's share of their energy Σ_c x², in fp32.

    1/n when the streams carry equal energy, 1 when one carries everything: the stream-collapse
    paper's (arXiv 2606.03483) finding is that widened models drift to one dominant stream."""
    energy = x.detach().float().square().sum(dim=-1)
    return energy.amax(dim=-1) / energy.sum(dim=-1).clamp_min(torch.finfo(torch.float32).tiny)


class Residual(nn.Module):
    """The residual connection around ONE sub-layer. Subclasses implement prepare/merge.

    `recomputable` variants can have their prepare/merge maths recomputed in the backward
    instead of stored (variants/recompute.py); the model turns it on by setting `recompute`.
    """

    recomputable = False  # identity stores nothing worth recomputing

    def __init__(self, cfg: VariantConfig, d_model: int, n_streams: int, index: int, n_sublayers: int):
        super().__init__()
        self.cfg, self.d_model, self.n, self.index, self.n_sublayers = cfg, d_model, n_streams, index, n_sublayers
        self.opts = cfg.opts()  # the variant's options dataclass, resolved once (never looked up in forward)
        self.recording = False
        self.last: Mixing | None = None
        self.last_share: Tensor | None = None  # (B, T) largest stream's share of the input's energy, while recording
        self.recompute = None  # a variants.recompute.StreamRecompute shared by the model's residuals, or None

    def prepare(self, x: Tensor) -> tuple[Tensor, Mixing]:
        """Streams (B, T, n, C) -> branch input (B, T, C) and the coefficients merge will use."""
        raise NotImplementedError

    def merge(self, x: Tensor, y: Tensor, mix: Mixing) -> Tensor:
        """Streams (B, T, n, C) and branch output (B, T, C) -> new streams (B, T, n, C)."""
        raise NotImplementedError

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.recompute is not None and torch.is_grad_enabled():
            return self.recompute(self, x, sublayer)
        h, mix = self.prepare(x)
        if self.recording:
            self.last, self.last_share = mix.detach(), largest_stream_share(x)
        return self.merge(x, sublayer(h), mix)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters exempt from weight decay; by default all residual-mixing parameters."""
        return list(self.parameters())


class ResidualVariant:
    """A registry entry: builds one `Residual` per sub-layer and moves between 1 and n streams.

    A subclass declares what `mhc-bench variants` shows and the contract tests read: its options
    dataclass, a one-line description, the paper, the stream counts it takes and the backends it
    has kernels for (tests/test_variant_contract.py checks torch/triton parity for those)."""

    default_n_streams: int = 1
    residual_cls: type[Residual] = Residual
    options_cls: type = NoOptions
    description: str = ""
    paper: str = ""
    n_range: tuple[int, int] = (1, 1)  # smallest and largest n_streams (inclusive)
    backends: tuple[str, ...] = ("torch",)
    contract_options: tuple[dict, ...] = ({},)  # option sets the contract tests run (tests/variant_contract.py)
    contract_n: int = 3  # the stream count they use (3 exercises padding to a power of 2 in the kernels)
    # What reports, plots and benchmarks say of the variant, read from here (never listed elsewhere):
    label: str = ""  # its name in tables and figures ("" = the registry name)
    colour: str = ""  # its fixed colour in every figure, "#rrggbb" ("" = the next spare colour)
    in_bench: bool = True  # among `bench model`'s default variants
    audit: bool = True  # compiled by the kernel compile gate (harness/kernel_audit), where it has Triton kernels

    def __init__(self, cfg: VariantConfig, d_model: int, n_sublayers: int):
        self.cfg, self.d_model, self.n_sublayers = cfg, d_model, n_sublayers
        if cfg.backend not in BACKENDS:
            raise UserError(f"variant.backend={cfg.backend!r} is not one of {', '.join(BACKENDS)}{did_you_mean(cfg.backend, BACKENDS)}")
        self.opts = cfg.opts()
        self.n_streams = cfg.n_streams or self.default_n_streams
        lo, hi = self.n_range
        if not lo <= self.n_streams <= hi:
            raise UserError(f"variant {cfg.name!r} takes variant.n_streams from {lo} to {hi} (0 = its default, "
                            f"{self.default_n_streams}); got {self.n_streams}")
        if cfg.backend not in ("torch", "auto") and cfg.backend not in self.backends:
            raise UserError(f"variant {cfg.name!r} has no {cfg.backend} kernels; use variant.backend=torch (or auto)")
        self.check()

    def check(self) -> None:
        """Reject option combinations this variant cannot run (raise UserError)."""

    def make(self, index: int) -> Residual:
        """The residual connection of sub-layer `index` (0-based; attention = 2i, MLP = 2i + 1)."""
        return self.residual_cls(self.cfg, self.d_model, self.n_streams, index, self.n_sublayers)

    def expander(self) -> nn.Module | None:
        """The module the model expands the embedding with, if it has parameters: learned stream
        scaling with variant.expand=lss (variants/expansion.py); None = `expand`, the plain copy."""
        if getattr(self.opts, "expand", "copy") == "lss":
            return StreamScale(self.n_streams, self.d_model)
        return None

    def expand(self, emb: Tensor) -> Tensor:
        """Embedding (B, T, C) -> n identical streams (B, T, n, C)."""
        return emb.unsqueeze(2).expand(-1, -1, self.n_streams, -1).contiguous()

    def reduce(self, x: Tensor) -> Tensor:
        """Streams (B, T, n, C) -> their sum (B, T, C), fed to the final norm."""
        return x.sum(dim=2)
