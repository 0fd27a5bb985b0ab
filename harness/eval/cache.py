"""Evaluation results kept per (checkpoint, task, settings), so a rerun scores nothing twice.

Scoring is the expensive part of `mhc-bench eval`, and its result is a pure function of:

- the checkpoint's bytes (sha256 of checkpoint.pt; a retrained or resumed run is new),
- the task's definition (the rendered task YAMLs, which name the data files, prompts and
  lm-eval's built-in task they include, and the source of the suite's module, which holds the
  hooks those YAMLs call; or the name of an lm-eval task of the user's),
- `--limit`, `--num-fewshot`, `--max-gen-toks`, `--bootstrap-iters`, the device type and the
  lm-eval version,
- our evaluation code (the source of the adapter, decoding and the row format: a fix there
  must not be hidden by old numbers). The model's own code is not in it: the checkpoint
  names the model, and a checkpoint that no longer fits its code fails to load rather than
  scoring differently.

Each suite's rows are stored under a hash of exactly those values, as
`<run>/eval/cache/<task>-<hash>.parquet`; anything else that changes (another limit, other
shots, a new checkpoint) is a different key and is evaluated. The checkpoint's hash is
remembered beside them with the file's size, mtime and inode, so an unchanged multi-GB
checkpoint is not read again on every call.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from harness.core.atomic import write_json, write_parquet
from harness.eval.results import SCHEMA, frame

CACHE_DIR = "cache"  # under <run>/eval/
DIGEST_NAME = "checkpoint.json"


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def checkpoint_digest(checkpoint: Path, cache_dir: Path) -> str:
    """sha256 of the checkpoint file, recomputed only when its size, mtime or inode changed."""
    memo_path = Path(cache_dir) / DIGEST_NAME
    stamp = _stamp(checkpoint)
    try:
        memo = json.loads(memo_path.read_text())
        if memo.get("stamp") == stamp and memo.get("path") == str(checkpoint):
            return memo["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: hash again
    h = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    write_json(memo_path, {"path": str(checkpoint), "stamp": stamp, "sha256": digest})
    return digest


SCORING_CODE = ("adapter.py", "decode.py", "results.py")  # beside this file (a suite's own code: its definition)


def code_version() -> str:
    """Hash of the evaluation code that turns a checkpoint into rows."""
    h = hashlib.sha256()
    for name in SCORING_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def key(**fields) -> str:
    """A short hash of the fields (JSON, sorted keys): the identity of one cached result."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _path(cache_dir: Path, task: str, digest: str) -> Path:
    return Path(cache_dir) / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', task)}-{digest}.parquet"


def read(cache_dir: Path, task: str, digest: str):
    """The cached rows of `task` under `digest`, or None."""
    import pandas as pd


    path = _path(cache_dir, task, digest)
    if not path.is_file():
        return None
    try:
        rows = pd.read_parquet(path)
    except Exception:  # a damaged cache entry is only a miss
        return None
    return frame(rows.to_dict("records"))


def write(cache_dir: Path, task: str, digest: str, rows) -> None:
    write_parquet(_path(cache_dir, task, digest), rows[list(SCHEMA)])
