"""Typed run configuration: dataclasses with a one-line doc per field, presets, overrides.

Everything a run depends on lives in one `Config` tree, so that a run is reproduced from its
saved `config.json` alone and a grid can sweep any field by its dotted name
(`model.d_model`, `variant.name`, `optim.lr`, ...). Overrides are type-checked against the
dataclass annotations; an unknown key is an error with a "did you mean" suggestion, never
silently ignored (a typo in a sweep would otherwise burn cluster budget on identical runs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field

from harness.errors import UserError, did_you_mean

# (section, field) -> default: fields added after runs were published that do change the numbers;
# Config.config_hash leaves them out while they hold this default (tests/test_config.py pins ids).
LATER_FIELDS = {("variant", "precision"): "tf32"}


def doc(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING, choices=None):
    """A dataclass field carrying its one-line documentation (and optional valid choices)."""
    meta = {"doc": text}
    if choices is not None:
        meta["choices"] = tuple(choices)
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelConfig:
    n_layer: int = doc("transformer blocks; each has two residual sub-layers (attention, MLP)", 2)
    d_model: int = doc("width C of one residual stream", 64)
    n_head: int = doc("attention heads (d_model must divide evenly; head size must be even for RoPE)", 2)
    seq_len: int = doc("tokens per training sequence (context length)", 64)
    vocab_size: int = doc("embedding rows; 0 = the tokenizer's size rounded up to a multiple of 64", 0)
    mlp_hidden: int = doc("SwiGLU hidden width; 0 = 8/3 * d_model rounded up to a multiple of 64", 0)
    rope_base: float = doc("RoPE frequency base", 10000.0)
    norm_eps: float = doc("RMSNorm epsilon", 1e-6)
    init_std: float = doc("std of the normal init of linear and embedding weights", 0.02)
    tie_embeddings: bool = doc("share the token embedding with the output head", True)


@dataclass
class VariantConfig:
    name: str = doc("residual-connection variant, a name from the variant registry", "identity")
    n_streams: int = doc("residual streams n; 0 = the variant's default (identity: 1, hc/mhc/mhc-lite: 4)", 0)
    backend: str = doc("stream maths: torch (reference), triton (fused kernels; an error where unsupported), auto (triton on CUDA, else torch)", "torch", choices=("torch", "triton", "auto"))
    mode: str = doc("hc/mhc/mhc-lite coefficients: dynamic (input-dependent, per token) or static (biases only)", "dynamic", choices=("dynamic", "static"))
    fixed: str = doc("ablation: comma-separated subset of pre,post,res held fixed (pre = 1/n, post = 1, res = I), with no parameters", "")
    sk_iters: int = doc("mhc: Sinkhorn-Knopp rounds k; paper: exp, then k x [column, row]; kernel: row softmax, then k column normalisations; 0 = none", 20)
    sk_mode: str = doc("mhc: 'paper' (column then row, rows exact), 'kernel' (row softmax first, column last, as in DeepSeek's public kernels), 'converged' (to sk_tol)", "paper", choices=("paper", "kernel", "converged"))
    sk_tol: float = doc("mhc converged mode: stop when max |row/column sum - 1| <= this", 1e-6)
    sk_max_iters: int = doc("mhc converged mode: iteration cap (badly scaled logits can need more; the diagnostics show the gap left)", 2000)
    alpha_init: float = doc("hc/mhc/mhc-lite: initial value of the dynamic scales alpha", 0.01)
    res_init_offdiag: float = doc("mhc: initial H_res bias logits off the diagonal (diagonal 0); mhc-lite: of the non-identity permutations; -8 is near the identity", -8.0)
    prepost_init_logit: float = doc("mhc/mhc-lite: initial H_pre/H_post bias logits: +m on stream (sub-layer index mod n), -m on the others (breaks the streams' symmetry)", 1.0)
    precision: str = doc("hc/mhc/mhc-lite with backend=triton: the projection RMSNorm(x)phi on tensor cores in tf32 (the paper's "
                         "choice, ~2e-4 relative error, kernels/precision.py), tf32x3 (3 tf32 products, ~fp32 accuracy) or "
                         "ieee (fp32 FMA, no tensor cores); the torch backend is exact fp32 whatever this says",
                         "tf32", choices=("tf32", "tf32x3", "ieee"))


@dataclass
class DataConfig:
    data_root: str = doc("shared data folder; '' = $MHC_BENCH_DATA, else ../shared/data beside the project", "")
    corpus: str = doc("training text: a folder or file of .txt/.jsonl (optionally .gz), or a name under <data_root>/corpus", "wikipedia_en_2015")
    val_files: str = doc("comma-separated corpus files held out for validation; '' = the last val_fraction of documents", "wiki_48.gz,wiki_49.gz")
    val_fraction: float = doc("share of documents held out when val_files is ''", 0.05)
    tokenizer: str = doc("tokenizer trained/used for the shards", "bpe", choices=("bpe", "byte"))
    vocab_size: int = doc("BPE vocabulary size (ignored for the byte tokenizer)", 8192)
    max_bytes: int = doc("read at most this many bytes of training text (0 = all); for quick tests", 0)
    cache_dir: str = doc("where token shards and tokenizers are cached; '' = <run.runs_dir>/data", "")


@dataclass
class OptimConfig:
    lr: float = doc("peak learning rate of AdamW", 3e-3)
    beta1: float = doc("AdamW beta1", 0.9)
    beta2: float = doc("AdamW beta2", 0.95)
    eps: float = doc("AdamW epsilon", 1e-8)
    weight_decay: float = doc("decoupled weight decay on matrices (never on norms, biases, residual-mixing parameters)", 0.1)
    grad_clip: float = doc("clip the global gradient norm to this (0 = off)", 1.0)
    warmup_steps: int = doc("linear warm-up steps from 0 to lr", 10)
    schedule: str = doc("decay after warm-up: mHC paper's step decay, cosine, or constant", "step", choices=("step", "cosine", "constant"))
    step_milestones: str = doc("step schedule: comma-separated fractions of training where lr is multiplied", "0.8,0.9")
    step_factors: str = doc("step schedule: cumulative lr multipliers at those milestones", "0.316,0.1")
    min_lr_ratio: float = doc("cosine schedule: final lr as a fraction of the peak", 0.1)


@dataclass
class TrainConfig:
    steps: int = doc("optimiser steps", 60)
    batch_size: int = doc("sequences per micro-batch", 8)
    grad_accum: int = doc("micro-batches accumulated per optimiser step", 1)
    seed: int = doc("seed for init and for the data order (batches depend only on seed and step)", 0)
    eval_every: int = doc("validation every N steps (0 = only at the end)", 20)
    eval_batches: int = doc("validation micro-batches per evaluation (fixed, same every time)", 4)
    checkpoint_every: int = doc("write a checkpoint every N steps (0 = only at the end)", 20)
    device: str = doc("'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1', ...", "auto")
    dtype: str = doc("autocast dtype; 'auto' = bf16 on CUDA, fp32 on CPU", "auto", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = doc("torch.compile the model", False)
    threads: int = doc("CPU threads for torch (0 = torch's default)", 0)
    diag_every: int = doc("record mixing-matrix diagnostics every N steps into diagnostics.parquet (0 = only at the end)", 20)
    stop_after: int = doc("stop cleanly after this step as if pre-empted, leaving a resumable checkpoint (0 = off)", 0)
    parallel: str = doc("with several processes: 'ddp' replicates the model on every GPU; 'fsdp' shards parameters, "
                        "gradients and optimiser state (FSDP2) for models that outgrow one GPU", "ddp", choices=("ddp", "fsdp"))
    log_every: int = doc("read losses and gradient norms to the host every N steps (1 = every step); metrics keep one row "
                         "per step, with the interval's mean step time", 10)
    recompute: bool = doc("recompute the residual-stream maths in the backward instead of storing it (mHC paper 4.3); "
                          "the numbers are unchanged, identity ignores it", False)
    recompute_block: int = doc("with recompute: consecutive sub-layers per block, of which only the input stream is stored; "
                               "0 = the paper's optimum round(sqrt(n L / (n + 2))), L = sub-layers", 0)


@dataclass
class RunConfig:
    runs_dir: str = doc("folder for run outputs (git-ignored)", "runs")
    name: str = doc("run folder name; '' = <preset>-<variant>-<config hash>", "")
    progress: str = doc("progress bar: auto (only on a terminal), on, off", "auto", choices=("auto", "on", "off"))


@dataclass
class Config:
    preset: str = doc("preset this config started from (recorded, not applied)", "tiny")
    model: ModelConfig = doc("model shape", factory=ModelConfig)
    variant: VariantConfig = doc("residual-connection variant", factory=VariantConfig)
    data: DataConfig = doc("corpus, tokenizer, splits", factory=DataConfig)
    optim: OptimConfig = doc("optimiser and schedule", factory=OptimConfig)
    train: TrainConfig = doc("training loop", factory=TrainConfig)
    run: RunConfig = doc("run folder and logging", factory=RunConfig)

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Config":
        """Reject bad combinations with a message naming the field; returns self."""
        _check_choices(self, "")
        m, t, o = self.model, self.train, self.optim
        for name in ("n_layer", "d_model", "n_head", "seq_len"):
            if getattr(m, name) <= 0:
                raise UserError(f"model.{name} must be positive, got {getattr(m, name)}")
        if m.d_model % m.n_head:
            raise UserError(f"model.d_model={m.d_model} is not divisible by model.n_head={m.n_head}")
        if (m.d_model // m.n_head) % 2:
            raise UserError(f"head size model.d_model/model.n_head={m.d_model // m.n_head} must be even for RoPE")
        for name in ("steps", "batch_size", "grad_accum", "eval_batches"):
            if getattr(t, name) <= 0:
                raise UserError(f"train.{name} must be positive, got {getattr(t, name)}")
        for name in ("eval_every", "checkpoint_every", "stop_after", "threads", "recompute_block"):
            if getattr(t, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(t, name)}")
        if t.log_every < 1:
            raise UserError(f"train.log_every must be >= 1, got {t.log_every}")
        if o.lr <= 0:
            raise UserError(f"optim.lr must be positive, got {o.lr}")
        if o.warmup_steps < 0:
            raise UserError(f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
        ms, fs = self.step_schedule()
        if len(ms) != len(fs) or any(not 0 < x < 1 for x in ms) or list(ms) != sorted(ms):
            raise UserError(
                f"optim.step_milestones={o.step_milestones!r} and optim.step_factors={o.step_factors!r} "
                "must be equally long, increasing fractions in (0, 1)"
            )
        if not 0 < self.data.val_fraction < 1:
            raise UserError(f"data.val_fraction must be in (0, 1), got {self.data.val_fraction}")
        if self.data.tokenizer == "bpe" and not 256 < self.data.vocab_size < 2**32:
            raise UserError(f"data.vocab_size must be > 256 for BPE, got {self.data.vocab_size}")
        if self.variant.n_streams < 0:
            raise UserError(f"variant.n_streams must be >= 0, got {self.variant.n_streams}")
        return self

    def step_schedule(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Parsed (milestones, factors) of the step schedule."""
        try:
            ms = tuple(float(x) for x in self.optim.step_milestones.split(",") if x.strip())
            fs = tuple(float(x) for x in self.optim.step_factors.split(",") if x.strip())
        except ValueError:
            raise UserError(
                f"optim.step_milestones/step_factors must be comma-separated numbers, got "
                f"{self.optim.step_milestones!r} / {self.optim.step_factors!r}"
            ) from None
        return ms, fs

    # ------------------------------------------------------------------ identity
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def config_hash(self) -> str:
        """Short hash of everything that changes the numbers (the run section is excluded)."""
        d = self.to_dict()
        d.pop("run")
        d.pop("preset")
        # How a run is executed, not what it computes. A new field of that kind must be added here,
        # or every existing run id changes (tests/test_config.py pins the published ones).
        for k in ("progress", "threads", "stop_after", "parallel", "log_every", "recompute", "recompute_block"):
            d["train"].pop(k, None)
        # Fields that change the numbers but came after runs were published: in the id only when
        # they differ from their default, so every existing id stands.
        for (section, k), default in LATER_FIELDS.items():
            if d[section].get(k) == default:
                d[section].pop(k)
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def run_name(self) -> str:
        return self.run.name or f"{self.preset}-{self.variant.name}-{self.config_hash()}"


# ---------------------------------------------------------------------- overrides
def _field_map(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _type_of(obj, name: str):
    return typing.get_type_hints(type(obj))[name]


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


def _resolve(cfg, key: str):
    """Walk a dotted key to (parent dataclass, field name), with did-you-mean errors."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        fields = _field_map(obj)
        if part not in fields:
            raise UserError(f"unknown config key {key!r}" + did_you_mean(key, _all_keys(cfg)))
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise UserError(f"{key!r} is a section; set one of its fields, e.g. {key}.{dataclasses.fields(getattr(obj, part))[0].name}=...")
            return obj, part
        obj = getattr(obj, part)
        if not dataclasses.is_dataclass(obj):
            raise UserError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is not a section")
    raise UserError(f"empty config key {key!r}")


def _all_keys(obj, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(val):
            keys += _all_keys(val, name + ".")
        else:
            keys.append(name)
    return keys


def all_keys(cfg: Config) -> list[str]:
    """Every settable dotted key of a config."""
    return _all_keys(cfg)


def set_value(cfg: Config, key: str, value) -> None:
    """Set `key` to `value` (a string from the CLI, or an already-typed value from a grid)."""
    obj, name = _resolve(cfg, key)
    typ = _type_of(obj, name)
    if isinstance(value, str) and typ is not str:
        value = parse_value(value, typ, key)
    elif typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise UserError(f"{key} expects {typ.__name__}, got {type(value).__name__} {value!r}")
    setattr(obj, name, value)


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply `key=value` strings (from `--set`) in order; returns cfg."""
    for item in overrides or ():
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value, e.g. model.d_model=256")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
    return cfg


def _check_choices(obj, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        if dataclasses.is_dataclass(val):
            _check_choices(val, f"{prefix}{f.name}.")
        elif "choices" in f.metadata and val not in f.metadata["choices"]:
            raise UserError(
                f"{prefix}{f.name}={val!r} is not one of {', '.join(map(str, f.metadata['choices']))}"
                + did_you_mean(str(val), f.metadata["choices"])
            )


def from_dict(d: dict, cls=Config):
    """Rebuild a config from `to_dict()` output (e.g. a saved config.json), strictly."""
    obj = cls()
    for key, val in d.items():
        fields = _field_map(obj)
        if key not in fields:
            raise UserError(f"unknown config key {key!r} in saved config" + did_you_mean(key, fields))
        cur = getattr(obj, key)
        if dataclasses.is_dataclass(cur):
            if not isinstance(val, dict):
                raise UserError(f"config section {key!r} must be a mapping, got {val!r}")
            setattr(obj, key, from_dict(val, type(cur)))
        else:
            set_value(obj, key, val)
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested dict (`to_dict()`, a saved config.json, a TOML table) as {"section.field": value}."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def describe(cfg: Config) -> str:
    """A `key = value  # doc` listing of every field, for `mhc-bench config`."""
    lines = []

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(val):
                lines.append(f"\n[{prefix}{f.name}]  # {f.metadata.get('doc', '')}")
                walk(val, f"{prefix}{f.name}.")
            else:
                choices = f.metadata.get("choices")
                extra = f" (one of: {', '.join(choices)})" if choices else ""
                lines.append(f"{prefix}{f.name} = {val!r}  # {f.metadata.get('doc', '')}{extra}")

    walk(cfg, "")
    return "\n".join(lines).strip() + "\n"
