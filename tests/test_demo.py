"""The README's main job, shrunk: every artefact of the demo exists and is non-empty."""

import pandas as pd

from harness.cli import main


def test_shrunk_demo_end_to_end(tmp_path, data_cache, capsys):
    runs = tmp_path / "runs"
    argv = ["demo", "--runs-dir", str(runs), "--limit", "1", "--max-gen-toks", "4", "--bench-rounds", "2",
            "--set", "train.steps=4", "--set", f"data.cache_dir={data_cache}", "--set", "run.progress=off"]
    assert main(argv) == 0
    exp = runs / "demo"
    captured = capsys.readouterr()
    assert "demo finished" in captured.out
    assert "Generating" not in captured.err and "examples/s" not in captured.err  # the datasets' chatter is in the logs
    assert all((p.parent / "eval" / "eval.log").stat().st_size > 0 for p in exp.glob("*/checkpoint.pt"))
    for name in ("runs.parquet", "metrics.parquet", "diagnostics.parquet", "evals.parquet", "bench/model.parquet",
                 "report/report.md", "report/report.html", "report/loss.png", "report/amax.png", "report/table1.md",
                 "report/table4.md", "report/overhead.png"):
        assert (exp / name).stat().st_size > 0, name
    runs_table = pd.read_parquet(exp / "runs.parquet")
    assert len(runs_table) == 7 and set(runs_table["state"]) == {"done"}
    evals = pd.read_parquet(exp / "evals.parquet")
    assert {"bbh", "drop", "gsm8k", "mmlu"} <= set(evals["task"])
    # re-running reuses finished work: nothing is retrained or re-evaluated
    before = {p: p.stat().st_mtime_ns for p in exp.glob("*/checkpoint.pt")} | {p: p.stat().st_mtime_ns for p in exp.glob("*/evals.parquet")}
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "already measured" in captured.out
    assert captured.err.count("already evaluated") == 7  # every run's results come from its cache
    assert before == {p: p.stat().st_mtime_ns for p in before}
