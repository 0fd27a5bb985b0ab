"""A Triton driver for a GPU that is not there: kernels compile for real, launches are recorded.

Installed with `triton.runtime.driver.set_active(FakeDriver(gpu))`. Triton then specialises and
compiles exactly as on that GPU (target cuda/<capability>, its ptxas, its shared-memory limit
and register file, so Triton's own OutOfResources checks run), but

  * `utils.load_binary` inspects the cubin (harness/bench/kernel_audit/binary.py) instead of loading
    it, and hands the inspection back as the kernel's "function" handle;
  * the launcher records the launch (kernel, grid, bound arguments, compile metadata) instead
    of calling cuLaunchKernel.

Tensors are on the meta device: shapes, dtypes and strides are real, data_ptr() is 0 (aligned
like every caching-allocator block), so pointer-alignment specialisation matches a GPU run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase

from harness.bench.kernel_audit.binary import Binary, inspect_cubin
from harness.bench.kernel_audit.gpus import Gpu


@dataclass
class Launch:
    """One recorded kernel launch."""

    kernel: str
    grid: tuple[int, int, int]
    args: dict  # argument name -> value (tensors, ints, floats, constexprs)
    num_warps: int
    num_stages: int
    shared: int  # dynamic shared memory, bytes
    hash: str
    binary: Binary
    ptx: str
    context: dict = field(default_factory=dict)  # workload, shape, dtype: set by the caller


class _Utils:
    def __init__(self, gpu: Gpu, binaries: dict):
        self.gpu, self.binaries = gpu, binaries

    def get_device_properties(self, device):
        return {"max_shared_mem": self.gpu.smem_per_block, "multiprocessor_count": self.gpu.sms,
                "max_num_regs": self.gpu.regs_per_sm, "warpSize": 32}

    def load_binary(self, name, cubin, shared, device):
        key = (name, hash(cubin))
        if key not in self.binaries:
            self.binaries[key] = inspect_cubin(cubin)
        b = self.binaries[key]
        regs_per_warp = math.ceil(max(b.regs, 1) * 32 / 256) * 256  # allocation granularity: 256 per warp
        max_threads = min(1024, self.gpu.regs_per_sm // regs_per_warp * 32)
        return None, b, b.regs, b.spill_bytes, max_threads


class FakeDriver(DriverBase):
    """Triton's view of one `gpu`, device 0, stream 0; `launches` collects what would have run."""

    def __init__(self, gpu: Gpu):
        self.gpu = gpu
        self.launches: list[Launch] = []
        self.context: dict = {}
        self._binaries: dict = {}
        self._ptx: dict = {}
        self.utils = _Utils(gpu, self._binaries)
        driver = self

        class Launcher:
            def __init__(self, src, metadata):
                self.src, self.metadata = src, metadata

            def __call__(self, gx, gy, gz, stream, function, packed_metadata, launch_metadata,
                         enter_hook, exit_hook, *args):
                md = self.metadata
                driver.launches.append(Launch(
                    kernel=md.name, grid=(gx, gy, gz), args=dict(zip(self.src.fn.arg_names, args)),
                    num_warps=md.num_warps, num_stages=md.num_stages, shared=md.shared, hash=md.hash,
                    binary=function, ptx=driver.ptx(self.src.fn, md.hash), context=dict(driver.context)))

        self.launcher_cls = Launcher

    def ptx(self, fn, kernel_hash: str) -> str:
        """The PTX Triton kept beside the binary of `fn` whose hash is `kernel_hash`."""
        if kernel_hash not in self._ptx:
            for compiled in fn.device_caches[0][0].values():
                self._ptx[compiled.hash] = compiled.asm.get("ptx", "")
        return self._ptx.get(kernel_hash, "")

    @classmethod
    def is_active(cls):
        return True

    def get_current_target(self):
        return GPUTarget("cuda", self.gpu.capability, 32)

    def get_current_device(self):
        return 0

    def set_current_device(self, device):
        pass

    def get_current_stream(self, device=None):
        return 0

    def get_device_capability(self, device=None):
        return divmod(self.gpu.capability, 10)

    def get_active_torch_device(self):
        return torch.device("meta")

    def map_python_to_cpp_type(self, ty):
        from triton.backends.nvidia.driver import ty_to_cpp

        return ty_to_cpp(ty)

    def get_benchmarker(self):
        raise RuntimeError("a fake GPU cannot time anything")
