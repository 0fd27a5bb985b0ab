"""Build every kernel for one GPU target through the variants, and record each launch.

    python -m harness.bench.kernel_audit.audit --arch sm_90a [--shapes 16384x4096x4,...] [--dtypes bf16,fp32]
                                         [--workloads mhc,hc,...] [--json FILE]

Prints a line per case and one summary line; exit status 1 when a kernel failed to build or
spills registers (the gate), 0 otherwise. Must run in a process of its own without
TRITON_INTERPRET: it replaces Triton's active driver (harness/bench/kernel_audit/driver.py) and the
kernel modules must be compiled, not interpreted.

Shapes are TOKENSxCxN, as `mhc-bench bench kernels --shapes` takes them: by default the gate's, the mHC paper's
hidden sizes at n = 4 (16384 x 4096; 4096 tokens of 7168), n = 8 at C = 1024, and n = 2 at
GPT-2 small's 768 with 1024 tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

from harness.bench.kernel_audit.gpus import GPUS
from harness.bench.kernel_audit.workloads import (
    DTYPES,
    PEERS,
    WORKLOADS,
    NotCovered,
    run,
)
from harness.bench.kernels import parse_shapes as parse
from harness.core.atomic import write_json
from kernels.backend import _first_line, compile_only

GATE_SHAPES = "16384x4096x4,4096x7168x4,8192x1024x8,1024x768x2"  # TOKENSxCxN


def parse_shapes(text: str) -> list[tuple[int, int, int]]:
    """(T, n, C) triples from the TOKENSxCxN list `bench kernels --shapes` reads (one parser, one format)."""
    return [(s.tokens, s.n, s.C) for s in parse(text)]


def audit(arch: str, shapes, dtypes, workloads, log=print) -> dict:
    """Compile and record every (workload, shape, dtype) for `arch`: {records, failures, not_covered, seconds}."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("the compile audit needs the real compiler: unset TRITON_INTERPRET")
    import triton

    from harness.bench.kernel_audit.driver import FakeDriver

    gpu = GPUS[arch]
    driver = FakeDriver(gpu)
    triton.runtime.driver.set_active(driver)
    failures, not_covered = [], []
    start = time.perf_counter()
    with compile_only(gpu.sms):
        for T, n, C in shapes:
            for dtype in dtypes:
                for workload in workloads:
                    case = dict(arch=arch, workload=workload, T=T, n=n, C=C, dtype=dtype)
                    driver.context = case
                    before, t0 = len(driver.launches), time.perf_counter()
                    try:
                        run(workload, T, n, C, dtype)
                        status = f"{len(driver.launches) - before} launches"
                    except NotCovered as e:
                        not_covered.append(dict(case, reason=str(e)))
                        status = "not covered"
                    except Exception as e:  # a compile error, OutOfResources, a launcher bug
                        failures.append(dict(case, error=_cause(e), traceback=traceback.format_exc()))
                        status = f"FAILED: {_cause(e)}"
                    log(f"  {arch} {workload:18s} {T}x{C}x{n} {dtype}: {status} ({time.perf_counter() - t0:.1f} s)")
    records = [record(launch) for launch in driver.launches]
    return dict(records=records, failures=failures, not_covered=not_covered, seconds=time.perf_counter() - start)


def _cause(e: BaseException) -> str:
    return _first_line(e)


def record(launch) -> dict:
    """One launch as plain data: the case, launch configuration, binary and memory-op facts."""
    import torch

    from harness.bench.kernel_audit.binary import inspect_ptx

    b = launch.binary
    tensors, seen = {}, {}
    for name, v in launch.args.items():
        if isinstance(v, torch.Tensor):
            alias = seen.setdefault(id(v), name)  # a dummy pointer passed for a fixed mapping aliases another argument
            tensors[name.removesuffix("_ptr")] = dict(shape=list(v.shape), elem=v.element_size(),
                                                      dtype=str(v.dtype).removeprefix("torch."),
                                                      alias_of=None if alias == name else alias.removesuffix("_ptr"))
    mem = inspect_ptx(launch.ptx)
    return dict(
        **launch.context, kernel=launch.kernel, grid=list(launch.grid), programs=launch.grid[0] * launch.grid[1] * launch.grid[2],
        num_warps=launch.num_warps, num_stages=launch.num_stages, regs=b.regs, spill_bytes=b.spill_bytes,
        spill_ops=b.spill_ops, smem=launch.shared + b.static_shared, mma_ops=b.mma_ops, sass=b.sass,
        tensor_core=mem.tensor_core, memory=mem.per_tensor, memory_order=mem.order, loads_after_stores=mem.loads_after_stores,
        load_bytes_before_first_store=mem.load_bytes_before_first_store, cp_async_bytes=mem.cp_async_bytes,
        tensors=tensors, constexprs={k: v for k, v in launch.args.items() if k.isupper() and not isinstance(v, torch.Tensor)},
        hash=launch.hash[:12])


def summary(result: dict) -> tuple[bool, str]:
    """(passed, one line): the gate fails on any build failure or any spilling launch."""
    records, failures = result["records"], result["failures"]
    spills = sorted({f"{r['kernel']} {r['T']}x{r['C']}x{r['n']} {r['dtype']}" for r in records
                     if r["spill_bytes"] or r["spill_ops"]})
    binaries = len({r["hash"] for r in records})
    archs = ",".join(sorted({r["arch"] for r in records} | {f["arch"] for f in failures}))
    problems = [f"{f['workload']} {f['T']}x{f['C']}x{f['n']} {f['dtype']}: {f['error']}" for f in failures]
    problems += [f"{s} spills" for s in spills]
    ok = not problems
    line = (f"kernel compile gate {archs}: {'OK' if ok else 'FAIL'}: {len(records)} launches, {binaries} distinct binaries, "
            f"{len(failures)} failed builds, {len(spills)} spilling kernels, {len(result['not_covered'])} cases not covered, "
            f"{result['seconds']:.0f} s" + ("" if ok else "; " + "; ".join(problems[:6])))
    return ok, line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench.kernel_audit.audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sm_90a", choices=sorted(GPUS))
    p.add_argument("--shapes", default=GATE_SHAPES, help="comma-separated TOKENSxCxN (default: the gate's)")
    p.add_argument("--dtypes", default=",".join(DTYPES), help="stream dtypes: bf16, fp32 (an fp32 stream with a bf16 branch)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"subset of {', '.join(WORKLOADS + PEERS)}, or MODULE:FUNCTION(T, n, C, dtype) of your own")
    p.add_argument("--json", help="write records, failures and uncovered cases here")
    p.add_argument("--quiet", action="store_true", help="only the summary line")
    args = p.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    for w in workloads:
        if w not in WORKLOADS + PEERS and ":" not in w:
            p.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS + PEERS)}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    for d in dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {', '.join(DTYPES)}")
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr))
    result = audit(args.arch, parse_shapes(args.shapes), dtypes, workloads, log=log)
    if args.json:
        write_json(args.json, result)
    ok, line = summary(result)
    print(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
