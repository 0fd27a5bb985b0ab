"""`make gpu-check`: the prepared measurement for one borrowed H200, in at most about 8 minutes.

Runs from a plain checkout with the GPU machine's own Python (`PYTHONPATH=.`; torch, triton,
pandas, pyarrow and pytest, but no lm-eval, submitit or optuna, so nothing here imports them):

  1. tests     the kernel tests on CUDA (the kernels compiled and run for real: every op
               against its fp64 reference with random upstream gradients, the custom-op
               registration, tf32 within its bound) and the no-host-sync training step test
  2. precision the projection kernel against fp64 at the paper's shapes, tf32 / tf32x3 / ieee
               (what kernels/precision.py emulates on the CPU, measured: harness/bench/tf32_accuracy.py)
  3. kernels   `bench kernels` at the paper's shapes, bf16, ours beside Liger-Kernel's and the
               PyTorch reference, against the copy bandwidth measured in the same run
  4. model     `bench model` at gpt-s: identity / hc / mhc / mhc-lite x torch / compile / triton
  5. data      `bench data` at gpt-s on modded-nanogpt shards, up to the tensors on the GPU
               (pinned-memory copy included), against the tokens/s step 4 measures

Every step has its own time limit; one that fails or runs out of time is logged and the next
one runs, so a short lease still brings back what finished. Everything goes to OUT ($OUT when
the device tool runs it, else runs/gpu-check/<time>/): gpu-check.log (what ran, how long, exit
status), tests.log, precision.parquet, bench-kernels.parquet, bench-model.parquet,
bench-data.parquet, env.json.

Optional extras carried to the machine (the device has no network): Liger-Kernel's wheel in
.gpu-wheels/ (installed there with --no-deps into .gpu-wheels/site) and a few corpus shards in
.gpu-data/ for the training-step test (`make gpu-bundle` prepares both). Without them those
rows say skipped.

`--dry-run` runs the same steps on the CPU at toy sizes (the kernels in Triton's interpreter):
it checks the script, not the GPU (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from harness import PROJECT_ROOT

ROOT = PROJECT_ROOT
WHEELS, DATA = ROOT / ".gpu-wheels", ROOT / ".gpu-data"

# the kernel Sinkhorn is tested in test_kernels.py; test_sinkhorn.py is reference maths (and needs hypothesis)
KERNEL_TESTS = ["tests/test_kernels.py", "tests/test_kernel_ops.py", "tests/test_precision.py"]


def steps(out: Path, dry_run: bool) -> list[tuple[str, list[str], int]]:
    """(name, argv, time limit in s) per step; the dry run shrinks sizes, never the commands' shape."""
    py = [sys.executable]
    if dry_run:
        return [
            ("tests", py + ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_kernel_ops.py", "tests/test_precision.py"], 600),
            ("precision", py + ["-m", "harness.bench.tf32_accuracy", "--device", "cpu", "--shapes", "2x64", "--rows", "8",
                                "--precisions", "tf32,ieee", "--out", str(out / "precision.parquet")], 300),
            ("kernels", py + ["-m", "harness", "bench", "kernels", "--device", "cpu", "--quick", "--triton-interpreter",
                              "--ops", "premix,post_res", "--providers", "torch,triton,liger", "--modes", "fwd",
                              "--shapes", "64x40x4", "--dtype", "fp32", "--out", str(out / "bench-kernels.parquet")], 300),
            ("model", py + ["-m", "harness", "bench", "model", "--preset", "tiny", "--variants", "identity,mhc",
                            "--backends", "torch", "--peers", "none", "--rounds", "2", "--steps", "1", "--warmup", "1",
                            "--device", "cpu", "--out", str(out / "bench-model.parquet")], 600),
            ("data", py + ["-m", "harness", "bench", "data", "--preset", "tiny", "--sources", "modded-nanogpt", "--rounds", "1",
                           "--steps", "1", "--warmup", "1", "--shard-tokens", "200000", "--device", "cpu",
                           "--runs-dir", str(out / "runs"), "--out", str(out / "bench-data.parquet")], 300),
        ]
    return [
        ("tests", py + ["-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *KERNEL_TESTS,
                        "tests/test_train.py::test_steps_do_not_synchronise_with_the_host"], 200),
        ("precision", py + ["-m", "harness.bench.tf32_accuracy", "--device", "cuda", "--out", str(out / "precision.parquet")], 40),
        ("kernels", py + ["-m", "harness", "bench", "kernels", "--device", "cuda", "--dtype", "bf16",
                          "--shapes", "16384x4096x4,4096x7168x4,16384x4096x8", "--providers", "torch,triton,liger",
                          "--out", str(out / "bench-kernels.parquet")], 100),
        ("model", py + ["-m", "harness", "bench", "model", "--preset", "gpt-s", "--variants", "identity,hc,mhc,mhc-lite",
                        "--backends", "torch,compile,triton", "--peers", "none", "--rounds", "3", "--steps", "3",
                        "--warmup", "2", "--device", "cuda", "--out", str(out / "bench-model.parquet")], 170),
        ("data", py + ["-m", "harness", "bench", "data", "--preset", "gpt-s", "--sources", "modded-nanogpt", "--rounds", "3",
                       "--device", "cuda", "--runs-dir", str(out / "runs"), "--out", str(out / "bench-data.parquet")], 45),
    ]


def environment(dry_run: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    paths = [str(ROOT)]
    if (WHEELS / "site").is_dir():
        paths.append(str(WHEELS / "site"))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    if DATA.is_dir():
        env["MHC_BENCH_DATA"] = str(DATA)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"  # the kernels run in the interpreter on the CPU
    return env


def install_wheels(log) -> None:
    """Liger-Kernel (pure Python) from a carried wheel, without touching the machine's packages."""
    wheels = sorted(WHEELS.glob("*.whl")) if WHEELS.is_dir() else []
    if not wheels or (WHEELS / "site").is_dir():
        return
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                        "--target", str(WHEELS / "site"), *map(str, wheels)], capture_output=True, text=True)
    log(f"installed {', '.join(w.name for w in wheels)} into {WHEELS / 'site'}: exit {r.returncode} {r.stderr.strip()[-300:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bench.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at toy sizes (checks the script)")
    p.add_argument("--out", default="", help="output folder (default: $OUT, else runs/gpu-check/<time>)")
    p.add_argument("--only", default="", help="comma-separated steps to run: tests, precision, kernels, model")
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu-check" / time.strftime("%Y%m%dT%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    logfile = open(out / "gpu-check.log", "a")

    def log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print("gpu-check: error: no CUDA device here; `--dry-run` checks the script on a CPU", file=sys.stderr)
            return 2
    install_wheels(log)
    env = environment(args.dry_run)
    only = {s for s in args.only.split(",") if s}
    info = dict(python=platform.python_version(), dry_run=args.dry_run, started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                liger_wheel=sorted(w.name for w in WHEELS.glob("*.whl")) if WHEELS.is_dir() else [],
                data=str(DATA) if DATA.is_dir() else None, steps={})
    start = time.perf_counter()
    with open(out / "tests.log", "w") as tests_log:
        for name, cmd, limit in steps(out, args.dry_run):
            if only and name not in only:
                continue
            log(f"{name}: {' '.join(cmd[1:])} (limit {limit} s)")
            t0 = time.perf_counter()
            try:
                r = subprocess.run(cmd, cwd=ROOT, env=env, timeout=limit, text=True,
                                   stdout=tests_log if name == "tests" else subprocess.PIPE, stderr=subprocess.STDOUT)
                status, tail = r.returncode, (r.stdout or "")[-4000:]
            except subprocess.TimeoutExpired as e:
                status, tail = "timeout", (e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or "")[-4000:]
            seconds = time.perf_counter() - t0
            info["steps"][name] = dict(status=status, seconds=round(seconds, 1))
            log(f"{name}: exit {status} after {seconds:.0f} s" + (f"\n{tail}" if tail else ""))
    info["seconds"] = round(time.perf_counter() - start, 1)
    (out / "env.json").write_text(json.dumps(info, indent=2) + "\n")
    failed = [n for n, s in info["steps"].items() if s["status"] != 0]
    log(f"gpu-check {'(dry run) ' if args.dry_run else ''}finished in {info['seconds']:.0f} s; "
        + (f"failed or timed out: {', '.join(failed)}" if failed else "every step passed") + f"; results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
