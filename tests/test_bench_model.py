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
    from harness.bench import model as bench_model
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


QUICK = ["bench", "model", "--preset", "tiny", "--peers", "none", "--steps", "1", "--warmup", "1", "--device", "cpu",
         "--set", "model.seq_len=8", "--set", "train.batch_size=1"]


def test_ceilings_are_measured_between_rounds_and_the_best_kept(monkeypatch, tmp_path):
    """A ceiling measured once, at a busy moment, made MFU print above 100%: now every round
    measures it again and the table keeps the best."""
    from harness.bench import model as bench_model
    rates = iter([1e9, 3e9, 2e9, 1.5e9])  # before warm-up, then before each of 3 rounds

    def fake(device, dtype):
        return {"copy_bytes_per_s": 1e9, "matmul_flops_per_s": next(rates)}

    monkeypatch.setattr(bench_model, "measure_ceilings", fake)
    out = tmp_path / "bench.parquet"
    assert main([*QUICK, "--variants", "identity", "--rounds", "3", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert set(df[df.metric == "matmul_flops_per_s"].value) == {3e9}


def test_mfu_above_100_percent_is_a_measurement_error_not_a_number(monkeypatch, tmp_path, capsys):
    from harness.bench import model as bench_model
    monkeypatch.setattr(bench_model, "measure_ceilings", lambda d, t: {"copy_bytes_per_s": 1e9, "matmul_flops_per_s": 1.0})
    out = tmp_path / "bench.parquet"
    assert main([*QUICK, "--variants", "identity", "--rounds", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    df = pd.read_parquet(out)
    assert "mfu" not in set(df.metric) and (df[df.metric == "mfu_invalid"].value > 1).all()
    header, row = printed.splitlines()[0].split(), printed.splitlines()[1].split()
    assert row[header.index("mfu")] == "error" and "%" not in row[header.index("mfu")]
    assert "mfu 'error'" in printed


def test_profile_prints_and_saves_each_cases_top_operators(tmp_path, capsys):
    out = tmp_path / "bench.parquet"
    assert main([*QUICK, "--variants", "identity,mhc", "--streams", "2", "--rounds", "1", "--profile", "5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    saved = out.with_suffix(".profile.txt").read_text()
    for text in (printed, saved):
        assert text.count("one training step, top 5 operators by self time") == 2
        assert "identity / torch" in text and "mhc / torch" in text and "Self CPU" in text
    mhc_part = saved.split("mhc / torch")[1]
    assert "aten::" in mhc_part or "CPU" in mhc_part  # the table lists operators, not an empty profile


def test_negative_profile_is_refused(capsys):
    assert main([*QUICK, "--variants", "identity", "--profile", "-1"]) == 2
    assert "--profile takes a number of operators" in capsys.readouterr().err


def test_many_compiled_cases_each_keep_a_compiled_graph():
    """Nine compiled models share GPT.forward: past dynamo's recompile limit of 8 the ninth would
    silently run eager under the label compile."""
    import torch._dynamo

    from harness.bench import model as bench_model
    cases = bench_model.build_cases(["tiny"], ["identity", "hc", "mhc"], ["torch", "compile"], [], [], [], peers=())
    cases *= 3
    old = torch._dynamo.config.recompile_limit
    try:
        bench_model.allow_compiled_cases(cases)
        assert torch._dynamo.config.recompile_limit >= 9 * 4
    finally:
        torch._dynamo.config.recompile_limit = old
