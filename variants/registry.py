"""Variant registry: name -> "module:Class", imported lazily (lm-eval's registry style).

Adding a variant = one file in `variants/` (the maths, its options dataclass, what `mhc-bench
variants` says of it) plus one line here; the contract tests (tests/test_variant_contract.py)
run every registered variant. Lookups of unknown names fail with the valid choices and a
did-you-mean suggestion.
"""

from __future__ import annotations

import dataclasses
import importlib

from harness.errors import UserError, did_you_mean
from variants.base import ResidualVariant
from variants.options import VariantConfig

REGISTRY: dict[str, str] = {
    "identity": "variants.identity:Identity",
    "hc": "variants.hc:HC",
    "mhc": "variants.mhc:MHC",
    "mhc-lite": "variants.mhc_lite:MHCLite",
    "kromhc": "variants.kromhc:KromHC",
    "frac": "variants.frac:Frac",
    "orthostochastic": "variants.orthostochastic:Orthostochastic",
}


def variant_names() -> list[str]:
    return list(REGISTRY)


def register(name: str, target: str) -> None:
    """Add a variant at run time ("module:Class"), e.g. one defined outside this package."""
    REGISTRY[name] = target


def get_variant_class(name: str) -> type[ResidualVariant]:
    if name not in REGISTRY:
        raise UserError(
            f"unknown variant {name!r}{did_you_mean(name, REGISTRY)}; choose from {', '.join(REGISTRY)}"
        )
    module, _, cls_name = REGISTRY[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, ResidualVariant)):
        raise TypeError(f"registry entry {name!r} -> {REGISTRY[name]} is not a ResidualVariant")
    return cls


def build_variant(cfg: VariantConfig, d_model: int, n_sublayers: int) -> ResidualVariant:
    """The variant named by `cfg.name`, checked against its options."""
    return get_variant_class(cfg.name)(cfg, d_model, n_sublayers)


def describe_variants(verbose: bool = False) -> str:
    """What `mhc-bench variants` prints: per variant its description, stream counts, backends,
    paper and options with defaults (with `verbose`, each option's documentation)."""
    lines = []
    for name in REGISTRY:
        cls = get_variant_class(name)
        lo, hi = cls.n_range
        lines.append(f"{name:16s} {cls.description}")
        lines.append(f"{'':16s} n = {lo}..{hi} (default {cls.default_n_streams}); backends: {', '.join(cls.backends)}; "
                     f"{cls.paper}")
        fields = dataclasses.fields(cls.options_cls)
        if not fields:
            lines.append(f"{'':16s} options: none")
        elif verbose:
            for f in fields:
                choices = f" (one of: {', '.join(f.metadata['choices'])})" if "choices" in f.metadata else ""
                lines.append(f"{'':16s} variant.{f.name} = {f.default!r}  # {f.metadata.get('doc', '')}{choices}")
        else:
            lines.append(f"{'':16s} options: " + ", ".join(f"{f.name}={f.default!r}" for f in fields))
    return "\n".join(lines)
