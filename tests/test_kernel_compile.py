"""The compile gate: every Triton kernel builds for sm_90a (H100/H200) and sm_100a (B200) with
Triton's real compiler, forward and backward, and nothing spills registers.

No GPU needed: harness/kernel_audit installs a fake Triton driver that compiles with the
ptxas of the triton wheel and records launches; the variants run on meta tensors. The
interpreter the other kernel tests use accepts code the compiler refuses (a module global
annotated `tl.constexpr`, e.g.), so this gate is the only test that says the GPU path builds.
Shapes TOKENSxCxN: 16384x4096x4 and 4096x7168x4 (the mHC paper's widths), 8192x1024x8,
1024x768x2; bf16 and fp32 streams; every variant kind (mHC, mHC with the kernel-order
Sinkhorn, mHC-lite, HC, fixed-mapping ablations) and the stand-alone Sinkhorn op.

About 2 minutes on 2 cores (the two targets compile in parallel processes).
"""

import pytest

pytest.importorskip("triton")

from harness.bench.kernel_audit.audit import GATE_SHAPES  # noqa: E402
from harness.bench.kernel_audit.run import audit_targets  # noqa: E402
from harness.bench.kernel_audit.workloads import DTYPES, VARIANT_KINDS, WORKLOADS  # noqa: E402

ARCHS = ("sm_90a", "sm_100a")


@pytest.fixture(scope="module")
def gate():
    return audit_targets(ARCHS, GATE_SHAPES, ",".join(DTYPES), ",".join(WORKLOADS))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_without_spills(gate, arch):
    run = gate[arch]
    print(run["summary"])
    assert run["result"] is not None, f"the audit for {arch} did not finish:\n{run['stderr'][-3000:]}"
    failures = run["result"]["failures"]
    assert not failures, "\n".join(f"{f['workload']} {f['T']}x{f['n']}x{f['C']} {f['dtype']}: {f['traceback']}"
                                   for f in failures[:2])
    spills = {(r["kernel"], r["T"], r["n"], r["C"], r["dtype"], r["spill_bytes"], r["spill_ops"])
              for r in run["result"]["records"] if r["spill_bytes"] or r["spill_ops"]}
    assert not spills, f"register spills (kernel, T, n, C, dtype, local bytes, LDL/STL): {sorted(spills)}"
    assert run["returncode"] == 0, run["summary"]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_gate_saw_every_kernel_forward_and_backward(gate, arch):
    """A gate that compiled nothing would pass: check each kernel of each op was really built."""
    records = gate[arch]["result"]["records"]
    kernels = {r["kernel"] for r in records}
    expected = {f"_{op}_{d}" for op in ("project", "heads", "premix", "post_res", "sinkhorn") for d in ("fwd", "bwd")}
    assert expected <= kernels, f"never compiled: {sorted(expected - kernels)}"
    cases = {(r["workload"], r["T"], r["n"], r["C"], r["dtype"]) for r in records}
    for workload in (*VARIANT_KINDS, "sinkhorn-op"):
        for shape in GATE_SHAPES.split(","):
            T, C, n = (int(v) for v in shape.split("x"))
            if workload == "mhc-lite" and n > 5:  # the variant refuses backend=triton there (n! columns)
                continue
            for dtype in DTYPES:
                assert (workload, T, n, C, dtype) in cases, f"{workload} {shape} {dtype} launched nothing"
    assert all(r["programs"] > 0 and r["regs"] > 0 for r in records)


def test_uncovered_cases_are_named_with_the_reason(gate):
    """mHC-lite at n = 8 (8! = 40320 permutations) has no kernel: the gate says so instead of failing."""
    uncovered = gate["sm_90a"]["result"]["not_covered"]
    assert {(c["workload"], c["n"]) for c in uncovered} == {("mhc-lite", 8)}
    assert all("n <= 5" in c["reason"] for c in uncovered)


def test_the_gate_fails_on_a_compile_error_and_on_a_spill():
    """The gate is not vacuous: a constexpr-annotated global and a register hog are both caught."""
    broken = "tests.audit_fixtures.broken_kernels"
    run = audit_targets(["sm_90a"], "64x64x4", "bf16", f"{broken}:annotated_global,{broken}:register_hog")["sm_90a"]
    assert run["returncode"] == 1 and "FAIL" in run["summary"], run["summary"]
    (failure,) = run["result"]["failures"]
    assert "annotated_global" in failure["workload"] and "SCALE" in failure["error"]
    (hog,) = run["result"]["records"]
    assert hog["kernel"] == "_register_hog" and hog["spill_bytes"] > 0 and hog["spill_ops"] > 0
    assert "_register_hog 64x64x4 bf16 spills" in run["summary"]
