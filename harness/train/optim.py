"""The optimiser and its schedule: AdamW with decoupled weight decay (none on norms, biases and
residual-mixing parameters), linear warm-up, then the mHC paper's step decay (or constant, or
cosine). Shared by the training loop and `bench model`, which times the same optimiser step."""

from __future__ import annotations

import math

import torch

from harness.core.config import Config


def lr_at(step: int, cfg: Config) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then the schedule."""
    o, total = cfg.optim, cfg.train.steps
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return o.lr
    if o.schedule == "cosine":
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    factor = 1.0  # "step": mHC paper, x0.316 of the peak at 80% of training, x0.1 at 90%
    for milestone, f in zip(*cfg.step_schedule()):
        if step >= milestone * total:
            factor = f
    return o.lr * factor


def adamw_options(device: torch.device) -> dict:
    """Implementation flags of AdamW on `device`.

    CUDA: the fused kernel, one launch for every parameter instead of a dozen foreach launches
    per step. CPU keeps torch's default (foreach off, not fused): its results are what existing
    CPU runs and checkpoints were computed with, and CPU resume is tested bitwise against them.
    """
    return {"fused": True} if device.type == "cuda" else {}


def make_optimizer(model, cfg: Config) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms, biases and residual-mixing parameters."""
    no_decay = model.no_decay_parameters()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in no_decay], "weight_decay": cfg.optim.weight_decay},
        {"params": [p for p in params if id(p) in no_decay], "weight_decay": 0.0},
    ]
    o = cfg.optim
    return torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, **adamw_options(params[0].device))
