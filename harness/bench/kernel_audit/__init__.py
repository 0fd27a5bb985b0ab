"""Compile gate and static performance report of the Triton kernels, on a machine without a GPU.

The CPU interpreter (TRITON_INTERPRET=1) runs the kernels for the correctness tests but accepts
code Triton's real compiler refuses, and says nothing about registers, spills or bandwidth.
This package builds every kernel for real GPU targets (sm_90a: H100/H200, sm_100a: B200) with
Triton's own compiler and the ptxas / cuobjdump that ship in the triton wheel, through the
variants and public ops exactly as a training step calls them, and inspects the binaries.

    gpus.py        the targets: compute capability and the per-SM limits occupancy needs
    driver.py      a Triton driver for a GPU that is not there: compiles, records launches
    binary.py      what a compiled kernel is: registers, spills, SASS opcodes, PTX memory ops
    workloads.py   the variant kinds and the registry's stand-alone ops, forward + backward, on meta tensors
    audit.py       runs the workloads for one target: one record per launch (+ CLI, the gate)
    report.py      occupancy, waves, bytes, vector widths, bandwidth bound; Parquet + Markdown

The gate (tests/test_kernel_compile.py, in CI) runs `python -m harness.bench.kernel_audit.audit`
in a subprocess per target: the fake driver replaces Triton's active driver for the whole
process, and the kernel modules must be imported without the interpreter.
"""
