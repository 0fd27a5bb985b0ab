"""Fused Triton kernels and CPU kernels for the stream maths of multi-stream residuals, each beside its reference.

One file per op holds the PyTorch reference, the autograd wrappers around the kernels and the
one public function with a `backend` switch (torch | triton | auto, see backend.py); the
@triton.jit code sits in <op>_triton.py, imported only when a kernel is first launched, and the
C++ of the CPU kernels in <op>_cpu.cpp, built on first use by cpu_build.py (train.cpu_kernels).

    premix.py        premix(x, h_pre)                   h = Σ_i H_pre[i] x_i            (mHC §3.2 kernel 4)
    post_res.py      post_res(x, y, h_post, h_res)      x' = H_res x + H_post^T y      (kernel 5)
    project.py       project(x, phi, eps)               RMSNorm(x) φ, GEMM + Σx² fused (kernel 1)
    coefficients.py  coefficient_heads(mix, α, b, ...)  α, b, σ, 2σ, Sinkhorn / perm   (kernels 2 + 3)
    sinkhorn.py      sinkhorn(logits, k, mode)          Sinkhorn alone (same device code)
    orthostochastic.py orthostochastic(L, steps)        O ⊙ O, O Newton-Schulz polar factor (CPU kernel only)
    precision.py     tf32 as the tensor cores read it (emulated), its error bound

Beside each op its benchmark spec, <op>_bench.py (Liger-Kernel's op / test / benchmark pairing):
the inputs it is timed on, the bytes it must move and its callable per backend, registered in
registry.py (bench_inputs.py draws the inputs). connection_bench.py composes the whole mHC
connection from the registered coefficients, premix and post_res ops.

The tests (tests/test_kernels*.py) and the benchmark (harness/bench/kernels.py, `mhc-bench bench
kernels`, which with the kernel compile audit iterates the registry) import the same references.
Nothing here imports from variants/ or harness/: this is the bottom layer (pyproject.toml's
import-linter contract).
"""
