"""Options shared by the mixing variants (hc, mhc, mhc-lite, ...): fixed mappings, mode, backend.

The paper's component ablation (mHC Table 1) disables a mapping by fixing it to its neutral
value: H_pre = 1/n (the streams' mean), H_post = 1 (the branch output goes to every stream),
H_res = I (streams pass through unmixed). A fixed mapping creates no parameters, and its
`Mixing` entry is None, so that merge, diagnostics and the optimiser all see "the default",
never a learned value that merely starts near it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.backend import triton_unavailable_reason
from kernels.coefficients import MAPPINGS
from kernels.errors import UserError, did_you_mean
from kernels.project import PRECISIONS
from variants.expansion import EXPANDS
from variants.options import BACKENDS, doc
from variants.registry import VariantConfig

MODES = ("dynamic", "static")


@dataclass
class MixingOptions:
    """Options every variant with learned H_pre / H_post / H_res has."""

    mode: str = doc("dynamic (input-dependent, per token) or static (biases only) coefficients", "dynamic", choices=MODES)
    fixed: str = doc("ablation: comma-separated subset of pre,post,res held fixed (pre = 1/n, post = 1, res = I), "
                     "with no parameters", "")
    alpha_init: float = doc("initial value of the dynamic scales alpha", 0.01)
    expand: str = doc("how the embedding becomes the n streams: copy (n identical copies, the papers') or lss (learned "
                      "stream scaling, arXiv 2606.03483: copy s times a trained per-channel λ_s, init 0.6 + Xavier "
                      "noise; variants/expansion.py)", "copy", choices=EXPANDS)
    precision: str = doc("backend=triton: the projection RMSNorm(x)phi on tensor cores in tf32 (the paper's choice, "
                         "~2e-4 relative error, kernels/precision.py), tf32x3 (~fp32 accuracy) or ieee (fp32 FMA, no "
                         "tensor cores); the torch backend is exact fp32 whatever this says", "tf32", choices=PRECISIONS)


def parse_fixed(text: str) -> frozenset[str]:
    """'pre,res' -> {'pre', 'res'}; an unknown name is a UserError listing the valid ones."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in MAPPINGS:
            raise UserError(
                f"variant.fixed={text!r}: unknown mapping {name!r}{did_you_mean(name, MAPPINGS)}; "
                f"use a comma-separated subset of {', '.join(MAPPINGS)}"
            )
    return frozenset(names)


def check_common(cfg: VariantConfig, n_streams: int) -> frozenset[str]:
    """Reject what no mixing variant can run; returns the fixed set."""
    if cfg.backend not in BACKENDS:
        raise UserError(f"variant.backend={cfg.backend!r} is not one of {', '.join(BACKENDS)}{did_you_mean(cfg.backend, BACKENDS)}")
    if cfg.backend == "triton":
        # Never fall back silently: a run asking for kernels must not be timed as plain torch.

        why = triton_unavailable_reason(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
        if why:
            raise UserError(f"variant.backend=triton for variant {cfg.name!r}: {why}; use variant.backend=torch (or auto)")
    if cfg.mode not in MODES:
        raise UserError(f"variant.mode={cfg.mode!r} is not one of {', '.join(MODES)}{did_you_mean(cfg.mode, MODES)}")
    if n_streams < 1:
        raise UserError(f"variant {cfg.name!r} needs variant.n_streams >= 1 (0 = its default), got {n_streams}")
    if cfg.expand == "lss" and n_streams < 2:
        raise UserError(f"variant.expand=lss scales n >= 2 copies of the embedding, but variant {cfg.name!r} has "
                        f"n = {n_streams}: use variant.expand=copy, or variant.n_streams >= 2")
    return parse_fixed(cfg.fixed)
