"""A run's folder: resolved config, environment, status, metrics, checkpoint and log.

    runs/<name>/config.json        the resolved config (reproduces the run on its own)
               env.json           git hash, versions, device, host, SLURM ids
               status.json        running | done | diverged | failed | stopped, with the step
               metrics.parquet    one row per train step and per validation
               checkpoint.pt      model + optimiser + RNG + step (atomic)
               train.log          what the run printed

Every file is replaced atomically, and a lock file keeps two processes from training the same
run at once (a resubmitted grid must never double-train a run).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from harness import PROJECT_ROOT
from harness.core.atomic import make_dirs, remove_empty_dirs, write_json, write_parquet
from harness.core.checkpoint import CHECKPOINT_NAME
from harness.core.errors import UserError, filesystem_fault, filesystem_fix
from kernels import cpu_build
from kernels.backend import cpu_kernel_mode

STATUSES = ("running", "done", "diverged", "failed", "stopped")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_info(root: Path = PROJECT_ROOT) -> dict:
    """Commit of the code that ran, and whether the tree had uncommitted changes.

    A grid job runs a frozen copy of the code (slurm/snapshot.py) that has no .git of its own;
    its SNAPSHOT.json holds what git said at submit time, and which copy ran.
    """
    snapshot = Path(root) / "SNAPSHOT.json"
    if snapshot.is_file():
        meta = json.loads(snapshot.read_text())
        return {"git_commit": meta.get("git_commit"), "git_dirty": meta.get("git_dirty"), "code_snapshot": str(root)}

    def git(*args):
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
            return out.stdout.strip() if out.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            return None

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": bool(dirty) if dirty is not None else None}


def cpu_kernels_in_use(device) -> str:
    """'on' where the torch backend runs the compiled CPU kernels (train.cpu_kernels on a CPU whose
    build succeeded), else 'off': which implementation computed a run's numbers."""
    on = str(device).startswith("cpu") and cpu_kernel_mode() != "off" and cpu_build.unavailable_reason() is None
    return "on" if on else "off"


def environment(device) -> dict:
    import torch

    env = {
        "time": now(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if str(device).startswith("cuda") else platform.processor() or "cpu",
        "cpu_threads": torch.get_num_threads(),
        "cpu_kernels": cpu_kernels_in_use(device),
        "argv": sys.argv,
        **git_info(),
        **{k: v for k, v in os.environ.items() if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_NODELIST",
                                                          "MASTER_ADDR", "MASTER_PORT")},
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # triton is optional at run time (CPU machines without it, e.g.)
        env["triton"] = None
    return env


def _same_file(fd: int, path: Path) -> bool:
    """Whether the open file `fd` is still the file at `path` (not deleted, nor replaced)."""
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def experiment_dir(experiment, runs_dir="runs") -> Path:
    """An experiment given as a folder or by its name under runs_dir, as every command takes it."""
    p = Path(experiment).expanduser()
    if not p.is_dir() and (Path(runs_dir) / experiment).is_dir():
        p = Path(runs_dir) / experiment
    if not p.is_dir():
        raise UserError(f"experiment folder not found: {experiment} (looked at {p.resolve()} and {Path(runs_dir).resolve() / str(experiment)})")
    return p.resolve()


class RunLockedError(UserError):
    """The run is being trained by another process (a grid job reports it, never retrains it)."""


class RunDir:
    """A run folder: written by the training loop, and the one place anything reads one back.

    config.json, env.json, status.json, and the Parquet tables (metrics, diagnostics, evals);
    a damaged file is one UserError naming it, a missing one None.
    """

    TABLES = ("metrics", "diagnostics", "evals")

    def __init__(self, path: Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer  # False on the non-zero ranks of a multi-process run: rank 0 writes
        self.checkpoint = self.path / CHECKPOINT_NAME
        self.metrics_path = self.path / "metrics.parquet"
        self._lock_fd = None
        self._made: list[Path] = []  # folders acquire() created (see discard)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def is_run(path) -> bool:
        """Whether `path` is a run folder (it has the config.json every run writes first)."""
        return (Path(path) / "config.json").is_file()

    def read_config(self) -> dict:
        """config.json as written (a Config: harness.core.config.from_dict of it)."""
        return self._json("config.json", required=True)

    def read_env(self) -> dict:
        return self._json("env.json", required=False) or {}

    def read_table(self, name: str, columns=None):
        """<name>.parquet (metrics, diagnostics, evals) as a DataFrame, or None if the run has none."""
        import pandas as pd

        f = self.path / f"{name}.parquet"
        if not f.is_file():
            return None
        try:
            return pd.read_parquet(f, columns=columns)
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"cannot read {f}: {type(e).__name__}: {e}") from None

    def final_val_loss(self) -> float:
        """The last validation loss in metrics.parquet (NaN without one)."""
        df = self.read_table("metrics")
        if df is None or "split" not in df:
            return math.nan
        val = df[df["split"] == "val"].sort_values("step")
        return float(val["loss"].iloc[-1]) if len(val) else math.nan

    def _json(self, name: str, required: bool):
        f = self.path / name
        try:
            return json.loads(f.read_text())
        except FileNotFoundError:
            if required:
                raise UserError(f"{self.path} is not a run folder (no {name})") from None
            return None
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {f}: {e}") from None

    # ------------------------------------------------------------------ status
    def read_status(self) -> dict | None:
        f = self.path / "status.json"
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except json.JSONDecodeError:
            return None

    def write_status(self, status: str, **fields) -> None:
        assert status in STATUSES, status
        if not self.writer:
            return
        write_json(self.path / "status.json", {"status": status, "updated": now(), **fields})

    # ------------------------------------------------------------------ locking
    def acquire(self) -> None:
        """Take the run's lock or fail: one process trains a run at a time.

        The folders it creates are remembered: a run refused before its first step is taken
        back by `discard`. A lock is only good while its file is still the run's .lock (a
        discarded run's file is deleted under its lock), so that is checked once it is held."""
        try:
            self._made = make_dirs(self.path)
            while True:
                fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise RunLockedError(f"run {self.path} is being trained by another process; wait for it or use another run.name") from None
                if _same_file(fd, self.path / ".lock"):
                    break
                os.close(fd)  # locked a file its holder deleted with the run: start over
                self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if (fault := filesystem_fault(e)) is None:
                raise
            raise UserError(f"cannot open run {self.path} for training: {fault}; {filesystem_fix(e)} "
                            "(run.runs_dir)") from None
        self._lock_fd = fd

    def discard(self) -> bool:
        """Delete the run folder if `acquire` created it (with the folders above it that it made
        and that are still empty): for a run refused before its first step, which must leave
        nothing behind. A folder that was already there is kept (False). Call it holding the lock."""
        made, self._made = self._made, []
        if not made or made[-1] != self.path:
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        remove_empty_dirs(made[:-1])
        return True

    def release(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    # ------------------------------------------------------------------ logging
    def log(self, msg: str, echo: bool = True) -> None:
        """Append a line to train.log and (optionally) print it to stderr."""
        if not self.writer:
            return
        with open(self.path / "train.log", "a") as f:
            f.write(msg + "\n")
        if echo:
            print(msg, file=sys.stderr, flush=True)


class MetricsLog:
    """Metric rows buffered in memory and written (atomically, whole table) at each checkpoint.

    On resume, rows past the checkpoint's step are dropped: they belong to steps that will be
    trained again, so the table never holds a step twice.
    """

    def __init__(self, path: Path, keep_until_step: int | None = None):
        import pandas as pd

        self.path = Path(path)
        self.rows: list[dict] = []
        if keep_until_step is not None and self.path.is_file():
            old = pd.read_parquet(self.path)
            self.rows = old[old["step"] <= keep_until_step].to_dict("records")

    def append(self, **row) -> None:
        self.rows.append(row)

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def flush(self) -> None:
        if self.rows:
            write_parquet(self.path, self.frame())
