"""An experiment folder: its manifest, the state of each run, and experiment-level tables.

    runs/<experiment>/manifest.json     runs (id, name, folder, settings, config) and submissions
                      grid.toml         the grid file as last submitted (grids/<sha>.toml: each version)
                      <name>-<id>/      one run folder per run (harness/core/rundir.py)
                      code/<hash>/      frozen code of the submissions (slurm/snapshot.py)
                      logs/             submitit's pickles and job logs
                      runs.parquet      `grid collect`: one row per run, its config flattened
                      metrics.parquet   `grid collect`: every run's table, with run_id and name
                      ...

A run's state comes from its own status.json (written by train(), the only writer); the
manifest says which runs belong to the experiment and which job last ran each. The manifest
is read-modify-written under a lock, so two submissions at once both get recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

from harness.core import signals
from harness.core.atomic import write_json, write_parquet, write_text
from harness.core.config import flatten, from_dict
from harness.core.errors import UserError
from harness.core.run_id import run_id as current_run_id
from harness.core.rundir import RunDir, now

MANIFEST = "manifest.json"
STATES = ("pending", "running", "stopped", "interrupted", "done", "diverged", "failed")
# scheduler states in which a job may still train its run: resubmitting it would only queue a twin
ACTIVE_JOB_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                     "COMPLETING", "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"}


def is_locked(run_path: Path) -> bool:
    """Whether a process holds the run's training lock right now (never creates a file).

    The probe holds the lock for microseconds; a job that starts at that instant retries
    (slurm/dispatch.py), so probing never makes a run go untrained.
    """
    try:
        fd = os.open(Path(run_path) / ".lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


RUN_ID_SCHEME = 1  # manifests keyed by harness/core/run_id.run_id; absent = legacy ids (every field hashed)


def rekey_manifest(man: dict) -> dict:
    """A manifest keyed by legacy run ids, keyed by the current ones (harness/core/run_id.py). Every run
    keeps its folder, name, settings and jobs; the id is recomputed from the config it recorded."""
    mapping = {old: current_run_id(from_dict(entry["config"])) for old, entry in man.get("runs", {}).items()}
    man["runs"] = {mapping[old]: entry for old, entry in man.get("runs", {}).items()}
    for sub in man.get("submissions", []):
        sub["jobs"] = {mapping.get(r, r): job for r, job in sub.get("jobs", {}).items()}
        if "runs" in sub:
            sub["runs"] = [mapping.get(r, r) for r in sub["runs"]]
    man["run_ids"] = RUN_ID_SCHEME
    return man


class Experiment:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict:
        try:
            man = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise UserError(f"{self.path} is not an experiment (no {MANIFEST}); submit a grid first") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{self.manifest_path} is damaged ({e}); restore it or resubmit the grid") from None
        if man.get("run_ids") != RUN_ID_SCHEME:
            with self._locked() as h:  # re-keyed once, under the lock (see _locked); runs keep their folders
                man = h["manifest"]
        return man

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive read-modify-write of the manifest across processes."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".manifest.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            man = json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else None
            if man is not None and man.get("run_ids") != RUN_ID_SCHEME:
                man = rekey_manifest(man)  # legacy ids: written back below
            holder = {"manifest": man}
            yield holder
            if holder["manifest"] is not None:
                write_json(self.manifest_path, holder["manifest"])

    # ------------------------------------------------------------------ writing
    def register(self, grid, runs=None) -> None:
        """Record the grid file and its runs (added to the runs of earlier versions of the grid)."""
        runs = grid.runs if runs is None else runs
        with self._locked() as h:
            man = h["manifest"] or {"experiment": grid.name, "created": now(), "runs": {}, "submissions": [],
                                    "run_ids": RUN_ID_SCHEME}
            man.update(description=grid.description, grid_file=str(grid.path), grid_sha=grid.sha, grid_key=grid.key, updated=now())
            for run in runs:
                entry = man["runs"].setdefault(run.id, {"name": run.name, "folder": run.folder, "settings": run.settings,
                                                        "config": run.cfg.to_dict(), "added": now(), "grids": []})
                if grid.key not in entry.setdefault("grids", []):
                    entry["grids"].append(grid.key)  # the versions of the grid this run belongs to
            h["manifest"] = man
        write_text(self.path / "grids" / f"{grid.sha}.toml", grid.text)
        write_text(self.path / "grid.toml", grid.text)

    def record_submission(self, entry: dict) -> None:
        with self._locked() as h:
            if h["manifest"] is None:
                raise UserError(f"{self.path}: no manifest to record the submission in")
            h["manifest"]["submissions"].append({"time": now(), **entry})

    # ------------------------------------------------------------------ reading
    def last_jobs(self) -> dict[str, tuple[str, str]]:
        """run id -> (cluster, job id) of the latest submission that included it."""
        out = {}
        for sub in self.manifest().get("submissions", []):
            for run_id, job_id in sub.get("jobs", {}).items():
                out[run_id] = (sub.get("cluster", ""), job_id)
        return out

    def run_ids(self, all_versions: bool = False) -> list[str]:
        """The runs of the latest version of the grid (all runs ever added, with all_versions).

        Editing a grid (more steps, another lr) and resubmitting it adds new runs beside the old
        ones; tables that mixed them would compare 40-step runs with 100-step runs.
        """
        man = self.manifest()
        latest = man.get("grid_key")
        return [rid for rid, info in man["runs"].items() if all_versions or latest in info.get("grids", [latest])]

    def run_rows(self, job_states: bool = True, all_versions: bool = False) -> list[dict]:
        """One dict per run: id, name, state, step/steps, losses, error, last job (and its state)."""
        man = self.manifest()
        jobs = self.last_jobs()
        sched = scheduler_states(self.path, jobs) if job_states else {}
        rows = []
        for run_id in self.run_ids(all_versions):
            info = man["runs"][run_id]
            path = self.path / info["folder"]
            status = RunDir(path).read_status()
            state = status["status"] if status else "pending"
            if state == "running" and not is_locked(path):
                state = "interrupted"  # killed without a clean stop; a resubmission resumes it
            cluster, job_id = jobs.get(run_id, ("", ""))
            rows.append({
                "run_id": run_id, "name": info["name"], "folder": info["folder"], "state": state,
                "step": (status or {}).get("step", 0), "steps": (status or {}).get("steps", info["config"]["train"]["steps"]),
                "train_loss": (status or {}).get("train_loss"), "val_loss": (status or {}).get("val_loss"),
                "error": (status or {}).get("error"), "cluster": cluster, "job_id": job_id,
                "job_state": sched.get(job_id, ""), "settings": info.get("settings", {}), "config": info["config"],
            })
        return rows


def _queued() -> dict[str, str]:
    """Live jobs straight from the controller (`squeue`, one line per array task).

    sacct lags behind sbatch (slurmctld reports to slurmdbd asynchronously), so a job
    submitted a moment ago can be missing there; the queue is never behind.
    """
    import subprocess

    try:
        out = subprocess.run(["squeue", "--me", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line) if out.returncode == 0 else {}


def scheduler_states(exp_path: Path, jobs: dict[str, tuple[str, str]]) -> dict[str, str]:
    """job id -> SLURM state of the experiment's SLURM jobs: the queue for live jobs, else
    accounting, polled the way submitit polls it (one sacct call for all of them)."""
    ids = sorted({job for cluster, job in jobs.values() if cluster == "slurm" and job})
    if not ids:
        return {}
    import shutil

    live = _queued() if shutil.which("squeue") else {}
    states = {j: live[j] for j in ids if j in live}
    rest = [j for j in ids if j not in states]
    if rest and shutil.which("sacct") is None:
        return states | {j: "UNKNOWN" for j in rest}
    try:
        import submitit

        handles = [submitit.SlurmJob(folder=Path(exp_path) / "logs" / "%j", job_id=j) for j in rest]
        return states | {h.job_id: h.state for h in handles}
    except Exception as e:  # a broken scheduler must not hide the runs' own states
        return states | {j: f"UNKNOWN ({type(e).__name__})" for j in rest}


# ---------------------------------------------------------------------- tables
def collect(exp: Experiment, all_versions: bool = False) -> dict[str, Path]:
    """Merge the run tables into experiment-level Parquet tables; returns name -> path.

    runs.parquet has one row per run: id, name, state, final losses, the environment's key
    facts, and the whole config flattened into `section.field` columns. Every other table a
    run folder holds (metrics, diagnostics, evaluations, ...) is concatenated into a table of
    the same name with `run_id` and `name` columns in front, and signals.parquet holds every
    run's instability signals (harness/core/signals.py), their per-run summary in runs.parquet's
    `signals.*` columns.
    """
    import pandas as pd

    rows, tables = [], {}
    for r in exp.run_rows(job_states=False, all_versions=all_versions):
        path = exp.path / r["folder"]
        run = RunDir(path, writer=False)
        env = run.read_env() if path.is_dir() else {}
        row = {k: r[k] for k in ("run_id", "name", "folder", "state", "step", "steps", "train_loss", "val_loss", "error", "job_id")}
        row["swept"] = ",".join(k for k in r["settings"] if k != "preset")
        row.update({f"env.{k}": env.get(k) for k in ("n_params", "world_size", "device", "device_name", "torch", "git_commit", "git_dirty", "host")})
        row.update(flatten(r["config"]))
        found = {name: run.read_table(name) if path.is_dir() else None for name in RunDir.TABLES}
        if found["metrics"] is not None:  # computed now from the run's tables, so every run has today's definitions
            found["signals"], summary = signals.of_run(run)
            row.update({f"signals.{k}": v for k, v in summary.items()})
        rows.append(row)
        for name, df in found.items():
            if df is not None:
                df.insert(0, "name", r["name"])
                df.insert(0, "run_id", r["run_id"])
                tables.setdefault(name, []).append(df)
    if not rows:
        raise UserError(f"experiment {exp.path} has no runs")
    out = {"runs": exp.path / "runs.parquet"}
    write_parquet(out["runs"], pd.DataFrame(rows))
    for name, frames in tables.items():
        if name == "runs":
            continue
        out[name] = exp.path / f"{name}.parquet"
        write_parquet(out[name], pd.concat(frames, ignore_index=True))
    return out
