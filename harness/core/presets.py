"""Named presets: small functions that build a `Config`, each deriving from another.

`tiny` runs the test-suite in seconds on a CPU, `small` is the CPU demo (about a minute a
run), and `gpt-s`/`gpt-m`/`gpt-l` match the nanoGPT sizes of the mHC-lite paper
(6L/512, 12L/768, 24L/1024; 10k steps of 128 x 1024 tokens) so GPU numbers are comparable.
"""

from __future__ import annotations

from harness.core.config import Config
from harness.core.errors import UserError, did_you_mean


def tiny() -> Config:
    """CPU tests: a 2-layer byte-level model on the first ~3 MB of Wikipedia, seconds per run."""
    cfg = Config(preset="tiny")
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.seq_len = 2, 64, 2, 64
    cfg.data.tokenizer, cfg.data.max_bytes = "byte", 3_000_000
    cfg.train.steps, cfg.train.batch_size = 60, 8
    cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.eval_batches = 20, 20, 4
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-3, 10
    return cfg


def small() -> Config:
    """CPU demo: a 4-layer BPE model on the whole training split, about a minute per run."""
    cfg = tiny()
    cfg.preset = "small"
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.seq_len = 4, 128, 4, 128
    cfg.data.tokenizer, cfg.data.vocab_size, cfg.data.max_bytes = "bpe", 8192, 0
    cfg.train.steps, cfg.train.batch_size = 150, 16
    cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.eval_batches = 50, 50, 8
    cfg.train.diag_every = 50
    cfg.optim.lr, cfg.optim.warmup_steps = 3e-3, 20
    return cfg


def _gpu(n_layer: int, d_model: int, n_head: int, lr: float) -> Config:
    """mHC-lite paper scale: 10k steps x 128 sequences x 1024 tokens (131k tokens/step), bf16."""
    cfg = small()
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.seq_len = n_layer, d_model, n_head, 1024
    cfg.train.steps, cfg.train.batch_size, cfg.train.grad_accum = 10_000, 32, 4
    cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.eval_batches = 250, 1000, 20
    cfg.train.diag_every = 250
    cfg.optim.lr, cfg.optim.warmup_steps = lr, 2000
    return cfg


def gpt_s() -> Config:
    cfg = _gpu(6, 512, 8, 1.5e-3)
    cfg.preset = "gpt-s"
    return cfg


def gpt_m() -> Config:
    cfg = _gpu(12, 768, 12, 1e-3)
    cfg.preset = "gpt-m"
    return cfg


def gpt_l() -> Config:
    cfg = _gpu(24, 1024, 16, 6e-4)
    cfg.preset = "gpt-l"
    return cfg


PRESETS = {"tiny": tiny, "small": small, "gpt-s": gpt_s, "gpt-m": gpt_m, "gpt-l": gpt_l}


def get_preset(name: str) -> Config:
    """Build the named preset, or fail with the valid names."""
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}{did_you_mean(name, PRESETS)}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]()
