"""`mhc-bench bench kernels --static`: the static performance report, from the command line.

    mhc-bench bench kernels --static [--arch sm_90a,sm_100a] [--shapes TOKENSxCxN,...] [--dtype bf16]
                                     [--providers triton,liger] [--out FILE.parquet]

Builds every kernel for each target (harness/bench/kernel_audit/audit.py, one process per target),
then writes the long table (Parquet) and a Markdown page beside it (same name, .md), and
prints the targets section. Shapes follow `bench kernels` (tokens x C x n). `--providers
triton,liger` adds Liger-Kernel's mHC kernels side by side (about 5 minutes of compiling per
shape and dtype on 2 cores, so not by default). Exit status 1 when one of our kernels failed to
build or spills (Liger's kernels are reported, not gated).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness.bench import tf32_accuracy as precision
from harness.bench.kernel_audit.audit import GATE_SHAPES, summary
from harness.bench.kernel_audit.gpus import GPUS
from harness.bench.kernel_audit.report import long_table, markdown
from harness.bench.kernel_audit.run import audit_targets
from harness.bench.kernel_audit.workloads import DTYPES, PEERS, WORKLOADS
from harness.bench.kernels import parse_shapes
from harness.core.atomic import write_parquet, write_text
from harness.core.errors import UserError
from harness.core.rundir import git_info, now

DEFAULT_ARCHS = "sm_90a,sm_100a"


def main(args) -> int:
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    archs = split(args.arch or DEFAULT_ARCHS)
    for a in archs:
        if a not in GPUS:
            raise UserError(f"--arch: unknown target {a!r}; choose from {', '.join(GPUS)}")
    dtypes = ",".join(DTYPES) if args.dtype == "auto" else args.dtype
    for d in split(dtypes):
        if d not in DTYPES:
            raise UserError(f"--dtype with --static: choose from auto, {', '.join(DTYPES)}; got {d!r}")
    shapes = ",".join(str(s) for s in parse_shapes(args.shapes)) if args.shapes else GATE_SHAPES
    providers = split(args.providers) if args.providers else ["triton"]  # liger: ~5 min of compiling per shape
    for p in providers:
        if p not in ("triton", "liger"):
            raise UserError(f"--providers with --static: choose from triton, liger; got {p!r}")
    workloads = (list(WORKLOADS) if "triton" in providers else []) + [p for p in PEERS if p in providers]

    print(f"building {len(workloads)} workloads x {len(shapes.split(','))} shapes x {len(split(dtypes))} dtypes "
          f"for {', '.join(archs)} ...", file=sys.stderr)
    runs = audit_targets(archs, shapes, dtypes, ",".join(workloads))
    records, failures, not_covered, ok = [], [], [], True
    for arch, run in runs.items():
        if run["result"] is None:
            raise UserError(f"the compile audit for {arch} did not finish: {run['stderr'].strip().splitlines()[-1:]}")
        records += run["result"]["records"]
        failures += run["result"]["failures"]
        not_covered += run["result"]["not_covered"]
        ours = {k: [r for r in run["result"][k] if r["workload"] not in PEERS] for k in ("records", "failures")}
        passed, line = summary(dict(run["result"], **ours))
        ok &= passed
        print(line)
    versions = _versions()
    command = "mhc-bench bench kernels --static " + " ".join(a for a in sys.argv[sys.argv.index("--static") + 1:]) \
        if "--static" in sys.argv else "mhc-bench bench kernels --static"
    out = Path(args.out) if args.out else Path(args.runs_dir) / "bench" / f"kernels-static-{now().replace(':', '')}.parquet"
    write_parquet(out, long_table(records, versions))
    page = markdown(records, failures, not_covered, command.strip(), versions) + "\n" + _accuracy_section(shapes)
    write_text(out.with_suffix(".md"), page)
    print(page[page.index("## Targets"):] if "## Targets" in page else "")
    print(f"table: {out}\nreport: {out.with_suffix('.md')}")
    return 0 if ok else 1


def _accuracy_section(shapes: str) -> str:
    """The tf32 projection against fp64 at the report's (n, C), emulated bit for bit on the CPU."""
    nc = list(dict.fromkeys((s.n, s.C) for s in parse_shapes(shapes)))
    return ("## x·φ on tf32 tensor cores: accuracy against fp64\n\n"
            "Emulated on the CPU bit for bit (kernels/precision.py, harness/bench/tf32_accuracy.py: φ rounded to nearest tf32 by the op, an fp32 "
            "stream truncated by the tensor core, a bf16 stream exact), 256 random tokens, α and b at the "
            "trained-looking scale `bench kernels` uses; measured on a GPU by `make gpu-check`.\n\n"
            + precision.markdown(precision.table(nc)) + "\n")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version


    out = {}
    for dist in ("torch", "triton", "liger-kernel"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    out["git_commit"] = git_info().get("git_commit") or "unknown"
    return out
