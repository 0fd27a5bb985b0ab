"""`bench model` (a script, not a timed test): the table is complete and the ratios consistent."""

import pandas as pd

from harness.cli import main


def test_quick_bench_writes_a_complete_long_table(tmp_path, capsys):
    out = tmp_path / "bench.parquet"
    code = main(["bench", "model", "--preset", "tiny", "--variants", "identity,mhc", "--streams", "2", "--peers", "none",
                 "--rounds", "2", "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(out),
                 "--set", "model.seq_len=16", "--set", "train.batch_size=2"])
    assert code == 0 and "mhc" in capsys.readouterr().out
    df = pd.read_parquet(out)
    wide = df.pivot_table(index=["variant", "n_streams"], columns="metric", values="value")
    assert list(wide.index) == [("identity", 1), ("mhc", 2)]
    assert (wide["step_time_s"] > 0).all() and (wide["tokens_per_s"] > 0).all()
    assert wide.loc[("identity", 1), "overhead"] == 0.0
    mhc = wide.loc[("mhc", 2)]
    ident = wide.loc[("identity", 1)]
    assert abs(mhc["overhead"] - (mhc["step_time_s"] / ident["step_time_s"] - 1)) < 1e-12
    assert mhc["overhead_predicted_io"] > 0
    assert {"device", "torch", "git_commit", "preset", "backend"} <= set(df.columns)


def test_bad_backend_is_one_line_error(capsys):
    assert main(["bench", "model", "--backends", "cuda-magic"]) == 2
    assert "unknown backend 'cuda-magic'" in capsys.readouterr().err
