"""`mhc-bench table`: rows mapped to the paper's, seeds pooled, published numbers in place."""

import json
import math

import pandas as pd
import pytest

from harness.analysis.table import make_table, row_label, t975
from harness.core.presets import get_preset
from harness.eval.results import SCHEMA, frame
from harness.eval.suites import SUITES

# (run name, variant, fixed, seed, final val loss, {suite: headline value})
RUNS = [
    ("base-s0", "identity", "", 0, 3.00, {"bbh": 0.10, "drop": 0.20, "gsm8k": 0.02, "mmlu": 0.25}),
    ("base-s1", "identity", "", 1, 3.02, {"bbh": 0.12, "drop": 0.22, "gsm8k": 0.04, "mmlu": 0.27}),
    ("hc", "hc", "", 0, 2.97, {"bbh": 0.15, "drop": 0.25, "gsm8k": 0.05, "mmlu": 0.30}),
    ("mhc", "mhc", "", 0, 2.96, {"bbh": 0.16, "drop": 0.26, "gsm8k": 0.06, "mmlu": 0.31}),
    ("lite", "mhc-lite", "", 0, 2.965, {"bbh": 0.14, "drop": 0.24, "gsm8k": 0.03, "mmlu": 0.29}),
    ("res-only", "hc", "pre,post", 0, 2.99, {"bbh": 0.11, "drop": 0.21, "gsm8k": 0.03, "mmlu": 0.26}),
    ("res-pre", "hc", "post", 0, 2.985, {}),  # never evaluated: dashes in Table 4
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables") / "exp"
    for name, variant, fixed, seed, val, scores in RUNS:
        cfg = get_preset("tiny")
        cfg.variant.name, cfg.train.seed = variant, seed
        if fixed:
            cfg.variant.fixed = fixed
        run = root / name
        run.mkdir(parents=True)
        (run / "config.json").write_text(json.dumps(cfg.to_dict()))
        pd.DataFrame({"step": [0, 60, 60], "split": ["val", "train", "val"], "loss": [5.5, 3.1, val]}).to_parquet(run / "metrics.parquet")
        rows = []
        for key, value in scores.items():
            s = SUITES[key]
            rows.append({"run": name, "run_dir": str(run), "preset": "tiny", "variant": variant, "variant_fixed": fixed,
                         "n_streams": 4, "seed": seed, "step": 60, "seq_len": 64, "task": key, "subtask": "",
                         "level": "task", "lm_eval_task": s.lm_eval_name, "metric": s.metric, "filter": s.filter,
                         "value": value, "stderr": 0.01, "higher_is_better": True, "samples": 100,
                         "num_fewshot": s.shots, "limit": None, "context_truncated": 1.0, "task_version": "1",
                         "task_hash": "h", "lm_eval_version": "0.4.13", "device": "cpu", "evaluated_at": "t", "notes": s.note})
        if rows:
            frame(rows).to_parquet(run / "evals.parquet")
            assert list(pd.read_parquet(run / "evals.parquet").columns) == list(SCHEMA)
    return root


def test_labels():
    def cfg(name, fixed=""):
        return {"variant": {"name": name, "fixed": fixed}}

    assert [row_label(cfg(n)) for n in ("identity", "hc", "mhc", "mhc-lite")] == ["Baseline", "HC", "mHC", "mHC-lite"]
    assert row_label(cfg("hc", "pre,post")) == "H_res only"
    assert row_label(cfg("hc", "post")) == "H_res + H_pre"
    assert row_label(cfg("mhc", "pre")) == "mHC: H_res + H_post"


def test_table4_places_the_paper_numbers(experiment):
    md, files = make_table(experiment, "table4")
    df = pd.read_csv(files["csv"])
    cell = df.set_index(["row", "benchmark"])
    assert cell.loc[("Baseline", "bbh"), "paper"] == 43.8
    assert cell.loc[("HC", "drop"), "paper"] == 51.6
    assert cell.loc[("HC", "gsm8k"), "paper"] == 53.2
    assert cell.loc[("mHC", "mmlu"), "paper"] == 63.4
    assert cell.loc[("mHC", "bbh"), "paper"] == 51.0
    assert math.isnan(cell.loc[("mHC-lite", "bbh"), "paper"]) and math.isnan(cell.loc[("H_res only", "mmlu"), "paper"])
    # one run: ours in percent with lm-eval's stderr, and the gap to the paper
    assert cell.loc[("HC", "mmlu"), "ours"] == pytest.approx(30.0)
    assert cell.loc[("HC", "mmlu"), "err"] == pytest.approx(1.0) and cell.loc[("HC", "mmlu"), "err_kind"] == "stderr"
    assert cell.loc[("HC", "mmlu"), "gap"] == pytest.approx(30.0 - 63.0)
    # two seeds pooled: mean and a 95% CI
    base = cell.loc[("Baseline", "mmlu")]
    assert base["runs"] == 2 and base["ours"] == pytest.approx(26.0)
    assert base["err"] == pytest.approx(t975(1) * math.sqrt(2.0) / math.sqrt(2)) and base["err_kind"] == "95% CI (2 seeds)"
    assert math.isnan(cell.loc[("H_res + H_pre", "bbh"), "ours"])
    line = next(l for l in md.splitlines() if l.startswith("| HC |"))
    assert "| 30.0 ± 1.0 | 63.0 | −33.0 |" in line and "| 15.0 ± 1.0 | 48.9 | −33.9 |" in line
    assert [l.split("|")[1].strip() for l in md.splitlines() if l.startswith("| ") and "Runs" not in l] == [
        "Baseline", "H_res only", "H_res + H_pre", "HC", "mHC", "mHC-lite"]
    tex = files["tex"].read_text()
    assert r"\toprule" in tex and r"43.8" in tex and r"$\pm$" in tex and "H\\_res only" in tex


def test_table1_reports_loss_gaps_vs_baseline(experiment):
    md, files = make_table(experiment, "table1", formats=("md", "csv"))
    df = pd.read_csv(files["csv"]).set_index("row")
    assert df.loc["Baseline", "val_loss"] == pytest.approx(3.01) and df.loc["Baseline", "gap"] == 0
    assert df.loc["H_res only", "gap"] == pytest.approx(2.99 - 3.01)
    assert df.loc["H_res only", "paper_gap"] == -0.022
    assert df.loc["H_res + H_pre", "paper_gap"] == -0.025
    assert df.loc["HC", "paper_gap"] == -0.027 and df.loc["HC", "gap"] == pytest.approx(2.97 - 3.01)
    assert math.isnan(df.loc["mHC", "paper_gap"])
    assert bool(df.loc["H_res only", "H_res"]) and not df.loc["H_res only", "H_pre"]
    assert "tex" not in files
    line = next(l for l in md.splitlines() if l.startswith("| H_res only |"))
    assert "| ✓ |  |  |" in line and "−0.022" in line and "−0.020" in line


def test_paper_numbers_only_beside_the_papers_own_setting():
    from harness.analysis.table import paper_setting
    from harness.core.presets import get_preset

    cfg = get_preset("tiny").to_dict()
    cfg["variant"].update(name="mhc")
    assert paper_setting(cfg)  # defaults: n = 4, dynamic, k = 20 in the paper's order
    for change in ({"sk_iters": 1}, {"sk_mode": "kernel"}, {"n_streams": 2}, {"mode": "static"}):
        other = {**cfg, "variant": {**cfg["variant"], **change}}
        assert not paper_setting(other), change


def test_unfinished_runs_are_left_out_and_named_diverged_ones_stay(tmp_path):
    """A run stopped at step 40/60 must not pass its step-40 loss off as a final one."""
    from harness.core.errors import UserError

    root = tmp_path / "exp"

    def run(name, seed, val, status):
        cfg = get_preset("tiny")
        cfg.variant.name, cfg.train.seed = "identity", seed
        path = root / name
        path.mkdir(parents=True)
        (path / "config.json").write_text(json.dumps(cfg.to_dict()))
        pd.DataFrame({"step": [60], "split": ["val"], "loss": [val]}).to_parquet(path / "metrics.parquet")
        (path / "status.json").write_text(json.dumps(status))

    run("s0", 0, 3.0, {"status": "stopped", "step": 40, "steps": 60})
    with pytest.raises(UserError, match=r"no finished run in .*s0 \(stopped at step 40/60\)"):
        make_table(root, "table1", formats=("csv",))
    run("s1", 1, 3.2, {"status": "done", "step": 60, "steps": 60})
    run("s2", 2, float("nan"), {"status": "diverged", "step": 12, "steps": 60, "error": "loss became nan"})
    md, files = make_table(root, "table1", formats=("md", "csv"))
    df = pd.read_csv(files["csv"]).set_index("row")
    assert df.loc["Baseline", "runs"] == 2  # s1 and the diverged s2; not the stopped s0
    assert "Left out, not finished (1): s0 (stopped at step 40/60)" in md


def test_rows_sort_numbers_as_numbers():
    from harness.analysis.table import natural_key

    labels = ["mHC (variant.sk_iters=20)", "mHC (variant.sk_iters=2)", "mHC (variant.sk_iters=10)",
              "mHC (variant.sk_iters=0)", "mHC (variant.sk_iters=5)", "mHC (variant.sk_iters=1.5)"]
    assert [l.split("=")[1][:-1] for l in sorted(labels, key=natural_key)] == ["0", "1.5", "2", "5", "10", "20"]


def test_table_takes_an_experiment_by_name_like_report_and_grid_status(experiment, tmp_path, capsys):
    from harness.cli import main

    assert main(["table", experiment.name, "--runs-dir", str(experiment.parent), "--layout", "table1",
                 "--out", str(tmp_path), "--format", "csv"]) == 0
    assert (tmp_path / "table1.csv").is_file() and "Baseline" in capsys.readouterr().out
    assert main(["table", "no-such-experiment", "--runs-dir", str(experiment.parent)]) == 2
    assert "experiment folder not found: no-such-experiment" in capsys.readouterr().err


def test_runs_saved_before_a_config_field_existed_group_with_newer_runs_of_the_same_recipe(tmp_path):
    """A grid resumed across versions: the older runs' config.json lacks a field added since."""
    from harness.analysis.table import Run, group_rows

    runs = []
    for seed in (0, 1, 2):
        cfg = get_preset("tiny")
        cfg.variant.name, cfg.train.seed = "mhc", seed
        d = cfg.to_dict()
        if seed == 0:
            del d["data"]["text_field"]  # saved by a version without data.text_field
        runs.append(Run(tmp_path / f"r{seed}", d, 2.5, None, "done", 10, 10))
    other = get_preset("tiny")
    other.variant.name, other.optim.lr = "mhc", 0.1
    runs.append(Run(tmp_path / "lr", other.to_dict(), 2.9, None, "done", 10, 10))
    rows = group_rows(runs)
    assert [(r.label, len(r.runs)) for r in rows] == [("mHC (optim.lr=0.003)", 3), ("mHC (optim.lr=0.1)", 1)]
