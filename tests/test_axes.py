"""Experiments sweeping depth or learning rate (harness/analysis/axes.py) and their report sections."""

import math

import pandas as pd
import pytest
from matplotlib.colors import to_hex
from report_helpers import keep_figures, legend_colours, tick_labels

from harness.analysis import axes
from harness.cli import main
from harness.train.loop import train


@pytest.fixture
def drawn(monkeypatch):
    """{file name: Figure} of the figures saved during the test, kept for inspection."""
    return keep_figures(monkeypatch)


def runs_frame(rows):
    """(series, x, seed, val_loss, diverged, amax_fwd_final) tuples -> the frame axes.frame makes."""
    df = pd.DataFrame(rows, columns=["series", "x", "seed", "val_loss", "diverged", "amax_fwd_final"])
    df["order"] = df["series"].map({s: i for i, s in enumerate(dict.fromkeys(df["series"]))})
    df["run"] = [f"r{i}" for i in range(len(df))]
    return df


def test_aggregate_leaves_diverged_runs_out_and_averages_gains_geometrically():
    df = runs_frame([("HC", 16, 0, 2.0, False, 10.0), ("HC", 16, 1, 2.2, False, 1000.0), ("HC", 16, 2, math.nan, True, 1e9)])
    loss = axes.aggregate(df, "val_loss").iloc[0]
    assert loss["mean"] == pytest.approx(2.1) and loss["n"] == 2 and loss["diverged"] == 1 and loss["runs"] == 3
    assert loss["low"] < 2.0 and loss["high"] > 2.2  # a t interval with 1 degree of freedom is wide
    gain = axes.aggregate(df, "amax_fwd_final", log=True).iloc[0]
    assert gain["mean"] == pytest.approx(100.0)  # sqrt(10 * 1000), not the arithmetic 505


def test_largest_stable_lr_stops_at_the_first_divergence():
    df = runs_frame([
        ("mHC", 1e-3, 0, 2.5, False, 1), ("mHC", 1e-3, 1, 2.6, False, 1),
        ("mHC", 1e-2, 0, 2.2, False, 1), ("mHC", 1e-2, 1, 2.3, False, 1),
        ("mHC", 1e-1, 0, 9.0, True, 1), ("mHC", 1e-1, 1, 2.9, False, 1),
        ("HC", 1e-3, 0, 2.4, False, 1), ("HC", 1e-2, 0, math.nan, True, 1), ("HC", 1e-1, 0, 2.9, False, 1),
    ])
    header, body = axes.stable_lr_table(df)
    rows = {line[0]: line for line in body}
    assert rows["mHC"][2:] == ["0.01", "0.1", "0.01 (2.250)"]
    assert rows["HC"][2] == "0.001" and rows["HC"][3] == "0.01"  # 0.1 trained, but above a divergence: not "stable"
    assert axes.focus(df, "optim.lr") == 1e-3 and axes.focus(df.assign(x=df["x"].map({1e-3: 4, 1e-2: 8, 1e-1: 16})), "model.n_layer") == 16


@pytest.fixture
def depth_experiment(tiny_cfg, tmp_path):
    for variant in ("identity", "hc"):
        for n_layer in (1, 2):
            for seed in (0, 1):
                train(tiny_cfg(f"variant.name={variant}", f"model.n_layer={n_layer}", f"train.seed={seed}", "train.steps=6",
                               "train.eval_every=6", "train.diag_every=3", "train.checkpoint_every=6"))
    return tmp_path / "runs"


def test_a_depth_sweep_gets_its_section_figures_and_per_step_figures_at_the_deepest_setting(depth_experiment):
    from harness.analysis.table import finished_runs

    runs, _ = finished_runs(depth_experiment)
    assert axes.swept_axes(runs) == ["model.n_layer"]
    df = axes.frame(runs, "model.n_layer")
    assert set(df["series"]) == {"Baseline", "HC"} and sorted(df["x"].unique()) == [1, 2] and len(df) == 8
    assert (df.loc[df.series == "Baseline", "amax_fwd_final"] == 1).all() and df["loss_spikes"].notna().all()
    assert main(["report", str(depth_experiment)]) == 0
    out = depth_experiment / "report"
    md = (out / "report.md").read_text()
    assert "## Across blocks (model.n_layer)" in md and "| HC | 2 | 2 |" in md
    assert "The per-step figures below show model.n_layer = 2 only." in md
    for name in ("loss_vs_n_layer.png", "amax_vs_n_layer.png", "amax_over_training_n_layer.png", "loss.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name


def test_a_miniature_of_the_shipped_depth_grid_runs_collects_and_reports_amax_vs_depth(tmp_path, data_cache):
    """slurm/grids/depth.toml cut to 2 variants x 2 depths x 2 seeds and a few steps, end to end."""
    import re
    from pathlib import Path

    from grid_helpers import cli

    text = (Path(__file__).resolve().parents[1] / "slurm" / "grids" / "depth.toml").read_text()
    cuts = {r"^variant = \[\n(?:.*\n)*?\]$": 'variant = ["identity", "hc"]', r'^"model.n_layer" = .*$': '"model.n_layer" = [1, 2]',
            r"^seed = .*$": "seed = [0, 1]", r"^train.steps = .*$": "train.steps = 6", r"^train.eval_every = .*$": "train.eval_every = 6",
            r"^train.diag_every = .*$": "train.diag_every = 3", r"^train.checkpoint_every = .*$": "train.checkpoint_every = 6"}
    for pattern, line in cuts.items():
        text, n = re.subn(pattern, line, text, flags=re.M)
        assert n == 1, pattern  # the shipped grid still has the line this miniature replaces
    grid = tmp_path / "depth.toml"
    grid.write_text(text)
    runs_dir = tmp_path / "runs"
    code, out, err = cli("submit", grid, "--cluster", "debug", "--runs-dir", runs_dir, "--set", f"data.cache_dir={data_cache}")
    assert code == 0 and "finished: 8 done" in out, out + err
    exp = runs_dir / "depth"
    assert cli("collect", exp)[0] == 0
    runs = pd.read_parquet(exp / "runs.parquet")
    assert len(runs) == 8 and set(runs["model.n_layer"]) == {1, 2} and set(runs["variant.name"]) == {"identity", "hc"}
    for column in ("signals.loss_spikes", "signals.grad_spikes", "signals.diverged", "signals.amax_fwd_final", "signals.amax_bwd_final"):
        assert runs[column].notna().all(), column
    assert (runs.loc[runs["variant.name"] == "identity", "signals.amax_fwd_final"] == 1).all()
    signals = pd.read_parquet(exp / "signals.parquet")
    assert set(signals.run_id) == set(runs.run_id) and signals.groupby("run_id").step.nunique().min() >= 2  # over training
    assert main(["report", str(exp)]) == 0
    figure = exp / "report" / "amax_vs_n_layer.png"
    assert figure.read_bytes()[:4] == b"\x89PNG"
    assert "amax_vs_n_layer.png" in (exp / "report" / "report.md").read_text()


def test_sweep_figures_share_the_report_palette_and_tell_gains_near_one_apart(drawn, tmp_path):
    """HC is HC's colour in the sweep figures as in loss.png; composite gains within 1e-3 of 1
    still get distinct tick labels."""
    from harness.analysis import plots
    df = runs_frame([(s, x, seed, 2.0 + 0.1 * i, False, 1 + 1e-4 * x * (i + 1))
                     for i, s in enumerate(("Baseline", "HC")) for x in (2, 4, 8) for seed in (0, 1)])
    df["amax_bwd_final"] = df["amax_fwd_final"]
    plots.loss_vs_axis(df, "model.n_layer", tmp_path / "loss_vs.png")
    sweep = legend_colours(drawn["loss_vs.png"].axes[0])
    only_hc = pd.DataFrame([dict(run="h", label="HC", seed=0, split=split, step=s, tokens=s, loss=3.0, grad_norm=1.0)
                            for split in ("train", "val") for s in (1, 2)])
    plots.loss_curves(only_hc, tmp_path / "loss.png")
    assert sweep["HC"] == legend_colours(drawn["loss.png"].axes[0])["HC"]
    assert sweep["HC"] == to_hex(plots.palette(["HC"])["HC"])
    assert sweep["Baseline"] != sweep["HC"]
    plots.amax_vs_axis(df, "model.n_layer", tmp_path / "amax_vs.png")
    for ax in drawn["amax_vs.png"].axes:
        labels = tick_labels(ax)
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
