"""Where a run executes and in what precision: the device from a config string, autocast, host
batches to the device. Training, evaluation and the benchmarks all need these, so they live in
the core rather than in the training loop."""

from __future__ import annotations

import contextlib

import torch

from harness.core.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name!r} but CUDA is not available on this machine; use train.device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"train.device={name!r} is not a device torch knows (try auto, cpu, cuda, cuda:0)") from None


def autocast_context(device: torch.device, dtype: str):
    """bf16 autocast on CUDA by default, plain fp32 on CPU (bitwise-reproducible)."""
    if dtype == "auto":
        dtype = "bf16" if device.type == "cuda" else "fp32"
    if dtype == "fp32":
        return contextlib.nullcontext
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    return lambda: torch.autocast(device_type=device.type, dtype=torch_dtype)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host batch on `device`; on CUDA through pinned memory, so the copy does not block the host."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)
