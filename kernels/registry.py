"""The benchmark specs of the kernels, one per op, registered by the files beside the ops.

Liger-Kernel's pairing of op, test and benchmark: what `mhc-bench bench kernels` and the kernel
compile audit need to know about an op (the inputs it is timed on, the bytes it must move, how
to get its callable for a backend) lives beside the op, in `kernels/<op>_bench.py`, as one
`OpSpec` passed to `register`. The benchmark and the audit iterate this registry instead of
lists of their own, so a new kernel is its op file (+ `_triton.py`) and its `_bench.py`: no
other file changes. The `_bench.py` files are found by their name on the first lookup, as the
`_triton.py` and `_cpu.cpp` files are by theirs; a test may register an op of its own.

Nothing here imports harness or variants (the bottom layer): what the ops need from above
(RMSNorm's eps, the Sinkhorn rounds, the projection's precision) comes in `OpOptions`.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import torch

import kernels
from kernels.errors import UserError

MODES = ("fwd", "fwd+bwd")  # what `bytes_moved` counts: the forward, or the forward and all input gradients
COEF_BYTES = 4  # coefficients (H_pre, H_post, H_res, φ, α, b) are fp32 whatever the stream dtype


@dataclass(frozen=True)
class Shape:
    """A benchmark case: tokens x C channels x n streams (written TOKENSxCxN)."""

    tokens: int
    C: int
    n: int

    def __str__(self) -> str:
        return f"{self.tokens}x{self.C}x{self.n}"


@dataclass(frozen=True)
class OpOptions:
    """The settings an op's callable may read: Sinkhorn rounds, the projection's dot precision
    (kernels/project.py PRECISIONS) and RMSNorm's eps (the variants' NORM_EPS, passed down)."""

    sk_iters: int
    precision: str
    norm_eps: float


@dataclass(frozen=True)
class OpSpec:
    """One op as the benchmark and the audit see it.

    make_inputs(shape, dtype, device, seed) -> {name: tensor}: fresh leaves that take gradients,
        the stream tensors in `dtype`, the coefficients fp32 (kernels/bench_inputs.py draws them;
        on the meta device only shapes, for the compile audit).
    fwd_bytes / bwd_bytes(shape, elem) -> int: what the forward / the backward must move, each
        input read once and each output written once (the paper's I/O counting); elem = bytes
        per stream element.
    build(backend, options) -> fn(**inputs) -> tuple of outputs: the op on `backend`.
    backends: the backends `build` takes ("torch" = the PyTorch reference path, "triton").
    audit: the compile gate builds it stand-alone as workload '<name>-op' (for an op no
        variant launches by itself; the variants' workloads cover the rest).
    order: its place in the op list (the table's row order); ties keep registration order.
    """

    name: str
    make_inputs: Callable[..., dict[str, torch.Tensor]]
    fwd_bytes: Callable[[Shape, int], int]
    bwd_bytes: Callable[[Shape, int], int]
    build: Callable[[str, OpOptions], Callable[..., tuple]]
    backends: tuple[str, ...] = ("torch", "triton")
    audit: bool = False
    order: int = 100

    def __post_init__(self):
        if self.audit and "triton" not in self.backends:
            raise ValueError(f"op {self.name!r}: the compile audit builds Triton kernels, but its backends are {self.backends}")

    def bytes_moved(self, mode: str, shape: Shape, elem: int) -> int:
        """Bytes one call must move in `mode` (MODES): the forward, plus the backward for fwd+bwd."""
        total = self.fwd_bytes(shape, elem)
        if mode == "fwd+bwd":
            total += self.bwd_bytes(shape, elem)
        return total


_SPECS: dict[str, OpSpec] = {}
_discovered = False


def register(spec: OpSpec) -> OpSpec:
    """Add `spec` (a `_bench.py` file does this at import); returns it, so a module can keep it."""
    if spec.name in _SPECS:
        raise ValueError(f"kernel op {spec.name!r} is registered twice")
    _SPECS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove an op again (a test's own op, when the test ends)."""
    del _SPECS[name]


def _discover() -> None:
    """Import every kernels/*_bench.py once: each registers its op."""
    global _discovered
    if _discovered:
        return
    _discovered = True

    for module in sorted(m.name for m in pkgutil.iter_modules(kernels.__path__) if m.name.endswith("_bench")):
        importlib.import_module(f"kernels.{module}")


def specs() -> list[OpSpec]:
    """Every registered op, in list order."""
    _discover()
    return sorted(_SPECS.values(), key=lambda s: s.order)  # stable: ties stay in registration order


def op_names() -> tuple[str, ...]:
    return tuple(s.name for s in specs())


def op_spec(name: str) -> OpSpec:
    """The spec of op `name`; an unknown name is a one-line error naming the ops there are."""
    _discover()
    if name not in _SPECS:
        raise UserError(f"unknown kernel op {name!r}; choose from {', '.join(op_names())}")
    return _SPECS[name]
