"""`bench kernels`' post + residual merge (kernels/post_res.py): inputs, bytes moved, callable.

Per token the forward reads the n·C stream, the branch output y (C), H_post (n) and H_res (n²)
and writes n·C; the backward reads g, the stream and y again and writes dx and dy, and reads and
writes the coefficients' sums. H_post is drawn in [0, 2) as 2σ gives it, H_res in [0, 1).
"""

from __future__ import annotations

from kernels.bench_inputs import Draw
from kernels.post_res import post_res
from kernels.registry import COEF_BYTES, OpOptions, OpSpec, Shape, register


def make_inputs(shape: Shape, dtype, device, seed: int = 0) -> dict:
    d = Draw(seed, device)
    T, C, n = shape.tokens, shape.C, shape.n
    return dict(x=d.normal(T, n, C, dtype=dtype), y=d.normal(T, C, dtype=dtype),
                h_post=d.uniform(T, n, scale=2.0), h_res=d.uniform(T, n, n))


def fwd_bytes(s: Shape, elem: int) -> int:
    return s.tokens * ((s.n + 1) * s.C * elem + (s.n + s.n * s.n) * COEF_BYTES + s.n * s.C * elem)


def bwd_bytes(s: Shape, elem: int) -> int:
    return s.tokens * (3 * s.n * s.C * elem + 2 * s.C * elem + 2 * (s.n + s.n * s.n) * COEF_BYTES)


def build(backend: str, options: OpOptions):
    return lambda x, y, h_post, h_res: (post_res(x, y, h_post, h_res, backend),)


SPEC = register(OpSpec("post_res", make_inputs, fwd_bytes, bwd_bytes, build, order=20))
