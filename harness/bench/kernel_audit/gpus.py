"""The GPU targets the kernels are built for, with the limits a static analysis needs.

Per-SM limits are the CUDA occupancy calculator's (compute capability 9.0 and 10.0): 64K
32-bit registers, 64 resident warps, 32 resident blocks, 228 KB shared memory per SM of which
one block may use 227 KB and 1 KB per block is reserved. Peak rates are the vendors' dense
figures, used only to say which of memory and arithmetic bounds a kernel; H200's copy
bandwidth was measured on the project's device machine (about 4.3 TB/s read + write,
../shared/notes/ENVIRONMENT.md) against a 4.8 TB/s HBM peak.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    arch: str  # Triton/ptxas name of the target, e.g. sm_90a
    name: str
    capability: int  # 90 -> sm_90a (Triton adds the 'a' for the arch-specific features)
    sms: int
    hbm_bytes_per_s: float
    fp32_fma_flops: float  # non-tensor-core fp32 (an input_precision="ieee" tl.dot)
    tf32_flops: float  # dense tensor-core tf32
    regs_per_sm: int = 65536
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    smem_per_sm: int = 228 * 1024
    smem_per_block: int = 227 * 1024
    smem_reserved_per_block: int = 1024
    memory_latency_s: float = 800e-9  # loaded DRAM latency: Little's law sizes the bytes in flight

    @property
    def bytes_in_flight_per_sm(self) -> float:
        """Little's law: bytes each SM must have requested and not yet received to stream at peak."""
        return self.hbm_bytes_per_s * self.memory_latency_s / self.sms


GPUS = {
    "sm_90a": Gpu("sm_90a", "H100/H200 (GH100, 132 SMs)", 90, 132, 4.8e12, 66.9e12, 494.7e12),
    "sm_100a": Gpu("sm_100a", "B200 (GB100, 148 SMs)", 100, 148, 8.0e12, 80.0e12, 1100e12),
}
