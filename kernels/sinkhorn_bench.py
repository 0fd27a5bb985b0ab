"""`bench kernels`' stand-alone Sinkhorn (kernels/sinkhorn.py, 'paper' mode): inputs, bytes, callable.

Per token the forward reads n² fp32 logits and writes n²; the backward reads the logits and
the upstream gradient and writes dL (it recomputes the rounds on-chip). No variant launches this
op by itself (the coefficient kernel fuses the same device code), so the compile gate builds it
stand-alone: workload 'sinkhorn-op'.
"""

from __future__ import annotations

from kernels.bench_inputs import Draw
from kernels.registry import COEF_BYTES, OpOptions, OpSpec, Shape, register
from kernels.sinkhorn import sinkhorn


def make_inputs(shape: Shape, dtype, device, seed: int = 0) -> dict:
    """N(0, 2²) logits, fp32 whatever the stream dtype (Sinkhorn runs on the coefficients, not the stream)."""
    return dict(logits=Draw(seed, device).normal(shape.tokens, shape.n, shape.n, scale=2.0))


def fwd_bytes(s: Shape, elem: int) -> int:
    return s.tokens * 2 * s.n * s.n * COEF_BYTES


def bwd_bytes(s: Shape, elem: int) -> int:
    return s.tokens * 3 * s.n * s.n * COEF_BYTES


def build(backend: str, options: OpOptions):
    return lambda logits: (sinkhorn(logits, options.sk_iters, "paper", backend),)


SPEC = register(OpSpec("sinkhorn", make_inputs, fwd_bytes, bwd_bytes, build, audit=True, order=30))
