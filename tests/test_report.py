"""`report` and `publish`: every artefact exists, is non-empty, and says what the numbers support."""

import pytest

from harness.cli import main
from harness.train import train


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
    for name in ("report.md", "report.html", "loss.png", "grad_norm.png", "amax.png", "table1.md", "overhead.png"):
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


def test_report_of_missing_experiment_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "experiment folder not found" in err[0]


def test_kernel_bandwidth_figure_draws_ops_against_the_copy_ceiling(tmp_path):
    import pandas as pd

    from harness.plots import kernel_bandwidth

    rows = [dict(op="copy", provider="torch", mode="fwd", tokens=0, unit="GB/s", value=30.0)]
    rows += [dict(op=op, provider=p, mode=m, tokens=t, unit="GB/s", value=t / 10)
             for op in ("premix", "post_res") for p in ("torch", "triton") for m in ("fwd", "fwd+bwd") for t in (64, 4096)]
    rows += [dict(op="premix", provider="torch", mode="fwd", tokens=64, unit="ms", value=1.0)]
    out = kernel_bandwidth(pd.DataFrame(rows), tmp_path / "k.png")
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"
    assert kernel_bandwidth(pd.DataFrame(rows[:1]), tmp_path / "none.png") is None  # only the ceiling: no figure


def test_gap_vs_k_figure_draws_a_sweep_with_references_and_needs_two_finite_ks(tmp_path):
    import pandas as pd

    from harness.plots import ds_gap_vs_k

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

    from harness.eval.table import Run, group_rows
    from harness.presets import get_preset
    from harness.report import loss_summary

    runs = []
    for k, losses in ((20, (3.00, 3.01, 3.02)), (1, (3.50, 3.52, 3.51)), (5, (2.9, 3.1, 3.05))):
        for seed, loss in enumerate(losses):
            cfg = get_preset("tiny")
            cfg.variant.name, cfg.variant.sk_iters, cfg.train.seed = "mhc", k, seed
            runs.append(Run(Path(f"k{k}-s{seed}"), cfg.to_dict(), loss, None))
    header, body, notes = loss_summary(group_rows(runs))
    verdicts = {row[0]: row[-1] for row in body}
    assert header[3] == "Δ vs mHC (variant.sk_iters=20)"
    assert verdicts == {"mHC (variant.sk_iters=1)": "higher loss than mHC (variant.sk_iters=20)",
                        "mHC (variant.sk_iters=5)": verdicts["mHC (variant.sk_iters=5)"],
                        "mHC (variant.sk_iters=20)": "reference"}
    assert verdicts["mHC (variant.sk_iters=5)"].startswith("inside the noise")
    assert any("the paper's mHC setting" in n for n in notes)


def test_a_converged_sinkhorn_that_hit_its_cap_is_logged_recorded_and_reported(tiny_cfg, tmp_path):
    """sk_max_iters=1 with a tolerance no single round meets: the run must not pass as 'converged'."""
    from harness.rundir import RunDir

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

    from harness import report

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
