"""The README's main job, shrunk: every artefact of the demo exists and is non-empty, and the console
shows the phases and the results, not the commands' output (that goes to demo.log)."""

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
    lines = (captured.out + captured.err).splitlines()
    assert len(lines) < 60 and sum(line.startswith(("1/5", "2/5", "3/5", "4/5", "5/5")) for line in lines) == 5, lines
    assert "training-step time vs identity" in captured.out  # the results, not only phases
    gains = [line for line in captured.out.splitlines() if line.startswith(("  HC ", "  mHC"))]
    assert len(gains) == 2 and "2 blocks: " in gains[0] and "8 blocks: " in gains[0], gains
    assert gains[1].startswith("  mHC  2 blocks: 1.00   (")  # rows sum to 1: the forward gain is exactly 1
    assert "they are not a comparison here" in captured.out
    assert "Generating" not in captured.err and "examples/s" not in captured.err  # the datasets' chatter is in the logs
    assert "running 9 run(s)" in (exp / "demo.log").read_text()  # the commands' own output is kept
    assert all((p.parent / "eval" / "eval.log").stat().st_size > 0 for p in exp.glob("*/checkpoint.pt"))
    for name in ("runs.parquet", "metrics.parquet", "diagnostics.parquet", "evals.parquet", "bench/model.parquet",
                 "report/report.md", "report/report.html", "report/loss.png", "report/amax.png", "report/table1.md",
                 "report/table4.md", "report/overhead.png"):
        assert (exp / name).stat().st_size > 0, name
    runs_table = pd.read_parquet(exp / "runs.parquet")
    assert len(runs_table) == 9 and set(runs_table["state"]) == {"done"}
    evals = pd.read_parquet(exp / "evals.parquet")
    assert {"bbh", "drop", "gsm8k", "mmlu"} <= set(evals["task"])
    # re-running reuses finished work: nothing is retrained or re-evaluated
    before = {p: p.stat().st_mtime_ns for p in exp.glob("*/checkpoint.pt")} | {p: p.stat().st_mtime_ns for p in exp.glob("*/evals.parquet")}
    assert main(argv) == 0
    capsys.readouterr()
    rerun = (exp / "demo.log").read_text().split("1/5 training")[-1]
    assert "already measured" in rerun
    assert rerun.count("already evaluated") == 9  # every run's results come from its cache
    assert before == {p: p.stat().st_mtime_ns for p in before}


def test_a_failing_stage_shows_the_end_of_its_output_and_where_the_rest_is(tmp_path, data_cache, capsys):
    runs = tmp_path / "runs"
    code = main(["demo", "--runs-dir", str(runs), "--set", "optim.lrr=0.1", "--set", f"data.cache_dir={data_cache}"])
    out = capsys.readouterr().out
    assert code == 2
    assert "1/5 training the demo grid" in out and "failed" in out and "unknown config key 'optim.lrr'" in out
    assert f"the whole output: {runs / 'demo' / 'demo.log'}" in out and "2/5" not in out
