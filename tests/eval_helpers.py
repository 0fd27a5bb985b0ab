"""Helpers of the evaluation tests: a briefly trained `tiny` run, and fresh copies of it."""

import shutil
from pathlib import Path

from harness.core.config import apply_overrides
from harness.core.presets import get_preset


def train_tiny(runs_dir: Path, data_cache: Path, *overrides: str) -> Path:
    """A `tiny` run trained for 4 steps (byte tokenizer: the folder alone can be evaluated)."""
    from harness.train.loop import train

    cfg = get_preset("tiny")
    cfg.run.runs_dir = str(runs_dir)
    cfg.run.progress = "off"
    cfg.data.cache_dir = str(data_cache)
    apply_overrides(cfg, ["train.steps=4", "train.eval_every=0", "train.diag_every=0", *overrides])
    return train(cfg).run_dir


def copy_run(run_dir: Path, experiment: Path, name: str | None = None) -> Path:
    """A copy of the run's config, status and checkpoint only: nothing evaluated, nothing cached."""
    out = experiment / (name or run_dir.name)
    out.mkdir(parents=True)
    for f in ("config.json", "status.json", "checkpoint.pt"):
        shutil.copy2(run_dir / f, out / f)
    return out
