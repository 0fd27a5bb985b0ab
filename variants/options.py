"""A run's variant settings: the three fields every variant has, and the options each declares.

Users write the `variant` section flat (`variant.name=mhc`, `variant.sk_iters=5`). `name`,
`n_streams` and `backend` belong to every variant; any other key is an option of the variant
named, declared by that variant as a dataclass next to its maths (`MHCOptions` in
variants/mhc.py, say: one-line docs, choices, defaults) and found through the registry. So a
new variant with new options is one file and one registry line, nothing here.

`VariantConfig.options` holds only the options set explicitly; `opts()` fills in the
dataclass defaults. `cfg.sk_iters` reads the resolved value and `cfg.sk_iters = 5` sets it
(checked), for code that handles any variant's settings by name. An option the named variant does not have is refused
in one line that names the variants that do have it.

Also here, because the variants' option dataclasses need them and this is the lowest layer
that has configs: `doc` (a field with its one-line doc and choices) and `parse_value` (a
command-line string as a typed value).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field

from harness.errors import UserError, did_you_mean

COMMON = ("name", "n_streams", "backend")
BACKENDS = ("torch", "triton", "auto")  # kernels/backend.py: auto = triton on CUDA, torch otherwise


def doc(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING, choices=None):
    """A dataclass field carrying its one-line documentation (and optional valid choices)."""
    meta = {"doc": text}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def parse_value(text: str, typ, key: str):
    """Parse `text` as `typ` (int, float, bool, str), with an error naming `key`."""
    if typ is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{key} expects a boolean (true/false), got {text!r}")
    if typ is int:
        try:
            return int(text, 0) if text.strip().lower().startswith(("0x", "0b")) else int(text)
        except ValueError:
            raise UserError(f"{key} expects an integer, got {text!r}") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise UserError(f"{key} expects a number, got {text!r}") from None
    if typ is str:
        return text
    raise UserError(f"{key} cannot be set from the command line (type {typ})")


def coerce(value, typ, key: str):
    """`value` (a command-line string, or a typed value from a grid or a saved config) as `typ`."""
    if isinstance(value, str) and typ is not str:
        return parse_value(value, typ, key)
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"{key} expects {typ.__name__}, got {type(value).__name__} {value!r}")
    return value


def check_choices(obj, prefix: str) -> None:
    """Every field of dataclass `obj` that declares choices holds one of them."""
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        if "choices" in f.metadata and val not in f.metadata["choices"]:
            raise UserError(f"{prefix}{f.name}={val!r} is not one of {', '.join(map(str, f.metadata['choices']))}"
                            + did_you_mean(str(val), f.metadata["choices"]))


@dataclass
class NoOptions:
    """A variant without options of its own (identity)."""


def options_class(name: str) -> type:
    """The options dataclass of the registered variant `name`."""
    from variants.registry import get_variant_class

    return get_variant_class(name).options_cls


@functools.lru_cache(maxsize=None)
def option_fields(cls: type) -> dict[str, tuple[dataclasses.Field, type]]:
    """{option: (field, type)} of an options dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def variants_with_option(key: str) -> list[str]:
    """Registered variants that declare option `key` (for the error that refuses it elsewhere)."""
    from variants.registry import variant_names

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
