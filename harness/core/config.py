"""Typed run configuration: dataclasses with a one-line doc per field, presets, overrides.

Everything a run depends on lives in one `Config` tree, so that a run is reproduced from its
saved `config.json` alone and a grid can sweep any field by its dotted name
(`model.d_model`, `variant.name`, `optim.lr`, ...). Overrides are type-checked against the
dataclass annotations; an unknown key is an error with a "did you mean" suggestion, never
silently ignored (a typo in a sweep would otherwise burn cluster budget on identical runs).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from harness.core.errors import UserError, did_you_mean
from harness.core.run_id import LATER_VARIANT_DEFAULTS, LEGACY_VARIANT_DEFAULTS, run_id
from variants.options import COMMON, check_choices, coerce, doc, flatten  # noqa: F401 (flatten: re-exported for the harness)
from variants.registry import VariantConfig


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
class DataConfig:
    data_root: str = doc("shared data folder; '' = $MHC_BENCH_DATA, else ../shared/data beside the project", "")
    corpus: str = doc("training data: a folder or file of .txt/.jsonl/.json (optionally .gz), .parquet, or pre-tokenized .bin "
                      "shards; or a name under <data_root>/corpus", "wikipedia_en_2015")
    val_files: str = doc("comma-separated corpus files held out for validation; '' = the last val_fraction of documents", "wiki_48.gz,wiki_49.gz")
    val_fraction: float = doc("share of documents held out when val_files is ''", 0.05)
    tokenizer: str = doc("bpe (trained on the training split), byte, or the path of a Hugging Face tokenizer.json used as it is", "bpe")
    vocab_size: int = doc("BPE vocabulary size (ignored for the byte tokenizer and a tokenizer file)", 8192)
    text_field: str = doc("the text's key in .jsonl/.json objects and its column in .parquet files", "text")
    shard_format: str = doc("layout of pre-tokenized .bin shards: modded-nanogpt has a 256 x int32 header, nanogpt is raw uint16",
                            "modded-nanogpt", choices=("modded-nanogpt", "nanogpt"))
    shard_vocab_size: int = doc(".bin shards' vocabulary; 0 = the tokenizer file's, else vocab_size in a meta.json beside them", 0)
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
    keep_checkpoints: int = doc("checkpoints kept: checkpoint.pt (the newest, which resume uses) and the N - 1 before it "
                                "as checkpoint-<step>.pt", 1)
    device: str = doc("'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1', ...", "auto")
    dtype: str = doc("autocast dtype; 'auto' = bf16 on CUDA, fp32 on CPU", "auto", choices=("auto", "fp32", "bf16", "fp16"))
    compile: bool = doc("torch.compile the model", False)
    threads: int = doc("CPU threads for torch (0 = torch's default)", 0)
    cpu_kernels: str = doc("on a CPU, run the residual maths (projection, Sinkhorn, Newton-Schulz, pre-mix, merge) in the "
                           "compiled CPU kernels: auto (where they build, else the PyTorch reference), on (stop if they "
                           "cannot build), off (the reference); same numbers to fp32 round-off", "auto",
                           choices=("auto", "on", "off"))
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
    tensorboard: bool = doc("write TensorBoard event files of the logged scalars to <run>/tensorboard/ (needs tensorboard)", False)
    wandb: str = doc("log the same scalars to Weights & Biases: off, or offline (files under <run>/wandb/; needs wandb)",
                     "off", choices=("off", "offline"))


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
        if t.keep_checkpoints < 1:
            raise UserError(f"train.keep_checkpoints must be >= 1, got {t.keep_checkpoints}")
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
        if not self.data.tokenizer.strip():
            raise UserError("data.tokenizer is empty; set it to bpe, byte, or the path of a tokenizer.json")
        if self.data.tokenizer not in ("bpe", "byte") and not self.data.tokenizer.endswith(".json"):
            raise UserError(f"data.tokenizer={self.data.tokenizer!r} is not bpe, byte or a path ending in .json "
                            "(a Hugging Face tokenizer.json)" + did_you_mean(self.data.tokenizer, ("bpe", "byte")))
        if not self.data.text_field:
            raise UserError("data.text_field is empty; name the key/column that holds the text (e.g. text)")
        if self.data.shard_vocab_size < 0:
            raise UserError(f"data.shard_vocab_size must be >= 0, got {self.data.shard_vocab_size}")
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
        """Nested plain data; the variant section flat, with every option of the variant named."""
        d = dataclasses.asdict(self)
        d["variant"] = self.variant_dict()
        return d

    def variant_dict(self) -> dict:
        v = self.variant
        return {"name": v.name, "n_streams": v.n_streams, "backend": v.backend, **v.resolved()}

    def config_hash(self) -> str:
        """The run's id: a short hash of what differs from the pinned defaults (harness/core/run_id.py)."""
        return run_id(self)

    def run_name(self) -> str:
        return self.run.name or f"{self.preset}-{self.variant.name}-{self.config_hash()}"


def check_world(cfg: Config, world: int) -> None:
    """Refuse a job of `world` processes that cannot train `cfg`, with the fix in the message.

    Each process trains an equal share of every step's `grad_accum` micro-batches
    (harness/train/distributed.py), so grad_accum must be a multiple of the world size. The job asks
    this as soon as it knows its size (harness/train/loop.py); `grid plan`, `grid submit` and `sweep`
    ask it for the resources requested (slurm/dispatch.py), so a grid that cannot run is
    refused before it waits in a queue, with the same words the job would have failed with.
    """
    t = cfg.train
    if world < 1 or t.grad_accum % world == 0:
        return
    seqs = t.batch_size * t.grad_accum
    same = next((g for g in range(world, seqs + 1, world) if g >= t.grad_accum and seqs % g == 0), None)
    fix = (f"set train.grad_accum={same} and train.batch_size={seqs // same} (the same {seqs} sequences per step)"
           if same else f"set train.grad_accum to a multiple of {world}")
    fewer = max(d for d in range(1, world + 1) if t.grad_accum % d == 0)
    raise UserError(f"train.grad_accum={t.grad_accum} is not a multiple of the job's {world} processes (each trains an "
                    f"equal share of every step's micro-batches): {fix}, or run {fewer} process{'es' if fewer > 1 else ''}")


# ---------------------------------------------------------------------- overrides
def _field_map(obj) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _type_of(obj, name: str):
    return typing.get_type_hints(type(obj))[name]


def _resolve(cfg, key: str):
    """Walk a dotted key to (parent dataclass, field name), with did-you-mean errors. A key of the
    variant section that is not a common field is an option of the variant named (checked there)."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        fields = _field_map(obj)
        if isinstance(obj, VariantConfig) and i == len(parts) - 1 and (part not in fields or part == "options"):
            obj.option_type(part)  # a UserError naming the variants that have it, if this one has not
            return obj, part
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
        if isinstance(obj, VariantConfig) and f.name == "options":
            keys += [f"{prefix}{k}" for k in obj.resolved()]
        elif dataclasses.is_dataclass(val):
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
    if isinstance(obj, VariantConfig) and name not in COMMON:
        obj.set_option(name, value)
        return
    setattr(obj, name, coerce(value, _type_of(obj, name), key))


def apply_overrides(cfg: Config, overrides) -> Config:
    """Apply `key=value` strings (from `--set`) in order, `variant.name` first (a variant's options
    are only known once it is named); returns cfg."""
    pairs = []
    for item in overrides or ():
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value, e.g. model.d_model=256")
        key, value = item.split("=", 1)
        pairs.append((key.strip(), value.strip()))
    for key, value in sorted(pairs, key=lambda kv: kv[0] != "variant.name"):
        set_value(cfg, key, value)
    return cfg


def _check_choices(obj, prefix: str) -> None:
    """Every field with choices holds one of them, through the sections and the variant's options."""
    check_choices(obj, prefix)
    for f in dataclasses.fields(obj):
        val = getattr(obj, f.name)
        if isinstance(obj, VariantConfig) and f.name == "options":
            obj.opts()  # each option's type and choices
        elif dataclasses.is_dataclass(val):
            _check_choices(val, f"{prefix}{f.name}.")


def from_dict(d: dict, cls=Config):
    """Rebuild a config from `to_dict()` output (e.g. a saved config.json), strictly."""
    obj = cls()
    if cls is VariantConfig:
        return _variant_from_dict(d)
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


def _variant_from_dict(d: dict) -> VariantConfig:
    """The flat variant section: common fields, then the variant's options. A config saved when
    every variant had every option holds options its variant has not: at their old defaults
    they are dropped (that is what they meant), anything else is refused."""
    v = VariantConfig()
    for key in COMMON:
        if key in d:
            setattr(v, key, coerce(d[key], _type_of(v, key), f"variant.{key}"))
    owned = v.resolved()
    for key, val in d.items():
        if key in COMMON:
            continue
        if key not in owned and LEGACY_VARIANT_DEFAULTS.get(key, LATER_VARIANT_DEFAULTS.get(key, object())) == val:
            continue
        v.set_option(key, val)
    return v


def describe(cfg: Config) -> str:
    """A `key = value  # doc` listing of every field, for `mhc-bench config`."""
    lines = []

    def field_line(prefix, f, val):
        choices = f.metadata.get("choices")
        extra = f" (one of: {', '.join(choices)})" if choices else ""
        return f"{prefix}{f.name} = {val!r}  # {f.metadata.get('doc', '')}{extra}"

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            val = getattr(obj, f.name)
            if isinstance(obj, VariantConfig) and f.name == "options":
                opts = obj.opts()
                for of in dataclasses.fields(opts):
                    lines.append(field_line(prefix, of, getattr(opts, of.name)))
            elif dataclasses.is_dataclass(val):
                lines.append(f"\n[{prefix}{f.name}]  # {f.metadata.get('doc', '')}")
                walk(val, f"{prefix}{f.name}.")
            else:
                lines.append(field_line(prefix, f, val))

    walk(cfg, "")
    return "\n".join(lines).strip() + "\n"
