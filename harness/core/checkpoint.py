"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model and optimiser state, the RNG states and the step. The data
position needs no state of its own: batches are a pure function of (seed, step). Files are
loaded with `weights_only=True` only (no pickled code runs), and a damaged file is reported
as one clear error rather than a stack trace.

`checkpoint.pt` is always the newest, the one resume, eval and export read. With
`train.keep_checkpoints` N > 1 the N - 1 before it stay beside it as `checkpoint-<step>.pt`
(hard links where the filesystem allows: no copy of the bytes, and safe because a checkpoint
file is only ever replaced by a rename, never written in place); older ones are deleted only
once the new checkpoint is whole on disk.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from harness.core.atomic import atomic_path
from harness.core.errors import UserError

FORMAT_VERSION = 2  # 2: mixing α are 1-element vectors (were 0-d scalars; FSDP shards no 0-d tensors)
READABLE_VERSIONS = (1, 2)
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("format_version", "step", "tokens", "model", "optimizer", "rng_cpu", "config")
_KEPT = re.compile(r"checkpoint-(\d+)\.pt")


def save_checkpoint(path: Path, *, step: int, tokens: int, model_state: dict, optimizer_state: dict, config: dict,
                    keep: int = 1, previous_step: int | None = None) -> None:
    """Write the state dicts (whole, not sharded: see harness/train/fsdp.py) with the RNG states.

    `keep` > 1 keeps the checkpoint `path` held (at `previous_step`) as `checkpoint-<step>.pt`
    before replacing it, then deletes all but the newest `keep` - 1 of those."""
    path = Path(path)
    if keep > 1 and previous_step is not None and previous_step != step and path.is_file():
        _keep_as(path, kept_path(path, previous_step))
    state = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "tokens": tokens,
        "model": model_state,
        "optimizer": optimizer_state,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "config": config,
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # through a Python file, not the path: torch's own file writer reports a full disk as a
        # RuntimeError ("unexpected pos") that has lost the errno; a Python file raises OSError
        try:
            torch.save(state, f)
        except RuntimeError as e:
            if (cause := _write_error(e)) is None:
                raise
            raise cause from None  # torch's writer failed closing the zip after the write failed
    prune_checkpoints(path, keep)  # only now: the new checkpoint is whole


def kept_path(path: Path, step: int) -> Path:
    return Path(path).with_name(f"checkpoint-{step:08d}.pt")


def kept_checkpoints(path: Path) -> list[tuple[int, Path]]:
    """(step, file) of the older checkpoints kept beside `path`, oldest first."""
    folder = Path(path).parent
    if not folder.is_dir():
        return []
    found = ((_KEPT.fullmatch(p.name), p) for p in folder.iterdir())
    return sorted((int(m.group(1)), p) for m, p in found if m)


def prune_checkpoints(path: Path, keep: int) -> list[Path]:
    """Delete the kept checkpoints beyond the newest `keep` - 1 (`path` itself is the newest);
    returns those deleted."""
    kept = kept_checkpoints(path)
    gone = [p for _, p in kept[:max(0, len(kept) - (keep - 1))]]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def _keep_as(path: Path, target: Path) -> None:
    """`target` becomes the file `path` is now, whole or not at all (a hard link, else a copy)."""
    with atomic_path(target) as tmp:
        os.unlink(tmp)
        try:
            os.link(path, tmp)
        except OSError:  # a filesystem without hard links
            import shutil

            shutil.copyfile(path, tmp)


def _write_error(e: BaseException) -> OSError | None:
    """The OSError (ENOSPC, EIO...) a torch error was raised while handling, if any."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load and sanity-check a checkpoint; any damage becomes a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, wrong format, foreign pickle...
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first[:120]}" if first else type(e).__name__
        raise UserError(f"checkpoint {path} is unreadable or corrupt ({reason}); delete it to start over") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise UserError(f"checkpoint {path} is not an mhc-bench checkpoint (missing {', '.join(missing)})")
    if state["format_version"] not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise UserError(f"checkpoint {path} has format {state['format_version']}, this version reads {readable}")
    return _upgrade(state)


def _upgrade(state: dict) -> dict:
    """Bring an older checkpoint to the current format, so earlier runs still evaluate and resume.

    1 -> 2: the mixing scales `alpha_{pre,post,res}` became shape (1,). Their AdamW moments were
    the only 0-d moment tensors (every other parameter is at least 1-D), so those follow.
    """
    if state["format_version"] == 1:
        model = state["model"]
        for key, t in model.items():
            if key.rsplit(".", 1)[-1].startswith("alpha_") and t.dim() == 0:
                model[key] = t.reshape(1)
        for moments in state["optimizer"].get("state", {}).values():
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                if key in moments and moments[key].dim() == 0:
                    moments[key] = moments[key].reshape(1)
        state["format_version"] = 2
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if torch.cuda.is_available() and state.get("rng_cuda"):
        torch.cuda.set_rng_state_all(state["rng_cuda"])
