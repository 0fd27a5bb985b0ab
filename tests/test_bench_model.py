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
    assert {"device", "torch", "git_commit", "preset", "backend", "threads"} <= set(df.columns)
    # activation memory: exact saved bytes per token, identity < mhc, recompute below plain mhc
    assert wide.loc[("identity", 1), "act_ratio"] == 1.0 == wide.loc[("identity", 1), "act_ratio_recompute"]
    assert mhc["act_bytes_per_token"] > mhc["act_bytes_per_token_recompute"] > ident["act_bytes_per_token"]
    assert mhc["act_ratio"] == mhc["act_bytes_per_token"] / ident["act_bytes_per_token"]
    assert mhc["recompute_block"] == 1  # n = 2, L = 4 sub-layers: sqrt(2 * 4 / 4) = 1.4


def test_triton_activation_memory_on_a_cpu_comes_from_the_interpreter(monkeypatch, tmp_path, capsys):
    """Without a GPU, backend=triton cannot be timed, but its activation memory is measured under
    Triton's interpreter in a subprocess (here the test session already runs the interpreter)."""
    from harness import bench_model

    calls = []
    real = bench_model.activation_rows

    def spy(cases, *args):
        calls.extend(c.backend for c in cases)
        return real(cases, *args)

    monkeypatch.setattr(bench_model, "activation_rows", spy)
    monkeypatch.setattr("kernels.backend.interpreting", lambda: False)  # as a plain CPU process would be
    out = tmp_path / "bench.parquet"
    code = main(["bench", "model", "--preset", "tiny", "--variants", "identity,mhc", "--backends", "triton", "--peers", "none",
                 "--rounds", "1", "--steps", "1", "--warmup", "1", "--device", "cpu", "--out", str(out),
                 "--set", "model.seq_len=8", "--set", "train.batch_size=2"])
    assert code == 0 and calls == ["triton", "triton"]
    df = pd.read_parquet(out)
    mhc = df[(df.variant == "mhc")].set_index("metric")
    assert "skipped" in mhc.index and "CUDA" in mhc.loc["skipped", "note"]  # no step time on a CPU
    assert mhc.loc["act_bytes_per_token", "value"] > mhc.loc["act_bytes_per_token_recompute", "value"] > 0
    assert "interpreter" in mhc.loc["act_bytes_per_token", "note"]
    assert "act_ratio" in capsys.readouterr().out


def test_bad_backend_is_one_line_error(capsys):
    assert main(["bench", "model", "--backends", "cuda-magic"]) == 2
    assert "unknown backend 'cuda-magic'" in capsys.readouterr().err


def test_train_threads_is_honoured(monkeypatch, tmp_path):
    """`--set train.threads=1` runs the cases on one thread, as `mhc-bench train` would, and says so."""
    import torch

    monkeypatch.setattr(torch, "set_num_threads", lambda k: calls.append(k))
    monkeypatch.setattr(torch, "get_num_threads", lambda: calls[-1] if calls else 7)
    calls: list[int] = []
    out = tmp_path / "bench.parquet"
    assert main(["bench", "model", "--preset", "tiny", "--variants", "identity", "--peers", "none", "--rounds", "1",
                 "--steps", "1", "--warmup", "0", "--device", "cpu", "--out", str(out), "--set", "model.seq_len=8",
                 "--set", "train.batch_size=1", "--set", "train.threads=1"]) == 0
    assert calls == [1] and set(pd.read_parquet(out).threads) == {1}
