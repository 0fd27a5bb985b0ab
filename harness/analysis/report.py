"""`mhc-bench report EXPERIMENT` and `mhc-bench publish EXPERIMENT`.

A report answers the harness's question for one experiment (a folder of run folders): which
residual connection trained best, how sure are we, and what did it cost. It opens with that
answer, a figure and a table of the final validation loss per configuration with a 95% CI
over seeds and a Welch t-test against the Baseline, saying plainly when a difference is
inside the noise; names the hardware, versions and config; lays out the paper's Table 1 /
Table 4 (without a gap to the paper's 27B model where ours is orders of magnitude smaller);
and shows the figures of `harness.analysis.plots`, one colour per configuration throughout.
Everything is written to `<experiment>/report/` as report.md, report.html (self-contained:
sortable HTML tables, figures embedded, nothing fetched) and PNGs. `publish` copies the report and the small tables (never
checkpoints) into `results/<experiment>/`.
"""

from __future__ import annotations

import base64
import html
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.analysis import axes, downstream, plots
from harness.analysis.axes import AXES, axis_value, swept_axes
from harness.analysis.published_paths import sanitize_folder
from harness.analysis.stats import (
    PAPER_GAP,
    Comparison,
    adjust,
    check_poolable,
    compare,
    pooled_sd,
    seeds_for_power,
)
from harness.analysis.table import (
    _setting,
    finished_runs,
    group_rows,
    layout_of,
    paper4,
    summarize,
    write_layout,
)
from harness.bench.model import summary_notes, timing_table
from harness.core import signals
from harness.core.atomic import write_text
from harness.core.config import flatten
from harness.core.errors import UserError
from harness.core.rundir import RunDir, experiment_dir, now
from harness.eval import paper
from harness.eval.render import default_data_dir
from slurm.estimate import actual_seconds, duration
from slurm.estimate import load as load_estimate

SMALL_TABLE_BYTES = 4 * 1024 * 1024  # publish copies tables up to this size (results/ lives in git)


# ---------------------------------------------------------------------- loading
def load(experiment: Path):
    """Finished runs grouped into configurations, every run table with `run`, `label`, `seed`
    columns, and a note on the runs left out because they are not finished."""
    import pandas as pd


    done, left_out = finished_runs(experiment)
    rows = group_rows(done)
    per_run = []
    for row in rows:
        for run in row.runs:
            per_run.append({"run": run.path.name, "path": run.path, "label": row.label, "seed": run.config["train"]["seed"],
                            "config": run.config, "val_loss": run.val_loss})
    tables = {}
    for name in RunDir.TABLES:
        frames = [df.assign(run=r["run"], label=r["label"], seed=r["seed"]) for r in per_run
                  if (df := RunDir(r["path"], writer=False).read_table(name)) is not None]
        tables[name] = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    runs = pd.DataFrame([{"run": r["run"], "label": r["label"], "seed": r["seed"], "val_loss": r["val_loss"],
                          **{f"variant.{k}": v for k, v in r["config"]["variant"].items()}} for r in per_run])
    return rows, per_run, runs, tables, left_out


def capped_runs(diagnostics) -> list[str]:
    """A note naming the runs whose converged-mode Sinkhorn stopped at sk_max_iters short of sk_tol."""
    if diagnostics.empty or "sk_capped" not in set(diagnostics["metric"]):
        return []
    d = diagnostics[(diagnostics.metric == "sk_capped") & (diagnostics.stat == "token_mean")]
    worst = d.groupby("run")["value"].max()
    hit = sorted(worst[worst > 0].index)
    if not hit:
        return []
    return [f"Warning: in {len(hit)} runs ({', '.join(hit)}) Sinkhorn did not converge to variant.sk_tol within "
            f"variant.sk_max_iters for some tokens (worst: {worst.max():.1%} of a sub-layer's tokens): their "
            f"'converged' H_res are not the exact projection."]


def bench_tables(experiment: Path):
    """The latest `bench model` and `bench kernels` tables saved under <experiment>/bench/."""
    import pandas as pd

    found = {}
    for kind in ("model", "kernels"):
        files = sorted((experiment / "bench").glob(f"{kind}*.parquet"))
        found[kind] = pd.read_parquet(files[-1]) if files else pd.DataFrame()
    return found


# ---------------------------------------------------------------------- statistics
def welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t-test of mean(a) vs mean(b): (t, two-sided p); NaN when either has < 2 values."""
    a, b = [x for x in a if x == x], [x for x in b if x == x]
    if len(a) < 2 or len(b) < 2:
        return math.nan, math.nan
    from scipy import stats

    res = stats.ttest_ind(a, b, equal_var=False)
    return float(res.statistic), float(res.pvalue)


@dataclass
class LossStat:
    """One configuration's final validation loss against its reference (the report's headline)."""

    label: str
    values: list[float]  # each seed's final validation loss
    mean: float
    half: float  # 95% CI half-width (Student t); NaN with one seed
    delta: float  # mean - the reference's mean
    p: float  # Welch's two-sided p against the reference, unadjusted; NaN when not tested
    verdict: str
    reference: bool  # this row is the reference itself
    median: float = math.nan
    comparison: Comparison | None = None  # harness/analysis/stats.py: rank test, bootstrap CI, Holm-adjusted p
    spiked: int | None = None  # seeds with at least one loss spike (harness/core/signals.py); None = unknown

    @property
    def n(self) -> int:
        return len([v for v in self.values if v == v])

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def _references(rows):
    """({cell: its reference row or None}, cell(row), the reference's name, ' at the same depth ...',
    the kinds of reference present) for the rows of an experiment."""
    swept = swept_axes([run for row in rows for run in row.runs])

    def cell(row):
        return tuple(axis_value(row.runs[0].config, a) for a in swept)

    refs = {}
    for row in rows:
        refs.setdefault(cell(row), []).append(row)
    refs = {c: next((r for r in same if r.variant == "identity"), None) or next((r for r in same if r.paper_label == "mHC"), None)
            for c, same in refs.items()}
    kinds = {("Baseline" if r.variant == "identity" else "mHC (the paper's setting)") for r in refs.values() if r is not None}
    distinct = list({id(r): r for r in refs.values() if r is not None}.values())
    ref_name = distinct[0].label if len(distinct) == 1 else " / ".join(sorted(kinds)) or "Baseline"
    where = f" at the same {' and '.join(AXES[a].split(' (')[0] for a in swept)}" if swept else ""
    return refs, cell, ref_name, where, kinds


def _final_val_loss(run) -> float:
    return run.val_loss


def loss_stats(rows, value=_final_val_loss, what: str = "loss") -> list[LossStat]:
    """Final validation loss per configuration vs a reference row, with an honest verdict.

    The reference is the Baseline (identity); an experiment without one (a k sweep, say) is
    compared with the paper's own mHC setting when it has that row. In a depth or learning-rate
    sweep each configuration is compared with the reference at the same depth and lr. The seed
    noise is heavy-tailed, so beside Welch's t-test each comparison has a rank test and a bootstrap
    CI of the difference in medians (harness/analysis/stats.py); the verdict reads Welch's p after
    Holm-Bonferroni over all the report's comparisons, and says whether the median's CI agrees.
    `value(run)` is the per-seed outcome compared (default the final validation loss; the
    downstream section passes held-out bits per byte) and `what` names it in the verdicts.
    """
    import numpy as np


    for row in rows:  # never pool runs whose recipes differ
        check_poolable([_setting(run.config) for run in row.runs], [run.path.name for run in row.runs])
    refs, cell, _, _, _ = _references(rows)
    spikes = _spiked_seeds(rows)
    out = []
    for row in rows:
        base = refs[cell(row)]
        base_vals = [value(run) for run in base.runs] if base else []
        vals = [value(run) for run in row.runs]
        mean, half, _ = summarize(vals, [math.nan] * len(vals))
        finite = [v for v in vals if v == v]
        comparison = compare(vals, base_vals) if base is not None and row is not base else None
        out.append(LossStat(row.label, vals, mean, half, 0.0 if row is base else comparison.delta_mean if comparison else math.nan,
                            comparison.welch_p if comparison else math.nan, "", row is base,
                            float(np.median(finite)) if finite else math.nan, comparison, spikes.get(id(row))))
    adjust([s.comparison for s in out if s.comparison is not None])
    for s, row in zip(out, rows):
        s.verdict = _verdict(s, refs[cell(row)], what)
    return out


def _verdict(s: LossStat, base, what: str = "loss") -> str:
    c = s.comparison
    if s.reference:
        return "reference"
    if base is None:
        return "–"
    if c is None or c.holm_welch_p != c.holm_welch_p:
        return "no test (needs ≥ 2 seeds on both sides)"
    if c.holm_welch_p >= 0.05:
        return f"inside the noise (Holm p = {c.holm_welch_p:.2f})"
    side = "lower" if c.delta_mean < 0 else "higher"
    robust = ("the medians' 95% CI agrees" if c.median_ci_excludes_zero and (c.ci_high < 0) == (c.delta_mean < 0)
              else "but the medians' 95% CI includes 0")
    return f"{side} {what} than {base.label} (Holm p = {c.holm_welch_p:.2g}; {robust})"


def _spiked_seeds(rows) -> dict:
    """{id(row): seeds with at least one training-loss spike} for rows whose runs have metrics."""
    out = {}
    for row in rows:
        counts = []
        for run in row.runs:
            rd = RunDir(run.path, writer=False)
            if not (run.path / "metrics.parquet").is_file():
                break
            counts.append(signals.of_run(rd)[1]["loss_spikes"] > 0)
        else:
            out[id(row)] = int(sum(counts))
    return out


def loss_summary(rows, stats: list[LossStat] | None = None, metric: str = "final val loss",
                 paper_gap: float | None = PAPER_GAP) -> tuple[list[str], list[list[str]], list[str]]:
    """loss_stats as a table: (header, body, notes), the power line among the notes. `metric` names
    the outcome's column; `paper_gap` is the paper's gap in its units (None: the paper has none)."""
    refs, _, ref_name, where, kinds = _references(rows)
    stats = stats if stats is not None else loss_stats(rows)
    header = ["configuration", "runs", metric, "median", f"Δ vs {ref_name}{where}", "Δ median [95% CI]",
              "Welch p", "rank p", "Holm p (Welch / rank)", "seeds with a loss spike", "verdict"]
    body = []
    fmt = lambda x, f: f.format(x) if x == x else "–"  # noqa: E731
    for s in stats:
        c = s.comparison
        ci = f" ± {s.half:.4f}" if s.half == s.half else ""
        body.append([s.label, str(len(s.values)), f"{s.mean:.4f}{ci}", fmt(s.median, "{:.4f}"),
                     f"{s.delta:+.4f}" if s.delta == s.delta else "–",
                     f"{c.delta_median:+.4f} [{fmt(c.ci_low, '{:+.4f}')}, {fmt(c.ci_high, '{:+.4f}')}]" if c else "–",
                     fmt(c.welch_p, "{:.3g}") if c else "–", fmt(c.rank_p, "{:.3g}") if c else "–",
                     f"{fmt(c.holm_welch_p, '{:.3g}')} / {fmt(c.holm_rank_p, '{:.3g}')}" if c else "–",
                     f"{s.spiked}/{len(s.values)}" if s.spiked is not None else "–", s.verdict])
    tested = [s for s in stats if s.comparison is not None and s.comparison.welch_p == s.comparison.welch_p]
    notes = [f"± is a 95% CI over seeds (Student t). Against {ref_name}{where}: Welch's two-sided t-test, the "
             "Mann-Whitney rank test (one outlying seed moves it by one rank), and a bootstrap 95% CI of the "
             "difference in medians; the verdict reads Welch's p after Holm-Bonferroni over the "
             f"{len(tested)} comparisons of this report (p ≥ 0.05: inside the noise). A loss spike: the training "
             "loss rising above 1.5x its running minimum after warm-up (harness/core/signals.py)."]
    sd = pooled_sd([s.values for s in stats])
    if tested and sd == sd:
        largest = max(tested, key=lambda s: abs(s.delta))
        need = lambda gap: seeds_for_power(gap, sd)  # noqa: E731
        show = lambda n: "more than 100,000" if n == math.inf else f"{n:,.0f}"  # noqa: E731
        paper = (f"{show(need(paper_gap))} seeds per configuration to detect a gap of {paper_gap} (the mHC paper's "
                 f"size) with 80% power, and " if paper_gap is not None else "")
        notes.append(f"Power: at the measured spread (pooled SD of the {metric} over every configuration's seeds, "
                     f"{sd:.3f}), a two-sided t-test at α = 0.05 needs {paper}"
                     f"{show(need(largest.delta))} {'' if paper else 'seeds per configuration (80% power) '}"
                     f"for the largest gap measured here ({largest.delta:+.3f}, "
                     f"{largest.label}); this report has {min(s.n for s in stats)}-{max(s.n for s in stats)} per configuration.")
    if not any(refs.values()):
        notes.append("No Baseline (identity) runs in this experiment: deltas and tests are omitted.")
    elif "Baseline" not in kinds:
        notes.append(f"No Baseline (identity) runs in this experiment: the reference is {ref_name}, the paper's mHC setting.")
    return header, body, notes


# ---------------------------------------------------------------------- rendering
def _md_table(header, body) -> str:
    def cell(c):
        return str(c).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in body]
    return "\n".join(lines)


def _heading(text: str) -> str:
    """A column heading; a long snake_case name ('act_bytes_per_token_recompute') may break after
    its underscores, so a wide table folds its headings rather than running off the page."""
    escaped = html.escape(str(text))
    return escaped.replace("_", "_<wbr>") if len(escaped) > 12 else escaped


def _html_table(header, body, wrap: bool = False) -> str:
    head = "".join(f"<th>{_heading(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in body)
    return f'<table class="sortable{" wrap" if wrap else ""}"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


# Click (or Enter on) a column heading to sort by it, again to reverse: numbers as numbers
# ("−0.021 ± 0.004" by −0.021, "1,234" by 1234), text otherwise, empty cells ("—") last.
# Inline and dependency-free: the page is read offline, from a file.
SORT_SCRIPT = r"""
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  function key(row, col) {
    var text = row.cells[col] ? row.cells[col].textContent : "";
    var m = text.replace(/\u2212/g, "-").replace(/,/g, "").match(/^\s*[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?/i);
    return {num: m ? parseFloat(m[0]) : null, text: text};
  }
  heads.forEach(function (th, col) {
    th.tabIndex = 0;
    th.title = "sort by this column";
    function sort() {
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a, col), y = key(b, col);
        if (x.num !== null && y.num !== null) return dir * (x.num - y.num);
        if (x.num !== null) return -1;
        if (y.num !== null) return 1;
        return dir * x.text.localeCompare(y.text);
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") sort(); });
  });
});
"""

# .wrap: a table whose cells hold long unbroken values (paths); they may break anywhere there
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
         "overflow-wrap:break-word}table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
         "td,th{border:1px solid #ccc;padding:4px 6px;text-align:left;vertical-align:top}.wrap td{overflow-wrap:anywhere}"
         "td{font-variant-numeric:tabular-nums}th{background:#f4f4f4;cursor:pointer}"
         "th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}"
         "img{max-width:100%}figure{margin:1em 0}figcaption,.note{color:#555;font-size:0.9em}")


class Doc:
    """Blocks rendered twice: Markdown (report.md) and self-contained HTML (report.html), every
    table a real (sortable) HTML table, every figure embedded."""

    def __init__(self, title: str):
        self.md, self.html = [f"# {title}"], [f"<h1>{html.escape(title)}</h1>"]

    def h2(self, text):
        self.md.append(f"## {text}")
        self.html.append(f"<h2>{html.escape(text)}</h2>")

    def p(self, text):
        self.md.append(text)
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header, body, notes=(), wrap: bool = False):
        self.md.append(_md_table(header, body) + "".join(f"\n\n_{n}_" for n in notes))
        self.html.append(_html_table(header, body, wrap) + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes))

    def figure(self, path: Path, caption: str):
        self.md.append(f"![{caption}]({path.name})\n\n_{caption}_")
        data = base64.b64encode(path.read_bytes()).decode()
        self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def markdown(self) -> str:
        return "\n\n".join(self.md) + "\n"

    def page(self) -> str:
        return f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.md[0][2:])}</title>" \
               f"<style>{STYLE}</style></head><body>{''.join(self.html)}<script>{SORT_SCRIPT}</script></body></html>\n"


def _common_config(per_run) -> tuple[dict, list[str]]:
    """Settings shared by every run, and the keys that vary."""
    flats = [flatten(r["config"]) for r in per_run]
    keys = sorted(set().union(*flats))
    common = {k: flats[0].get(k) for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) == 1}
    return common, [k for k in keys if k not in common]


def build_report(experiment, runs_dir: str = "runs") -> Path:
    """Write <experiment>/report/{report.md, report.html, *.png}; returns the report.md path."""
    experiment = experiment_dir(experiment, runs_dir)
    rows, per_run, runs, tables, left_out = load(experiment)
    out = experiment / "report"
    out.mkdir(parents=True, exist_ok=True)
    all_runs = [run for row in rows for run in row.runs]
    # one colour per configuration in every figure, the swept-axis series included
    palette = plots.palette([row.label for row in rows] + [label for axis in axes.swept_axes(all_runs)
                                                           for label in axes.series_labels(all_runs, axis)])
    doc = Doc(f"mhc-bench report: {experiment.name}")
    _preamble(doc, experiment, per_run, rows, left_out + capped_runs(tables["diagnostics"]))
    _which_trained_best(doc, rows, out, palette)
    _downstream(doc, rows)
    _predicted_vs_actual(doc, experiment, rows)
    axis_figures, focus_runs = _axis_sections(doc, all_runs, out)
    if focus_runs is not None:  # per-step figures of one setting of the axis, not a line per depth
        tables = {k: v[v["run"].isin(focus_runs)] if "run" in v else v for k, v in tables.items()}
    _paper_layouts(doc, experiment, out)
    figures = axis_figures + _run_figures(tables, runs) + _cost_section(doc, bench_tables(experiment))
    doc.h2("Figures")
    for name, draw, caption in figures:
        path = draw(out / name, palette)
        if path is not None:
            doc.figure(path, caption)
    common, varying = _common_config(per_run)
    doc.h2("Configuration")
    doc.p("Varied across runs: " + (", ".join(varying) or "nothing") + ".")
    doc.table(["setting (the same in every run)", "value"], [[k, repr(v)] for k, v in common.items()], wrap=True)
    write_text(out / "report.html", doc.page())
    write_text(out / "report.md", doc.markdown())
    return out / "report.md"


def _preamble(doc, experiment: Path, per_run, rows, notes: list[str]) -> None:
    """What the report covers, what was left out, and the hardware and versions of its first run."""
    env = {}
    env_file = per_run[0]["path"] / "env.json"
    if env_file.is_file():
        env = json.loads(env_file.read_text())
    doc.p(f"{len(per_run)} runs in {len(rows)} configurations; written {now()} from the experiment folder "
          f"{experiment.name}/ of the runs directory.")
    for note in notes:
        doc.p(note)
    doc.p(f"Hardware and versions: {env.get('device_name', '?')} ({env.get('device', '?')}), host {env.get('host', '?')}; "
          f"python {env.get('python', '?')}, torch {env.get('torch', '?')}, triton {env.get('triton', '?')}; "
          f"code {str(env.get('git_commit'))[:12]}{' (uncommitted changes)' if env.get('git_dirty') else ''}.")


def _which_trained_best(doc, rows, out: Path, palette) -> None:
    doc.h2("Which residual connection trained best?")
    stats = loss_stats(rows)
    header, body, notes = loss_summary(rows, stats)
    headline = plots.final_loss(stats, out / "final_loss.png", palette)
    if headline is not None:
        doc.figure(headline, f"Final validation loss per configuration: mean and 95% CI over seeds (Student t), a dot per "
                             f"seed, the dashed line at the reference's mean; beside each row, the verdict against "
                             f"{header[4].removeprefix('Δ vs ')} (Welch's t-test, Holm-adjusted over the report).")
    doc.table(header, body, notes)


def _downstream(doc, rows) -> None:
    """The paper's benchmarks at chance or not (one line), and the configurations compared on
    held-out bits per byte with the loss table's statistics (harness/analysis/downstream.py)."""
    line = downstream.chance_line(rows, default_data_dir())
    scored = [row for row in rows if any(downstream.heldout_bpb(run) == downstream.heldout_bpb(run) for run in row.runs)]
    if line is None and not scored:
        return
    doc.h2("Downstream: which scores can tell the variants apart?")
    if line is not None:
        doc.p(line)
    if scored:
        stats = loss_stats(scored, value=downstream.heldout_bpb, what="held-out bits/byte")
        header, body, notes = loss_summary(scored, stats, metric="held-out bits/byte", paper_gap=None)
        evaluated = sum(downstream.heldout_bpb(run) == downstream.heldout_bpb(run) for row in scored for run in row.runs)
        doc.p(f"Held-out bits per byte (the run's own validation documents, `mhc-bench eval --tasks heldout`) of "
              f"{evaluated} runs, compared as the final loss is above.")
        doc.table(header, body, notes)


def _run_figures(tables: dict, runs) -> list[tuple]:
    """(file name, draw(path, palette), caption) of the per-step and diagnostics figures."""
    return [
        ("loss.png", lambda p, c: plots.loss_curves(tables["metrics"], p, palette=c), "Training and validation loss vs tokens (mean and 95% band over seeds)."),
        ("grad_norm.png", lambda p, c: plots.grad_norms(tables["metrics"], p, palette=c), "Gradient norm before clipping."),
        ("amax.png", lambda p, c: plots.amax_vs_depth(tables["diagnostics"], p, palette=c),
         "Amax gain of single H_res and of the composite from layer l to the last (paper Fig. 3/7), drawn as its distance "
         "from 1 on a log axis (▽: a gain below 1)."),
        ("homogenisation.png", lambda p, c: plots.homogenisation(tables["diagnostics"], runs, p, palette=c),
         "Distance of the composite H_res from the uniform matrix vs depth (runs with one stream left out: a 1 × 1 matrix is always uniform)."),
        ("stream_collapse.png", lambda p, c: plots.stream_collapse(tables["diagnostics"], runs, p, palette=c),
         "Stream dominance over training: the largest stream's share of each sub-layer input's energy (1/n balanced, "
         "1 = one stream carries everything: the stream-collapse paper's finding) and how far H_res is from the "
         "identity, averaged over the sub-layers; mean and 95% band over seeds."),
        ("ds_gap_vs_k.png", lambda p, c: plots.ds_gap_vs_k(tables["diagnostics"], runs, p, palette=c),
         "Doubly-stochastic gap of H_res vs Sinkhorn rounds k; ablations (variant.fixed), converged Sinkhorn and mHC-lite as separate lines."),
        ("evals.png", lambda p, c: plots.eval_scores(tables["evals"], p, palette=c),
         "Evaluation scores, a panel per benchmark: accuracy / exact match / F1 (higher is better) first, bits per byte (lower is better) after."),
    ]


def _cost_section(doc, bench: dict) -> list[tuple]:
    """The step-time tables of `bench model` results saved in the experiment; their figures."""
    figures = []
    if not bench["model"].empty:
        doc.h2("What does it cost? (training-step time)")
        timed = bench["model"][bench["model"].metric != "skipped"]
        if timed.empty:
            doc.p("No configuration was timed.")
        else:
            for header, body in _cost_tables(*timing_table(timed), doc):
                doc.table(header, body)
        for line in summary_notes(bench["model"]):
            doc.p(line)
        doc.p("overhead = step time / identity step time − 1 (same preset, width, backend), measured in one process with "
              "interleaved rounds; overhead_predicted_io is the mHC paper's I/O model (a floor for fused kernels). "
              "peer:* rows are a public implementation's connection (lucidrains' hyper-connections) inside the same "
              "model; 'skipped' lines say why a configuration was not measured. act_* columns are the bytes autograd "
              "saves for the backward per token, counted exactly, without and with train.recompute, and their ratio to "
              "identity's (the HC paper reports +26% for HC).")
        figures += [("overhead.png", lambda p, c: plots.overhead_bars(bench["model"], p), "Step-time overhead vs identity, measured and predicted."),
                    ("throughput.png", lambda p, c: plots.throughput_bars(bench["model"], p), "Training throughput.")]
    if not bench["kernels"].empty:
        figures.append(("kernels.png", lambda p, c: plots.kernel_bandwidth(bench["kernels"], p), "Kernel bandwidth vs size against the copy ceiling."))
    return figures


def _predicted_vs_actual(doc, experiment: Path, rows) -> None:
    """The grid's estimate at submission (slurm/estimate.py, estimate.json) against what the runs
    took: per configuration, the training time per run and the device-hours, predicted and actual."""
    import json as _json


    predicted = load_estimate(experiment)
    if not predicted:
        return
    body = []
    for row in rows:
        pairs = []
        for run in row.runs:
            rid = run.path.name.rsplit("-", 1)[-1]
            if rid in predicted and (actual := actual_seconds(run.path)):
                pairs.append((predicted[rid], actual))
        if not pairs:
            continue
        pred = sum(p["seconds"] for p, _ in pairs) / len(pairs)
        act = sum(a for _, a in pairs) / len(pairs)
        body.append([row.label, str(len(pairs)), duration(pred), duration(act), f"{act / pred:.2f}",
                     f"{sum(p['seconds'] * p['devices'] for p, _ in pairs) / 3600:.3f}",
                     f"{sum(a * p['devices'] for p, a in pairs) / 3600:.3f}", ", ".join(sorted({p["source"] for p, _ in pairs}))])
    if body:
        source = _json.loads((experiment / "estimate.json").read_text()).get("source", "")
        doc.h2("What did it cost against the estimate?")
        doc.table(["configuration", "runs", "predicted time/run", "actual time/run", "actual / predicted", "predicted device-h",
                   "actual device-h", "rate"], body,
                  [f"Predicted by `grid submit` (slurm/estimate.py), rate {source}; actual: the sum of each run's logged step "
                   "times (training steps only, as predicted). `grid plan --calibrate-from` this experiment predicts the next "
                   "grid from these actual rates."])


def _cost_tables(header, body, doc) -> list[tuple[list[str], list[list[str]]]]:
    """`bench model`'s table as two that fit a page: time (step time, throughput, MFU, overhead)
    and activation memory (act_*), each led by the configuration. A preset, width or backend
    shared by every row is said once, above, not in every row."""
    key = list(range(min(5, len(header))))
    same = [i for i in key if header[i] != "variant" and len({r[i] for r in body}) == 1] if len(body) > 1 else []
    if same:
        doc.p("Every row: " + ", ".join(f"{header[i]} {body[0][i]}" for i in same) + ".")
    lead = [i for i in key if i not in same]
    parts = [[i for i in range(5, len(header)) if not header[i].startswith("act_")],
             [i for i in range(5, len(header)) if header[i].startswith("act_")]]
    return [([header[i] for i in lead + cols], [[r[i] for i in lead + cols] for r in body]) for cols in parts if cols]


def _paper_layouts(doc, experiment: Path, out: Path) -> None:
    """The paper's Table 1 and Table 4 layouts, also written as report/table{1,4}.{md,tex,csv}.
    Table 4 sets the paper's numbers apart, without a gap, when our models are orders of
    magnitude smaller than its 27B (harness/analysis/table.py comparable_scale)."""
    for layout in ("table1", "table4"):
        try:
            table = layout_of(experiment, layout, paper_apart=True)
        except UserError as e:
            # the experiment by its name in the runs directory, as the rest of the report names it
            doc.p(f"{layout}: not available ({str(e).replace(str(experiment), experiment.name)}).")
            continue
        write_layout(table, layout, out)
        doc.h2({"table1": "Paper Table 1 layout", "table4": "Paper Table 4 layout"}[layout])
        doc.p(table.title)
        doc.table(table.header, table.body, table.notes)
        if layout == "table4" and not table.comparable:
            doc.p(f"The paper's Table 4 ({paper.TABLE4_SETTING}), for the ordering of its rows, not their level:")
            doc.table(*paper4(table.frame))


def _axis_sections(doc, runs, out: Path) -> tuple[list, set | None]:
    """For an experiment sweeping depth or learning rate (harness/analysis/axes.py): a section per axis
    with its table (and, for lr, the largest stable lr), its figures, and the runs of the focus
    setting the per-step figures are restricted to (None when nothing is swept)."""
    import pandas as pd

    swept = axes.swept_axes(runs)
    if not swept:
        return [], None
    computed = axes.run_signals(runs)
    per_step = pd.concat([t.assign(run=p.name) for p, (t, _) in computed.items()], ignore_index=True)
    figures, focus_runs = [], None
    for axis in swept:
        df = axes.frame(runs, axis, computed)
        name = axis.split(".")[1]
        at = axes.focus(df, axis)
        doc.h2(f"Across {axes.AXES[axis]}")
        doc.table(*axes.axis_table(df, axis), [
            "Means over the seeds that did not diverge, 95% Student-t intervals; gains are geometric means (interval on "
            "log10). Composite Amax = the product of H_res over all sub-layers at the last diagnostics step.",
            f"Spikes (harness/core/signals.py): loss above {signals.LOSS_SPIKE_FACTOR}x its running minimum after warm-up; "
            f"gradient norm above {signals.GRAD_SPIKE_FACTOR:g}x the median of the previous {signals.GRAD_WINDOW} steps. "
            "Diverged: a non-finite loss, a final validation loss no better than at step 0 or than a uniform guess "
            "over the vocabulary, or one above "
            f"{signals.LOSS_SPIKE_FACTOR:g}x the best loss the run had reached (validation, or training over {signals.BEST_WINDOW} steps: it learned, then blew up)."])
        if axis == "optim.lr":
            doc.h2("Largest stable learning rate")
            doc.table(*axes.stable_lr_table(df), ["Stable: no seed diverged at that lr nor at any smaller one."])
        focus = df[df["x"] == at]
        focus_runs = set(focus["run"]) if focus_runs is None else focus_runs & set(focus["run"])
        figures += [
            (f"loss_vs_{name}.png", lambda p, c, df=df, axis=axis: plots.loss_vs_axis(df, axis, p, palette=c),
             f"Final validation loss vs {axes.AXES[axis]}: mean and 95% CI over seeds; × = a diverged run."),
            (f"amax_vs_{name}.png", lambda p, c, df=df, axis=axis: plots.amax_vs_axis(df, axis, p, palette=c),
             f"Composite Amax gain of the whole depth at the end of training vs {axes.AXES[axis]}, as |Amax − 1| on a log "
             "scale (▽: a gain below 1)."),
            (f"amax_over_training_{name}.png",
             lambda p, c, focus=focus, axis=axis, at=at: plots.amax_over_training(per_step, focus, f"{axis} = {at:g}", p, palette=c),
             f"Composite Amax over training at {axis} = {at:g}, as |Amax − 1| (geometric mean over seeds, band = their range)."),
        ]
        doc.p(f"The per-step figures below show {axis} = {at:g} only.")
    return figures, focus_runs


def _write_final_step(src: Path, dest: Path) -> None:
    """The diagnostics of each run's last step only: what the report's per-layer figures draw."""
    import pandas as pd

    d = pd.read_parquet(src)
    last = d.groupby("run_id")["step"].transform("max") if "run_id" in d else d["step"].max()
    d[d["step"] == last].to_parquet(dest, index=False)


def publish(experiment, runs_dir: str = "runs", results_dir: str = "results") -> Path:
    """Copy the report and the experiment's small tables (no checkpoints) to results/<name>/.

    A diagnostics table over SMALL_TABLE_BYTES (a deep grid's spans at every step) is published
    as diagnostics-final.parquet, each run's last step; other tables over it are left out, named.
    """
    experiment = experiment_dir(experiment, runs_dir)
    report = experiment / "report"
    if not (report / "report.md").is_file():
        raise UserError(f"{experiment} has no report yet; run `mhc-bench report {experiment}` first")
    dest = Path(results_dir) / experiment.name
    tmp = dest.parent / f".{dest.name}.publishing"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for f in report.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        for f in list(experiment.glob("*.parquet")) + list((experiment / "bench").glob("*.parquet")):
            if f.stat().st_size <= SMALL_TABLE_BYTES:
                shutil.copy2(f, tmp / (f.name if f.parent == experiment else f"bench-{f.name}"))
            elif f.name == "diagnostics.parquet":  # deep grids: millions of span rows; signals.parquet keeps the whole-depth ones
                _write_final_step(f, tmp / "diagnostics-final.parquet")
            else:
                print(f"publish: {f.name} left out ({f.stat().st_size / 2**20:.0f} MiB > {SMALL_TABLE_BYTES / 2**20:.0f} MiB)",
                      file=sys.stderr)
        sanitize_folder(tmp)  # results/ lives in git: paths relative to the project, never this machine's folders
        old = dest.parent / f".{dest.name}.old"
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
