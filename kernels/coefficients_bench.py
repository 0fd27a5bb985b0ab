"""`bench kernels`' coefficients: RMSNorm(x⃗)φ (kernels/project.py), then α, b, σ, 2σ and Sinkhorn
(kernels/coefficients.py) -> H_pre, H_post, H_res. Inputs, bytes moved, callable.

Per token the forward reads the n·C stream and writes the W = n² + 2n coefficients, and reads
φ (n·C x W, fp32) once; the backward reads the stream and the W upstream gradients and writes
dx, and reads φ and writes dφ. mHC's parameters are drawn at a trained-looking scale: φ at
1/√(nC), α ~ N(0.5, 0.1²), b ~ N(0, 1) (H_res's N(0, 2²)); harness/bench/tf32_accuracy.py
measures the tf32 projection's error on these same inputs.
"""

from __future__ import annotations

import math

from kernels.bench_inputs import Draw
from kernels.coefficients import MAPPINGS, coefficient_heads
from kernels.project import project
from kernels.registry import COEF_BYTES, OpOptions, OpSpec, Shape, register


def make_inputs(shape: Shape, dtype, device, seed: int = 0) -> dict:
    d = Draw(seed, device)
    T, C, n = shape.tokens, shape.C, shape.n
    alpha = lambda: d.normal(1, scale=0.1, shift=0.5).view(())  # noqa: E731
    return dict(x=d.normal(T, n, C, dtype=dtype), phi=d.normal(n * C, width(n), scale=1 / math.sqrt(n * C)),
                alpha_pre=alpha(), alpha_post=alpha(), alpha_res=alpha(),
                bias_pre=d.normal(n), bias_post=d.normal(n), bias_res=d.normal(n, n, scale=2.0))


def width(n: int) -> int:
    """W: the projection's columns, H_pre (n), H_post (n) and H_res (n²) logits side by side."""
    return n * n + 2 * n


def fwd_bytes(s: Shape, elem: int) -> int:
    W = width(s.n)
    return s.tokens * (s.n * s.C * elem + W * COEF_BYTES) + s.n * s.C * W * COEF_BYTES


def bwd_bytes(s: Shape, elem: int) -> int:
    W = width(s.n)
    return s.tokens * (2 * s.n * s.C * elem + W * COEF_BYTES) + 2 * s.n * s.C * W * COEF_BYTES


def build(backend: str, options: OpOptions):
    def coefficients(x, phi, alpha_pre, alpha_post, alpha_res, bias_pre, bias_post, bias_res):
        n = x.shape[-2]
        mix = project(x.flatten(-2), phi, options.norm_eps, backend, options.precision)
        pre, post, res, _ = coefficient_heads(mix, [alpha_pre, alpha_post, alpha_res], [bias_pre, bias_post, bias_res],
                                              n=n, learned=MAPPINGS, sk_iters=options.sk_iters, backend=backend)
        return pre, post, res

    return coefficients


SPEC = register(OpSpec("coefficients", make_inputs, fwd_bytes, bwd_bytes, build, order=40))
