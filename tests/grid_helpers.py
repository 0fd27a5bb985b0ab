"""Helpers shared by the grid tests (local executors) and the real-SLURM tests."""

import contextlib
import io
import textwrap
from pathlib import Path

import pandas as pd


def write(tmp_path, text, name="g.toml"):
    """A grid file from an indented TOML string."""
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def cli(*argv):
    """`mhc-bench grid ...` in this process; returns (exit code, stdout, stderr)."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["grid", *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def metrics(run_dir):
    return pd.read_parquet(Path(run_dir) / "metrics.parquet")


def registered(path, runs_dir, *overrides):
    """A grid loaded and registered in its experiment, as `grid submit` does: (grid, experiment)."""
    from slurm.experiment import Experiment
    from slurm.grid import load_grid

    grid = load_grid(path, runs_dir=runs_dir, overrides=list(overrides))
    exp = Experiment(grid.exp_dir)
    exp.register(grid)
    return grid, exp


def submit_one(tmp_path, body, data_cache, *extra):
    """`grid submit` a one-run grid body on the cluster; returns (exit code, stdout, that run)."""
    from slurm.grid import load_grid

    cache = f"data.cache_dir={data_cache}"
    code, out, _ = cli("submit", write(tmp_path, body), "--runs-dir", tmp_path / "runs", "--set", cache, *extra)
    [run] = load_grid(tmp_path / "g.toml", runs_dir=tmp_path / "runs", overrides=[cache]).runs
    return code, out, run


def train_reference(tmp_path, body, data_cache, name="ref"):
    """The same one-run grid trained uninterrupted in this process, in its own folder."""
    from harness.train.loop import train
    from slurm.grid import load_grid

    grid = load_grid(write(tmp_path, body, f"{name}.toml"), runs_dir=tmp_path / name, overrides=[f"data.cache_dir={data_cache}"])
    return train(grid.runs[0].cfg)
