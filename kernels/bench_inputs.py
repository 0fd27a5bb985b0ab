"""Seeded benchmark inputs for the ops' `make_inputs` (kernels/*_bench.py).

Draws happen on the CPU from one generator, so a seed gives the same numbers on every device,
then move to the device as leaves that take gradients. On the meta device (the kernel compile
audit, at shapes up to 16k tokens x 4096 channels) nothing is drawn or allocated: only the shape
and dtype matter there, and the audit must not pay for gigabytes of random numbers.
"""

from __future__ import annotations

import torch


class Draw:
    """One generator's draws, in call order (an op's inputs depend on the order it asks for them)."""

    def __init__(self, seed: int, device: torch.device | str):
        self.device = torch.device(device)
        self.generator = torch.Generator(device="cpu").manual_seed(seed)

    def normal(self, *size: int, dtype: torch.dtype = torch.float32, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
        """N(shift, scale²) in `dtype`."""
        if self.device.type == "meta":
            return torch.empty(size, dtype=dtype, device="meta").requires_grad_()
        t = torch.randn(size, generator=self.generator) * scale + shift
        return t.to(device=self.device, dtype=dtype).requires_grad_()

    def uniform(self, *size: int, scale: float = 1.0) -> torch.Tensor:
        """U[0, scale) in fp32 (coefficients are fp32 whatever the stream dtype)."""
        if self.device.type == "meta":
            return torch.empty(size, device="meta").requires_grad_()
        return (scale * torch.rand(size, generator=self.generator)).to(self.device).requires_grad_()
