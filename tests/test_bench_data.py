"""`bench data` (a script, not a timed test): it runs on a tiny setting and writes a consistent table."""

import pandas as pd
import pytest

from harness.cli import main


def test_quick_bench_writes_a_complete_long_table(tmp_path, capsys):
    corpus = tmp_path / "book.txt"
    corpus.write_text("".join(f"line {i} of a small book for the loader.\n" for i in range(400)))
    out = tmp_path / "data.parquet"
    code = main(["bench", "data", "--preset", "tiny", "--rounds", "3", "--steps", "2", "--warmup", "1",
                 "--shards", "2", "--shard-tokens", "3000", "--target", "1000", "--device", "cpu",
                 "--data-dir", str(corpus), "--runs-dir", str(tmp_path / "runs"), "--out", str(out),
                 "--set", "model.seq_len=16", "--set", "train.batch_size=3", "--set", "train.grad_accum=2"])
    printed = capsys.readouterr().out
    assert code == 0 and "modded-nanogpt" in printed and str(out) in printed
    df = pd.read_parquet(out)
    assert (df.tokens_per_step == 3 * 2 * 16).all() and (df.rounds == 3).all()
    assert {"device_name", "torch", "git_commit", "load_avg_1m", "time"} <= set(df.columns)
    wide = df.pivot_table(index=["source", "shard_format", "train_tokens"], columns="metric", values="value")
    assert [i[:2] for i in wide.index] == [("byte", "flat"), ("modded-nanogpt", "modded-nanogpt")]
    assert wide.index[1][2] == 2 * 3000  # the two synthetic training shards, read as one stream
    assert (wide.step_time_p10_s <= wide.step_time_s).all() and (wide.step_time_s <= wide.step_time_p90_s).all()
    assert (wide.tokens_per_s - 96 / wide.step_time_s).abs().max() < 1e-6 * wide.tokens_per_s.max()
    assert (wide.target_tokens_per_s == 1000).all()
    assert (wide.margin == wide.tokens_per_s / 1000).all()


@pytest.mark.parametrize("args, message", [
    (["--sources", "byte,moded"], "unknown source 'moded' in --sources"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--target", "0"], "--target must be a positive number"),
])
def test_bad_arguments_are_one_error_line_and_no_table(tmp_path, capsys, args, message):
    out = tmp_path / "data.parquet"
    assert main(["bench", "data", "--device", "cpu", "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mhc-bench: error: ") and message in err[0]
    assert not out.exists()
