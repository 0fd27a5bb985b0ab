"""The backend switch every kernel op shares: `torch` (reference) | `triton` | `auto`.

    torch   PyTorch on the tensors' device: the reference maths (kernels/<op>.py `*_reference`),
            except that on a CPU the compiled CPU kernels (kernels/<op>_cpu.cpp) run the ops they
            cover when the CPU-kernel mode allows (below).
    triton  the fused Triton kernels (kernels/<op>_triton.py). On CUDA they compile; on a CPU
            they only run under the Triton interpreter (TRITON_INTERPRET=1, set before the
            kernel modules are imported), which is correct but slow: tests only, never timed.
    auto    triton on CUDA, torch otherwise (and torch wherever an op has no kernel for the
            requested options, e.g. float64 for gradcheck).

The CPU kernels (train.cpu_kernels, set per process with `set_cpu_kernels`):
    auto    used wherever they cover the op's arguments and the library builds on this machine
            (kernels/cpu_build.py); otherwise the reference, silently. The default.
    on      the same, but a library that cannot be built stops the run with one line saying why.
    off     never: the reference everywhere (the "before" of a comparison, or a suspect kernel).
They compute the reference's maths to fp32 round-off (tests/test_cpu_kernels.py), forward and
backward, and under torch.compile they are custom ops, opaque to inductor.

A run that asks for `triton` explicitly never silently gets torch: an op that cannot run
its kernel raises a UserError saying why. Triton itself is imported lazily, only when a kernel
is first launched, so importing the variants (and the CLI) never imports Triton.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from contextlib import contextmanager

import torch

from kernels import cpu_build
from kernels.errors import UserError

BACKENDS = ("torch", "triton", "auto")
CPU_KERNEL_MODES = ("auto", "on", "off")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # stream dtypes the kernels take

_poison = False
_cpu_mode = "auto"
_compile_only_sms: int | None = None  # set by compile_only(): kernels build for a fake GPU, nothing runs


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_version() -> str | None:
    """The installed Triton's version, or None; read from the package metadata once, at import,
    without importing Triton (slow), and a plain value torch.compile traces through."""
    return _TRITON_VERSION


def _installed(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


_TRITON_VERSION = _installed("triton")


def triton_unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot run on `device` in this process (None = they can)."""
    if triton_version() is None:
        return "Triton is not installed"
    if device.type == "cuda" or interpreting() or building_for_meta() is not None:
        return None
    return (f"the Triton kernels need a CUDA device (tensors are on {device.type}); on a CPU they only "
            "run under the slow interpreter, with TRITON_INTERPRET=1 set before start-up")


def resolve(backend: str, device: torch.device, why_not: str | None = None) -> str:
    """'torch' or 'triton' for one op call. `why_not`: the op's own reason it cannot use its
    kernel for these arguments (dtype, shape, option), or None."""
    if backend == "torch":
        return "torch"
    if backend not in BACKENDS:
        raise UserError(f"unknown kernel backend {backend!r}; choose from {', '.join(BACKENDS)}")
    reason = why_not or triton_unavailable_reason(device)
    if backend == "auto":
        return "torch" if reason or device.type != "cuda" else "triton"
    if reason:
        raise UserError(f"backend=triton: {reason}; use backend=torch (or auto)")
    return "triton"


def set_cpu_kernels(mode: str) -> None:
    """Use the CPU kernels in this process as `mode` says (module doc). `on` builds them now, so a
    machine that cannot build them stops here, in one line, before any training step."""
    global _cpu_mode
    if mode not in CPU_KERNEL_MODES:
        raise UserError(f"unknown CPU-kernel mode {mode!r}; choose from {', '.join(CPU_KERNEL_MODES)}")
    if mode == "on":
        reason = cpu_build.unavailable_reason()
        if reason:
            raise UserError(f"train.cpu_kernels=on: the CPU kernels cannot be built here: {reason}; "
                            "use train.cpu_kernels=auto (the PyTorch reference where they cannot run) or off")
    _cpu_mode = mode


def cpu_kernel_mode() -> str:
    return _cpu_mode


@contextmanager
def cpu_kernels(mode: str):
    """Within this block the CPU kernels are used as `mode` says (tests compare on and off)."""
    global _cpu_mode
    old = _cpu_mode
    set_cpu_kernels(mode)
    try:
        yield
    finally:
        _cpu_mode = old


def use_cpu_kernel(device: torch.device, why_not: str | None = None) -> bool:
    """True when an op that resolved to torch should run its CPU kernel. `why_not`: the op's own
    reason its kernel does not cover these arguments (a dtype, a Sinkhorn mode), or None."""
    if device.type != "cpu" or _cpu_mode == "off" or why_not is not None:
        return False
    reason = cpu_build.unavailable_reason()
    if reason is None:
        return True
    if _cpu_mode == "on":
        raise UserError(f"train.cpu_kernels=on: the CPU kernels cannot be built here: {reason}; "
                        "use train.cpu_kernels=auto (or off)")
    return False


def eager_or_compiled(function: type[torch.autograd.Function], op):
    """Run a CPU kernel pair as `function` (an autograd.Function) in eager mode, where a custom op's
    Python dispatch costs about five times a Function's per call, and as the equivalent custom op
    `op` under torch.compile, which cannot trace into a ctypes call but treats the op as one
    opaque node (its fake implementation gives the shapes)."""

    def run(*args):
        return op(*args) if torch.compiler.is_compiling() else function.apply(*args)

    return run


def dtype_reason(*tensors: torch.Tensor) -> str | None:
    for t in tensors:
        if t is not None and t.dtype not in KERNEL_DTYPES:
            return f"the kernels take float32/bfloat16/float16 streams, got {t.dtype}"
    return None


@functools.lru_cache(maxsize=None)
def load(module: str):
    """Import kernels.<module> (the @triton.jit code) on first use."""
    return importlib.import_module(f"kernels.{module}")


def kernel_op(name: str, fake):
    """Register the decorated function as the custom op `mhc_bench::<name>` (torch.library).

    To torch.compile a custom op is one opaque node with a known output shape (`fake` computes
    it), so a compiled model calls the Triton kernels without graph breaks; autograd is attached
    by the caller (`op.register_autograd`). On the meta device the op computes shapes only,
    except inside `compile_only()`, where the kernels are built (the compile gate).
    The function needs full type annotations (Optional[Tensor] for an absent input); a custom
    op cannot return None, so an absent output is an empty tensor the caller maps back.
    """

    def register(fn):
        op = torch.library.custom_op(f"mhc_bench::{name}", mutates_args=())(fn)
        op.register_fake(fake)

        def meta(*args, **kwargs):
            return fn(*args, **kwargs) if building_for_meta() is not None else fake(*args, **kwargs)

        op.register_kernel("meta")(meta)
        return op

    return register


def absent(like: torch.Tensor) -> torch.Tensor:
    """What a custom op returns for an output that does not exist (see kernel_op)."""
    return like.new_empty(0)


def launcher(fn):
    """Decorates a kernel launcher whose first argument is a tensor.

    Triton launches on the *current* CUDA device, so that is made the tensor's
    (train.device=cuda:1, e.g.). A kernel Triton cannot build here (no ptxas, a driver too
    old, a compile error, too little shared memory) becomes one UserError naming the kernel
    and the cause, instead of a compiler traceback in the middle of a training step.
    """
    kernel = f"{fn.__name__} kernel of {fn.__module__.replace('.', '/')}.py"

    @functools.wraps(fn)
    def wrapped(first, *args, **kwargs):
        try:
            if first.device.type == "cuda":
                with torch.cuda.device(first.device):
                    return fn(first, *args, **kwargs)
            return fn(first, *args, **kwargs)
        except Exception as e:
            if not _raised_by_triton(e):
                raise
            raise UserError(f"backend=triton: the {kernel} cannot be built or launched here: {_first_line(e)}; "
                            "use variant.backend=torch (or auto)") from e

    return wrapped


def _raised_by_triton(e: BaseException) -> bool:
    """True when the exception comes from inside Triton's compiler or driver (not from torch)."""
    if isinstance(e, torch.OutOfMemoryError):
        return False
    tb = e.__traceback__
    triton_dir = os.sep + "triton" + os.sep
    while tb is not None:
        if triton_dir in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _first_line(e: BaseException) -> str:
    """The most telling line of a (possibly chained, multi-line) Triton error."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    lines = [ln.strip() for ln in str(root).splitlines() if ln.strip()]
    text = lines[-1] if type(root).__name__ == "CompilationError" and lines else (lines[0] if lines else "")
    return f"{type(root).__name__}: {text}"[:300]


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device`: the launchers size their grids to fill it.

    The interpreter has no SMs; 1 keeps its grids (and the tests) small.
    """
    if device.type == "cuda":
        return _cuda_sms(device.index if device.index is not None else torch.cuda.current_device())
    return building_for_meta() or 1


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def building_for_meta() -> int | None:
    """The SM count of the GPU the kernels are being built for on meta tensors, or None.

    Inside `compile_only()`, or while a Triton driver that launches on the meta device is active
    (a compile-audit tool's fake GPU, e.g. ../shared/tools/compile_sm90.py): the custom ops then
    build and "launch" their kernels on meta tensors instead of only computing shapes.
    """
    if _compile_only_sms is not None:
        return _compile_only_sms
    triton = sys.modules.get("triton")
    active = getattr(getattr(getattr(triton, "runtime", None), "driver", None), "_active", None)
    if active is None:
        return None
    try:
        if active.get_active_torch_device().type != "meta":
            return None
        return int(active.utils.get_device_properties(0)["multiprocessor_count"])
    except Exception:  # a driver without these (not a fake GPU)
        return None


@contextmanager
def compile_only(sms: int):
    """Within this block the Triton path accepts meta tensors: the kernels are specialised and
    compiled for the active (fake) Triton driver as on a GPU with `sms` SMs, but nothing runs.
    Used by the compile gate (harness/kernel_audit), never by training."""
    global _compile_only_sms
    old, _compile_only_sms = _compile_only_sms, sms
    try:
        yield
    finally:
        _compile_only_sms = old


# ---------------------------------------------------------------------------------------------
# Output allocation. Tests turn poisoning on so that every element a kernel fails to write
# is NaN and fails the comparison (torch.empty could hold a plausible stale value).
# ---------------------------------------------------------------------------------------------
def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def empty_like(t: torch.Tensor) -> torch.Tensor:
    return empty(t.shape, t.dtype, t.device)


@contextmanager
def poisoned_outputs():
    """Within this block, kernel outputs start as NaN instead of uninitialised memory."""
    global _poison
    old, _poison = _poison, True
    try:
        yield
    finally:
        _poison = old


def next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def stream_tiles(n_pad: int, C: int, tokens: int, elem_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_T, BLOCK_C, num_warps) for the stream kernels, whose tile is (BLOCK_T, n_pad, BLOCK_C).

    GPU: each thread owns 16 contiguous bytes of C (one 128-bit access: 8 bf16 or 4 fp32
    values) for every stream and token of the tile, and a block of up to 4 warps spans
    BLOCK_C = 128 threads x 16 bytes, so reductions over the streams stay inside a thread and
    every global access is 16 bytes wide. BLOCK_T tokens per program keep about 32 values of
    each stream tensor per thread: enough bytes in flight, few enough registers. In the
    interpreter the cost is per program, so tiles are big.
    """
    if interpreting():
        bc = min(next_pow2(C), MAX_BLOCK_C_INTERPRET)
        bt = floor_pow2(min(next_pow2(tokens), max(1, 8192 // (n_pad * bc)), 64))
        return bt, bc, 1
    vec = max(1, 16 // elem_bytes)
    bc = min(next_pow2(C), vec * 32 * 4)
    warps = max(1, bc // (vec * 32))
    bt = floor_pow2(max(1, min(32 // (n_pad * vec), next_pow2(tokens))))
    return bt, bc, warps


def token_tiles(tokens: int, per_token: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_T, num_warps) for the per-token kernels (coefficient heads, Sinkhorn), whose tile is
    BLOCK_T tokens x `per_token` values held in registers.

    Their work is a few KB per token block, so what matters is spreading it: BLOCK_T is the
    largest power of two that still gives every SM at least two programs (and keeps the
    Sinkhorn backward's ~8 live tiles at <= 1024 values), with about 256 values per warp.
    """
    if interpreting():
        return floor_pow2(min(next_pow2(max(tokens, 1)), 64)), 1
    cap = max(1, 1024 // per_token)
    bt = floor_pow2(max(1, min(cap, tokens // (2 * sm_count(device)))))
    return bt, max(1, min(4, bt * per_token // 256))


def floor_pow2(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


MAX_BLOCK_C_INTERPRET = 256  # tests lower this to force several C blocks with a masked tail
