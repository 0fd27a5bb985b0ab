"""The kernel registry (kernels/registry.py): an op registered from its own file is benchmarked
with no other file edited. A throwaway op, registered here, appears in `bench kernels`' op list
and choices and is timed by `run(...)`; an unknown op is still the one-line error."""

import argparse

import pandas as pd
import pytest
import torch

from harness.bench import kernels as bench_kernels
from harness.bench.kernels import MODES, run
from harness.bench.kernels_cli import register as register_cli
from kernels.bench_inputs import Draw
from kernels.errors import UserError
from kernels.registry import OpSpec, Shape, op_names, op_spec, register, unregister

BUILT_IN = ("premix", "post_res", "sinkhorn", "coefficients", "connection")
SHAPE = Shape(tokens=8, C=16, n=2)


def stream_sum_spec() -> OpSpec:
    """h = Σ_i x_i: reads n·C, writes C per token; its backward reads C and writes n·C. Torch only."""
    return OpSpec(
        name="stream_sum",
        make_inputs=lambda shape, dtype, device, seed=0: dict(
            x=Draw(seed, device).normal(shape.tokens, shape.n, shape.C, dtype=dtype)),
        fwd_bytes=lambda s, elem: s.tokens * (s.n + 1) * s.C * elem,
        bwd_bytes=lambda s, elem: s.tokens * (s.n + 1) * s.C * elem,
        build=lambda backend, options: lambda x: (x.sum(dim=-2),),
        backends=("torch",),
    )


@pytest.fixture
def stream_sum():
    spec = register(stream_sum_spec())
    yield spec
    unregister(spec.name)


def parser():
    """`mhc-bench bench kernels` as the CLI registers it (built now, so it sees the registry now)."""
    p = argparse.ArgumentParser(prog="mhc-bench")
    group = p.add_subparsers(dest="command").add_parser("bench").add_subparsers(dest="bench_command")
    register_cli(group)
    return p


def kernels_help() -> str:
    """`mhc-bench bench kernels --help`, whitespace folded."""
    sub = argparse.ArgumentParser(prog="mhc-bench bench").add_subparsers()
    register_cli(sub)
    return " ".join(sub.choices["kernels"].format_help().split())


def bench(argv):
    args = parser().parse_args(["bench", "kernels", *argv])
    return args.func(args)


def test_the_built_in_ops_are_registered_in_the_benchmarks_order():
    assert op_names() == BUILT_IN
    assert bench_kernels.OPS == BUILT_IN


def test_a_registered_op_joins_the_op_list_and_the_choices(stream_sum, tmp_path, capsys):
    assert op_names() == (*BUILT_IN, "stream_sum") and bench_kernels.OPS == op_names()
    assert "subset of premix, post_res, sinkhorn, coefficients, connection, stream_sum (default: all)" in kernels_help()
    out = tmp_path / "kernels.parquet"
    assert bench(["--ops", "stream_sum", "--providers", "torch", "--device", "cpu", "--quick", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    assert set(df[df.op != "copy"].op) == {"stream_sum"}
    assert "stream_sum" in capsys.readouterr().out  # the summary table


def test_a_registered_op_is_timed_by_run(stream_sum):
    df = run(["stream_sum"], ["torch", "triton"], [SHAPE], list(MODES), torch.float32, torch.device("cpu"),
             quick=True, log=lambda m: None)
    ours = df[df.op == "stream_sum"]
    for mode in MODES:
        torch_rows = ours[(ours.provider == "torch") & (ours["mode"] == mode)].set_index("metric")["value"]
        assert torch_rows["time_median"] > 0, mode
        expected = stream_sum.bytes_moved(mode, SHAPE, 4) / (torch_rows["time_median"] * 1e-3) / 1e9
        assert torch_rows["bandwidth"] == pytest.approx(expected, rel=1e-9), mode
    triton = ours[ours.provider == "triton"]  # no Triton path: one skipped row per mode, with the reason
    assert list(triton.metric) == ["skipped"] * len(MODES)
    assert triton.note.str.contains("stream_sum has no triton implementation").all()


def test_an_unknown_op_is_the_one_line_error(stream_sum):
    with pytest.raises(UserError) as e:
        bench(["--ops", "premx", "--device", "cpu", "--quick"])
    assert str(e.value) == ("--ops: unknown 'premx'; choose from premix, post_res, sinkhorn, coefficients, "
                            "connection, stream_sum")
    with pytest.raises(UserError, match="unknown kernel op 'premx'; choose from premix, .*, stream_sum"):
        run(["premx"], ["torch"], [SHAPE], ["fwd"], torch.float32, torch.device("cpu"), quick=True, log=lambda m: None)
    with pytest.raises(UserError, match="unknown kernel op"):
        op_spec("premx")


def test_a_name_is_registered_once_and_an_audited_op_needs_a_triton_path(stream_sum):
    with pytest.raises(ValueError, match="registered twice"):
        register(stream_sum_spec())
    with pytest.raises(ValueError, match="compile audit"):
        OpSpec("x", stream_sum.make_inputs, stream_sum.fwd_bytes, stream_sum.bwd_bytes, stream_sum.build,
               backends=("torch",), audit=True)


def test_the_compile_audit_takes_its_stand_alone_ops_from_the_registry():
    from harness.bench.kernel_audit.workloads import OP_WORKLOADS, WORKLOADS

    assert OP_WORKLOADS == {"sinkhorn-op": op_spec("sinkhorn")}
    assert WORKLOADS[-1] == "sinkhorn-op"


def test_meta_inputs_have_the_shapes_and_dtypes_without_data():
    """The audit builds ops on their benchmark inputs at 16k x 4096: on meta nothing is allocated."""
    for name in BUILT_IN:
        spec = op_spec(name)
        real = spec.make_inputs(SHAPE, torch.bfloat16, torch.device("cpu"), 0)
        meta = spec.make_inputs(SHAPE, torch.bfloat16, torch.device("meta"), 0)
        assert list(real) == list(meta), name
        for k in real:
            assert meta[k].is_meta and meta[k].requires_grad, (name, k)
            assert (meta[k].shape, meta[k].dtype) == (real[k].shape, real[k].dtype), (name, k)
