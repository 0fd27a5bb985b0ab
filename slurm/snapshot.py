"""Freeze the code a submission runs: a content-addressed copy inside the experiment folder.

A job may wait hours in the queue; if it imported the live checkout, an edit made meanwhile
(or a `git checkout` of another branch) would silently change what it trains. So each
submission copies the project's packages into `<experiment>/code/<content hash>/`, and jobs
start with that folder as their working directory: `python -m submitit.core._submit` puts
the working directory first on `sys.path`, ahead of the editable install of the checkout.
A requeued job re-reads the same pickle and runs in the same folder, so it too runs the
submit-time code. Identical code gives the same hash, so resubmissions share one copy.

Why not submitit's `RsyncSnapshot`: it copies only files tracked by git (a new, uncommitted
module — the common case while iterating on a variant — would be missing and every job would
die on import), and it needs git, rsync and a clone of the repository's history. This copy
needs none of them and includes exactly the importable code. The git commit and whether the
tree was dirty are recorded in SNAPSHOT.json, which `env.json` of every run then reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from harness.core.rundir import git_info, now

PACKAGES = ("harness", "variants", "kernels", "slurm")
FILES = ("pyproject.toml",)
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis"}
SKIP_SUFFIXES = (".pyc", ".pyo")
MARKER = "SNAPSHOT.json"


def _files(root: Path) -> list[Path]:
    """The code to freeze, relative to `root`, in a stable order."""
    out = [Path(f) for f in FILES if (root / f).is_file()]
    for pkg in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
            for name in sorted(filenames):
                if not name.endswith(SKIP_SUFFIXES) and not name.startswith("."):
                    out.append((Path(dirpath) / name).relative_to(root))
    return out


def code_hash(root: Path) -> str:
    h = hashlib.sha256()
    for rel in _files(root):
        h.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return h.hexdigest()[:12]


def freeze(root: Path, dest_parent: Path) -> Path:
    """Copy the code under `root` to `dest_parent/<hash>` (once) and return that folder."""
    root = Path(root).resolve()
    files = _files(root)
    digest = code_hash(root)
    final = Path(dest_parent) / digest
    if (final / MARKER).is_file():
        return final
    tmp = final.parent / f".{digest}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        for rel in files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, tmp / rel)
        meta = {"source": str(root), "hash": digest, "time": now(), "files": len(files), **git_info(root)}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, final)  # atomic: a folder with the final name is always complete
        except OSError:
            if not (final / MARKER).is_file():  # not a concurrent submission's identical copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
