"""Third-party output of an evaluation goes to a log file; the console keeps our own lines.

lm-eval, Hugging Face `datasets` and their neighbours log, warn and draw progress bars for
every one of the ~90 tasks they build (several hundred lines for `--limit 2`). None of it
says anything about the results, but it buries them, and it is what one reads when something
fails. So while lm-eval works, `to_log(path)`:

- sends the records of those libraries' loggers (at INFO, so the log is worth reading) and
  anything else that reaches the root logger to the file;
- points `sys.stdout` / `sys.stderr` at the file, so `print`, `warnings` and the tqdm bars
  those libraries create land there too;
- points file descriptors 1 and 2 at the file as well, so what child processes and native
  code write lands there (lm-eval runs `git describe` for its environment record, whose
  "fatal: not a git repository" would otherwise reach the terminal outside a checkout);
- turns `datasets`' own progress bars off (a file has no use for a bar redrawn 100 times).

Everything is restored on exit, also on an exception. Our own console output must be written
to `console()`, taken *before* entering: a duplicate of the terminal's descriptor, which the
block does not move.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import sys
from pathlib import Path

# library loggers whose records go to the log file (each with its own handlers replaced)
THIRD_PARTY = ("lm_eval", "datasets", "transformers", "huggingface_hub", "evaluate", "fsspec", "filelock",
               "urllib3", "absl", "sqlitedict", "accelerate", "py.warnings")


def console(stream=None):
    """The stream for our own lines during an evaluation: `stream` (default sys.stderr), or,
    when it writes to descriptor 2, a stream on a duplicate of that descriptor, which stays on
    the terminal while `to_log` points descriptor 2 at the log file (closed when dropped). A
    stream without a descriptor (a test's capture) is returned as it is."""
    stream = stream or sys.stderr
    try:
        if stream.fileno() != 2:
            return stream
    except (AttributeError, OSError, ValueError):
        return stream
    stream.flush()
    return os.fdopen(os.dup(2), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8", errors="replace")


@contextlib.contextmanager
def _descriptors_to(f):
    """Descriptors 1 and 2 point at the open file `f` within the block (left alone if they
    cannot be duplicated, e.g. closed in a daemon)."""
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    except OSError:
        yield
        return
    try:
        for fd, _ in saved:
            os.dup2(f.fileno(), fd)
        yield
    finally:
        f.flush()
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _datasets_bars(enabled: bool | None) -> bool | None:
    """Set datasets' progress bars on/off (None: leave them); returns the previous state."""
    mod = sys.modules.get("datasets")
    if mod is None or not hasattr(mod, "is_progress_bar_enabled"):
        return None
    before = bool(mod.is_progress_bar_enabled())
    if enabled is not None:
        (mod.enable_progress_bars if enabled else mod.disable_progress_bars)()
    return before


@contextlib.contextmanager
def to_log(path: Path, title: str = ""):
    """Within the block, third-party output goes to `path` (appended, one header per block)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    import datasets  # noqa: F401  (imported by lm-eval anyway; its bars can only be switched once loaded)

    with open(path, "a", encoding="utf-8", buffering=1) as f:
        stamp = dt.datetime.now().isoformat(timespec="seconds")
        f.write(f"\n===== {stamp} {title}\n")
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        saved = []
        for name in THIRD_PARTY:
            lg = logging.getLogger(name)
            saved.append((lg, lg.handlers[:], lg.level, lg.propagate))
            lg.handlers = [handler]
            lg.setLevel(logging.INFO)
            lg.propagate = False
        root = logging.getLogger()
        root.addHandler(handler)
        bars = _datasets_bars(False)
        try:
            with _descriptors_to(f), contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield path
        finally:
            _datasets_bars(bars)
            root.removeHandler(handler)
            for lg, handlers, level, propagate in saved:
                lg.handlers, lg.propagate = handlers, propagate
                lg.setLevel(level)
