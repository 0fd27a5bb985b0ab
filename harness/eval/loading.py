"""A run folder -> the trained model, its tokenizer and its config, ready to score text.

An EXPERIMENT is a folder of run folders; a run folder holds `config.json` and
`checkpoint.pt`. The checkpoint's own config (not a possibly edited config.json) decides the
model shape, and it is loaded with `weights_only=True` only. Run folders do not hold the
tokenizer: it lives with the token shards (`runs/data/<name>/`), found from the run's config,
or beside the run's own folder when the experiment was moved as a whole.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from harness.core.checkpoint import CHECKPOINT_NAME, load_checkpoint
from harness.core.config import Config, from_dict
from harness.core.device import resolve_device
from harness.core.errors import UserError
from harness.core.rundir import RunDir
from harness.train.data import shard_dir
from harness.train.model import build_model
from harness.train.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    FileTokenizer,
    is_tokenizer_file,
    load_tokenizer,
)


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: Config
    model: object  # harness.train.model.GPT, in eval mode on `device`
    tokenizer: object  # ByteTokenizer | BPETokenizer | FileTokenizer
    step: int  # optimiser step of the checkpoint
    status: str  # status.json's status ("done", "stopped", ...), "" when absent
    device: object  # torch.device


def is_run_dir(path: Path) -> bool:
    return RunDir.is_run(path)


def find_runs(target) -> list[Path]:
    """The run folders to evaluate: `target` itself, or the run folders directly inside it."""
    target = Path(target).expanduser().resolve()
    if not target.is_dir():
        raise UserError(f"{target} is not a folder; give a run folder (with config.json and {CHECKPOINT_NAME}) or an experiment folder of runs")
    if is_run_dir(target):
        if not (target / CHECKPOINT_NAME).is_file():
            raise UserError(f"run folder {target} has no {CHECKPOINT_NAME}; train it first (mhc-bench train ... --resume)")
        return [target]
    runs = sorted(p for p in target.iterdir() if p.is_dir() and is_run_dir(p))
    if not runs:
        raise UserError(f"{target} holds no run folders (sub-folders with config.json); give a run folder or an experiment folder")
    missing = [p.name for p in runs if not (p / CHECKPOINT_NAME).is_file()]
    if missing:
        raise UserError(f"run folder(s) without {CHECKPOINT_NAME} in {target}: {', '.join(missing[:5])}; train them first or move them out")
    return runs


def read_config(run_dir: Path) -> Config:
    """The run's config.json as a Config (a broken file is one clear error)."""
    return from_dict(RunDir(run_dir, writer=False).read_config())


def read_status(run_dir: Path) -> str:
    return (RunDir(run_dir, writer=False).read_status() or {}).get("status", "")


def tokenizer_candidates(cfg: Config, run_dir: Path) -> list[Path]:
    """Where the run's tokenizer may be: its shard folder as configured, or under the runs
    folder the run now sits in (the default cache is <runs_dir>/data)."""
    out = [Path(run_dir)]  # a tokenizer saved beside the run wins, should training ever do so
    try:
        out.append(shard_dir(cfg))
        if not cfg.data.cache_dir:
            moved = copy.deepcopy(cfg)
            moved.run.runs_dir = str(Path(run_dir).resolve().parent)
            out.append(shard_dir(moved))
    except UserError:
        pass  # the corpus is gone: only a tokenizer beside the run can help
    return list(dict.fromkeys(out))


def load_run_tokenizer(cfg: Config, run_dir: Path):
    """The tokenizer the run was trained with (the byte tokenizer needs no file)."""

    if cfg.data.tokenizer == "byte":
        return ByteTokenizer()
    given = is_tokenizer_file(cfg.data.tokenizer)
    candidates = tokenizer_candidates(cfg, run_dir)
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() and not (folder / "meta.json").is_file():
            return (FileTokenizer if given else BPETokenizer).load(folder / "tokenizer.json")
        if (folder / "meta.json").is_file():
            return load_tokenizer(folder)
    if given and Path(cfg.data.tokenizer).expanduser().is_file():  # a tokenizer file the run was trained with
        return FileTokenizer.load(cfg.data.tokenizer)
    where = ", ".join(str(c) for c in candidates)
    raise UserError(f"tokenizer of run {run_dir} not found (looked in {where}); rebuild it with "
                    f"`mhc-bench prepare` and the run's settings (--preset {cfg.preset} and its --set overrides)")


def rebuild(run_dir: Path):
    """(checkpoint state, config, model on the CPU with the checkpoint's weights, tokenizer) of a
    run folder's newest checkpoint: what evaluation and `mhc-bench export` both start from."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location="cpu")
    cfg = from_dict(state["config"])
    tokenizer = load_run_tokenizer(cfg, run_dir)
    model = build_model(cfg, tokenizer.vocab_size)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).splitlines()[0][:160]
        raise UserError(f"checkpoint {run_dir / CHECKPOINT_NAME} does not fit the model its config describes ({first}); "
                        "was it written by another version of mhc-bench?") from None
    return state, cfg, model, tokenizer


def load_run(run_dir, device: str = "auto") -> LoadedRun:
    """Model (eval mode, on `device`), tokenizer and config of one run folder."""
    run_dir = Path(run_dir).resolve()
    dev = resolve_device(device)
    state, cfg, model, tokenizer = rebuild(run_dir)
    model.to(dev).eval()
    return LoadedRun(run_dir, cfg, model, tokenizer, int(state["step"]), read_status(run_dir), dev)
