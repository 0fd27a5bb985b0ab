"""The report's pictures (seaborn, headless): one function per figure, each writing one PNG.

Inputs are long tables with a `label` column naming the configuration (variant and its
options) and a `seed` column, so every curve is a mean over seeds with a band (95% CI when
there are several seeds). Functions return the PNG path, or None when the data for that
figure is absent (e.g. no multi-stream variant, no k sweep), so a report shows what exists.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # headless: never ask for a display

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.atomic import atomic_path  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _band():
    return ("ci", 95)


def loss_curves(metrics: pd.DataFrame, out: Path, smooth: int = 10) -> Path | None:
    """Training loss (smoothed per run) and validation loss vs tokens, mean and band over seeds."""
    if metrics.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    tr = metrics[metrics.split == "train"].sort_values("step").copy()
    tr["loss_smooth"] = tr.groupby("run")["loss"].transform(lambda s: s.rolling(smooth, min_periods=1).mean())
    sns.lineplot(tr, x="tokens", y="loss_smooth", hue="label", errorbar=_band(), ax=axes[0])
    axes[0].set(title=f"training loss (rolling mean of {smooth} steps)", ylabel="loss")
    val = metrics[metrics.split == "val"]
    sns.lineplot(val, x="tokens", y="loss", hue="label", errorbar=_band(), marker="o", ax=axes[1])
    axes[1].set(title="validation loss (fixed held-out batches)", ylabel="loss")
    for ax in axes:
        ax.legend(fontsize=8)
    if len(val):  # the first points (near ln V) would flatten the interesting part
        axes[1].set_ylim(top=val[val.step > 0]["loss"].max() * 1.02 if (val.step > 0).any() else None)
    return _save(fig, out)


def grad_norms(metrics: pd.DataFrame, out: Path) -> Path | None:
    """Global gradient norm (before clipping) vs step: HC's instability shows up here first."""
    tr = metrics[metrics.split == "train"]
    if tr.empty or "grad_norm" not in tr:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(tr, x="step", y="grad_norm", hue="label", errorbar=_band(), ax=ax)
    ax.set(yscale="log", title="gradient norm (before clipping)")
    return _save(fig, out)


def amax_vs_depth(diagnostics: pd.DataFrame, out: Path) -> Path | None:
    """Paper Fig. 3/7: Amax gains of single layers and of composites [l, last] vs depth, log scale."""
    d = diagnostics[(diagnostics.scope == "span") & (diagnostics.stat == "token_mean")
                    & diagnostics.metric.isin(["amax_fwd", "amax_bwd"])]
    if d.empty:
        return None
    d = d[d.step == d.groupby("run")["step"].transform("max")]  # the final checkpoint of each run
    last = d.groupby("run")["end"].transform("max")
    single = d[d.start == d.end].assign(kind="single layer", layer=lambda x: x.start)
    suffix = d[(d.end == last)].assign(kind="composite [l, last]", layer=lambda x: x.start)
    both = pd.concat([single, suffix])
    both["gain"] = both.metric.map({"amax_fwd": "forward (max |row sum|)", "amax_bwd": "backward (max |column sum|)"})
    g = sns.relplot(both, x="layer", y="value", hue="label", col="gain", row="kind", kind="line",
                    errorbar=_band(), height=3.2, aspect=1.6, facet_kws={"sharey": False})
    g.set(yscale="log")
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    for ax in g.axes.flat:  # gains near 1 read better as plain numbers than as 1.1 x 10^0
        lo, hi = ax.get_ylim()
        # within a decade a log axis has only one labelled tick: label evenly spaced values instead
        ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5) if hi / lo < 20
                                   else matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    g.set_axis_labels("sub-layer index l", "Amax gain")
    g.figure.suptitle("Amax gain magnitude of H_res (token mean, final checkpoint)", y=1.02)
    return _save(g.figure, out)


def homogenisation(diagnostics: pd.DataFrame, out: Path) -> Path | None:
    """Distance of the composite [0, l] from the uniform matrix: streams homogenising with depth."""
    d = diagnostics[(diagnostics.scope == "span") & (diagnostics.metric == "uniform_distance")
                    & (diagnostics.stat == "token_mean") & (diagnostics.start == 0)]
    if d.empty or d.value.max() == 0:
        return None
    d = d[d.step == d.groupby("run")["step"].transform("max")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(d, x="end", y="value", hue="label", errorbar=_band(), marker="o", ax=ax)
    ax.set(xlabel="depth l of the composite [0, l]", ylabel="distance from uniform (1/n)",
           title="stream homogenisation of the composite H_res")
    return _save(fig, out)


GAP_FLOOR = 1e-9  # an fp32 sum that is exactly 1 has gap 0: drawn at this floor of the log axis


def ds_gap_vs_k(diagnostics: pd.DataFrame, runs: pd.DataFrame, out: Path) -> Path | None:
    """Doubly-stochastic gap of H_res (worst layer, worst token, last step) vs Sinkhorn rounds k.

    Log axis: the row gap after a row-last round is fp32 rounding (~1e-7) while the column gap
    is what finite k leaves; on a linear or symlog axis both read as 0. Runs with mHC run to
    convergence and mHC-lite (exact by construction) are drawn as horizontal references.
    """
    mode = runs.get("variant.sk_mode", pd.Series("paper", index=runs.index))
    mhc = runs["variant.name"] == "mhc"
    finite = runs[mhc & (mode != "converged")]
    if "variant.sk_iters" not in finite or finite["variant.sk_iters"].nunique() < 2:  # no mHC run, or one k
        return None
    d = diagnostics[(diagnostics.scope == "layer") & diagnostics.metric.isin(["res_row_gap", "res_col_gap"])
                    & (diagnostics.stat == "token_max")]
    d = d[d.step == d.groupby("run")["step"].transform("max")]
    worst = d.groupby(["run", "metric"], as_index=False)["value"].max()
    worst["value"] = worst["value"].clip(lower=GAP_FLOOR)
    worst["metric"] = worst["metric"].map({"res_row_gap": "row sums", "res_col_gap": "column sums"})
    ks = sorted(int(k) for k in finite["variant.sk_iters"].unique())
    sweep = worst.merge(finite[["run", "variant.sk_iters"]], on="run")
    sweep["k"] = sweep["variant.sk_iters"].astype(int).astype(str)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.pointplot(sweep, x="k", y="value", hue="metric", order=[str(k) for k in ks], hue_order=["column sums", "row sums"],
                  errorbar=_band(), markers="o", ax=ax)
    for name, mask, style in (("mHC, Sinkhorn to convergence", mhc & (mode == "converged"), "--"),
                              ("mHC-lite (exact by construction)", runs["variant.name"] == "mhc-lite", ":")):
        ref = worst[worst.run.isin(runs.run[mask])]
        if not ref.empty:
            ax.axhline(ref.groupby("run")["value"].max().mean(), color="0.3", ls=style, label=f"{name}: worst sum")
    ax.set(yscale="log", xlabel="Sinkhorn rounds k (mHC)", ylabel="max |sum - 1| (worst layer, worst token)",
           title="doubly-stochastic gap of H_res at the end of training")
    ax.legend(fontsize="small")
    return _save(fig, out)


def overhead_bars(bench: pd.DataFrame, out: Path) -> Path | None:
    """Measured training-step overhead vs identity, with the I/O model's prediction beside it."""
    d = bench[bench.metric.isin(["overhead", "overhead_predicted_io"]) & (bench.variant != "identity")]
    if d.empty:
        return None
    d = d.assign(config=d.variant + " n=" + d.n_streams.astype(int).astype(str) + " / " + d.backend,
                 what=d.metric.map({"overhead": "measured", "overhead_predicted_io": "I/O model (floor)"}))
    g = sns.catplot(d, x="value", y="config", hue="what", col="preset", kind="bar", height=3.5 + 0.25 * d.config.nunique(),
                    aspect=1.3, sharex=False)
    g.set_axis_labels("step-time overhead vs identity", "")
    for ax in g.axes.flat:
        ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    return _save(g.figure, out)


def throughput_bars(bench: pd.DataFrame, out: Path) -> Path | None:
    d = bench[bench.metric == "tokens_per_s"]
    if d.empty:
        return None
    d = d.assign(config=d.variant + " n=" + d.n_streams.astype(int).astype(str))
    g = sns.catplot(d, x="value", y="config", hue="backend", col="preset", kind="bar", height=3.5, aspect=1.3, sharex=False)
    g.set_axis_labels("training tokens / s", "")
    return _save(g.figure, out)


def kernel_bandwidth(kbench: pd.DataFrame, out: Path) -> Path | None:
    """Kernel GB/s vs problem size per op and provider, against the copy ceiling measured in the same run."""
    if kbench.empty or "unit" not in kbench:
        return None
    gbs = kbench[kbench.unit == "GB/s"]
    d, copy = gbs[gbs.op != "copy"], gbs[gbs.op == "copy"]
    if d.empty:
        return None
    g = sns.relplot(d, x="tokens", y="value", hue="provider", style="mode", col="op", col_wrap=3, kind="line",
                    marker="o", height=3.5, aspect=1.2, facet_kws={"sharey": False})
    g.set(xscale="log")
    g.set_axis_labels("tokens", "GB/s")
    if len(copy):
        for ax in g.axes.flat:
            ax.axhline(copy["value"].max(), color="k", ls="--", lw=1, label="copy ceiling")
    return _save(g.figure, out)


def eval_scores(evals: pd.DataFrame, out: Path) -> Path | None:
    """Headline eval scores per configuration with error bars over seeds."""
    from harness.eval.results import headline

    if evals.empty:
        return None
    d = headline(evals)
    if d.empty:
        return None
    g = sns.catplot(d, x="value", y="label", col="task", kind="bar", errorbar=_band(), height=3.2, aspect=1.1,
                    sharex=False, col_wrap=min(3, d.task.nunique()))
    g.set_axis_labels("score", "")
    return _save(g.figure, out)


# ---------------------------------------------------------------------- a swept axis (harness/axes.py)
def _palette(series) -> dict:
    """One colour per series, the same in every figure of a report."""
    names = list(dict.fromkeys(series))
    return dict(zip(names, sns.color_palette("tab10" if len(names) <= 10 else "husl", len(names))))


def _axis_x(ax, axis: str, xs) -> None:
    from harness.axes import AXES

    ax.set_xscale("log", base=2 if axis == "model.n_layer" else 10)
    if axis == "model.n_layer":
        ax.set_xticks(sorted(xs))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(AXES[axis])


def _draw_series(ax, agg: pd.DataFrame, palette: dict, runs: pd.DataFrame | None = None, column: str = "") -> None:
    """Mean line and CI band per series; with `runs`, every seed's own value as a small dot,
    each series nudged sideways (multiplicatively: the x axis is logarithmic) so dots stay apart."""
    names = list(palette)
    for series, g in agg.sort_values(["order", "x"]).groupby("series", sort=False):
        g = g[g["n"] > 0]
        ax.plot(g["x"], g["mean"], marker="o", color=palette[series], label=series)
        ax.fill_between(g["x"], g["low"], g["high"], color=palette[series], alpha=0.18, linewidth=0)
        if runs is not None:
            r = runs[(runs["series"] == series) & ~runs["diverged"]]
            nudge = 2 ** (0.06 * (names.index(series) - (len(names) - 1) / 2))
            ax.scatter(r["x"] * nudge, r[column], s=10, color=palette[series], alpha=0.55, linewidths=0)


def loss_vs_axis(df: pd.DataFrame, axis: str, out: Path) -> Path | None:
    """Final validation loss vs depth or lr: mean and 95% CI over the seeds that trained, a dot per
    seed; × marks each diverged run at the top of the panel."""
    from harness.axes import aggregate

    if df.empty:
        return None
    palette = _palette(df.sort_values("order")["series"])
    agg = aggregate(df, "val_loss")
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _draw_series(ax, agg, palette, df, "val_loss")
    bad = df[df["diverged"]]
    if len(bad):
        top = ax.get_ylim()[1]
        for series, g in bad.groupby("series"):
            ax.scatter(g["x"], [top] * len(g), marker="x", s=60, color=palette[series], clip_on=False, zorder=5)
        ax.scatter([], [], marker="x", color="0.3", label=f"diverged run ({len(bad)})")
    _axis_x(ax, axis, df["x"].unique())
    ax.set(ylabel="final validation loss", title="final validation loss (mean, 95% CI and each seed)")
    ax.legend(fontsize=8)
    return _save(fig, out)


def amax_vs_axis(df: pd.DataFrame, axis: str, out: Path) -> Path | None:
    """Composite Amax of the whole depth at the end of training vs depth or lr (paper Fig. 3's
    question across depths): geometric mean over seeds with a 95% CI on the log scale."""
    from harness.axes import aggregate

    if df.empty or df["amax_fwd_final"].isna().all():
        return None
    palette = _palette(df.sort_values("order")["series"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, side, title in ((axes[0], "fwd", "forward (max |row sum|)"), (axes[1], "bwd", "backward (max |column sum|)")):
        _draw_series(ax, aggregate(df, f"amax_{side}_final", log=True), palette, df, f"amax_{side}_final")
        ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
        ax.set(yscale="log", title=f"composite Amax gain, {title}", ylabel="Π H_res over all sub-layers (token mean)")
        _axis_x(ax, axis, df["x"].unique())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    axes[0].legend(fontsize=8)
    fig.suptitle("composite residual gain at the end of training (geometric mean, 95% CI over seeds)", y=1.02)
    return _save(fig, out)


def amax_over_training(signals: pd.DataFrame, df: pd.DataFrame, title: str, out: Path) -> Path | None:
    """Whole-depth composite Amax vs step for the runs in `df` (one setting of the axis): the
    geometric mean over seeds, band = the seeds' range."""
    import numpy as np

    s = signals[signals["run"].isin(df["run"])].dropna(subset=["amax_fwd_mean"])
    if s.empty:
        return None
    s = s.merge(df[["run", "series", "order"]], on="run")
    palette = _palette(df.sort_values("order")["series"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, side, name in ((axes[0], "fwd", "forward"), (axes[1], "bwd", "backward")):
        col = f"amax_{side}_mean"
        for series, g in s.sort_values("order").groupby("series", sort=False):
            per = g.groupby("step")[col]
            geo = per.apply(lambda v: float(np.exp(np.log(v.clip(lower=1e-12)).mean())))
            ax.plot(geo.index, geo.values, color=palette[series], label=series)
            ax.fill_between(geo.index, per.min().values, per.max().values, color=palette[series], alpha=0.15, linewidth=0)
        ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
        ax.set(yscale="log", xlabel="step", ylabel="composite Amax (token mean)", title=f"{name} gain over training")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%.3g"))
    axes[0].legend(fontsize=8)
    fig.suptitle(title, y=1.02)
    return _save(fig, out)
