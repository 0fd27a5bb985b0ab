"""`mhc-bench table EXPERIMENT --layout table4|table1`: our runs laid out like the paper.

Runs are read from their folders (config.json, metrics.parquet, evals.parquet), so the table
needs nothing but the experiment folder. Runs whose configs differ only in `train.seed` form
one row: a single run shows lm-eval's stderr, several show the mean over seeds ± the 95%
confidence interval (Student t). Variants map to the paper's rows (identity -> Baseline,
hc -> HC, mhc -> mHC, mhc-lite -> mHC-lite); a run with `variant.fixed` is an ablation row
named by the mappings it learns ("H_res only", "H_res + H_pre", ...).

- table4: BBH EM, DROP F1, GSM8K EM, MMLU accuracy in percent, with the paper's 27B numbers
  and the gap (ours - paper) beside each. A gap to a model orders of magnitude larger
  measures scale, not the residual connection: the notes say so, with our parameter count,
  and a report (`paper_apart`) lists the paper's numbers apart instead.
- table1: final validation loss and its gap vs the Baseline row, beside the paper's
  component-ablation gaps.

Written as Markdown, LaTeX and CSV (the tidy numbers) beside the experiment.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.atomic import write_text
from harness.core.config import flatten, from_dict
from harness.core.errors import UserError
from harness.core.run_id import EXECUTION_ONLY
from harness.core.rundir import RunDir, experiment_dir
from harness.eval import paper
from harness.eval.results import headline
from harness.eval.suites import ALIASES, SUITES
from slurm.experiment import Experiment
from variants.registry import variant_label

TABLE1_ORDER = ("res", "pre", "post")  # the paper's order of the mappings in Table 1
METRIC_NAMES = {"exact_match": "EM", "f1": "F1", "acc": "Acc", "bits_per_byte": "bits/byte"}
LAYOUTS = ("table4", "table1")
PAPER_TABLE4_PARAMS = 27e9  # paper.TABLE4_SETTING: a 27B MoE (total parameters)
COMPARABLE_SCALE = 10.0  # a gap to the paper's numbers is shown beside models at most this many times smaller


# ---------------------------------------------------------------------- collecting runs
@dataclass
class Run:
    path: Path
    config: dict
    val_loss: float
    evals: object  # DataFrame or None
    state: str | None = None  # status.json's status (None: a folder without one)
    step: int | None = None
    steps: int | None = None

    @property
    def finished(self) -> bool:
        """Done or diverged (an outcome, shown as such); running, stopped, failed or pruned runs are not.

        A run stopped at step 100 of 150 has a 'final' validation loss that belongs to another
        recipe: mixed into a mean over seeds it would move the row silently.
        """
        return self.state in (None, "done", "diverged")

    def describe(self) -> str:
        at = f" at step {self.step}/{self.steps}" if self.step is not None and self.steps else ""
        return f"{self.path.name} ({self.state}{at})"


@dataclass
class Row:
    label: str
    variant: str
    learned: frozenset
    runs: list[Run] = field(default_factory=list)
    paper_label: str | None = None  # the paper's row this one reproduces (its settings match the paper's)


def paper_setting(cfg: dict) -> bool:
    """Whether a run uses the paper's settings for its variant (n = 4, dynamic, mHC k = 20 paper order)."""
    v = cfg["variant"]
    if v["name"] == "identity":
        return True
    same = v.get("mode", "dynamic") == "dynamic" and v.get("n_streams", 0) in (0, 4) and v.get("expand", "copy") == "copy"
    if v["name"] == "mhc":
        same = same and v.get("sk_iters", 20) == 20 and v.get("sk_mode", "paper") == "paper"
    return same


def _learned(cfg: dict) -> frozenset:
    if cfg["variant"]["name"] == "identity":
        return frozenset()
    fixed = {m.strip() for m in cfg["variant"].get("fixed", "").split(",") if m.strip()}
    return frozenset(m for m in TABLE1_ORDER if m not in fixed)


def row_label(cfg: dict) -> str:
    """Baseline / HC / mHC / mHC-lite, or the ablation's learned mappings; " + LSS" for learned
    stream scaling (variant.expand=lss), which the label must carry even when no plain arm of the
    variant is beside it to set it apart."""
    name = cfg["variant"]["name"]
    base = variant_label(name) + (" + LSS" if cfg["variant"].get("expand", "copy") == "lss" else "")
    if name == "identity" or not cfg["variant"].get("fixed", "").strip():
        return base
    learned = [m for m in TABLE1_ORDER if m in _learned(cfg)]
    what = "nothing learned" if not learned else " + ".join(f"H_{m}" for m in learned) + (" only" if len(learned) == 1 else "")
    return what if name == "hc" else f"{base}: {what}"


def experiment_runs(experiment, runs_dir="runs") -> list[Run]:
    """Every run folder of an experiment (or the one run folder given), finished or not."""

    experiment = experiment_dir(experiment, runs_dir)
    folders = [experiment] if RunDir.is_run(experiment) else sorted(p for p in experiment.iterdir() if RunDir.is_run(p))
    if not folders:
        raise UserError(f"{experiment} holds no run folders (sub-folders with config.json)")
    runs = []
    for p in folders:
        rd = RunDir(p, writer=False)
        status = rd.read_status() or {}
        runs.append(Run(p, rd.read_config(), rd.final_val_loss(), rd.read_table("evals"), status.get("status"),
                        status.get("step"), status.get("steps")))
    return runs


NAMED_MISSING = 12  # beyond this many, runs not started are counted per configuration, not named


def _not_started(missing: list[str]) -> str:
    """The grid's runs without a folder yet: named when few, else counted per configuration (the
    run name up to its first `-key=value` part), as when `--only` trained a few rows of a big grid."""
    if len(missing) <= NAMED_MISSING:
        listed = "; ".join(missing)
    else:
        counts: dict[str, int] = {}
        for name in missing:
            stem = re.split(r"-[A-Za-z_.]+=", name, maxsplit=1)[0]
            counts[stem] = counts.get(stem, 0) + 1
        listed = "runs of " + ", ".join(f"{stem} ({n})" for stem, n in counts.items())
    return f"Not started ({len(missing)}): {listed}. `mhc-bench grid submit` trains them."


def finished_runs(experiment, runs_dir="runs") -> tuple[list[Run], list[str]]:
    """The runs that tables and reports compare, and a note on those left out (empty if none).

    A one-line error when no run of the experiment is finished.
    """
    runs = experiment_runs(experiment, runs_dir)
    note = []
    grid = _grid_folders(Path(experiment).expanduser().resolve())
    if grid is not None:  # a grid's experiment: the runs of its latest version, as `grid collect` takes
        older = [r for r in runs if r.path.name not in grid]
        runs = [r for r in runs if r.path.name in grid]
        have = {r.path.name for r in runs}
        missing = [name for folder, name in grid.items() if folder not in have]
        if older:
            note.append(f"Left out, runs of an earlier version of the grid ({len(older)}): "
                        + "; ".join(r.path.name for r in older) + ".")
        if missing:
            note.append(_not_started(missing))
    done = [r for r in runs if r.finished]
    left = [r for r in runs if not r.finished]
    if not done:
        raise UserError(f"no finished run in {experiment} ({len(left)} not finished: "
                        f"{', '.join(r.describe() for r in left[:3])}{', ...' if len(left) > 3 else ''})")
    if left:
        note.append(f"Left out, not finished ({len(left)}): " + "; ".join(r.describe() for r in left)
                    + ". Their last validation loss is of a shorter run; finish them (`mhc-bench grid submit` resumes) to include them.")
    return done, note


def _grid_folders(experiment: Path) -> dict[str, str] | None:
    """{folder: run name} of the latest version of the grid behind an experiment; None without one."""
    if not (experiment / "manifest.json").is_file():
        return None

    exp = Experiment(experiment)
    runs = exp.manifest()["runs"]
    return {runs[rid]["folder"]: runs[rid]["name"] for rid in exp.run_ids()}


def _setting(cfg: dict) -> dict:
    """The config without what does not change the recipe: the seed, and what is outside a
    run's identity (harness/core/run_id.py: its folder, execution settings, the preset's name).

    The saved config is read back through the config classes first, so a field added after a run
    was trained counts at its default: runs of one recipe saved before and after a new field
    (a grid resumed across versions) stay one row."""
    try:
        cfg = from_dict(cfg).to_dict()
    except UserError:  # a config this code cannot read: compare it as saved
        pass
    return {k: v for k, v in flatten(cfg).items()
            if k != "train.seed" and k != "preset" and not k.startswith("run.") and k not in EXECUTION_ONLY}


def group_rows(runs: list[Run]) -> list[Row]:
    """Runs that differ only in seed -> one row; same-label rows get their differing settings."""
    rows: dict[str, Row] = {}
    for run in runs:
        key = json.dumps(_setting(run.config), sort_keys=True, default=str)
        if key not in rows:
            label = row_label(run.config)
            rows[key] = Row(label, run.config["variant"]["name"], _learned(run.config),
                            paper_label=label if paper_setting(run.config) else None)
        rows[key].runs.append(run)
    by_label: dict[str, list[Row]] = {}
    for row in rows.values():
        by_label.setdefault(row.label, []).append(row)
    for same in by_label.values():
        if len(same) > 1:
            settings = [_setting(r.runs[0].config) for r in same]
            differ = sorted(k for k in set().union(*settings) if len({json.dumps(s.get(k)) for s in settings}) > 1)
            for row, s in zip(same, settings):
                row.label += " (" + ", ".join(f"{k}={s.get(k)}" for k in differ[:3]) + ")"
    order = {"Baseline": 0, "HC": 2, "mHC": 3, "mHC-lite": 4}
    return sorted(rows.values(), key=lambda r: (order.get(r.label.split(" (")[0], 1 if r.variant == "hc" else 5),
                                                 len(r.learned), natural_key(r.label)))


def natural_key(text: str) -> tuple:
    """Sort key reading numbers as numbers: sk_iters=2 before sk_iters=10."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return tuple((0, float(p), "") if i % 2 else (1, 0.0, p) for i, p in enumerate(parts))


# ---------------------------------------------------------------------- statistics
def t975(dof: int) -> float:
    """The two-sided 95% quantile of Student's t with `dof` degrees of freedom."""
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def summarize(values: list[float], stderrs: list[float]) -> tuple[float, float, str]:
    """(mean, ± half-width, what ± is): one run -> its stderr; k runs -> 95% CI over them."""
    vals = [v for v in values if v == v]
    if not vals:
        return math.nan, math.nan, ""
    if len(vals) == 1:
        errs = [e for v, e in zip(values, stderrs) if v == v]
        return vals[0], errs[0] if errs else math.nan, "stderr"
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    return mean, t975(len(vals) - 1) * sd / math.sqrt(len(vals)), f"95% CI ({len(vals)} seeds)"


# ---------------------------------------------------------------------- the two layouts
def headline_score(evals, suite):
    """The run's own number on a suite (its headline metric and filter, task level), or None."""
    if evals is None:
        return None
    sel = headline(evals)
    sel = sel[sel["task"] == suite.key]
    return sel.iloc[-1] if len(sel) else None


def table4_frame(rows: list[Row]):
    """Tidy: one line per (row, benchmark) with ours, its ±, the paper's number and the gap."""
    import pandas as pd

    present = {t for row in rows for run in row.runs if run.evals is not None for t in run.evals["task"].unique()}
    suites = [SUITES[k] for k in ALIASES["paper"]] + [SUITES[k] for k in ALIASES["ppl"] if k in present]
    out = []
    for row in rows:
        for suite in suites:
            hits = [h for h in (headline_score(run.evals, suite) for run in row.runs) if h is not None]
            mean, err, kind = summarize([float(h["value"]) for h in hits], [float(h["stderr"]) for h in hits])
            ours = mean * suite.scale if mean == mean else math.nan
            ref = paper.table4(row.paper_label, suite.key) if row.paper_label else None
            out.append({
                "row": row.label, "runs": len(row.runs), "benchmark": suite.key, "title": suite.title,
                "metric": suite.metric, "filter": suite.filter,
                "shots": int(hits[0]["num_fewshot"]) if hits else suite.shots,
                "docs": int(hits[0]["samples"]) if hits else 0,
                "ours": ours, "err": err * suite.scale if err == err else math.nan, "err_kind": kind,
                "evaluated_runs": len(hits), "paper": math.nan if ref is None else ref,
                "gap": ours - ref if ref is not None and ours == ours else math.nan,
            })
    return pd.DataFrame(out)


def table1_frame(rows: list[Row]):
    """Tidy: one line per row with its final validation loss and gap vs Baseline (ours, paper)."""
    import pandas as pd

    stats = {row.label: summarize([run.val_loss for run in row.runs], [math.nan] * len(row.runs)) for row in rows}
    base = next((stats[r.label] for r in rows if r.variant == "identity"), (math.nan, math.nan, ""))
    out = []
    for row in rows:
        mean, err, kind = stats[row.label]
        ref = paper.table1(row.variant, row.learned)
        gap = mean - base[0]
        gap_err = math.sqrt(err ** 2 + base[1] ** 2) if err == err and base[1] == base[1] else math.nan
        out.append({
            "row": row.label, "runs": len(row.runs), "variant": row.variant,
            **{f"H_{m}": m in row.learned for m in TABLE1_ORDER},
            "val_loss": mean, "err": err, "err_kind": kind,
            "gap": gap, "gap_err": gap_err if row.variant != "identity" else math.nan,
            "paper_gap": math.nan if ref is None else ref,
            "gap_minus_paper": gap - ref if ref is not None and gap == gap else math.nan,
        })
    return pd.DataFrame(out)


# ---------------------------------------------------------------------- rendering
def _num(x, digits: int, signed: bool = False) -> str:
    if x is None or x != x:
        return "—"
    text = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return text.replace("-", "−")


def _pm(mean, err, digits) -> str:
    if mean != mean:
        return "—"
    return _num(mean, digits) + ("" if err != err else f" ± {_num(err, digits)}")


def wide4(df, paper_columns: bool = True) -> tuple[list[str], list[list[str]]]:
    """Method, Runs, then per benchmark: ours, and with `paper_columns` the paper's number and
    Δ beside it (held-out bits/byte: ours only)."""
    published = {k for k in df["benchmark"] if paper.published(k)}
    header = ["Method", "Runs"]
    for (key, title, metric), sub in df.groupby(["benchmark", "title", "metric"], sort=False):
        shots = "" if key not in published else f" ({sub['shots'].iloc[0]}-shot)"
        header += [f"{title} {METRIC_NAMES.get(metric, metric)}{shots}"] + (["paper", "Δ"] if key in published and paper_columns else [])
    body = []
    for label, sub in df.groupby("row", sort=False):
        line = [label, str(sub["runs"].iloc[0])]
        for _, r in sub.iterrows():
            if r["benchmark"] in published:
                line.append(_pm(r["ours"], r["err"], 1))
                line += [_num(r["paper"], 1), _num(r["gap"], 1, signed=True)] if paper_columns else []
            else:
                line.append(_pm(r["ours"], r["err"], 3))
        body.append(line)
    return header, body


def paper4(df) -> tuple[list[str], list[list[str]]]:
    """The paper's own Table 4 numbers for the benchmarks in `df`, one row per published method."""
    keys = [k for k in dict.fromkeys(df["benchmark"]) if paper.published(k)]
    titles = dict(zip(df["benchmark"], df["title"]))
    header = ["Method", *(titles[k] for k in keys)]
    return header, [[label, *(_num(numbers.get(k), 1) for k in keys)] for label, numbers in paper.table4_rows().items()]


def parameters(rows: list[Row]) -> int | None:
    """The largest parameter count among the runs (env.json's n_params, written by training)."""
    counts = []
    for row in rows:
        for run in row.runs:
            env = run.path / "env.json"
            if env.is_file():
                n = json.loads(env.read_text()).get("n_params")
                counts += [int(n)] if n else []
    return max(counts) if counts else None


def comparable_scale(rows: list[Row]) -> tuple[bool, str]:
    """Whether our models are close enough in size to the paper's 27B for Δ to mean something,
    and the sentence that says how far they are."""
    n = parameters(rows)
    if n is None:
        return False, ("Our models' parameter count is unknown (no env.json): a gap to the paper's 27B MoE would "
                       "measure scale as much as the residual connection.")
    ratio = PAPER_TABLE4_PARAMS / n
    if ratio <= COMPARABLE_SCALE:
        return True, f"Ours: {_size(n)} parameters, within {COMPARABLE_SCALE:g}x of the paper's 27B MoE."
    return False, (f"Ours: {_size(n)} parameters, {math.floor(math.log10(ratio))} orders of magnitude fewer than the "
                   "paper's 27B MoE: a gap to its numbers measures scale, not the residual connection. Compare the "
                   "ordering of the rows (Baseline < HC < mHC in the paper), not their levels.")


def _size(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def wide1(df) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Runs", "H_res", "H_pre", "H_post", "val loss", "gap vs Baseline", "paper gap", "Δ"]
    body = []
    for _, r in df.iterrows():
        marks = ["✓" if r[f"H_{m}"] else "" for m in TABLE1_ORDER]
        if r["variant"] == "identity":
            gap = "0"
        else:
            gap = _num(r["gap"], 3, signed=True)
            gap += f" ± {_num(r['gap_err'], 3)}" if r["gap"] == r["gap"] and r["gap_err"] == r["gap_err"] else ""
        body.append([r["row"], str(r["runs"]), *marks, _pm(r["val_loss"], r["err"], 3), gap,
                     _num(r["paper_gap"], 3, signed=True), _num(r["gap_minus_paper"], 3, signed=True)])
    return header, body


def markdown(header, body, title: str, notes: list[str]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in body]
    return "\n".join(lines + [""] + [f"- {n}" for n in notes]) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$", "−": r"$-$", "✓": r"\checkmark", "—": "---"}


def _tex(text: str) -> str:
    out = "".join(_LATEX.get(c, c) for c in str(text))
    for sym, tex in _LATEX_SYMBOLS.items():
        out = out.replace(sym, tex)
    return out


def latex(header, body, title: str, notes: list[str]) -> str:
    lines = [f"% {title}", r"% needs \usepackage{booktabs} (and amssymb for \checkmark)",
             r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule",
             " & ".join(_tex(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(_tex(c) for c in line) + r" \\" for line in body]
    lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _notes4(df, rows, paper_columns: bool = True) -> list[str]:
    if paper_columns:
        notes = [f"Paper: {paper.PAPER}, Table 4, {paper.TABLE4_SETTING}. Δ = ours − paper (percentage points).",
                 "± is lm-eval's standard error for one run, or the 95% CI over seeds when a row has several runs.",
                 "Rows without published numbers (mHC-lite, ablations) show — in the paper columns."]
    else:
        notes = [f"Paper: {paper.PAPER}, Table 4, {paper.TABLE4_SETTING}: its numbers are listed apart.",
                 "± is lm-eval's standard error for one run, or the 95% CI over seeds when a row has several runs."]
    presets = sorted({run.config.get("preset", "?") for row in rows for run in row.runs})
    notes.append(f"Ours: preset {', '.join(presets)}; runs differing only in train.seed form one row.")
    docs = df[df["evaluated_runs"] > 0]
    for key in dict.fromkeys(docs["benchmark"]):
        suite = SUITES[key]
        n = sorted(set(docs[docs["benchmark"] == key]["docs"]))
        notes.append(f"{suite.title} ({', '.join(map(str, n))} documents): {suite.note}.")
    limits = {int(x) for row in rows for run in row.runs if run.evals is not None for x in run.evals["limit"].dropna()}
    if limits:
        notes.append(f"Evaluated with --limit {', '.join(map(str, sorted(limits)))} (documents per subtask): a smoke test, not a result.")
    return notes


def _notes1(rows) -> list[str]:
    return [f"Paper: {paper.PAPER}, Table 1 (HC components; a disabled mapping is fixed: pre = 1/n, post = 1, res = I).",
            "val loss: the final validation loss in metrics.parquet; gap = row − Baseline; Δ = our gap − the paper's.",
            "± is a 95% CI over seeds when a row has several runs (the gap's ± adds the Baseline's in quadrature)."]


@dataclass
class Layout:
    """One layout of an experiment: the tidy frame, and the table a reader sees."""

    title: str
    header: list[str]
    body: list[list[str]]
    notes: list[str]
    frame: object  # DataFrame
    comparable: bool = True  # table4: our scale is close enough to the paper's for Δ to mean something


def layout_of(experiment, layout: str = "table4", paper_apart: bool = False) -> Layout:
    """Build `layout` for the experiment. Table 4 keeps the paper's layout, its numbers and Δ
    beside ours with a caveat when our scale is not comparable; with `paper_apart` those
    columns are left out at such a scale (the caller lists the paper's numbers apart, paper4)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    runs, left_out = finished_runs(experiment)
    rows = group_rows(runs)
    name = Path(experiment).expanduser().resolve().name
    comparable = True
    if layout == "table4":
        if not any(run.evals is not None for run in runs):
            raise UserError(f"no evals.parquet in the runs of {experiment}; run `mhc-bench eval {experiment}` first")
        df = table4_frame(rows)
        comparable, scale = comparable_scale(rows)
        with_paper = comparable or not paper_apart
        header, body = wide4(df, paper_columns=with_paper)
        if not comparable and with_paper:
            scale += " Δ (ours − paper) is shown only to follow the paper's layout."
        title, notes = f"{name}: Table 4 layout (benchmarks, %)", [scale, *_notes4(df, rows, with_paper)]
    else:
        df = table1_frame(rows)
        header, body = wide1(df)
        title, notes = f"{name}: Table 1 layout (validation-loss gap vs Baseline)", _notes1(rows)
    return Layout(title, header, body, [*notes, *left_out], df, comparable)


def write_layout(table: Layout, layout: str, out_dir, formats=("md", "tex", "csv")) -> dict[str, Path]:
    """table.{md,tex,csv} in out_dir, each written atomically; returns {format: path}."""
    written = {}
    for fmt in formats:
        path = Path(out_dir) / f"{layout}.{fmt}"
        text = {"md": lambda: markdown(table.header, table.body, table.title, table.notes),
                "tex": lambda: latex(table.header, table.body, table.title, table.notes),
                "csv": lambda: table.frame.to_csv(index=False)}[fmt]()
        write_text(path, text)
        written[fmt] = path
    return written


def make_table(experiment, layout: str = "table4", out_dir=None, formats=("md", "tex", "csv"),
               runs_dir="runs") -> tuple[str, dict[str, Path]]:
    """Render `layout` for the experiment (a folder, or its name under runs_dir); returns
    (the Markdown text, {format: file written})."""
    experiment = experiment_dir(experiment, runs_dir)
    table = layout_of(experiment, layout)
    out_dir = Path(out_dir) if out_dir else experiment
    return markdown(table.header, table.body, table.title, table.notes), write_layout(table, layout, out_dir, formats)
