"""`bench kernels`' premix (kernels/premix.py): its inputs, the bytes it must move, its callable.

Per token the forward reads the n·C stream and the n fp32 weights and writes C; the backward
reads dh (C) and the stream again and writes dx (n·C), and reads and writes the n weight sums.
"""

from __future__ import annotations

from kernels.bench_inputs import Draw
from kernels.premix import premix
from kernels.registry import COEF_BYTES, OpOptions, OpSpec, Shape, register


def make_inputs(shape: Shape, dtype, device, seed: int = 0) -> dict:
    d = Draw(seed, device)
    return dict(x=d.normal(shape.tokens, shape.n, shape.C, dtype=dtype), h_pre=d.uniform(shape.tokens, shape.n))


def fwd_bytes(s: Shape, elem: int) -> int:
    return s.tokens * (s.n * s.C * elem + s.n * COEF_BYTES + s.C * elem)


def bwd_bytes(s: Shape, elem: int) -> int:
    return s.tokens * (s.C * elem + 2 * s.n * s.C * elem + 2 * s.n * COEF_BYTES)


def build(backend: str, options: OpOptions):
    return lambda x, h_pre: (premix(x, h_pre, backend),)


SPEC = register(OpSpec("premix", make_inputs, fwd_bytes, bwd_bytes, build, order=10))
