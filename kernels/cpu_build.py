"""The CPU kernels (kernels/*_cpu.cpp): built on first use into one shared library, called via ctypes.

Why compiled code: on a CPU, deep narrow models spend their step in the residual maths, tiny
tensors (a 4 x 4 matrix per token) pushed through many small PyTorch ops. mHC's 20 Sinkhorn
rounds are ~200 ops per sub-layer, and autograd stores and replays each of them. The C++
kernels do a whole op per call, over tiles of tokens that vectorise (kernels/cpu_common.h),
and their backward recomputes what it needs instead of storing it (as the Triton kernels do).

Build. The sources include no PyTorch header (plain pointers in, plain pointers out), so any C++
compiler builds them in a few seconds: `$CXX`, else the first of c++, g++, clang++ on PATH, with
-O3 -march=native (plain -O3 where the compiler refuses that). The library lands in <cache>/<key>/ (cache: $MHC_BENCH_CPU_KERNELS_DIR, else
$XDG_CACHE_HOME or ~/.cache, then mhc-bench/cpu-kernels); the key hashes the sources, the
compiler and its flags, the machine and its CPU's feature flags, so an edited source gets a new
build and a home folder shared by nodes with different CPUs gets one build per CPU kind. It is
compiled under a temporary name and renamed into place, so processes building at once (a grid's
parallel runs) never load a half-written file.

Failure (no compiler, a compile error, a library that will not load) is remembered for the
process and `unavailable_reason()` says why in one line: the ops then run their PyTorch reference,
silently under train.cpu_kernels=auto, or the run stops with that line under =on
(kernels/backend.py). Nothing here imports anything but the standard library and torch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SOURCES = ("sinkhorn_cpu.cpp", "premix_cpu.cpp", "post_res_cpu.cpp", "orthostochastic_cpu.cpp")
HEADERS = ("cpu_common.h",)
FLAGS = ("-O3", "-shared", "-fPIC", "-std=c++17")
# for this machine's own vector units first; where the compiler refuses them, plain -O3. On x86 the
# 16-token tiles are one AVX-512 register, which GCC uses only when asked to.
NATIVE = ("-march=native", "-mprefer-vector-width=512") if platform.machine() in ("x86_64", "AMD64") else ("-march=native",)
LIBRARY = "libmhc_cpu.so"

# argument kinds of each entry point (the dtype suffix _f32 / _f64 is added by `call`):
# p = tensor or None (pointer), l = int64, i = int, d = double
SIGNATURES = {
    "sinkhorn_forward": "ppliiid",  # L, H, tokens, n, iters, mode, eps
    "sinkhorn_backward": "pppliiid",  # L, dH, dL, tokens, n, iters, mode, eps
    "premix_forward": "ppplil",  # x, w, h, tokens, n, C
    "premix_backward": "ppppplil",  # x, w, dh, dx, dw, tokens, n, C
    "post_res_forward": "ppppplil",  # x, y, post, res, out, tokens, n, C
    "post_res_backward": "ppppppppplil",  # x, y, post, res, g, dx, dy, dpost, dres, tokens, n, C
    "orthostochastic_forward": "ppliid",  # L, H, tokens, n, steps, eps
    "orthostochastic_backward": "pppliid",  # L, dH, dL, tokens, n, steps, eps
}
_CTYPES = {"p": ctypes.c_void_p, "l": ctypes.c_int64, "i": ctypes.c_int, "d": ctypes.c_double}
DTYPES = {torch.float32: "f32", torch.float64: "f64"}  # what the kernels compute in


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX (as given), else the first of c++, g++, clang++ on PATH."""
    if os.environ.get("CXX"):
        return os.environ["CXX"]
    return next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)


def cache_dir() -> Path:
    if os.environ.get("MHC_BENCH_CPU_KERNELS_DIR"):
        return Path(os.environ["MHC_BENCH_CPU_KERNELS_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mhc-bench" / "cpu-kernels"


def _cpu_flags() -> str:
    """The CPU's feature flags (what -march=native compiles for), or the machine name."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build_key(cxx: str) -> str:
    h = hashlib.sha256()
    for name in (*SOURCES, *HEADERS):
        h.update(name.encode() + b"\0" + (HERE / name).read_bytes())
    for part in (cxx, _compiler_version(cxx), " ".join(FLAGS + NATIVE), platform.machine(), _cpu_flags()):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


class BuildError(Exception):
    """The library could not be built or loaded; the message is one line."""


def build() -> Path:
    """The library's path, compiling it first if this machine has no build of these sources yet."""
    cxx = compiler()
    if cxx is None:
        raise BuildError("no C++ compiler found (set CXX, or install g++ or clang++)")
    folder = cache_dir() / build_key(cxx)
    lib = folder / LIBRARY
    if lib.exists():
        return lib
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create the build folder {folder}: {e.strerror or e}") from None
    fd, tmp = tempfile.mkstemp(prefix=".building-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        for extra in (NATIVE, ()):
            cmd = [cxx, *FLAGS, *extra, "-o", tmp, *(str(HERE / s) for s in SOURCES)]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            except (OSError, subprocess.SubprocessError) as e:
                raise BuildError(f"{cxx} could not be run: {e}") from None
            if done.returncode == 0:
                break
        else:
            raise BuildError(f"{cxx} failed (exit {done.returncode}): {_first_error(done.stderr)}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no message"])[0][:300]


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL | BuildError:
    """The loaded library, or the BuildError saying why there is none (remembered per process)."""
    try:
        lib = ctypes.CDLL(str(build()))
    except BuildError as e:
        return e
    except OSError as e:
        return BuildError(f"the built library does not load: {str(e).splitlines()[0][:300]}")
    for name, kinds in SIGNATURES.items():
        for suffix in DTYPES.values():
            fn = getattr(lib, f"mhc_{name}_{suffix}")
            fn.argtypes = [_CTYPES[k] for k in kinds]
            fn.restype = None
    return lib


@torch.compiler.assume_constant_result  # torch.compile runs it once while tracing, never traces into the build
def unavailable_reason() -> str | None:
    """Why the CPU kernels cannot run in this process (None = they can); builds them on first call."""
    lib = _library()
    return str(lib) if isinstance(lib, BuildError) else None


def forget() -> None:
    """Drop the remembered library or failure (tests that break or repair the build)."""
    _library.cache_clear()


def call(name: str, *args) -> None:
    """Run entry point `name` for the dtype of the first tensor argument; tensors must be contiguous
    and of that dtype (None = a null pointer), on the CPU."""
    lib = _library()
    if isinstance(lib, BuildError):
        raise lib
    first = next(a for a in args if isinstance(a, torch.Tensor))
    fn = getattr(lib, f"mhc_{name}_{DTYPES[first.dtype]}")
    fn(*(_pointer(a, first.dtype) if isinstance(a, torch.Tensor) or a is None else a for a in args))


def _pointer(t: torch.Tensor | None, dtype: torch.dtype):
    if t is None:
        return None
    if t.dtype != dtype or not t.is_contiguous() or t.device.type != "cpu":
        raise ValueError(f"CPU kernels take contiguous {dtype} CPU tensors, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return t.data_ptr()
