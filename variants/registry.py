"""Variant registry: name -> "module:Class", imported lazily (lm-eval's registry style), and
`VariantConfig`, a run's choice of variant with the options it sets.

Users write the `variant` section flat (`variant.name=mhc`, `variant.sk_iters=5`). `name`,
`n_streams` and `backend` belong to every variant; any other key is an option of the variant
named, declared by that variant as a dataclass next to its maths and found through the
registry. `VariantConfig.options` holds only the options set explicitly; `opts()` fills in
the defaults. `cfg.sk_iters` reads the resolved value and `cfg.sk_iters = 5` sets it
(checked). An option the named variant does not have is refused in one line that names the
variants that do have it.

Adding a variant = one file in `variants/` (the maths, its options dataclass, what `mhc-bench
variants` says of it) plus one line here; the contract tests (tests/test_variant_contract.py)
run every registered variant. Lookups of unknown names fail with the valid choices and a
did-you-mean suggestion.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from kernels.errors import UserError, did_you_mean
from variants.options import BACKENDS, COMMON, check_choices, coerce, doc, option_fields

REGISTRY: dict[str, str] = {
    "identity": "variants.identity:Identity",
    "hc": "variants.hc:HC",
    "mhc": "variants.mhc:MHC",
    "mhc-lite": "variants.mhc_lite:MHCLite",
    "kromhc": "variants.kromhc:KromHC",
    "frac": "variants.frac:Frac",
    "orthostochastic": "variants.orthostochastic:Orthostochastic",
    "go-mhc": "variants.go_mhc:GoMHC",
    "shc": "variants.shc:SHC",
    "tbp-mhc": "variants.tbp_mhc:TBPMHC",
}


def variant_names() -> list[str]:
    return list(REGISTRY)


def register(name: str, target: str) -> None:
    """Add a variant at run time ("module:Class"), e.g. one defined outside this package."""
    REGISTRY[name] = target


def get_variant_class(name: str) -> type:
    if name not in REGISTRY:
        raise UserError(
            f"unknown variant {name!r}{did_you_mean(name, REGISTRY)}; choose from {', '.join(REGISTRY)}"
        )
    module, _, cls_name = REGISTRY[name].partition(":")
    cls = getattr(importlib.import_module(module), cls_name)
    # (checked by its interface: importing variants.base here would make the registry circular)
    if not (isinstance(cls, type) and all(hasattr(cls, a) for a in ("options_cls", "make", "expand", "reduce"))):
        raise TypeError(f"registry entry {name!r} -> {REGISTRY[name]} is not a ResidualVariant")
    return cls


def variant_label(name: str) -> str:
    """A variant's name in tables and figures (its class's `label`; an unregistered name as it is)."""
    return (get_variant_class(name).label or name) if name in REGISTRY else name


def variant_colours() -> dict[str, str]:
    """{label: "#rrggbb"} of the registered variants that fix their colour (the rest get spare ones)."""
    return {variant_label(n): c for n in REGISTRY if (c := get_variant_class(n).colour)}


def build_variant(cfg: "VariantConfig", d_model: int, n_sublayers: int):
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


# =============================================================================================
# A run's variant settings
# =============================================================================================
def options_class(name: str) -> type:
    """The options dataclass of the registered variant `name`."""
    return get_variant_class(name).options_cls


def variants_with_option(key: str) -> list[str]:
    """Registered variants that declare option `key` (for the error that refuses it elsewhere)."""
    return [n for n in variant_names() if key in option_fields(options_class(n))]


@dataclass(init=False)
class VariantConfig:
    name: str = doc("residual-connection variant, a name from the variant registry (mhc-bench variants)", "identity")
    n_streams: int = doc("residual streams n; 0 = the variant's default (identity 1, the mixing variants 4)", 0)
    backend: str = doc("stream maths: torch (reference), triton (fused kernels; an error where unsupported), "
                       "auto (triton on CUDA, else torch)", "torch", choices=BACKENDS)
    options: dict = doc("the variant's own options that were set (any other keeps its default; mhc-bench variants "
                        "lists them)", factory=dict)

    def __init__(self, name: str = "identity", n_streams: int = 0, backend: str = "torch", options: dict | None = None,
                 **more_options):
        """VariantConfig("mhc", sk_iters=5): the options of the variant named, by keyword (checked)."""
        self.name, self.n_streams, self.backend, self.options = name, n_streams, backend, {}
        for key, value in {**(options or {}), **more_options}.items():
            self.set_option(key, value)

    def option_type(self, key: str) -> type:
        """The type of option `key` of this variant; a UserError naming who has it if it has none."""
        fields = option_fields(options_class(self.name))
        if key not in fields:
            owners = variants_with_option(key)
            where = f"; {', '.join(owners)} {'has' if len(owners) == 1 else 'have'} it" if owners else \
                did_you_mean(key, [*COMMON, *fields])
            raise UserError(f"variant.{key} is not an option of {self.name!r}{where}")
        return fields[key][1]

    def set_option(self, key: str, value) -> None:
        self.options[key] = coerce(value, self.option_type(key), f"variant.{key}")

    def opts(self):
        """This variant's options dataclass: the ones set, the rest at their defaults (choices checked)."""
        cls = options_class(self.name)
        for key in self.options:
            self.option_type(key)  # e.g. set for another variant before the name changed
        opts = cls(**self.options)
        check_choices(opts, "variant.")
        return opts

    def resolved(self) -> dict:
        """Every option of this variant with its value (a saved config.json holds these)."""
        return dataclasses.asdict(self.opts())

    def __setattr__(self, key: str, value) -> None:
        # `cfg.variant.sk_iters = 5` sets the option (checked), never a stray attribute
        if key in (*COMMON, "options") or key.startswith("_"):
            object.__setattr__(self, key, value)
        else:
            self.set_option(key, value)

    def __getattr__(self, key: str):
        # called only for names that are not fields: read an option of the named variant
        if key.startswith("_") or "name" not in self.__dict__:
            raise AttributeError(key)
        fields = option_fields(options_class(self.__dict__["name"]))
        if key not in fields:
            raise AttributeError(f"variant {self.__dict__['name']!r} has no option {key!r}")
        f = fields[key][0]
        return self.__dict__["options"].get(key, f.default if f.default is not dataclasses.MISSING else f.default_factory())
