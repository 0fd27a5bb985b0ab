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

from kernels.backend import BACKENDS as KERNEL_BACKENDS
from kernels.errors import UserError, did_you_mean

COMMON = ("name", "n_streams", "backend")
BACKENDS = KERNEL_BACKENDS  # kernels/backend.py: auto = triton on CUDA, torch otherwise


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


@functools.lru_cache(maxsize=None)
def option_fields(cls: type) -> dict[str, tuple[dataclasses.Field, type]]:
    """{option: (field, type)} of an options dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict (`to_dict()`, a saved config.json, a TOML table) as {"section.field": value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
