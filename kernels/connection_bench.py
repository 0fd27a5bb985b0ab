"""`bench kernels`' connection: the whole mHC connection around an identity branch, composed of
the registered coefficients, premix and post_res ops (kernels/coefficients_bench.py, ...).

A registered composite rather than a special case of the benchmark: it has no kernel of its own,
but it is the unit the peers (Liger-Kernel, hyper-connections) are compared on, so it takes the
same path through `bench kernels` as every op, with its parts' inputs (the coefficients' ones:
the stream and mHC's parameters) and the sum of its parts' bytes. The branch F is the identity
(y = F(h) = h), so only the connection's own traffic is timed. Not built stand-alone by the
compile gate: the variants' workloads launch exactly these kernels.
"""

from __future__ import annotations

from kernels import coefficients_bench, post_res_bench, premix_bench
from kernels.post_res import post_res
from kernels.premix import premix
from kernels.registry import OpOptions, OpSpec, Shape, register

PARTS = (coefficients_bench.SPEC, premix_bench.SPEC, post_res_bench.SPEC)


def fwd_bytes(s: Shape, elem: int) -> int:
    return sum(part.fwd_bytes(s, elem) for part in PARTS)


def bwd_bytes(s: Shape, elem: int) -> int:
    return sum(part.bwd_bytes(s, elem) for part in PARTS)


def build(backend: str, options: OpOptions):
    coefficients = coefficients_bench.SPEC.build(backend, options)

    def connection(x, **params):
        pre, post, res = coefficients(x, **params)
        h = premix(x, pre, backend)
        return (post_res(x, h, post, res, backend),)  # identity branch: y = F(h) = h

    return connection


SPEC = register(OpSpec("connection", coefficients_bench.make_inputs, fwd_bytes, bwd_bytes, build, order=50))
