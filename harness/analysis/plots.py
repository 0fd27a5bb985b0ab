"""The report's pictures (seaborn, headless): one function per figure, each writing one PNG.

Inputs are long tables with a `label` column naming the configuration (variant and its
options) and a `seed` column, so every curve is a mean over seeds with a band (95% CI when
there are several seeds). Functions return the PNG path, or None when the data for that
figure is absent (e.g. no multi-stream variant, no k sweep), so a report shows what exists.

A configuration has one colour everywhere (`palette`): a variant's colour is fixed, so HC is
the same orange in the loss curves, the gain figures and a depth sweep, in this report and
the next. Gains that sit near 1 are drawn as their distance from 1 on a log axis.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # headless: never ask for a display

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from harness.analysis.axes import AXES, aggregate
from harness.analysis.table import METRIC_NAMES, natural_key
from harness.core.atomic import atomic_path  # noqa: E402
from harness.eval.results import headline
from harness.eval.suites import SUITES
from variants.registry import (
    get_variant_class,
    variant_colours,  # noqa: E402
)

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _band():
    return ("ci", 95)


# ---------------------------------------------------------------------- one colour per configuration
# A variant's fixed colour is declared on it (variants/<name>.py `colour`, read through the registry),
# keyed here by its row label: the same in every report.
# for the other labels (ablations, variants not above), in order of first appearance
SPARE_COLOURS = ["#d62728", "#bcbd22", "#17becf", "#637939", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94"]


def _family(label: str) -> str:
    """The variant a label belongs to: 'mHC (variant.sk_iters=1)' -> 'mHC'."""
    return label.split(" (")[0]


def _shade(colour, amount: float) -> tuple:
    """Darker (amount < 0, towards black) or lighter (amount > 0, towards white)."""
    rgb = to_rgb(colour)
    target = 0.0 if amount < 0 else 1.0
    return tuple(c + (target - c) * abs(amount) for c in rgb)


def palette(labels) -> dict:
    """{label: colour} for configuration labels, the same in every figure.

    A variant has its fixed colour (its class's `colour`); several settings of one variant ('mHC
    (variant.sk_iters=1)', 'mHC (variant.sk_iters=20)', ...) are shades of it, darkest first in
    the labels' natural order, and the bare label keeps the colour itself; any other label
    (an ablation, a variant without a fixed colour) takes the next spare colour.
    """
    families: dict[str, list[str]] = {}
    for label in dict.fromkeys(labels):
        families.setdefault(_family(label), []).append(label)
    fixed = variant_colours()
    spare = iter(c for c in SPARE_COLOURS if c not in fixed.values())
    extra = sns.color_palette("husl", max(1, len(families)))
    out = {}
    for i, (family, members) in enumerate(families.items()):
        colour = to_rgb(fixed.get(family) or next(spare, None) or extra[i])
        bare = family in members
        settings = sorted((m for m in members if m != family), key=natural_key)
        if bare:
            out[family] = colour
        if len(settings) == 1 and not bare:
            out[settings[0]] = colour
        elif settings:
            k = len(settings) + bare
            steps = [-0.45 + 0.95 * j / (k - 1) for j in range(k)]
            if bare:  # the bare label has the colour itself: no setting gets a shade next to it
                steps.remove(min(steps, key=abs))
            out.update({member: _shade(colour, amount) for member, amount in zip(settings, steps)})
    return out


def _colours(labels, given: dict | None) -> tuple[list[str], dict]:
    """(hue order, palette) for the labels present: the report's palette, else this figure's own."""
    present = list(dict.fromkeys(labels))
    pal = given if given is not None else palette(present)
    order = [label for label in pal if label in set(present)] + [label for label in present if label not in pal]
    missing = palette([label for label in present if label not in pal])
    return order, {label: pal.get(label, missing.get(label)) for label in order}


# ---------------------------------------------------------------------- gains near 1
GAIN_FLOOR = 1e-7  # |Amax - 1| within fp32's rounding of 1 (eps 1.2e-7): drawn at this floor, read "exactly 1"


def _deviation(gain):
    """|gain - 1|, floored so that an exact 1 stays on a log axis."""
    return (gain - 1).abs().clip(lower=GAIN_FLOOR)


def _deviation_axis(ax) -> None:
    """A log y axis of |gain - 1| whose labelled ticks differ: 1-2-5 (or every integer) per decade
    when few decades show, widened to the nearest ticks when the data sit between two."""
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 3 else (1.0, 2.0, 5.0) if decades > 1 else tuple(float(m) for m in range(1, 10))
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs, numticks=15))
    ticks = sorted(m * 10.0 ** e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 2) for m in subs)
    if sum(lo <= t <= hi for t in ticks) < 2:
        ax.set_ylim(max(t for t in ticks if t <= lo), min(t for t in ticks if t >= hi))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_gain_label))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _gain_label(v: float, _pos=None) -> str:
    if 1e-3 <= v < 1e4:
        return f"{v:g}"
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _mark_below_one(ax, x, gain, deviation, colour) -> None:
    """Open down-triangles on the points whose gain is below 1 (a distance loses the sign)."""
    below = gain < 1 - GAIN_FLOOR
    if below.any():
        ax.scatter(x[below], deviation[below], marker="v", s=40, facecolors="white", edgecolors=[colour], zorder=4)


# ---------------------------------------------------------------------- per configuration, over training
def loss_curves(metrics: pd.DataFrame, out: Path, smooth: int = 10, palette: dict | None = None) -> Path | None:
    """Training loss (smoothed per run) and validation loss vs tokens, mean and band over seeds."""
    if metrics.empty:
        return None
    order, pal = _colours(metrics["label"], palette)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    tr = metrics[metrics.split == "train"].sort_values("step").copy()
    tr["loss_smooth"] = tr.groupby("run")["loss"].transform(lambda s: s.rolling(smooth, min_periods=1).mean())
    sns.lineplot(tr, x="tokens", y="loss_smooth", hue="label", hue_order=order, palette=pal, errorbar=_band(), ax=axes[0])
    axes[0].set(title=f"training loss (rolling mean of {smooth} steps)", ylabel="loss")
    val = metrics[metrics.split == "val"]
    sns.lineplot(val, x="tokens", y="loss", hue="label", hue_order=order, palette=pal, errorbar=_band(), marker="o", ax=axes[1])
    axes[1].set(title="validation loss (fixed held-out batches)", ylabel="loss")
    for ax in axes:
        ax.legend(fontsize=8)
    if len(val):  # the first points (near ln V) would flatten the interesting part
        axes[1].set_ylim(top=val[val.step > 0]["loss"].max() * 1.02 if (val.step > 0).any() else None)
    return _save(fig, out)


def grad_norms(metrics: pd.DataFrame, out: Path, palette: dict | None = None) -> Path | None:
    """Global gradient norm (before clipping) vs step: HC's instability shows up here first."""
    tr = metrics[metrics.split == "train"]
    if tr.empty or "grad_norm" not in tr:
        return None
    order, pal = _colours(tr["label"], palette)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(tr, x="step", y="grad_norm", hue="label", hue_order=order, palette=pal, errorbar=_band(), ax=ax)
    ax.set(yscale="log", title="gradient norm (before clipping)")
    ax.legend(fontsize=8)
    return _save(fig, out)


# ---------------------------------------------------------------------- per configuration, along depth
def amax_vs_depth(diagnostics: pd.DataFrame, out: Path, palette: dict | None = None) -> Path | None:
    """Paper Fig. 3/7: Amax gains of single layers and of composites [l, last] vs depth, drawn as
    |Amax - 1| on a log axis: mHC's gains sit within 1e-3 of 1, HC's run to thousands."""
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
    both["deviation"] = _deviation(both["value"])
    order, pal = _colours(both["label"], palette)
    g = sns.relplot(both, x="layer", y="deviation", hue="label", hue_order=order, palette=pal, col="gain", row="kind",
                    kind="line", marker="o", errorbar=_band(), height=3.2, aspect=1.6, facet_kws={"sharey": False})
    g.set_titles(row_template="{row_name}", col_template="{col_name}")
    for (kind, gain), ax in g.axes_dict.items():
        cell = both[(both.kind == kind) & (both.gain == gain)]
        means = cell.groupby(["label", "layer"], as_index=False)["value"].mean()
        for label, m in means.groupby("label"):
            _mark_below_one(ax, m["layer"].to_numpy(), m["value"].to_numpy(), _deviation(m["value"]).to_numpy(), pal[label])
        _deviation_axis(ax)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    g.set_axis_labels("sub-layer index l", "|Amax − 1| (log)")
    if g.legend is not None:
        g.legend.set_title(None)
    g.figure.suptitle("Amax gain of H_res as its distance from 1 (token mean, final checkpoint; ▽ = gain below 1; "
                      f"at {_gain_label(GAIN_FLOOR)}: 1 within fp32 rounding)", y=1.02)
    return _save(g.figure, out)


def single_stream_runs(runs: pd.DataFrame) -> set:
    """Runs with one residual stream (identity, or n_streams = 1): their H_res is the 1 x 1 matrix 1."""
    def streams(row) -> int:
        n = int(row.get("variant.n_streams", 0) or 0)
        if n:
            return n
        try:
            return get_variant_class(row["variant.name"]).default_n_streams
        except Exception:  # a variant this install does not have (a peer's name): assume it mixes streams
            return 2

    return {row["run"] for _, row in runs.iterrows() if streams(row) == 1}


def homogenisation(diagnostics: pd.DataFrame, runs: pd.DataFrame, out: Path, palette: dict | None = None) -> Path | None:
    """Distance of the composite [0, l] from the uniform matrix: streams homogenising with depth.
    Runs with one stream are left out: a 1 x 1 matrix is uniform, a trivial 0."""
    d = diagnostics[(diagnostics.scope == "span") & (diagnostics.metric == "uniform_distance")
                    & (diagnostics.stat == "token_mean") & (diagnostics.start == 0)]
    d = d[~d["run"].isin(single_stream_runs(runs))]
    if d.empty or d.value.max() == 0:
        return None
    d = d[d.step == d.groupby("run")["step"].transform("max")]
    order, pal = _colours(d["label"], palette)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sns.lineplot(d, x="end", y="value", hue="label", hue_order=order, palette=pal, errorbar=_band(), marker="o", ax=ax)
    ax.set(xlabel="depth l of the composite [0, l]", ylabel="distance from uniform (1/n)",
           title="stream homogenisation of the composite H_res (n > 1 streams)")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return _save(fig, out)


GAP_FLOOR = 1e-9  # an fp32 sum that is exactly 1 has gap 0: drawn at this floor of the log axis


def ds_gap_vs_k(diagnostics: pd.DataFrame, runs: pd.DataFrame, out: Path, palette: dict | None = None) -> Path | None:
    """Doubly-stochastic gap of H_res (worst layer, worst token, last step) vs Sinkhorn rounds k.

    Log axis: the row gap after a row-last round is fp32 rounding (~1e-7) while the column gap
    is what finite k leaves; on a linear or symlog axis both read as 0. The k points are mHC
    with every mapping learned; ablations (variant.fixed), mHC run to convergence and mHC-lite
    (exact by construction) are drawn apart, as horizontal references, never pooled into a k.
    """
    mode = runs.get("variant.sk_mode", pd.Series("paper", index=runs.index))
    fixed = runs.get("variant.fixed", pd.Series("", index=runs.index)).fillna("").astype(str).str.strip()
    mhc = runs["variant.name"] == "mhc"
    finite = runs[mhc & (mode != "converged") & (fixed == "")]
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
    references = [("mHC, Sinkhorn to convergence", mhc & (mode == "converged") & (fixed == ""), "--", "0.3"),
                  ("mHC-lite (exact by construction)", (runs["variant.name"] == "mhc-lite") & (fixed == ""), ":", "0.3")]
    ablations = runs[(fixed != "") & runs["variant.name"].isin(["mhc", "mhc-lite"])]
    if len(ablations):
        labels = ablations["label"] if "label" in ablations else ablations["run"]
        _, pal = _colours(labels, palette)
        for label in dict.fromkeys(labels):
            at = ablations[labels == label]
            k = at["variant.sk_iters"].iloc[0] if at["variant.name"].iloc[0] == "mhc" else None
            name = f"ablation {label}" + (f" (k = {int(k)})" if k is not None and k == k else "")
            references.append((name, runs["run"].isin(at["run"]), "-.", pal[label]))
    for name, mask, style, colour in references:
        ref = worst[worst.run.isin(runs.run[mask])]
        if not ref.empty:
            ax.axhline(ref.groupby("run")["value"].max().mean(), color=colour, ls=style, label=f"{name}: worst sum")
    ax.set(yscale="log", xlabel="Sinkhorn rounds k (mHC, every mapping learned)", ylabel="max |sum - 1| (worst layer, worst token)",
           title="doubly-stochastic gap of H_res at the end of training")
    ax.legend(fontsize="small")
    return _save(fig, out)


def stream_collapse(diagnostics: pd.DataFrame, runs: pd.DataFrame, out: Path, palette: dict | None = None) -> Path | None:
    """Stream dominance over training (arXiv 2606.03483's collapse): per configuration, the largest
    stream's share of the sub-layers' input energy (mean over the sub-layers and tokens; 1/n =
    balanced, 1 = one stream carries all) and ‖H_res - I‖_F (0 = no mixing), mean and 95% band
    over seeds. Runs with one stream, and runs recorded before these diagnostics existed, are left out."""
    if diagnostics.empty or "scope" not in diagnostics:
        return None
    d = diagnostics[(diagnostics.scope == "model") & (diagnostics.stat == "token_mean")
                    & diagnostics.metric.isin(["stream_share", "res_identity_distance"])]
    if "variant.n_streams" in runs:
        d = d[d.run.isin(runs.run[runs["variant.name"] != "identity"])]
    if d.empty:
        return None
    hue_order, pal = _colours(d["label"], palette)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, metric, ylabel in ((axes[0], "stream_share", "largest stream's share of the energy"),
                               (axes[1], "res_identity_distance", "‖H_res − I‖_F (mean over sub-layers)")):
        m = d[d.metric == metric]
        if m.empty:
            ax.set_visible(False)
            continue
        sns.lineplot(m, x="step", y="value", hue="label", hue_order=[h for h in hue_order if h in set(m["label"])],
                     palette=pal, errorbar=_band(), ax=ax)
        ax.set(xlabel="step", ylabel=ylabel)
        ax.legend(fontsize="small")
    axes[0].set_title("stream dominance (1/n: balanced; 1: one stream)")
    axes[1].set_title("how far H_res is from the identity")
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


def eval_scores(evals: pd.DataFrame, out: Path, palette: dict | None = None) -> Path | None:
    """Headline eval scores per configuration (mean, 95% CI over seeds), one panel per benchmark.

    Scores where higher is better (accuracy, exact match, F1, in %) come first and bits/byte
    (lower is better) after; each panel names its metric and its direction, never one 'score'.
    """
    if evals.empty:
        return None
    d = headline(evals)
    if d.empty:
        return None
    d = d.copy()
    higher = d["higher_is_better"].astype(bool) if "higher_is_better" in d else d["metric"] != "bits_per_byte"
    d["higher"] = higher.to_numpy()
    tasks = sorted(d["task"].unique(), key=lambda t: (not d.loc[d["task"] == t, "higher"].iloc[0], list(SUITES).index(t)
                                                      if t in SUITES else len(SUITES)))
    order, pal = _colours(d["label"], palette)
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks) + 1.5, 0.5 * len(order) + 1.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = d[d["task"] == task]
        suite = SUITES.get(task)
        scale = suite.scale if suite else 1.0
        up = bool(t["higher"].iloc[0])
        metric = METRIC_NAMES.get(t["metric"].iloc[0], t["metric"].iloc[0])
        unit = "%" if scale == 100 else ""
        sns.barplot(t.assign(value=t["value"] * scale), x="value", y="label", hue="label", order=order, hue_order=order,
                    palette=pal, errorbar=_band(), legend=False, ax=ax)
        ax.set_title(suite.title if suite else task)
        ax.set_xlabel(f"{'bits per byte' if metric == 'bits/byte' else metric}{', ' + unit if unit else ''}"
                      f"\n{'higher is better →' if up else '← lower is better'}")
        ax.set_ylabel("")
        if ax is not axes[0][0]:
            ax.set_yticklabels([])
        if not up:  # set the lower-is-better panels apart
            ax.set_facecolor("#f3f3fb")
    fig.suptitle("evaluation scores (mean and 95% CI over seeds)", y=1.02)
    fig.tight_layout()
    return _save(fig, out)


def final_loss(stats, out: Path, palette: dict | None = None) -> Path | None:
    """The headline: final validation loss per configuration, mean and 95% CI over seeds (t), each
    seed as a dot, the reference's mean as a line, and the Welch verdict against it beside each row.

    `stats` are harness.analysis.report.LossStat records, in the report's row order.
    """
    stats = [s for s in stats if s.n]
    if not stats:
        return None
    _, pal = _colours([s.label for s in stats], palette)
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(stats) + 1.6))
    for y, s in enumerate(stats):
        colour = pal[s.label]
        if s.low == s.low:
            ax.errorbar([s.mean], [y], xerr=[[s.mean - s.low], [s.high - s.mean]], fmt="o", color=colour, capsize=4, ms=7, zorder=3)
        else:
            ax.plot([s.mean], [y], "o", color=colour, ms=7, zorder=3)
        ax.scatter(s.values, [y] * len(s.values), s=14, color=colour, alpha=0.5, linewidths=0, zorder=2)
        ax.text(1.02, y, s.verdict, transform=ax.get_yaxis_transform(), va="center", fontsize=9)
    for s in stats:
        if s.reference:
            ax.axvline(s.mean, color=pal[s.label], ls="--", lw=1, zorder=1)
    ax.set_yticks(range(len(stats)), [s.label for s in stats])
    ax.invert_yaxis()
    ax.set(xlabel="final validation loss (lower is better)",
           title="which residual should I train with? final validation loss, mean and 95% CI over seeds (dots: each seed)")
    ax.title.set_fontsize(11)
    return _save(fig, out)


# ---------------------------------------------------------------------- a swept axis (harness/analysis/axes.py)
def _axis_x(ax, axis: str, xs) -> None:
    ax.set_xscale("log", base=2 if axis == "model.n_layer" else 10)
    if axis == "model.n_layer":
        ax.set_xticks(sorted(xs))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel(AXES[axis])


def _draw_series(ax, agg: pd.DataFrame, palette: dict, runs: pd.DataFrame | None = None, column: str = "") -> None:
    """Mean line and CI band per series; with `runs`, every seed's own value as a small dot,
    each series nudged sideways (multiplicatively: the x axis is logarithmic) so dots stay apart."""
    names = list(dict.fromkeys(agg.sort_values("order")["series"]))
    for series, g in agg.sort_values(["order", "x"]).groupby("series", sort=False):
        g = g[g["n"] > 0]
        ax.plot(g["x"], g["mean"], marker="o", color=palette[series], label=series)
        ax.fill_between(g["x"], g["low"], g["high"], color=palette[series], alpha=0.18, linewidth=0)
        if runs is not None:
            r = runs[(runs["series"] == series) & ~runs["diverged"]]
            nudge = 2 ** (0.06 * (names.index(series) - (len(names) - 1) / 2))
            ax.scatter(r["x"] * nudge, r[column], s=10, color=palette[series], alpha=0.55, linewidths=0)


def loss_vs_axis(df: pd.DataFrame, axis: str, out: Path, palette: dict | None = None) -> Path | None:
    """Final validation loss vs depth or lr: mean and 95% CI over the seeds that trained, a dot per
    seed; × marks each diverged run at the top of the panel."""
    if df.empty:
        return None
    _, palette = _colours(df.sort_values("order")["series"], palette)
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


def amax_vs_axis(df: pd.DataFrame, axis: str, out: Path, palette: dict | None = None) -> Path | None:
    """Composite Amax of the whole depth at the end of training vs depth or lr (paper Fig. 3's
    question across depths), as |Amax - 1| on a log axis: geometric mean over seeds with a 95% CI
    on the log scale."""
    if df.empty or df["amax_fwd_final"].isna().all():
        return None
    _, palette = _colours(df.sort_values("order")["series"], palette)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for ax, side, title in ((axes[0], "fwd", "forward (max |row sum|)"), (axes[1], "bwd", "backward (max |column sum|)")):
        col = f"amax_{side}_final"
        dev = df.assign(deviation=_deviation(df[col].astype(float)))
        _draw_series(ax, aggregate(dev, "deviation", log=True), palette, dev, "deviation")
        gains = df.groupby(["series", "x"], sort=False)[col].mean().reset_index()
        for series, g in gains.groupby("series"):
            _mark_below_one(ax, g["x"].to_numpy(), g[col].to_numpy(), _deviation(g[col]).to_numpy(), palette[series])
        ax.set(title=f"composite Amax gain, {title}", ylabel="|Π H_res − 1| over all sub-layers (token mean)")
        _axis_x(ax, axis, df["x"].unique())
        _deviation_axis(ax)
    axes[0].legend(fontsize=8)
    fig.suptitle("composite residual gain at the end of training, as its distance from 1 (geometric mean, 95% CI over "
                 f"seeds; ▽ = gain below 1; at {_gain_label(GAIN_FLOOR)}: 1 within fp32 rounding)", y=1.02)
    return _save(fig, out)


def amax_over_training(signals: pd.DataFrame, df: pd.DataFrame, title: str, out: Path, palette: dict | None = None) -> Path | None:
    """Whole-depth composite Amax vs step for the runs in `df` (one setting of the axis), as
    |Amax - 1| on a log axis: the geometric mean over seeds, band = the seeds' range."""
    import numpy as np

    s = signals[signals["run"].isin(df["run"])].dropna(subset=["amax_fwd_mean"])
    if s.empty:
        return None
    s = s.merge(df[["run", "series", "order"]], on="run")
    _, palette = _colours(df.sort_values("order")["series"], palette)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for ax, side, name in ((axes[0], "fwd", "forward"), (axes[1], "bwd", "backward")):
        col = f"amax_{side}_mean"
        for series, g in s.sort_values("order").groupby("series", sort=False):
            per = _deviation(g[col].astype(float)).groupby(g["step"])
            geo = per.apply(lambda v: float(np.exp(np.log(v).mean())))
            ax.plot(geo.index, geo.values, color=palette[series], label=series)
            ax.fill_between(geo.index, per.min().values, per.max().values, color=palette[series], alpha=0.15, linewidth=0)
        ax.set(xlabel="step", ylabel="|composite Amax − 1| (token mean)", title=f"{name} gain over training")
        _deviation_axis(ax)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, y=1.02)
    return _save(fig, out)
