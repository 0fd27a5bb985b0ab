"""The work the gate compiles: every variant kind's residual connection, forward and backward,
and the stand-alone ops no variant launches by itself.

Each variant workload builds one residual connection the way the model does (the variant registry,
`variant.backend=triton`), moves it to the meta device and runs `residual(x, F)` with F = the
identity cast to the branch dtype, then the gradients of x and of every parameter for a
(meta) upstream gradient. So the kernels are specialised and launched through the same
variant code, public ops, autograd wrappers and launchers (with their own tile and warp
choices) as in a training step; only the data is absent.

Each op workload '<op>-op' is an op of the kernel registry whose spec asks for it (`audit`, in
kernels/<op>_bench.py: today the Sinkhorn op), run on its own benchmark inputs on the meta
device, as `bench kernels` times it: a new stand-alone kernel is gated from its own files.

Stream dtypes: `bf16` (x and F's output bf16, as `bench kernels`) and `fp32` (an fp32 stream
with a bf16 branch output, as the model under bf16 autocast).
"""

from __future__ import annotations

import torch

from harness.bench.kernel_providers import Skip, liger_ops
from harness.core.errors import UserError
from kernels.project import PRECISIONS
from kernels.registry import OpOptions, OpSpec, Shape, op_spec, specs
from variants.hc import NORM_EPS
from variants.registry import (
    VariantConfig,
    build_variant,
    get_variant_class,
    variant_names,
)

DTYPES = {"bf16": (torch.bfloat16, torch.bfloat16), "fp32": (torch.float32, torch.bfloat16)}


def _registered() -> dict[str, dict]:
    """Every registered variant with Triton kernels and `audit` (its class says), at its defaults:
    mhc (RMSNorm(x⃗)φ, σ / 2σ heads, Sinkhorn k = 20), mhc-lite (softmax over the n! permutations),
    hc (per-stream projection, tanh in PyTorch), kromhc and orthostochastic (mHC's projection, their
    H_res map in PyTorch), and any variant registered since."""
    return {n: dict(name=n) for n in variant_names()
            if get_variant_class(n).audit and "triton" in get_variant_class(n).backends}


# name -> variant options: every registered variant, then the other kinds of coefficient maths and ablations
VARIANT_KINDS = {
    **_registered(),
    "mhc-sk-kernel": dict(name="mhc", sk_mode="kernel"),  # the other Sinkhorn convention
    "mhc-ieee": dict(name="mhc", precision="ieee"),  # the projection on fp32 FMA units instead of tensor cores
    "mhc-tf32x3": dict(name="mhc", precision="tf32x3"),  # three tf32 products: ~fp32 accuracy on tensor cores
    "hc-ieee": dict(name="hc", precision="ieee"),
    "mhc-fixed-res": dict(name="mhc", fixed="res"),  # H_res = I: heads without Sinkhorn
    "mhc-fixed-pre-post": dict(name="mhc", fixed="pre,post"),  # H_pre = 1/n, H_post = 1
}
NON_DEFAULT = ("mhc-ieee", "mhc-tf32x3", "hc-ieee")  # built and gated for spills; the targets are the default's
OP_WORKLOADS = {f"{spec.name}-op": spec for spec in specs() if spec.audit}  # stand-alone ops `bench kernels` times
WORKLOADS = (*VARIANT_KINDS, *OP_WORKLOADS)
PEERS = ("liger",)  # Liger-Kernel's mHC ops (the `peers` extra), built the same way for the report
SK_ITERS = 20


class NotCovered(Exception):
    """The kernels do not take this case (the variant refuses backend=triton for it, with the reason)."""


def run(workload: str, T: int, n: int, C: int, dtype: str) -> None:
    """Forward + backward of `workload` at T tokens, n streams, C channels on meta tensors.

    A workload "MODULE:FUNCTION" is any function(T, n, C, dtype) of your own that launches kernels
    (the gate's own test compiles deliberately broken kernels this way)."""
    if ":" in workload:
        from importlib import import_module

        module, _, function = workload.partition(":")
        return getattr(import_module(module), function)(T, n, C, dtype)
    stream_dtype, branch_dtype = DTYPES[dtype]
    if workload == "liger":
        return run_liger(T, n, C, stream_dtype)
    if workload in OP_WORKLOADS:
        return run_op(OP_WORKLOADS[workload], T, n, C, stream_dtype)
    residual = build_residual(workload, n, C)
    x = torch.empty(1, T, n, C, dtype=stream_dtype, device="meta", requires_grad=True)
    out = residual(x, lambda h: h.to(branch_dtype))
    leaves = [x, *(p for p in residual.parameters() if p.requires_grad)]
    torch.autograd.grad(out, leaves, torch.empty_like(out), allow_unused=True)


def run_op(spec: OpSpec, T: int, n: int, C: int, stream_dtype) -> None:
    """A registered op's Triton path on its benchmark inputs (meta tensors: shapes only), forward
    and the gradients of every input, at the projection's default precision."""

    inputs = spec.make_inputs(Shape(T, C, n), stream_dtype, torch.device("meta"), 0)
    fn = spec.build("triton", OpOptions(sk_iters=SK_ITERS, precision=PRECISIONS[0], norm_eps=NORM_EPS))
    outs = [o for o in fn(**inputs) if o is not None and o.requires_grad]
    leaves = [t for t in inputs.values() if t.requires_grad]
    torch.autograd.grad(outs, leaves, [torch.empty_like(o) for o in outs], allow_unused=True)


def run_liger(T: int, n: int, C: int, stream_dtype) -> None:
    """Liger-Kernel's whole mHC connection around an identity branch, as `bench kernels` times it
    (its coefficient op with fp32 φ, i.e. its tf32 path; pre-mix; post + residual), on our
    connection's benchmark inputs with its stream as (1, T, n, C)."""

    try:
        ops, _ = liger_ops(SK_ITERS)
    except Skip as e:
        raise NotCovered(str(e)) from None
    inputs = op_spec("connection").make_inputs(Shape(T, C, n), torch.float32, torch.device("meta"), 0)
    inputs["x"] = torch.empty(1, T, n, C, dtype=stream_dtype, device="meta", requires_grad=True)
    inputs = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    (out,) = ops["connection"](**inputs)
    torch.autograd.grad(out, list(inputs.values()), torch.empty_like(out))


def build_residual(workload: str, n: int, C: int):
    cfg = VariantConfig(n_streams=n, backend="triton", **VARIANT_KINDS[workload])
    try:
        variant = build_variant(cfg, d_model=C, n_sublayers=2)
    except UserError as e:
        raise NotCovered(str(e)) from None
    return variant.make(1).to(device="meta")  # sub-layer 1 (an MLP): nothing in the maths depends on which
