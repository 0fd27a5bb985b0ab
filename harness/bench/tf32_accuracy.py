"""How accurate the tf32 projection is, against fp64: emulated on the CPU, or measured on a GPU.

    python -m harness.bench.tf32_accuracy [--device cuda] [--shapes NxC,...] [--rows R] [--out FILE.parquet]

`accuracy`/`table` use kernels/precision.py's bit-exact emulation of the tensor cores (the
static report prints that table); `measure_kernel` runs the projection kernel itself on a
device against fp64 (`make gpu-check` does, on the H200). Errors are stated for the mixing
logits (mix = RMSNorm(x)φ) and for the coefficients they feed (H_pre, H_post, H_res at the
trained-looking α and b scale `bench kernels` uses).
"""

from __future__ import annotations

import math

import torch

from harness.core.atomic import write_parquet
from kernels.coefficients import heads_reference
from kernels.precision import project_fp64, project_tf32
from kernels.project import project
from kernels.registry import Shape, op_spec


def accuracy(n: int, C: int, stream_dtype: torch.dtype, rows: int = 256, seed: int = 0, sk_iters: int = 20) -> dict:
    """Errors of the tf32 projection against fp64 on random tokens, and what they do to the
    coefficients: max |Δ mix| / max |mix|, rms relative error of mix, max |Δ H| over H_pre,
    H_post and H_res (α, b at the trained-looking scale `bench kernels` uses)."""
    p = op_spec("coefficients").make_inputs(Shape(rows, C, n), stream_dtype, torch.device("cpu"), seed)
    x = p["x"].detach().flatten(-2)
    phi = p["phi"].detach()
    exact = project_fp64(x, phi, 1e-6)
    approx = project_tf32(x, phi, 1e-6)
    err = (approx - exact).abs()
    scale = exact.abs().max().item()
    alphas = [p[f"alpha_{m}"].detach().double() for m in ("pre", "post", "res")]
    biases = [p[f"bias_{m}"].detach().double() for m in ("pre", "post", "res")]
    heads = lambda mix: heads_reference(mix, alphas, biases, n=n, learned=("pre", "post", "res"), sk_iters=sk_iters)[:3]  # noqa: E731
    dH = max((a - b).abs().max().item() for a, b in zip(heads(approx), heads(exact)))
    return dict(n=n, C=C, K=n * C, stream=str(stream_dtype).removeprefix("torch."), rows=rows,
                mix_max_rel=err.max().item() / scale, mix_rms_rel=(err.square().mean().sqrt() / exact.square().mean().sqrt()).item(),
                coefficients_max_abs=dH, bound_rel=2 * 2.0 ** -10)


def table(shapes=((4, 4096), (4, 7168), (8, 1024), (2, 768)), rows: int = 256) -> list[dict]:
    """`accuracy` for bf16 and fp32 streams at each (n, C)."""
    return [accuracy(n, C, dt, rows) for n, C in shapes for dt in (torch.bfloat16, torch.float32)]


def markdown(rows: list[dict]) -> str:
    lines = ["| n | C | K = nC | stream | max abs err / max abs mix | rms rel err of mix | max abs err in H_pre, H_post, H_res |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} | {r['C']} | {r['K']} | {r['stream']} | {r['mix_max_rel']:.1e} | {r['mix_rms_rel']:.1e} | "
                     f"{r['coefficients_max_abs']:.1e} |")
    return "\n".join(lines)



# =============================================================================================
# On a device: the real kernel against fp64 (`make gpu-check` runs this on the H200)
# =============================================================================================
def measure_kernel(n: int, C: int, stream_dtype: torch.dtype, precision: str, device: torch.device,
                   rows: int = 4096, seed: int = 0) -> dict:
    """The projection op (backend=triton) against fp64 at one shape: forward and backward errors,
    each as max |error| / max |reference| and rms relative, beside the CPU emulation's forward."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n * C, generator=g).to(stream_dtype)
    phi = torch.randn(n * C, n * n + 2 * n, generator=g) / math.sqrt(n * C)
    dmix = torch.randn(rows, n * n + 2 * n, generator=g)
    xl, pl = x.to(device).requires_grad_(), phi.to(device).requires_grad_()
    mix = project(xl, pl, 1e-6, "triton", precision)
    dx, dphi = torch.autograd.grad(mix, [xl, pl], dmix.to(device))
    x64, p64 = x.double().requires_grad_(), phi.double().requires_grad_()
    ref = project_fp64(x64, p64, 1e-6)
    dx64, dphi64 = torch.autograd.grad(ref, [x64, p64], dmix.double())
    out = dict(n=n, C=C, stream=str(stream_dtype).removeprefix("torch."), precision=precision, rows=rows,
               device=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type)
    for name, got, exp in (("mix", mix, ref), ("dx", dx, dx64), ("dphi", dphi, dphi64)):
        err = (got.detach().double().cpu() - exp.detach()).abs()
        out[f"{name}_max_rel"] = err.max().item() / exp.abs().max().item()
        out[f"{name}_rms_rel"] = (err.square().mean().sqrt() / exp.detach().square().mean().sqrt()).item()
    if precision == "tf32":
        emulated = project_tf32(x, phi, 1e-6)
        out["mix_rms_rel_emulated"] = ((emulated - ref.detach()).square().mean().sqrt() / ref.detach().square().mean().sqrt()).item()
    return out


def main(argv=None) -> int:
    """python -m harness.bench.tf32_accuracy [--device cuda] [--shapes NxC,...] [--rows R] [--out FILE.parquet]"""
    import argparse

    p = argparse.ArgumentParser(prog="python -m harness.bench.tf32_accuracy", description=main.__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", default="4x4096,4x7168,8x1024,2x768", help="comma-separated n x C")
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--precisions", default="tf32,tf32x3,ieee")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for shape in args.shapes.split(","):
        n, C = (int(v) for v in shape.split("x"))
        for dt in (torch.bfloat16, torch.float32):
            for precision in args.precisions.split(","):
                rows.append(measure_kernel(n, C, dt, precision, device, args.rows))
                r = rows[-1]
                print(f"n={n} C={C} {r['stream']:8s} {precision:6s} mix rms {r['mix_rms_rel']:.2e} max {r['mix_max_rel']:.2e}"
                      f"  dx rms {r['dx_rms_rel']:.2e}  dphi rms {r['dphi_rms_rel']:.2e}")
    if args.out:
        import pandas as pd


        write_parquet(args.out, pd.DataFrame(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
