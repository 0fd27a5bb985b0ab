"""`bench kernels`' providers: how each one gets its callable for an op, or says why it cannot.

    torch    the op's PyTorch path (the registered spec's build(backend="torch"), kernels/*_bench.py)
    compile  torch.compile of that
    triton   the spec's build(backend="triton"): the fused kernels; on a CPU only in the
             interpreter, which is not a timing, so skipped there unless asked for
    liger    Liger-Kernel's mHC ops (liger_kernel.ops.mhc), where installed
    hyper-connections  lucidrains' ManifoldConstrainedHyperConnections (whole connection only)

Ours come from the kernel registry (kernels/registry.py), so an op registered there is timed
by every one of our providers with no change here; the peers are not our kernels, so their
mapping onto our op names lives here. A provider that cannot run a case raises `Skip` with the
reason, which the table records.
"""

from __future__ import annotations

import torch

from kernels.backend import interpreting, triton_unavailable_reason
from kernels.errors import UserError
from kernels.registry import OpOptions, Shape, op_spec
from variants.hc import NORM_EPS
from variants.peers import PeerUnavailable, import_package, package_version

PROVIDERS = ("torch", "compile", "triton", "liger", "hyper-connections")


class Skip(Exception):
    """A provider cannot run this case; the message says why."""


def build(op: str, provider: str, shape: Shape, device: torch.device, sk_iters: int, precision: str,
          interpreter: bool = False):
    """-> (fn(**inputs) -> outputs, extra gradient leaves, note)."""
    if provider in ("torch", "compile", "triton"):
        fn = _ours(op, provider, device, OpOptions(sk_iters, precision, NORM_EPS), interpreter)
        return fn, [], _triton_note() if provider == "triton" else ""
    if provider == "liger":
        if device.type != "cuda":
            raise Skip("Liger-Kernel's Triton ops need a CUDA device")
        ops, note = liger_ops(sk_iters)
        if op not in ops:
            raise Skip(f"{note}: no stand-alone {op} op (fused inside its coefficient op)")
        if shape.n & (shape.n - 1):
            raise Skip(f"{note}: needs a power-of-2 stream count (tl.arange(0, HC)), got n = {shape.n}")
        return ops[op], [], note + " (kernel-order Sinkhorn; fp32 phi: its tf32 projection, like ours at --precision tf32)"
    if provider == "hyper-connections":
        if op != "connection":
            raise Skip("hyper-connections has only the whole connection (no separate ops)")
        return hyper_connections_op(shape, device, sk_iters)
    raise UserError(f"unknown provider {provider!r}; choose from {', '.join(PROVIDERS)}")


def _ours(op: str, provider: str, device: torch.device, options: OpOptions, interpreter: bool):
    """The registered op on the provider's backend (torch for torch and compile)."""
    spec = op_spec(op)
    backend = "triton" if provider == "triton" else "torch"
    if backend not in spec.backends:
        raise Skip(f"{op} has no {backend} implementation (its backends: {', '.join(spec.backends)})")
    if provider == "triton":

        if device.type != "cuda" and not interpreter:
            raise Skip("no CUDA device: the Triton kernels would only run in the interpreter, which is "
                       "correct but not a timing (--triton-interpreter runs it anyway)")
        why = triton_unavailable_reason(device)
        if why:
            raise Skip(why)
    fn = spec.build(backend, options)
    if provider == "compile":
        torch._dynamo.reset()  # a fresh compile per case: never the eager fallback of a full cache
        fn = torch.compile(fn, dynamic=False)
    return fn


def _triton_note() -> str:

    return "Triton interpreter: correct, not a meaningful timing" if interpreting() else ""


def liger_ops(sk_iters: int):
    """({op: fn}, note) for Liger-Kernel's mHC ops; the compile audit builds its connection too."""
    try:
        import liger_kernel
        from liger_kernel.ops.mhc import (
            LigerMHCCoeffsFunction,
            LigerMHCPostResFunction,
            LigerMHCPreFunction,
        )
    except Exception as e:  # not installed, or a version without mHC ops
        raise Skip(f"liger_kernel mHC ops not importable ({type(e).__name__}: {e})") from None
    version = getattr(liger_kernel, "__version__", "?")

    def coefficients(x, phi, alpha_pre, alpha_post, alpha_res, bias_pre, bias_post, bias_res):
        b = torch.cat([bias_pre, bias_post, bias_res.flatten()])
        # (x, phi, b, α_pre, α_post, α_res, allow_fp32, tmax, rms_eps, pre_eps, sinkhorn_eps, post_mult)
        return tuple(LigerMHCCoeffsFunction.apply(x, phi, b, alpha_pre, alpha_post, alpha_res, True, sk_iters,
                                                  NORM_EPS, 0.0, 1e-6, 2.0))

    def connection(x, **params):
        pre, post, res = coefficients(x, **params)
        h = LigerMHCPreFunction.apply(x, pre)
        return (LigerMHCPostResFunction.apply(x, h, post, res),)

    ops = {
        "premix": lambda x, h_pre: (LigerMHCPreFunction.apply(x, h_pre),),
        "post_res": lambda x, y, h_post, h_res: (LigerMHCPostResFunction.apply(x, y, h_post, h_res),),
        "coefficients": coefficients,
        "connection": connection,
    }
    return ops, f"liger_kernel {version}"


def hyper_connections_op(shape: Shape, device, sk_iters: int):
    """lucidrains' mHC around an identity branch; its own parameters are the gradient leaves.

    The package folds streams into the batch, '(b s) t d'; with b = 1 our (T, n, C) input seen
    as (n, T, C) is exactly that, and its einops rearranges of the transposed view are views
    too, so no copy is charged to the peer. Checked against hyper-connections 0.4.11.
    """

    try:
        mhc = import_package().ManifoldConstrainedHyperConnections
    except (PeerUnavailable, AttributeError) as e:
        raise Skip(str(e)) from None
    module = mhc(shape.n, dim=shape.C, layer_index=0, sinkhorn_iters=sk_iters).to(device)
    params = list(module.parameters())

    def connection(x, **_):
        branch_input, add_residual = module(x.transpose(0, 1))  # (n, T, C) = their '(b s) t d', b = 1
        return (add_residual(branch_input),)

    note = (f"hyper-connections {package_version()} (whole connection only; per-stream RMSNorm with gain and a "
            f"C->1+n projection shared by the streams)")
    return connection, params, note
