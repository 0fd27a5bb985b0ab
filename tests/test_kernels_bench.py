"""`bench kernels` (a script, not a timed test): the quick run writes a complete long table."""

import argparse

import pandas as pd
import pytest
import torch

from harness.bench.kernels import MODES, OPS, PROVIDERS, Shape, bytes_moved
from harness.bench.kernels_cli import register

TIMED = {"time_median", "time_p20", "time_p80", "bandwidth", "copy_fraction"}
COLUMNS = {"op", "provider", "mode", "tokens", "C", "n", "dtype", "metric", "value", "unit", "device", "versions", "note"}


def bench(argv):
    """Run `mhc-bench bench kernels ARGV` through the same argparse registration the CLI uses."""
    parser = argparse.ArgumentParser(prog="mhc-bench")
    group = parser.add_subparsers(dest="command").add_parser("bench").add_subparsers(dest="bench_command")
    register(group)
    args = parser.parse_args(["bench", "kernels", *argv])
    return args.func(args)


def test_quick_bench_writes_a_complete_long_table(tmp_path, capsys):
    pytest.importorskip("triton")
    out = tmp_path / "kernels.parquet"
    cuda = torch.cuda.is_available()
    # on a CPU, --triton-interpreter runs the triton rows too (a correctness smoke, marked as not a
    # timing); 2 Sinkhorn rounds keep the interpreter quick. With a GPU: real (quick) timings.
    device = ["--device", "cuda"] if cuda else ["--device", "cpu", "--triton-interpreter"]
    assert bench(["--quick", *device, "--dtype", "fp32", "--sk-iters", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "connection" in printed and f"table: {out}" in printed
    df = pd.read_parquet(out)
    assert COLUMNS <= set(df.columns)
    copy = df[df.op == "copy"].set_index("metric")["value"]
    assert copy["bandwidth"] > 0 and copy["time_median"] > 0

    shapes = [Shape(64, 40, 4), Shape(1, 37, 3)]  # QUICK_SHAPES
    providers = [p for p in PROVIDERS if p != "compile"]  # --quick leaves torch.compile out
    for s in shapes:
        for op in OPS:
            for provider in providers:
                for mode in MODES:
                    rows = df[(df.op == op) & (df.provider == provider) & (df["mode"] == mode)
                              & (df.tokens == s.tokens) & (df.C == s.C) & (df.n == s.n)]
                    metrics = set(rows.metric)
                    where = f"{op}/{provider}/{mode}/{s}"
                    assert len(rows), f"{where}: no row at all"
                    if metrics == {"skipped"}:
                        assert len(rows) == 1 and rows.note.iloc[0], f"{where}: skipped without a reason"
                        # ours always run here (triton in the interpreter on a CPU); only peers may be missing
                        assert provider not in ("torch", "triton"), f"{where}: {rows.note.iloc[0]}"
                        continue
                    assert TIMED <= metrics, f"{where}: got {sorted(metrics)}"
                    v = rows.set_index("metric")["value"]
                    assert v["time_p20"] <= v["time_median"] <= v["time_p80"] and v["time_median"] > 0, where
                    expected_gbps = bytes_moved(op, mode, s, 4) / (v["time_median"] * 1e-3) / 1e9
                    assert v["bandwidth"] == pytest.approx(expected_gbps, rel=1e-9), where
                    assert v["copy_fraction"] == pytest.approx(v["bandwidth"] / copy["bandwidth"], rel=1e-9), where
                    if provider == "triton":  # the kernels' results agree with the reference
                        assert ("interpreter" in rows.note.iloc[0]) != cuda, where
                        if mode == "fwd":
                            assert v["max_rel_diff_vs_torch"] < 1e-4, where
                    if provider == "torch":
                        assert rows.note.iloc[0] == "", where
    timed = df[(df.metric == "time_median") & (df.op != "copy")]
    for provider in ("torch", "triton"):  # every op at every shape timed, in both modes
        assert len(timed[timed.provider == provider]) == len(OPS) * len(shapes) * len(MODES), provider
    if not cuda:  # without a GPU the peers are reported as skipped, with the reason
        liger = df[df.provider == "liger"]
        assert len(liger) and liger.metric.eq("skipped").all() and liger.note.str.contains("CUDA").all()


def test_bytes_moved_counts_the_papers_io():
    """Forward post+res of n streams: reads (n + 1)·C, writes n·C stream values per token (§3.2)."""
    s = Shape(tokens=10, C=100, n=4)
    coef = 10 * (4 + 16) * 4  # H_post and H_res, fp32
    assert bytes_moved("post_res", "fwd", s, 2) == 10 * (5 * 100 + 4 * 100) * 2 + coef
    assert bytes_moved("premix", "fwd", s, 2) == 10 * (4 * 100 + 100) * 2 + 10 * 4 * 4
    assert bytes_moved("connection", "fwd", s, 2) == sum(bytes_moved(op, "fwd", s, 2) for op in ("coefficients", "premix", "post_res"))


def test_bad_arguments_are_one_line_errors():
    from harness.core.errors import UserError

    for argv, match in ((["--ops", "premx"], "unknown 'premx'"), (["--shapes", "16x4"], "TOKENSxCxN"),
                        (["--dtype", "fp8"], "--dtype"), (["--precision", "tf33"], "--precision")):
        with pytest.raises(UserError, match=match):
            bench([*argv, "--device", "cpu", "--quick"])
