"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

A run killed mid-write (pre-emption, OOM, Ctrl-C) or refused by its disk (full, read-only) must
never leave a half-written config, checkpoint or Parquet table behind; `os.replace` within one
filesystem is atomic, so the previous version stays whole until the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    An OSError names `path`, not the temporary file (nor nothing, as a write through a file
    object reports it): the user should hear which file could not be written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        _naming(e, path)
        raise
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; shared run folders want the usual mode
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            _naming(e, path)
        raise


def _naming(e: OSError, path: Path) -> None:
    """Give `e` the file `path` where it named none or the temporary file."""
    if e.filename is None or Path(e.filename).name.startswith(f".{path.name}."):
        e.filename = str(path)


def write_text(path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def make_dirs(path: str | os.PathLike) -> list[Path]:
    """`mkdir -p path`, returning the folders this call created, outermost first (for
    `remove_empty_dirs` to take back when what they were made for is refused)."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:  # another process made it meanwhile: not ours to remove
            pass
    return made


def remove_empty_dirs(made: list[Path]) -> None:
    """Remove folders `make_dirs` created, innermost first, as long as they are empty (another
    process may have put something in one since)."""
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return
