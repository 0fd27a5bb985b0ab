"""Experiments that sweep depth or learning rate: one line per variant across the swept axis.

The mHC paper's stability claims are claims about an axis: HC's composite gain grows with
depth, mHC's does not; a stable connection tolerates larger learning rates. An experiment that
sweeps `model.n_layer` or `optim.lr` is read here as series (a variant with its own settings,
the axis removed) x axis value x seed, with each run's final validation loss and its
instability signals (harness/core/signals.py). Means over seeds carry 95% Student-t intervals;
gains are averaged on a log scale (a geometric mean), since they multiply over depth.
A diverged run (harness/core/signals.py: non-finite, no better than at step 0, or blown up) is
counted and marked, never averaged into a loss.
"""

from __future__ import annotations

import dataclasses
import math

from harness.analysis.table import group_rows, summarize
from harness.core import signals
from harness.core.rundir import RunDir

AXES = {"model.n_layer": "blocks (model.n_layer)", "optim.lr": "peak learning rate (optim.lr)"}


def swept_axes(runs) -> list[str]:
    """The AXES some configuration is trained at two or more values of (Run objects of
    harness/eval/table). An axis whose value only follows the configuration, each variant at its
    own tuned learning rate say (slurm/grids/headline_tuned.toml), is part of what is compared, not
    a sweep: those runs all meet the one baseline."""
    swept = []
    for a in AXES:
        if len({axis_value(r.config, a) for r in runs}) < 2:
            continue
        series, _ = _series(runs, a)
        values: dict[str, set] = {}
        for r in runs:
            values.setdefault(series[r.path], set()).add(axis_value(r.config, a))
        if any(len(v) > 1 for v in values.values()):
            swept.append(a)
    return swept


def axis_value(cfg: dict, key: str):
    """The value of an axis ("model.n_layer") in a run's config dict."""
    section, name = key.split(".")
    return cfg.get(section, {}).get(name)


def run_signals(runs) -> dict:
    """{run path: (per-step signals, summary)} for Run objects, computed from their tables."""
    return {r.path: signals.of_run(RunDir(r.path, writer=False)) for r in runs}


def _series(runs, axis: str) -> tuple[dict, dict]:
    """({run path: its series label}, {series label: its order}): runs grouped as if the axis were not set."""
    section, name = axis.split(".")
    stripped = [dataclasses.replace(r, config={**r.config, section: {k: v for k, v in r.config[section].items() if k != name}})
                for r in runs]
    rows = group_rows(stripped)
    return {run.path: row.label for row in rows for run in row.runs}, {row.label: i for i, row in enumerate(rows)}


def series_labels(runs, axis: str) -> list[str]:
    """The series of a sweep along `axis`, in the report's order (the figures' colour keys)."""
    return list(_series(runs, axis)[1])


def frame(runs, axis: str, computed: dict | None = None):
    """One row per run: series, x (the axis value), seed, val_loss, state, and the signals summary
    (`computed`: run_signals of these runs, if already at hand)."""
    import pandas as pd

    series, order = _series(runs, axis)
    computed = computed if computed is not None else run_signals(runs)
    rows = []
    for r in runs:
        s = computed[r.path][1]
        rows.append({"run": r.path.name, "series": series[r.path], "order": order[series[r.path]], "x": axis_value(r.config, axis),
                     "seed": r.config["train"]["seed"], "state": r.state, "val_loss": r.val_loss, **s})
    return pd.DataFrame(rows).sort_values(["order", "x", "seed"], kind="stable").reset_index(drop=True)


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n) with a 95% Student-t interval; NaN bounds for a single value."""
    vals = [float(v) for v in values if v == v]
    mean, half, _ = summarize(vals, [math.nan] * len(vals))
    if not vals:
        return math.nan, math.nan, math.nan, 0
    return mean, mean - half if len(vals) > 1 else math.nan, mean + half if len(vals) > 1 else math.nan, len(vals)


def aggregate(df, column: str, log: bool = False):
    """Per (series, x): mean and 95% interval of `column` over the seeds that did not diverge,
    n of them, and how many diverged. With log, the interval is of log10 values (geometric)."""
    import pandas as pd

    out = []
    for (series, x), g in df.groupby(["series", "x"], sort=False):
        ok = g[~g["diverged"]][column].astype(float)
        ok = ok[ok > 0] if log else ok
        mean, lo, hi, n = t_interval(ok.map(math.log10) if log else ok)
        if log:
            mean, lo, hi = (10 ** v if v == v else math.nan for v in (mean, lo, hi))
        out.append({"series": series, "order": g["order"].iloc[0], "x": x, "mean": mean, "low": lo, "high": hi,
                    "n": n, "diverged": int(g["diverged"].sum()), "runs": len(g)})
    return pd.DataFrame(out)


def focus(df, axis: str):
    """The axis value the per-step figures show: the deepest model; for learning rate, the largest
    lr at which no run of any series diverged (the most stressed stable setting), else the smallest."""
    if axis == "model.n_layer":
        return df["x"].max()
    stable = [x for x, g in df.groupby("x") if not g["diverged"].any()]
    return max(stable) if stable else df["x"].min()


def _fmt_interval(mean, lo, hi, digits=3, gain=False) -> str:
    if mean != mean:
        return "—"
    f = (lambda v: f"{v:.3g}") if gain else (lambda v: f"{v:.{digits}f}")
    return f(mean) + (f" [{f(lo)}, {f(hi)}]" if lo == lo else "")


def axis_table(df, axis: str) -> tuple[list[str], list[list[str]]]:
    """Markdown rows per (series, x): loss, composite gains, spikes, divergences."""
    loss, fwd, bwd = aggregate(df, "val_loss"), aggregate(df, "amax_fwd_final", log=True), aggregate(df, "amax_bwd_final", log=True)
    spikes = df.groupby(["series", "x"], sort=False)[["loss_spikes", "grad_spikes"]].sum().reset_index()
    header = ["series", AXES[axis].split(" (")[0], "runs", "final val loss (95% CI)", "composite Amax fwd (geo. mean, 95% CI)",
              "composite Amax bwd", "loss spikes", "grad-norm spikes", "diverged"]
    body = []
    for (_, a), (_, f), (_, b), (_, s) in zip(loss.iterrows(), fwd.iterrows(), bwd.iterrows(), spikes.iterrows()):
        body.append([a["series"], f"{a['x']:g}", str(a["runs"]), _fmt_interval(a["mean"], a["low"], a["high"]),
                     _fmt_interval(f["mean"], f["low"], f["high"], gain=True), _fmt_interval(b["mean"], b["low"], b["high"], gain=True),
                     str(int(s["loss_spikes"])), str(int(s["grad_spikes"])), f"{a['diverged']}/{a['runs']}"])
    return header, body


def stable_lr_table(df) -> tuple[list[str], list[list[str]]]:
    """Per series: the largest lr where no seed diverged, the first lr where one did, and the lr
    with the lowest mean final loss (among lrs with no divergence)."""
    header = ["series", "learning rates tried", "largest stable lr", "first lr with a divergence", "best lr (mean val loss)"]
    body = []
    for series, g in df.groupby("series", sort=False):
        per_lr = g.groupby("x")
        bad = sorted(x for x, s in per_lr if s["diverged"].any())
        first_bad = bad[0] if bad else None
        stable = [x for x, s in per_lr if not s["diverged"].any() and (first_bad is None or x < first_bad)]
        means = {x: s["val_loss"].mean() for x, s in per_lr if not s["diverged"].any()}
        best = min(means, key=means.get) if means else None
        body.append([series, ", ".join(f"{x:g}" for x in sorted(g["x"].unique())),
                     f"{max(stable):g}" if stable else "none", f"{first_bad:g}" if first_bad is not None else "none up to the largest",
                     f"{best:g} ({means[best]:.3f})" if best is not None else "—"])
    return header, body
