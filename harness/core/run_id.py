"""A run's id: a hash of what identifies the experiment, stable when the code gains options.

    id = sha256({"defaults": V, "set": {key: value that differs from the defaults of version V}})[:10]

The keys are the flattened config (`model.d_model`, `variant.sk_iters`, ...) minus
`EXECUTION_ONLY` (how a run executes, not what it computes: threads, recompute, ...) and the run
section. The defaults of version V are pinned in run_id_defaults.json (variant options under
`<variant>:<option>`, since each variant has its own); a key the file does not know yet (an
option added later, a new variant) compares with its default in the code. So adding a field
with a default changes no id, while changing a default in the code would silently change what
an id means: tests/test_run_id.py fails until the pinned file gets a new version.

Runs named before this scheme hashed every field of the config (`legacy_hash`). They are
migrated once, where they are met: a run folder `<preset>-<variant>-<legacy id>` is renamed to
the new id by `mhc-bench train` (harness/train/loop.py), an experiment's manifest is re-keyed when
first read (slurm/experiment.py), and published tables by harness/core/run_migration.py.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from variants.options import flatten
from variants.registry import VariantConfig

DEFAULTS_FILE = Path(__file__).with_name("run_id_defaults.json")

# Every variant shared one options section until variants declared their own (variants/options.py).
# These are its fields and defaults: a config.json saved then carries them whatever the variant
# (from_dict drops those at their default), and legacy run ids hashed them (harness/core/run_id.py).
LEGACY_VARIANT_DEFAULTS = {"mode": "dynamic", "fixed": "", "sk_iters": 20, "sk_mode": "paper", "sk_tol": 1e-6,
                           "sk_max_iters": 2000, "alpha_init": 0.01, "res_init_offdiag": -8.0, "prepost_init_logit": 1.0}
# added later: in the legacy hash only when away from this default
LATER_VARIANT_DEFAULTS = {"precision": "tf32"}
# data fields added later: in the legacy hash only when away from this default
LATER_DATA_DEFAULTS = {"text_field": "text", "shard_format": "modded-nanogpt", "shard_vocab_size": 0}

# How a run is executed, not what it computes, and where this machine keeps the shared data:
# never part of its id. (The run section and the preset name are left out too: where a run
# lives and what it started from are not what it is.)
EXECUTION_ONLY = frozenset({"train.threads", "train.cpu_kernels", "train.stop_after", "train.parallel", "train.log_every",
                            "train.recompute", "train.recompute_block", "train.keep_checkpoints",
                            "data.data_root", "data.cache_dir"})


@lru_cache(maxsize=None)
def pinned() -> tuple[int, dict]:
    d = json.loads(DEFAULTS_FILE.read_text())
    return d["version"], d["defaults"]


def identifying(cfg) -> dict:
    """{flat key: value} of everything that identifies the run; variant options as `variant.<option>`."""
    d = cfg.to_dict()
    d.pop("run")
    d.pop("preset")
    return {k: v for k, v in flatten(d).items() if k not in EXECUTION_ONLY}


def code_defaults(config_cls, variant: str) -> dict:
    """The code's defaults of every identifying key (a fresh `config_cls()`, harness.core.config.Config),
    variant options keyed `<variant>:<option>`."""
    cfg = config_cls()
    cfg.variant = VariantConfig(variant)
    out = {}
    for k, v in identifying(cfg).items():
        out[_pin_key(k, variant)] = v
    return out


def _pin_key(key: str, variant: str) -> str:
    section, _, field = key.partition(".")
    if section == "variant" and field not in ("name", "n_streams", "backend"):
        return f"{variant}:{field}"
    return key


def run_id(cfg) -> str:
    version, defaults = pinned()
    variant = cfg.variant.name
    fallback = code_defaults(type(cfg), variant)
    diff = {}
    for k, v in identifying(cfg).items():
        pk = _pin_key(k, variant)
        if v != defaults.get(pk, fallback.get(pk)):
            diff[k] = v
    blob = json.dumps({"defaults": version, "set": diff}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def legacy_hash(cfg, machine_paths: bool = True) -> str:
    """The id a run had before this scheme: a hash of every field (all variants sharing one
    options section), run section and execution fields left out. A grid hashed its runs before
    filling in this machine's data paths; `machine_paths=False` does the same for a config saved
    after (a manifest's, a runs table's)."""
    d = cfg.to_dict()
    if not machine_paths:
        d["data"]["data_root"] = d["data"]["cache_dir"] = ""
    d.pop("run")
    d.pop("preset")
    for k, default in LATER_DATA_DEFAULTS.items():
        if d["data"].get(k, default) == default:
            d["data"].pop(k, None)
    for k in ("progress", "threads", "cpu_kernels", "stop_after", "parallel", "log_every", "recompute", "recompute_block",
              "keep_checkpoints"):
        d["train"].pop(k, None)
    d["variant"] = legacy_variant_section(cfg.variant)
    blob = json.dumps(d, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def migrate_run_folder(cfg) -> None:
    """A plain run's folder named with its legacy id (`<preset>-<variant>-<legacy id>`) takes
    its current name, once, before the run is looked for; an explicit run.name is left alone."""
    import os

    if cfg.run.name:
        return
    root = Path(cfg.run.runs_dir)
    new = root / cfg.run_name()
    old = root / f"{cfg.preset}-{cfg.variant.name}-{legacy_hash(cfg)}"
    if old != new and old.is_dir() and not new.exists():
        os.replace(old, new)


def legacy_variant_section(v: VariantConfig) -> dict:
    """The variant section as legacy run ids hashed it, when every variant had every option."""
    resolved = v.resolved()
    d = {"name": v.name, "n_streams": v.n_streams, "backend": v.backend}
    d.update({k: resolved.get(k, default) for k, default in LEGACY_VARIANT_DEFAULTS.items()})
    d.update({k: resolved[k] for k, default in LATER_VARIANT_DEFAULTS.items() if resolved.get(k, default) != default})
    return d
