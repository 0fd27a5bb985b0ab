"""`mhc-bench bench kernels`: its command line (harness/cli.py adds it to the `bench` group).

    mhc-bench bench kernels                                   # GPU: all ops, shapes, providers, bf16
    mhc-bench bench kernels --quick                           # CPU smoke run (seconds)
    mhc-bench bench kernels --ops connection --shapes 16384x4096x4 --providers torch,triton,liger
    mhc-bench bench kernels --static                          # no GPU: build for sm_90a/sm_100a, report
                                                              # registers, spills, occupancy, widths, bounds

Timing runs harness/bench/kernels.py; --static runs harness/bench/kernel_audit/static.py.
"""

from __future__ import annotations

from harness.bench.kernel_audit.static import main as static_main
from harness.bench.kernels import GPU_SHAPES, MODES, PROVIDERS, main
from kernels.registry import op_names


def register(sub) -> None:
    """Add `kernels` to the `bench` sub-command group (an argparse subparsers object). The op list
    is the kernel registry's when the parser is built (kernels/registry.py)."""
    p = sub.add_parser("kernels", help="time each stream kernel (pre-mix, post+res, Sinkhorn, coefficients, whole "
                                       "connection) per shape and provider against the measured copy bandwidth")
    p.add_argument("--ops", default="", help=f"comma-separated subset of {', '.join(op_names())} (default: all)")
    p.add_argument("--providers", default="",
                   help=f"comma-separated subset of {', '.join(PROVIDERS)} (default: all; --quick leaves out compile)")
    p.add_argument("--modes", default="", help=f"comma-separated subset of {', '.join(MODES)} (default: both)")
    p.add_argument("--shapes", default="",
                   help=f"comma-separated TOKENSxCxN (default on CUDA: {GPU_SHAPES}; smaller on a CPU)")
    p.add_argument("--dtype", default="auto", help="stream dtype: auto (bf16 on CUDA, fp32 on a CPU), fp32, bf16, fp16")
    p.add_argument("--sk-iters", type=int, default=20, help="Sinkhorn rounds (default 20, the paper's t_max)")
    p.add_argument("--precision", default="tf32",
                   help="the projection kernel's dots: tf32 (default, tensor cores, as the variants and the paper; Liger's "
                        "fp32-phi path is tf32 too), tf32x3, ieee")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quick", action="store_true", help="CPU smoke run: tiny shapes, few repetitions, no torch.compile")
    p.add_argument("--triton-interpreter", action="store_true",
                   help="on a CPU, run the triton provider in Triton's interpreter (a correctness smoke test, not a timing)")
    p.add_argument("--runs-dir", default="runs", help="the table goes to RUNS_DIR/bench/ (default runs)")
    p.add_argument("--out", default="", help="explicit output Parquet path (--static: its Markdown page goes beside it)")
    p.add_argument("--static", action="store_true",
                   help="no timing: build every kernel with Triton's real compiler for --arch on this machine (no GPU "
                        "needed) and report registers, spills, occupancy, access widths and bandwidth bounds "
                        "(harness/kernel_audit)")
    p.add_argument("--arch", default="", help="--static targets: sm_90a (H100/H200), sm_100a (B200); default both")
    p.set_defaults(func=_main)


def _main(args) -> int:
    if args.static:
        return static_main(args)

    return main(args)
