"""Finished runs taken from other experiments instead of trained again (`grid submit --reuse-from`).

A run's id is a hash of everything that decides what it computes (harness/core/run_id.py), so
the identity at 16 blocks, lr 1e-2 and seed 3 is the same run in the headline grid and in the
Table 1 grid. Training it twice costs the cluster and gives the same numbers. With --reuse-from,
a selected run with no folder yet in this experiment gets a copy of a finished (done or
diverged) run of the same id from the named experiments: files hard-linked where the file
system allows (no space taken; the copy's files are never written in place, since every write
is a temp + rename), its config.json re-pointed at the new folder. Evaluations are not copied:
`mhc-bench eval` scores the copy (reusing its cache by checkpoint content).

The copy is built beside its destination and renamed into place, so an interrupted reuse leaves
no half-run behind for the grid to mistake for a resumable one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from harness.core.atomic import write_json
from harness.core.errors import UserError
from harness.core.rundir import RunDir, experiment_dir

FINISHED = ("done", "diverged")  # outcomes: deterministic, so a copy is what training would give
NOT_COPIED = ("eval", "evals.parquet")  # evaluations belong to the folder that ran them


def source_experiments(names: list[str], runs_dir: str | None, target: Path) -> list[Path]:
    """The experiment folders named by --reuse-from; one line naming a missing one or the target itself."""
    sources = []
    for name in names:
        path = experiment_dir(name, runs_dir or "runs")
        if path == target.resolve():
            raise UserError(f"--reuse-from {name}: that is the experiment being submitted (its finished runs are already skipped)")
        sources.append(path)
    return sources


def _finished_copy(sources: list[Path], run_id: str) -> Path | None:
    """The first finished run folder named <name>-<run_id> in the source experiments."""
    for source in sources:
        for folder in sorted(source.glob(f"*-{run_id}")):
            if RunDir.is_run(folder) and (RunDir(folder, writer=False).read_status() or {}).get("status") in FINISHED:
                return folder
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: a real copy
        shutil.copy2(src, dst)


def reusable(runs: list, sources: list[Path]) -> dict[str, Path]:
    """{run id: the finished folder to copy} for the runs without a folder here yet that one of
    `sources` has finished; nothing is written. Runs with a folder here are left alone (finished
    ones are skipped by the submission, unfinished ones resume)."""
    found = {}
    for run in runs:
        if not run.path.exists() and (src := _finished_copy(sources, run.id)) is not None:
            found[run.id] = src
    return found


def copy_run(run, src: Path) -> None:
    """Put a copy of the finished run folder `src` at run.path (built beside it, renamed into place)."""
    run.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = run.path.with_name(f".{run.path.name}.reuse-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(*NOT_COPIED))
    config = json.loads((tmp / "config.json").read_text())
    config["run"]["runs_dir"], config["run"]["name"] = str(run.path.parent), run.path.name
    write_json(tmp / "config.json", config)  # a new file: the source's config stays as it was
    tmp.rename(run.path)
