"""`report` and `publish`: every artefact exists, is non-empty, and says what the numbers support."""

import re

import pytest
from matplotlib.colors import to_hex
from report_helpers import full_report, keep_figures, legend_colours, tick_labels

from harness.cli import main
from harness.train.loop import train


@pytest.fixture
def drawn(monkeypatch):
    """{file name: Figure} of the figures saved during the test, kept for inspection."""
    return keep_figures(monkeypatch)


@pytest.fixture
def experiment(tiny_cfg, tmp_path):
    for variant in ("identity", "mhc"):
        for seed in (0, 1):
            train(tiny_cfg(f"variant.name={variant}", f"train.seed={seed}", "train.steps=8", "train.eval_every=4",
                           "train.diag_every=4", "train.checkpoint_every=8"))
    # a third mHC seed stopped half-way: the report leaves it out and says so
    train(tiny_cfg("variant.name=mhc", "train.seed=2", "train.steps=8", "train.eval_every=4", "train.diag_every=4",
                   "train.checkpoint_every=8", "train.stop_after=4"))
    return tmp_path / "runs"


def test_report_and_publish(experiment, tmp_path, capsys):
    assert main(["publish", str(experiment), "--results-dir", str(tmp_path / "results")]) == 2  # no report yet
    assert "run `mhc-bench report" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    # a cost table with a peer (timed where hyper-connections is installed) and skipped rows (no Triton path)
    assert main(["bench", "model", "--preset", "tiny", "--variants", "identity,mhc", "--streams", "2", "--peers",
                 "peer:hyper-connections-mhc", "--backends", "torch,triton", "--rounds", "1", "--steps", "1", "--warmup", "1",
                 "--device", "cpu", "--set", "model.seq_len=16", "--set", "train.batch_size=2",
                 "--out", str(experiment / "bench" / "model.parquet")]) == 0
    assert main(["report", str(experiment)]) == 0
    report = experiment / "report"
    for name in ("report.md", "report.html", "loss.png", "grad_norm.png", "amax.png", "table1.md", "overhead.png",
                 "stream_collapse.png"):
        assert (report / name).stat().st_size > 0, name
    assert (report / "amax.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "report.md").read_text()
    assert "| Baseline | 2 |" in md and "| mHC | 2 |" in md
    assert "Left out, not finished (1): " in md and "(stopped at step 4/8)" in md
    assert ("inside the noise" in md) or ("than Baseline" in md)
    assert "peer:hyper-connections-mhc" in md and "skipped: tiny d=64 n=2 peer:hyper-connections-mhc / triton" in md
    assert "data:image/png;base64," in (report / "report.html").read_text()
    capsys.readouterr()
    assert main(["publish", str(experiment), "--results-dir", str(tmp_path / "results")]) == 0
    published = tmp_path / "results" / experiment.name
    names = {p.name for p in published.iterdir()}
    assert {"report.md", "report.html", "amax.png"} <= names
    assert not any(n.endswith(".pt") for n in names)
    # the experiment lives in a temporary folder: the published files name no machine folder
    from tests.test_published_results import absolute_paths_in

    assert {p.name: hits for p in published.iterdir() if (hits := absolute_paths_in(p))} == {}
    assert f"from the experiment folder {experiment.name}/" in (published / "report.md").read_text()


def test_report_of_missing_experiment_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment folder not found" in err[0]


def test_kernel_bandwidth_figure_draws_ops_against_the_copy_ceiling(tmp_path):
    import pandas as pd

    from harness.analysis.plots import kernel_bandwidth

    rows = [dict(op="copy", provider="torch", mode="fwd", tokens=0, unit="GB/s", value=30.0)]
    rows += [dict(op=op, provider=p, mode=m, tokens=t, unit="GB/s", value=t / 10)
             for op in ("premix", "post_res") for p in ("torch", "triton") for m in ("fwd", "fwd+bwd") for t in (64, 4096)]
    rows += [dict(op="premix", provider="torch", mode="fwd", tokens=64, unit="ms", value=1.0)]
    out = kernel_bandwidth(pd.DataFrame(rows), tmp_path / "k.png")
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"
    assert kernel_bandwidth(pd.DataFrame(rows[:1]), tmp_path / "none.png") is None  # only the ceiling: no figure


def test_gap_vs_k_figure_draws_a_sweep_with_references_and_needs_two_finite_ks(tmp_path):
    import pandas as pd

    from harness.analysis.plots import ds_gap_vs_k

    runs = pd.DataFrame([
        {"run": "k1", "variant.name": "mhc", "variant.sk_iters": 1, "variant.sk_mode": "paper"},
        {"run": "k20", "variant.name": "mhc", "variant.sk_iters": 20, "variant.sk_mode": "paper"},
        {"run": "conv", "variant.name": "mhc", "variant.sk_iters": 20, "variant.sk_mode": "converged"},
        {"run": "lite", "variant.name": "mhc-lite", "variant.sk_iters": 20, "variant.sk_mode": "paper"},
    ])
    gaps = {"k1": (0.0, 2e-2), "k20": (1e-7, 1e-2), "conv": (1e-7, 1e-6), "lite": (0.0, 0.0)}  # (row, column)
    diag = pd.DataFrame([{"run": r, "scope": "layer", "stat": "token_max", "step": step, "metric": m, "value": v * step}
                         for r, (row, col) in gaps.items() for step in (1, 2)
                         for m, v in (("res_row_gap", row), ("res_col_gap", col))])
    out = ds_gap_vs_k(diag, runs, tmp_path / "gap.png")
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"
    assert ds_gap_vs_k(diag, runs[runs.run != "k1"], tmp_path / "none.png") is None  # one finite k: no sweep


def test_without_a_baseline_the_papers_mhc_setting_is_the_reference(tmp_path):
    from pathlib import Path

    from harness.analysis.report import loss_summary
    from harness.analysis.table import Run, group_rows
    from harness.core.presets import get_preset

    runs = []
    for k, losses in ((20, (3.00, 3.01, 3.02)), (1, (3.50, 3.52, 3.51)), (5, (2.9, 3.1, 3.05))):
        for seed, loss in enumerate(losses):
            cfg = get_preset("tiny")
            cfg.variant.name, cfg.variant.sk_iters, cfg.train.seed = "mhc", k, seed
            runs.append(Run(Path(f"k{k}-s{seed}"), cfg.to_dict(), loss, None))
    header, body, notes = loss_summary(group_rows(runs))
    verdicts = {row[0]: row[-1] for row in body}
    assert header[4] == "Δ vs mHC (variant.sk_iters=20)"
    assert verdicts["mHC (variant.sk_iters=1)"].startswith("higher loss than mHC (variant.sk_iters=20) (Holm p = ")
    assert verdicts["mHC (variant.sk_iters=20)"] == "reference"
    assert verdicts["mHC (variant.sk_iters=5)"].startswith("inside the noise")
    assert any("the paper's mHC setting" in n for n in notes)


def test_a_converged_sinkhorn_that_hit_its_cap_is_logged_recorded_and_reported(tiny_cfg, tmp_path):
    """sk_max_iters=1 with a tolerance no single round meets: the run must not pass as 'converged'."""
    from harness.core.rundir import RunDir

    result = train(tiny_cfg("variant.name=mhc", "variant.sk_mode=converged", "variant.sk_tol=1e-9",
                            "variant.sk_max_iters=1", "variant.res_init_offdiag=-1", "train.steps=2",
                            "train.eval_every=2", "train.diag_every=2"))
    assert "warning: step 0: Sinkhorn did not converge" in (result.run_dir / "train.log").read_text()
    diag = RunDir(result.run_dir, writer=False).read_table("diagnostics")
    assert (diag[(diag.metric == "sk_capped") & (diag.stat == "token_mean")].value > 0).all()
    assert main(["report", str(tmp_path / "runs")]) == 0
    md = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert f"Warning: in 1 runs ({result.run_dir.name}) Sinkhorn did not converge" in md


def test_publish_keeps_the_last_diagnostics_step_of_each_run_when_the_table_is_large(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from harness.analysis import report
    exp = tmp_path / "runs" / "deep"
    (exp / "report").mkdir(parents=True)
    (exp / "report" / "report.md").write_text("# r\n")
    rows = [dict(run_id=r, step=s, scope="span", metric="amax_fwd", value=float(s)) for r in ("a", "b") for s in (0, 10, 20 if r == "a" else 30)]
    pd.DataFrame(rows).to_parquet(exp / "diagnostics.parquet")
    pd.DataFrame({"step": range(500), "loss": 1.0}).to_parquet(exp / "metrics.parquet")
    pd.DataFrame({"run_id": ["a", "b"]}).to_parquet(exp / "runs.parquet")
    size = (exp / "runs.parquet").stat().st_size
    monkeypatch.setattr(report, "SMALL_TABLE_BYTES", size)  # runs.parquet fits, the others do not
    dest = report.publish(exp, results_dir=str(tmp_path / "results"))
    assert {p.name for p in dest.iterdir()} == {"report.md", "runs.parquet", "diagnostics-final.parquet"}
    final = pd.read_parquet(dest / "diagnostics-final.parquet")
    assert sorted(zip(final.run_id, final.step)) == [("a", 20), ("b", 30)]
    assert "metrics.parquet left out" in capsys.readouterr().err


# ---------------------------------------------------------------------- figures that read true
def _metrics(order_train, order_val):
    """Train and validation rows whose labels first appear in different orders."""
    import pandas as pd

    rows = []
    for i, label in enumerate(order_train):
        for seed in (0, 1):
            rows += [dict(run=f"{label}-{seed}", label=label, seed=seed, split="train", step=s, tokens=64 * s,
                          loss=3.0 - 0.01 * s + 0.1 * i, grad_norm=1.0 + 0.1 * i) for s in range(1, 6)]
    for i, label in enumerate(order_val):
        for seed in (0, 1):
            rows += [dict(run=f"{label}-{seed}", label=label, seed=seed, split="val", step=s, tokens=64 * s,
                          loss=3.1 - 0.01 * s + 0.1 * i, grad_norm=float("nan")) for s in (0, 5)]
    return pd.DataFrame(rows)


def test_a_configuration_has_one_colour_in_both_loss_panels_and_every_figure(drawn, tmp_path):
    from harness.analysis import plots
    metrics = _metrics(["Baseline", "HC", "mHC"], ["mHC", "HC", "Baseline"])
    plots.loss_curves(metrics, tmp_path / "loss.png")
    train_ax, val_ax = drawn["loss.png"].axes[:2]
    assert legend_colours(train_ax) == legend_colours(val_ax)
    # one palette keyed by the configuration's label: the same colours in every figure and report
    fixed = plots.palette(["Baseline", "HC", "mHC"])
    assert legend_colours(train_ax) == {k: to_hex(v) for k, v in fixed.items()}
    assert plots.palette(["mHC"])["mHC"] == fixed["mHC"] and len(set(map(to_hex, fixed.values()))) == 3
    plots.grad_norms(metrics[metrics.label != "HC"], tmp_path / "grad_norm.png")
    assert legend_colours(drawn["grad_norm.png"].axes[0]) == {k: to_hex(fixed[k]) for k in ("Baseline", "mHC")}
    # settings of one variant (a k sweep) are shades of its colour, each distinct
    shades = plots.palette(["mHC (variant.sk_iters=1)", "mHC (variant.sk_iters=20)", "HC"])
    assert len({to_hex(c) for c in shades.values()}) == 3 and to_hex(shades["HC"]) == to_hex(fixed["HC"])


def _amax_diagnostics(gain):
    """Span rows of one run with 4 sub-layers: single and composite gains = gain(start, end)."""
    import pandas as pd

    return pd.DataFrame([dict(run=f"r{seed}", label="mHC", seed=seed, scope="span", stat="token_mean", step=8, metric=m,
                              start=a, end=b, value=gain(a, b) + 1e-5 * seed)
                         for seed in (0, 1) for m in ("amax_fwd", "amax_bwd") for a in range(4) for b in range(a, 4)])


def test_amax_figure_tells_gains_near_one_apart(drawn, tmp_path):
    """mHC's gains sit within 1e-3 of 1: a log axis of the gain labels every tick "1"."""
    from harness.analysis import plots
    plots.amax_vs_depth(_amax_diagnostics(lambda a, b: 1 + 1e-4 * (1 + b - a)), tmp_path / "amax.png")
    for ax in drawn["amax.png"].axes:
        labels = tick_labels(ax)
        assert len(labels) >= 2 and len(set(labels)) == len(labels), labels
    assert "Amax − 1" in drawn["amax.png"].axes[0].get_ylabel()


def test_gap_vs_k_keeps_ablations_apart_from_the_k_points(drawn, tmp_path):
    import pandas as pd

    from harness.analysis import plots
    runs = pd.DataFrame([
        {"run": "k1", "label": "mHC (variant.sk_iters=1)", "variant.name": "mhc", "variant.sk_iters": 1, "variant.sk_mode": "paper", "variant.fixed": ""},
        {"run": "k20", "label": "mHC (variant.sk_iters=20)", "variant.name": "mhc", "variant.sk_iters": 20, "variant.sk_mode": "paper", "variant.fixed": ""},
        {"run": "abl", "label": "mHC: H_res only", "variant.name": "mhc", "variant.sk_iters": 20, "variant.sk_mode": "paper", "variant.fixed": "pre,post"},
    ])
    gaps = {"k1": 2e-2, "k20": 1e-2, "abl": 0.5}  # column gaps; the ablation's is far off
    diag = pd.DataFrame([{"run": r, "scope": "layer", "stat": "token_max", "step": 2, "metric": m, "value": v if m == "res_col_gap" else 1e-7}
                         for r, v in gaps.items() for m in ("res_row_gap", "res_col_gap")])
    plots.ds_gap_vs_k(diag, runs, tmp_path / "gap.png")
    ax = drawn["gap.png"].axes[0]
    ys = [y for line in ax.lines for y in line.get_ydata()]
    assert 0.5 in ys  # the ablation is drawn, as its own point
    assert not any(0.2 < y < 0.4 for y in ys)  # and never averaged into k = 20 ((0.01 + 0.5) / 2)
    assert any("H_res only" in t.get_text() for t in ax.get_legend().get_texts())


def test_homogenisation_leaves_out_single_stream_runs(drawn, tmp_path):
    """A 1 x 1 composite is always 'uniform': n = 1 runs would sit at a trivial 0."""
    import pandas as pd

    from harness.analysis import plots
    runs = pd.DataFrame([{"run": "base", "label": "Baseline", "variant.name": "identity", "variant.n_streams": 0},
                         {"run": "m", "label": "mHC", "variant.name": "mhc", "variant.n_streams": 0},
                         {"run": "m1", "label": "mHC (variant.n_streams=1)", "variant.name": "mhc", "variant.n_streams": 1}])
    diag = pd.DataFrame([{"run": r, "label": lab, "seed": 0, "scope": "span", "metric": "uniform_distance", "stat": "token_mean",
                          "start": 0, "end": e, "step": 4, "value": v}
                         for r, lab, v in (("base", "Baseline", 0.0), ("m", "mHC", 0.8), ("m1", "mHC (variant.n_streams=1)", 0.0))
                         for e in range(3)])
    plots.homogenisation(diag, runs, tmp_path / "h.png")
    assert set(legend_colours(drawn["h.png"].axes[0])) == {"mHC"}
    assert plots.homogenisation(diag[diag.run != "m"], runs, tmp_path / "none.png") is None


def test_eval_figure_puts_metrics_of_opposite_directions_on_their_own_axes(drawn, tmp_path):
    import pandas as pd

    from harness.analysis import plots
    rows = [dict(run=f"{lab}{seed}", label=lab, seed=seed, task=task, metric=metric, filter=filt, level="task",
                 value=v + 0.01 * seed, higher_is_better=metric != "bits_per_byte")
            for lab in ("Baseline", "mHC") for seed in (0, 1)
            for task, metric, filt, v in (("mmlu", "acc", "none", 0.3), ("drop", "f1", "none", 0.2), ("wiki", "bits_per_byte", "none", 2.4))]
    plots.eval_scores(pd.DataFrame(rows), tmp_path / "evals.png")
    panels = {ax.get_title(): ax.get_xlabel() for ax in drawn["evals.png"].axes if ax.has_data()}
    assert len(panels) == 3 and not any("score" in x for x in panels.values())
    by_task = {task: next(x for t, x in panels.items() if title in t) for task, title in (("mmlu", "MMLU"), ("drop", "DROP"), ("wiki", "Held-out"))}
    assert "higher is better" in by_task["mmlu"] and "higher is better" in by_task["drop"] and "%" in by_task["mmlu"]
    assert "lower is better" in by_task["wiki"] and "bits per byte" in by_task["wiki"]


def fake_runs(spec: dict, *overrides: str) -> list:
    """Run records (no folders) of the tiny preset with `overrides`: {variant: per-seed losses}."""
    from pathlib import Path

    from harness.analysis.table import Run
    from harness.core.config import apply_overrides
    from harness.core.presets import get_preset

    runs = []
    for variant, losses in spec.items():
        for seed, loss in enumerate(losses):
            cfg = apply_overrides(get_preset("tiny"), [f"variant.name={variant}", f"train.seed={seed}", *overrides])
            runs.append(Run(Path("-".join([variant, *overrides, f"s{seed}"])), cfg.to_dict(), loss, None))
    return runs


def test_heavy_tailed_seeds_get_a_rank_test_a_median_ci_holm_and_a_power_line():
    """Eight seeds, one of which spiked and ended 0.3 higher: the table shows the rank test, the
    bootstrap CI of the median difference and Holm-adjusted p-values, the verdict reads the
    adjusted p, and one line says how many seeds the paper's gap would need at this spread."""
    from scipy import stats

    from harness.analysis.report import loss_stats, loss_summary
    from harness.analysis.table import group_rows

    base = [2.30, 2.28, 2.31, 2.29, 2.27, 2.30, 2.60, 2.29]
    spec = {"identity": base, "mhc": [b - 0.15 for b in base[:6]] + [2.13, 2.12],
            "mhc-lite": [b + 0.01 for b in base], "hc": [b - 0.03 for b in base]}
    rows = group_rows(fake_runs(spec))
    st = {s.label: s for s in loss_stats(rows)}
    mhc = st["mHC"].comparison
    assert mhc.rank_p == pytest.approx(stats.mannwhitneyu(spec["mhc"], base).pvalue)
    assert mhc.welch_p == pytest.approx(stats.ttest_ind(spec["mhc"], base, equal_var=False).pvalue)
    raw = sorted(s.comparison.welch_p for s in st.values() if s.comparison)
    assert mhc.holm_welch_p == pytest.approx(min(1, 3 * raw[0]))  # the smallest of 3 comparisons, times 3
    assert mhc.ci_high < 0 and mhc.delta_median == pytest.approx(-0.15 - 0.005, abs=0.02)
    assert st["mHC"].verdict.startswith("lower loss than Baseline (Holm p = ") and "CI agrees" in st["mHC"].verdict
    assert st["mHC-lite"].verdict.startswith("inside the noise (Holm p = ")
    header, body, notes = loss_summary(rows)
    assert header[:4] == ["configuration", "runs", "final val loss", "median"] and "Holm p (Welch / rank)" in header
    power = next(n for n in notes if n.startswith("Power:"))
    assert "0.02 (the mHC paper's size)" in power and "8-8 per configuration" in power


def test_seeds_for_power_matches_the_textbook():
    """n per group for a two-sided two-sample t-test, alpha 0.05, power 0.8: d = 1 needs 17, d = 0.5 needs 64."""
    from harness.analysis.stats import holm, seeds_for_power

    assert seeds_for_power(1.0, 1.0) == 17 and seeds_for_power(0.5, 1.0) == 64
    assert seeds_for_power(1e-6, 1.0) == float("inf") and seeds_for_power(0.1, float("nan")) != seeds_for_power(0.1, 1)
    assert holm([0.01, 0.04, 0.03, float("nan")])[:3] == pytest.approx([0.03, 0.06, 0.06])


def test_a_report_refuses_to_pool_runs_that_differ_in_more_than_the_seed():
    from harness.analysis.report import loss_stats
    from harness.analysis.table import Row
    from harness.core.errors import UserError

    runs = fake_runs({"mhc": [2.3, 2.4]}) + fake_runs({"mhc": [2.2]}, "optim.lr=0.01")
    row = Row("mHC", "mhc", frozenset(), runs=runs)
    with pytest.raises(UserError) as e:
        loss_stats([row])
    assert "\n" not in str(e.value) and "differ in optim.lr (0.003 vs 0.01)" in str(e.value) and "a report pools only the seeds of one configuration" in str(e.value)


def test_headline_figure_shows_final_loss_with_its_ci_and_the_verdict(drawn, tmp_path):
    from pathlib import Path

    from harness.analysis import plots
    from harness.analysis.report import loss_stats
    from harness.analysis.table import Run, group_rows
    from harness.core.presets import get_preset

    runs = []
    for variant, losses in (("identity", (3.00, 3.01, 3.02)), ("hc", (3.50, 3.52, 3.51)), ("mhc", (2.9, 3.1, 3.05))):
        for seed, loss in enumerate(losses):
            cfg = get_preset("tiny")
            cfg.variant.name, cfg.train.seed = variant, seed
            runs.append(Run(Path(f"{variant}-s{seed}"), cfg.to_dict(), loss, None))
    stats = loss_stats(group_rows(runs))
    plots.final_loss(stats, tmp_path / "final_loss.png")
    ax = drawn["final_loss.png"].axes[0]
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "higher loss than Baseline" in texts and "inside the noise" in texts and "reference" in texts
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["Baseline", "HC", "mHC"]
    hc = next(s for s in stats if s.label == "HC")
    assert hc.mean == pytest.approx(3.51) and hc.low < 3.50 and hc.high > 3.52  # a t interval over 3 seeds
    xs = [x for c in ax.collections for x, _ in c.get_offsets()]
    assert all(any(abs(x - v) < 1e-9 for x in xs) for v in (3.50, 3.52, 3.51))  # every seed drawn


# ---------------------------------------------------------------------- report.html
@pytest.fixture(scope="module")
def reported(tmp_path_factory, data_cache):
    """Baseline and mHC x 2 seeds with evaluations and a cost table, reported once for these tests."""
    return full_report(tmp_path_factory.mktemp("full") / "runs", data_cache)


def _sections(page: str) -> dict[str, str]:
    """{h2 heading: the HTML up to the next h2}."""
    parts = re.split(r"<h2>(.*?)</h2>", page)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_table_of_report_html_is_an_html_table(reported):
    page = (reported / "report.html").read_text()
    assert "<pre" not in page  # no Markdown or text tables left as preformatted text
    sections = _sections(page)
    for heading, must in (("Paper Table 1 layout", "<th>H_res</th>"), ("Paper Table 4 layout", "MMLU"),
                          ("What does it cost? (training-step time)", "<th>step_time_s</th>"), ("Configuration", "train.steps")):
        assert "<table" in sections[heading] and must in sections[heading], heading
    tables = re.findall(r"<table[^>]*>", page)
    assert len(tables) >= 6 and all('class="sortable' in t for t in tables)
    assert "<script>" in page and "src=" not in page.replace('img src="data:', "")  # sorting inline, nothing fetched
    cost = sections["What does it cost? (training-step time)"]
    assert re.search(r"<td>mhc</td>.*?<td>\+[\d,.]+%</td>", cost)  # the overhead column, as numbers a reader sorts


def test_the_headline_figure_answers_first(reported):
    page = (reported / "report.html").read_text()
    first_figure, first_table = page.index("<figure>"), page.index("<table")
    assert first_figure < first_table and page.index("Which residual connection") < first_figure
    assert 'alt="Final validation loss' in page[first_figure:first_table]
    md = (reported / "report.md").read_text()
    assert md.index("![Final validation loss") < md.index("| configuration |")
    assert (reported / "final_loss.png").read_bytes()[:4] == b"\x89PNG"


def test_table4_leaves_out_the_gap_to_a_27b_model_at_a_tiny_scale(reported, capsys):
    md = (reported / "report.md").read_text()
    table4 = md[md.index("## Paper Table 4 layout"):md.index("## ", md.index("## Paper Table 4 layout") + 3)]
    header = next(line for line in table4.splitlines() if line.startswith("| Method"))
    assert "paper" not in header and "Δ" not in header
    assert re.search(r"parameters, \d orders of magnitude fewer than the paper's 27B", table4)
    assert "| Baseline | 43.8 |" in table4  # the paper's numbers stay, apart, for their ordering
    html = _sections((reported / "report.html").read_text())["Paper Table 4 layout"]
    assert "<th>Δ</th>" not in html.split("</table>")[0]
    # `mhc-bench table` keeps the paper's layout and says plainly what the gap is worth here
    assert main(["table", str(reported.parent), "--layout", "table4", "--format", "md"]) == 0
    assert "orders of magnitude fewer than the paper's 27B" in capsys.readouterr().out


def test_each_variant_at_its_own_lr_meets_the_one_baseline_but_an_lr_sweep_compares_at_equal_lr():
    from harness.analysis.axes import swept_axes
    from harness.analysis.report import loss_stats
    from harness.analysis.table import group_rows

    tuned = fake_runs({"identity": [2.34, 2.35, 2.33]}, "optim.lr=0.001") + fake_runs({"mhc": [2.29, 2.30, 2.28]}, "optim.lr=0.003")
    assert swept_axes(tuned) == []
    stats = {s.label.split(" (")[0]: s for s in loss_stats(group_rows(tuned))}
    assert stats["mHC"].comparison is not None and stats["mHC"].delta == pytest.approx(-0.05)
    sweep = tuned + fake_runs({"identity": [2.40, 2.41]}, "optim.lr=0.003")
    assert swept_axes(sweep) == ["optim.lr"]
    by_label = {s.label: s for s in loss_stats(group_rows(sweep))}
    mhc = next(s for label, s in by_label.items() if label.startswith("mHC"))
    assert mhc.delta == pytest.approx(2.29 - 2.405)  # against the identity at its own lr, 3e-3


def test_downstream_section_says_what_is_at_chance_and_compares_heldout_bits_per_byte(reported):
    sections = _sections((reported / "report.html").read_text())
    md = (reported / "report.md").read_text()
    section = md[md.index("## Downstream: which scores can tell the variants apart?"):md.index("## Paper Table 1 layout")]
    assert "At chance at this size: BBH (chance " in section  # 0.10-0.13 against a uniform guess of about 26%
    assert "Above chance: DROP" in section and section.count("Held-out bits per byte is the discriminating metric.") == 1
    header = next(line for line in section.splitlines() if line.startswith("| configuration"))
    assert "| held-out bits/byte |" in header and "| Baseline | 2 |" in section and "reference" in section
    assert "<table" in sections["Downstream: which scores can tell the variants apart?"]
