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
    if finite["variant.sk_iters"].nunique() < 2:
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
