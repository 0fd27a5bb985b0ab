"""`mhc-bench bench kernels`: every op x shape x provider x mode, against the copy bandwidth measured in the same run.

    ops        every op in the kernel registry (kernels/registry.py), each declared beside its
               kernel in kernels/<op>_bench.py: premix (H_pre·x), post_res (H_res·x + H_post^T·y),
               sinkhorn (k rounds on n×n logits), coefficients (RMSNorm(x⃗)φ + α, b, σ, 2σ,
               Sinkhorn: H_pre, H_post, H_res), connection (the whole mHC connection around an
               identity branch: coefficients, then pre-mix, then post + residual)
    providers  torch    the PyTorch references (the same functions the kernel tests compare to)
               compile  torch.compile of those references
               triton   the fused kernels (kernels/*_triton.py); on a CPU only under the
                        interpreter, which is not a timing: skipped there unless asked for
               liger    Liger-Kernel's mHC ops (liger_kernel.ops.mhc), where installed
               hyper-connections  lucidrains' ManifoldConstrainedHyperConnections (whole
                        connection only), where installed
               (harness/bench/kernel_providers.py)
    modes      fwd, fwd+bwd (forward, then the gradients of all inputs for random upstream
               gradients, via torch.autograd.grad so nothing accumulates between repetitions)

Times: on CUDA triton.testing.do_bench (CUDA events, L2 flushed between repetitions); on a CPU
time.perf_counter after warm-up. Median and 20/80% quantiles in ms. Bandwidth = the bytes the
op must move (its spec's `bytes_moved`: each input read once, each output written once, the
paper's I/O counting) / median time, and its fraction of the device copy bandwidth (read + write) measured
at the start of the same run. Peers compute their own conventions (Liger: kernel-order
Sinkhorn, HC power-of-2 only; hyper-connections: per-stream norms and projections, Sinkhorn
with columns exact, see variants/peers.py), so only their times are comparable, not their
outputs. Precision is matched: our projection runs tf32 tensor cores by default (--precision),
and Liger's coefficient op, given fp32 φ, takes its tf32 path too. A provider that cannot run
a case gets one row with metric 'skipped' and the reason in `note`, so the table is complete
by construction.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from typing import TYPE_CHECKING

import torch

from harness.bench.kernel_providers import PROVIDERS, Skip, build
from harness.core.atomic import write_parquet
from harness.core.device import resolve_device
from harness.core.rundir import git_info, now
from kernels.backend import interpreting, triton_version
from kernels.errors import UserError
from kernels.project import PRECISIONS
from kernels.registry import MODES, Shape, op_names, op_spec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# Target shape of the issue (H200, bf16): 16k tokens x C = 4096 x n = 4; then n and C sweeps and
# a decode-sized token count.
GPU_SHAPES = "16384x4096x4,16384x4096x2,16384x4096x8,16384x2048x4,1x4096x4"
CPU_SHAPES = "2048x512x4,2048x512x8,512x1024x4,1x512x4"
QUICK_SHAPES = "64x40x4,1x37x3"

if TYPE_CHECKING:
    import pandas as pd


def __getattr__(name: str):
    """OPS: the registered ops, read when asked for (a test may register one after this import)."""
    if name == "OPS":
        return op_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def parse_shapes(text: str) -> list[Shape]:
    shapes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            t, c, n = (int(v) for v in part.lower().split("x"))
        except ValueError:
            raise UserError(f"--shapes takes comma-separated TOKENSxCxN triples (e.g. 16384x4096x4), got {part!r}") from None
        if t < 1 or c < 1 or n < 1:
            raise UserError(f"--shapes: tokens, C and n must be >= 1, got {part!r}")
        shapes.append(Shape(t, c, n))
    return shapes


def bytes_moved(op: str, mode: str, shape: Shape, elem: int) -> int:
    """Bytes op `op` must move per call (inputs read once, outputs written once), by name: its spec
    (kernels/<op>_bench.py) counts them."""
    return op_spec(op).bytes_moved(mode, shape, elem)


def make_inputs(op: str, shape: Shape, dtype: torch.dtype, device: torch.device, seed: int = 0) -> dict:
    """Fresh random inputs of op `op`, all leaves that take gradients, by name: its spec draws them."""
    return op_spec(op).make_inputs(shape, dtype, device, seed)


# =============================================================================================
# Timing
# =============================================================================================
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device: torch.device, quick: bool) -> tuple[float, float, float]:
    """(median, 20% quantile, 80% quantile) of fn()'s wall time in ms."""
    if device.type == "cuda":
        import triton.testing

        warmup, rep = (5, 20) if quick else (25, 200)
        med, lo, hi = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return float(med), float(lo), float(hi)
    warmup, reps, budget = (1, 3, 2.0) if quick else (3, 15, 10.0)
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start < budget and len(times) < 5 * reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget and len(times) >= 3:
            break
    q = statistics.quantiles(times, n=5, method="inclusive")  # 20/40/60/80 %
    return statistics.median(times), q[0], q[-1]


def copy_bandwidth(device: torch.device, quick: bool) -> tuple[float, float]:
    """(GB/s of a device-to-device copy, bytes read + written; median ms) with the same timer."""
    n_bytes = (1 << 30) if device.type == "cuda" else ((1 << 25) if quick else (1 << 28))
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    med, _, _ = time_ms(lambda: dst.copy_(src), device, quick)
    return 2 * n_bytes / (med * 1e-3) / 1e9, med


def _runner(fn, inputs: dict, extra: list, mode: str):
    """A no-argument callable running the case once (forward, or forward + all input gradients)."""
    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn(**inputs)
        return run
    leaves = [t for t in inputs.values() if t.requires_grad] + list(extra)
    outs = [o for o in fn(**inputs) if o is not None and o.requires_grad]
    g = torch.Generator(device="cpu").manual_seed(1)
    grads = [torch.randn(o.shape, generator=g).to(o) for o in outs]  # random, never all-ones

    def run():
        outs = [o for o in fn(**inputs) if o is not None and o.requires_grad]
        return torch.autograd.grad(outs, leaves, grads, allow_unused=True)

    return run


# =============================================================================================
# The benchmark
# =============================================================================================
def versions() -> dict:
    v = {"python": platform.python_version(), "torch": torch.__version__}

    v["triton"] = triton_version()
    from importlib.metadata import version  # hyper_connections has no __version__

    for mod, dist in (("liger_kernel", "liger-kernel"), ("hyper_connections", "hyper-connections")):
        try:
            __import__(mod)
            v[mod] = version(dist)
        except Exception:
            v[mod] = None
    v["git_commit"] = git_info().get("git_commit")
    return v


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(ops, providers, shapes, modes, dtype: torch.dtype, device: torch.device, quick: bool = False,
        sk_iters: int = 20, precision: str = "tf32", interpreter: bool = False, log=print) -> "pd.DataFrame":
    """The long table: the copy ceiling, then each (shape, op, provider, mode)'s metrics, or one
    'skipped' row with the reason. `ops` are registered op names (kernels/registry.py)."""
    import pandas as pd

    specs = [op_spec(op) for op in ops]  # an unknown op is a one-line error before anything runs
    vers = versions()
    dev = device_name(device)
    gbps_copy, copy_ms = copy_bandwidth(device, quick)
    log(f"copy ceiling on {dev}: {gbps_copy:.1f} GB/s (read + write)")
    base_all = dict(dtype=str(dtype).removeprefix("torch."), device=dev, versions=json.dumps(vers, sort_keys=True),
                    torch=vers["torch"], triton=vers["triton"], git_commit=vers["git_commit"], sk_iters=sk_iters,
                    precision=precision, quick=quick)
    rows = [dict(base_all, op="copy", provider="torch", mode="fwd", tokens=0, C=0, n=0, metric=m, value=v, unit=u, note="")
            for m, v, u in (("time_median", copy_ms, "ms"), ("bandwidth", gbps_copy, "GB/s"))]
    elem = torch.finfo(dtype).bits // 8
    for shape in shapes:
        for spec in specs:
            op, inputs, reference = spec.name, spec.make_inputs(shape, dtype, device, 0), None
            for provider in providers:
                for mode in modes:
                    base = dict(base_all, op=op, provider=provider, mode=mode, tokens=shape.tokens, C=shape.C, n=shape.n)
                    where = f"  {op:12s} {str(shape):14s} {provider:17s}"
                    make = partial(build, op, provider, shape, device, sk_iters, precision, interpreter)
                    try:
                        outs, med, lo, hi, note = _measure(make, inputs, mode, device, quick)
                    except Skip as e:
                        rows.append(dict(base, metric="skipped", value=float("nan"), unit="", note=str(e)))
                        if mode == modes[0]:
                            log(f"{where} skipped: {e}")
                        continue
                    except Exception as e:  # a peer's API drift, an OOM, a compile failure: record, go on
                        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                        rows.append(dict(base, metric="skipped", value=float("nan"), unit="", note=f"failed: {msg}"))
                        log(f"{where} {mode:7s} FAILED: {msg}")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                        continue
                    gbps = spec.bytes_moved(mode, shape, elem) / (med * 1e-3) / 1e9
                    metrics = [("time_median", med, "ms"), ("time_p20", lo, "ms"), ("time_p80", hi, "ms"),
                               ("bandwidth", gbps, "GB/s"), ("copy_fraction", gbps / gbps_copy, "fraction")]
                    if mode == "fwd" and provider in ("torch", "compile", "triton"):
                        reference, diff = _against_torch(provider, outs, reference)
                        metrics += [("max_rel_diff_vs_torch", diff, "fraction")] if diff is not None else []
                    rows += [dict(base, metric=m, value=float(v), unit=u, note=note) for m, v, u in metrics]
                    log(f"{where} {mode:7s} {med:9.4f} ms  {gbps:8.1f} GB/s "
                        f"({gbps / gbps_copy:6.1%} of copy){'  [' + note + ']' if note else ''}")
            del inputs
    cols = ["op", "provider", "mode", "tokens", "C", "n", "dtype", "metric", "value", "unit", "device", "note"]
    df = pd.DataFrame(rows)
    return df[cols + [c for c in df.columns if c not in cols]]


def _measure(make, inputs: dict, mode: str, device: torch.device, quick: bool):
    """(outputs, median, p20, p80 ms, note) of the case `make()` builds; raises what building or running raises."""
    fn, extra, note = make()
    runner = _runner(fn, inputs, extra, mode)
    outs = runner()  # also the first (compiling) call
    _sync(device)
    med, lo, hi = time_ms(runner, device, quick)
    return outs, med, lo, hi, note


def _against_torch(provider: str, outs, reference):
    """(reference, max relative difference | None): the torch provider's forward outputs are the
    reference of the compile and triton rows after it."""
    flat = [o.detach().double() for o in outs if o is not None]
    if provider == "torch":
        return flat, None
    if reference is None:
        return None, None
    return reference, max(((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item() for a, b in zip(flat, reference))


def summary(df) -> str:
    """One line per (op, shape, provider): fwd and fwd+bwd median ms and copy fraction."""
    t = df[df.metric.isin(["time_median", "copy_fraction"]) & (df.op != "copy")]
    if t.empty:
        return "(no timings)"
    wide = t.pivot_table(index=["op", "tokens", "C", "n", "provider"], columns=["mode", "metric"], values="value", sort=False)
    lines = [f"{'op':12s} {'shape':14s} {'provider':17s} {'fwd ms':>9s} {'fwd %bw':>8s} {'f+b ms':>9s} {'f+b %bw':>8s}"]
    for (op, T, C, n, prov), r in wide.iterrows():
        get = lambda mode, m: r.get((mode, m), float("nan"))  # noqa: E731
        cells = [f"{get('fwd', 'time_median'):9.4f}", f"{get('fwd', 'copy_fraction'):8.1%}",
                 f"{get('fwd+bwd', 'time_median'):9.4f}", f"{get('fwd+bwd', 'copy_fraction'):8.1%}"]
        lines.append(f"{op:12s} {f'{T}x{C}x{n}':14s} {prov:17s} " + " ".join(cells))
    return "\n".join(lines)


def main(args) -> int:
    """`mhc-bench bench kernels`."""
    from pathlib import Path


    split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    device = resolve_device(args.device)
    ops = split(args.ops) if args.ops else list(op_names())
    modes = split(args.modes) if args.modes else list(MODES)
    if args.providers:
        providers = split(args.providers)
    else:  # --quick is a smoke run: torch.compile's first compilation alone takes ~20 s on a CPU
        providers = [p for p in PROVIDERS if not (args.quick and p == "compile")]
    for name, got, valid in (("--ops", ops, op_names()), ("--providers", providers, PROVIDERS), ("--modes", modes, MODES)):
        for x in got:
            if x not in valid:
                raise UserError(f"{name}: unknown {x!r}; choose from {', '.join(valid)}")
    if args.dtype not in DTYPES and args.dtype != "auto":
        raise UserError(f"--dtype: choose from auto, {', '.join(DTYPES)}; got {args.dtype!r}")
    dtype = DTYPES.get(args.dtype) or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    shapes = parse_shapes(args.shapes or (QUICK_SHAPES if args.quick else GPU_SHAPES if device.type == "cuda" else CPU_SHAPES))
    if device.type == "cpu" and "triton" in providers and args.triton_interpreter:
        if not interpreting() and any(m.startswith("kernels.") and m.endswith("_triton") for m in sys.modules):
            raise UserError("--triton-interpreter: the kernels were already compiled for the GPU in this process")
        os.environ["TRITON_INTERPRET"] = "1"  # must precede the first kernel module import

    if args.precision not in PRECISIONS:
        raise UserError(f"--precision: choose from {', '.join(PRECISIONS)}; got {args.precision!r}")
    df = run(ops, providers, shapes, modes, dtype, device, quick=args.quick, sk_iters=args.sk_iters,
             precision=args.precision, interpreter=args.triton_interpreter, log=lambda m: print(m, file=sys.stderr))
    print(summary(df))
    out = Path(args.out) if args.out else Path(args.runs_dir) / "bench" / f"kernels-{device.type}-{now().replace(':', '')}.parquet"
    write_parquet(out, df)
    print(f"table: {out}")
    return 0
