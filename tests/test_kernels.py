"""The fused Triton kernels (kernels/) against their PyTorch references, forward and backward.

On a CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1
before any kernel module is imported); with a GPU they compile and run for real. Every case
draws fresh random inputs and random upstream gradients (never all-ones: for a doubly
stochastic output an all-ones gradient is zero), covers odd shapes (C not a multiple of the
block, T = 1, n in {1, 2, 3, 4, 8}), and runs with every kernel output poisoned (NaN) before the
call, so an element a kernel forgets to write fails. NaN and inf never pass.

Tolerance table. The reference is evaluated in float64 on the very same (already rounded)
inputs; elementwise |kernel - ref| <= rtol·|ref| + atol·max(1, max|ref|) (the atol term covers
sums with cancellation, e.g. dH or db summed over tokens, whose error scales with the terms):

    output                                       rtol      atol    why
    stream tensors, float32  (h, x', dx, dy)     1e-5      1e-6    fp32 accumulation order
    stream tensors, bfloat16                     2^-7      1e-5    one rounding to bf16 (<= 1/2 ulp = 2^-8 rel) + fp32 sums
    stream tensors, float16                      2^-10     1e-5    one rounding to fp16 (<= 2^-11 rel)
    fp32 coefficient maths (mix, H, dH, dφ, dα,  1e-4      1e-5    fp32 throughout, incl. k Sinkhorn rounds
      db; any stream dtype)                                        on badly scaled logits (range ~ 20)
"""

from __future__ import annotations

import math
import zlib

import pytest
import torch

pytest.importorskip("triton")

from harness.core.errors import UserError  # noqa: E402
from kernels import backend as kb  # noqa: E402
from kernels.coefficients import coefficient_heads, head_widths, heads_reference  # noqa: E402
from kernels.post_res import post_res, post_res_reference  # noqa: E402
from kernels.precision import tf32_error_bound  # noqa: E402
from kernels.premix import premix, premix_reference  # noqa: E402
from kernels.project import project, project_reference  # noqa: E402
from kernels.sinkhorn import sinkhorn, sinkhorn_reference  # noqa: E402
from kernels.sinkhorn_reference import stochasticity_gaps  # noqa: E402
from tests.sinkhorn_helpers import EXTREME_CASES, extreme_logits  # noqa: E402
from variants.mhc_lite import permutation_matrices  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if kb.triton_unavailable_reason(DEVICE):
    pytestmark = pytest.mark.skip(reason=f"Triton kernels cannot run here: {kb.triton_unavailable_reason(DEVICE)}")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STREAM_TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (2**-7, 1e-5), torch.float16: (2**-10, 1e-5)}
COEF_TOL = (1e-4, 1e-5)

# (n, tokens, C): C = 37 is one masked block, 130 and 300 span several 64-wide blocks with a tail
STREAM_SHAPES = [(n, T, C) for n in (1, 2, 3, 4, 8) for T, C in ((1, 37), (9, 130))] + [(4, 33, 300), (3, 1, 1)]
if DEVICE.type == "cuda":  # GPU tiles are up to 1024 wide: several blocks and a tail need a wider C
    STREAM_SHAPES += [(2, 3, 2500), (4, 5, 4097)]


@pytest.fixture(autouse=True)
def poisoned_small_blocks(monkeypatch):
    """Kernel outputs start as NaN; interpreter tiles at most 64 wide (several C blocks per row)."""
    monkeypatch.setattr(kb, "MAX_BLOCK_C_INTERPRET", 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a thread pool costs more than it saves
    with kb.poisoned_outputs():
        yield
    torch.set_num_threads(threads)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: tuple[float, float], what: str) -> None:
    """Elementwise |a - e| <= rtol |e| + atol max(1, max|e|); NaN/inf fail; the message shows the first mismatch."""
    rtol, atol = tol
    e = expected.detach().double().cpu()
    assert_within(actual, expected, rtol * e.abs() + atol * e.abs().max().clamp_min(1.0), what)


def assert_within(actual: torch.Tensor, expected: torch.Tensor, allowed: torch.Tensor, what: str) -> None:
    """Elementwise |a - e| <= allowed (a tensor of bounds); NaN/inf fail; the message shows the first mismatch."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    allowed = allowed.detach().double().cpu()
    assert torch.isfinite(e).all(), f"{what}: the reference itself is not finite"
    bad = ~torch.isfinite(a)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(f"{what}: non-finite value {a[idx].item()} at {idx} ({int(bad.sum())} of {a.numel()}; "
                             "an unwritten (poisoned) element or an overflow)")
    over = (a - e).abs() > allowed
    if over.any():
        idx = tuple(int(i) for i in over.nonzero()[0])
        raise AssertionError(f"{what}: first mismatch at {idx}: got {a[idx].item():.8g}, expected {e[idx].item():.8g} "
                             f"(allowed ±{allowed[idx].item():.3g}); {int(over.sum())} of {a.numel()} elements off, "
                             f"max |error| {(a - e).abs().max().item():.3g}")


def gen_for(*case) -> torch.Generator:
    """A generator seeded from the test case: fresh inputs per case, reproducible when one fails."""
    return torch.Generator().manual_seed(zlib.crc32(repr(case).encode()))


def rand(*shape, dtype=torch.float32, scale=1.0, gen=None):
    return (torch.randn(shape, generator=gen) * scale).to(device=DEVICE, dtype=dtype)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def run_both(kernel_fn, reference_fn, inputs: list, gen):
    """Kernel outputs/grads and float64-reference outputs/grads for the same inputs and upstream grads."""
    ins = [leaf(t) for t in inputs]
    outs = [o for o in kernel_fn(*ins) if o is not None]
    grads_up = [rand(*o.shape, gen=gen).to(o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, ins, grads_up)
    ins64 = [leaf(t.double()) for t in inputs]
    outs64 = [o for o in reference_fn(*ins64) if o is not None]
    grads64 = torch.autograd.grad(outs64, ins64, [g.double() for g in grads_up])
    return outs, grads, outs64, grads64


# ---------------------------------------------------------------------------------------------
# Pre-mix
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("n,T,C", STREAM_SHAPES)
@pytest.mark.parametrize("fixed", [False, True], ids=["H_pre", "fixed"])
def test_premix_matches_reference(n, T, C, dtype, fixed):
    g = gen_for((n, T, C, str(dtype), fixed))
    x, w = rand(T, n, C, dtype=dtype, gen=g), torch.rand((T, n), generator=g).to(DEVICE)
    if fixed:
        k = lambda x: (premix(x, None, "triton"),)  # noqa: E731
        r = lambda x: (premix_reference(x, None),)  # noqa: E731
        outs, grads, outs64, grads64 = run_both(k, r, [x], g)
    else:
        k = lambda x, w: (premix(x, w, "triton"),)  # noqa: E731
        r = lambda x, w: (premix_reference(x, w),)  # noqa: E731
        outs, grads, outs64, grads64 = run_both(k, r, [x, w], g)
        assert_close(grads[1], grads64[1], COEF_TOL, "dH_pre")
    assert outs[0].dtype == dtype and outs[0].shape == (T, C)
    assert_close(outs[0], outs64[0], STREAM_TOL[dtype], "h")
    assert_close(grads[0], grads64[0], STREAM_TOL[dtype], "dx")


# ---------------------------------------------------------------------------------------------
# Post + residual
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("n,T,C", STREAM_SHAPES)
@pytest.mark.parametrize("fixed", ["", "post", "res", "post,res"])
def test_post_res_matches_reference(n, T, C, dtype, fixed):
    g = gen_for((n, T, C, str(dtype), fixed))
    x, y = rand(T, n, C, dtype=dtype, gen=g), rand(T, C, dtype=dtype, gen=g)
    post = None if "post" in fixed else (2 * torch.rand((T, n), generator=g)).to(DEVICE)
    res = None if "res" in fixed else torch.rand((T, n, n), generator=g).to(DEVICE)
    inputs = [t for t in (x, y, post, res) if t is not None]

    def split(args):
        it = iter(args)
        return next(it), next(it), next(it) if post is not None else None, next(it) if res is not None else None

    k = lambda *a: (post_res(*split(a), "triton"),)  # noqa: E731
    r = lambda *a: (post_res_reference(*split(a)),)  # noqa: E731
    outs, grads, outs64, grads64 = run_both(k, r, inputs, g)
    assert outs[0].dtype == dtype
    assert_close(outs[0], outs64[0], STREAM_TOL[dtype], "x'")
    assert_close(grads[0], grads64[0], STREAM_TOL[dtype], "dx")
    assert_close(grads[1], grads64[1], STREAM_TOL[dtype], "dy")
    for name, gk, gr in zip(("dH_post", "dH_res") if post is not None else ("dH_res",), grads[2:], grads64[2:]):
        assert_close(gk, gr, COEF_TOL, name)


def test_post_res_branch_output_in_another_dtype():
    """A bf16 branch output merged into fp32 streams (autocast branches): dy comes back in bf16."""
    g = torch.Generator().manual_seed(0)
    x, y = rand(5, 3, 40, gen=g), rand(5, 40, dtype=torch.bfloat16, gen=g)
    post, res = torch.rand((5, 3), generator=g).to(DEVICE), torch.rand((5, 3, 3), generator=g).to(DEVICE)
    outs, grads, outs64, grads64 = run_both(lambda *a: (post_res(*a, "triton"),), lambda *a: (post_res_reference(*a),),
                                            [x, y, post, res], g)
    assert outs[0].dtype == torch.float32 and grads[1].dtype == torch.bfloat16
    assert_close(outs[0], outs64[0], STREAM_TOL[torch.float32], "x'")
    assert_close(grads[1], grads64[1], STREAM_TOL[torch.bfloat16], "dy")


# ---------------------------------------------------------------------------------------------
# Sinkhorn (forward, and the exact finite-k backward recomputed from the logits)
# ---------------------------------------------------------------------------------------------
SK_CASES = [(mode, n, k) for mode in ("paper", "kernel") for n in (1, 2, 3, 4, 8) for k in (0, 1, 3)]
SK_CASES += [("paper", 4, 20), ("kernel", 4, 20), ("paper", 3, 20)]


@pytest.mark.parametrize("mode,n,iters", SK_CASES)
def test_sinkhorn_matches_reference(mode, n, iters):
    g = gen_for((mode, n, iters))
    T = 1 if n == 3 and iters == 1 else 37
    logits = rand(T, n, n, scale=4.0, gen=g)  # badly scaled: ranges of ~20 per matrix
    outs, grads, outs64, grads64 = run_both(lambda l: (sinkhorn(l, iters, mode, "triton"),),
                                            lambda l: (sinkhorn_reference(l, iters, mode),), [logits], g)
    assert_close(outs[0], outs64[0], COEF_TOL, f"H_res ({mode}, k={iters})")
    assert_close(grads[0], grads64[0], COEF_TOL, f"dlogits ({mode}, k={iters})")


@pytest.mark.parametrize("iters", [1, 3, 20])
@pytest.mark.parametrize("case", EXTREME_CASES)
def test_sinkhorn_extreme_logits(case, iters):
    """Logit ranges of 100 to 1000 within a matrix, and a whole row and column 200 below the rest:
    in fp32 exp(L - max L) underflows there, and a linear-domain Sinkhorn's backward divides by a
    0 sum (NaN), its forward returns a 0 column. The log-domain kernels match the fp64 reference,
    forward and backward, with rows summing to 1."""
    n = 3 if iters == 3 else 4
    logits = extreme_logits(case, (37, n, n), seed=iters).to(DEVICE)
    outs, grads, outs64, grads64 = run_both(lambda l: (sinkhorn(l, iters, "paper", "triton"),),
                                            lambda l: (sinkhorn_reference(l, iters, "paper"),), [logits], gen_for(case, iters))
    bad = int((~torch.isfinite(grads[0])).sum())
    assert bad == 0, f"{bad} of {grads[0].numel()} gradients non-finite ({case}, k={iters})"
    assert_close(outs[0], outs64[0], COEF_TOL, f"H_res ({case}, k={iters})")
    assert_close(grads[0], grads64[0], COEF_TOL, f"dlogits ({case}, k={iters})")
    assert stochasticity_gaps(outs[0].detach())[0].max() <= 1e-6, "rows of H_res must sum to 1"


# ---------------------------------------------------------------------------------------------
# Projection RMSNorm(x) φ (GEMM fused with the sum of squares)
# ---------------------------------------------------------------------------------------------
PROJECT_SHAPES = [(1, 4, 3), (7, 37, 24), (33, 300, 80), (70, 600, 130), (5, 130, 6)]


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("R,K,W", PROJECT_SHAPES)
def test_project_matches_reference(R, K, W, dtype):
    """precision="ieee": fp32 FMA dots, to fp32 accuracy."""
    g = gen_for((R, K, W, str(dtype)))
    x, phi = rand(R, K, dtype=dtype, gen=g), rand(K, W, scale=1 / math.sqrt(K), gen=g)
    outs, grads, outs64, grads64 = run_both(lambda x, p: (project(x, p, 1e-6, "triton", "ieee"),),
                                            lambda x, p: (project_reference(x, p, 1e-6),), [x, phi], g)
    assert outs[0].dtype == torch.float32
    assert_close(outs[0], outs64[0], COEF_TOL, "mix")
    assert_close(grads[0], grads64[0], STREAM_TOL[dtype] if dtype != torch.float32 else COEF_TOL, "dx")
    assert_close(grads[1], grads64[1], COEF_TOL, "dphi")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("R,K,W", PROJECT_SHAPES)
def test_project_tf32_is_within_the_tf32_bound(R, K, W, dtype):
    """precision="tf32" (the default: tensor cores, as the paper): every element within the
    tf32 error bound of the fp64 result (kernels/precision.tf32_error_bound: each operand of
    each product off by < 2^-10 relative), plus fp32 accumulation slack. On a GPU that is what
    the tensor cores must meet; in the interpreter (whose dots are exact) it checks the op's
    own rounding of φ and dP, and the rounding must show (the bound is not met vacuously)."""
    g = gen_for((R, K, W, str(dtype), "tf32"))
    x, phi, dmix = rand(R, K, dtype=dtype, gen=g), rand(K, W, scale=1 / math.sqrt(K), gen=g), rand(R, W, gen=g)
    xl, pl = leaf(x), leaf(phi)
    mix = project(xl, pl, 1e-6, "triton", "tf32")
    dx, dphi = torch.autograd.grad(mix, [xl, pl], dmix)
    x64, p64 = leaf(x.double()), leaf(phi.double())
    ref = project_reference(x64, p64, 1e-6)
    dx64, dphi64 = torch.autograd.grad(ref, [x64, p64], dmix.double())
    xd, pd, dm, refd = x64.detach().cpu(), p64.detach().cpu(), dmix.double().cpu(), ref.detach().cpu()
    inv_r = torch.rsqrt(xd.square().mean(dim=-1, keepdim=True) + 1e-6)
    slack = lambda e: COEF_TOL[0] * e.detach().abs().cpu() + COEF_TOL[1] * e.detach().abs().max().cpu()  # noqa: E731
    assert_within(mix, ref, tf32_error_bound(xd, pd) * inv_r + slack(ref), "mix")
    dp = dm * inv_r
    coef_err = 2.0 ** -9 * (dm.abs() * refd.abs()).sum(dim=1, keepdim=True) * inv_r.square() / K
    stream = STREAM_TOL[dtype][0] * dx64.detach().abs().cpu()  # dx is rounded to the stream dtype
    assert_within(dx, dx64, tf32_error_bound(dp, pd.T) + coef_err * xd.abs() + slack(dx64) + stream, "dx")
    assert_within(dphi, dphi64, tf32_error_bound(xd.T, dp) + slack(dphi64), "dphi")
    if K >= 8:
        assert (mix.double().cpu() - refd).abs().max() > 1e-7, "no tf32 rounding happened"


# ---------------------------------------------------------------------------------------------
# Coefficient heads: α, b, σ, 2σ, Sinkhorn / permutation mixture, fused
# ---------------------------------------------------------------------------------------------
HEAD_CASES = [(n, ("pre", "post", "res"), "sinkhorn", 3, "paper") for n in (1, 2, 3, 4, 8)]
HEAD_CASES += [(4, ("pre", "post", "res"), "sinkhorn", 20, "paper"), (4, ("pre", "post", "res"), "sinkhorn", 2, "kernel"),
               (3, ("res",), "sinkhorn", 2, "paper"), (3, ("pre", "post"), "sinkhorn", 2, "paper"),
               (3, ("post", "res"), "sinkhorn", 0, "paper")]
HEAD_CASES += [(n, ("pre", "post", "res"), "perm", 0, "paper") for n in (1, 2, 3, 4, 5)] + [(4, ("pre", "res"), "perm", 0, "paper")]


@pytest.mark.parametrize("n,learned,kind,iters,mode", HEAD_CASES)
def test_coefficient_heads_match_reference(n, learned, kind, iters, mode):
    g = gen_for((n, learned, kind, iters, mode))
    T = 70  # two token blocks in the interpreter, the second one partial
    widths = head_widths(n, learned, kind)
    mix = rand(T, sum(widths), gen=g)
    alphas = [(0.5 + torch.rand((), generator=g)).to(DEVICE) for _ in learned]
    biases = [rand(*((n, n) if m == "res" and kind == "sinkhorn" else (w,)), scale=2.0, gen=g) for m, w in zip(learned, widths)]
    perms = permutation_matrices(n).to(DEVICE) if kind == "perm" else None
    k = len(learned)
    cfg = dict(n=n, learned=learned, res_kind=kind, sk_iters=iters, sk_mode=mode)

    def kern(m, *p):
        return coefficient_heads(m, p[:k], p[k:], perms=perms, backend="triton", **cfg)[:3]

    def ref(m, *p):
        return heads_reference(m, p[:k], p[k:], perms=None if perms is None else perms.double(), **cfg)[:3]

    outs, grads, outs64, grads64 = run_both(kern, ref, [mix, *alphas, *biases], g)
    names = [f"H_{m}" for m in ("pre", "post", "res") if m in learned]
    for name, o, o64 in zip(names, outs, outs64):
        assert_close(o, o64, COEF_TOL, name)
    for name, d, d64 in zip(["dmix"] + [f"dalpha_{m}" for m in learned] + [f"dbias_{m}" for m in learned], grads, grads64):
        assert_close(d, d64, COEF_TOL, name)
    if kind == "sinkhorn" and "res" in learned:  # the logits kept for diagnostics
        logits = coefficient_heads(mix, alphas, biases, perms=perms, backend="triton", **cfg)[3]
        assert_close(logits, heads_reference(mix.double(), [a.double() for a in alphas], [b.double() for b in biases], **cfg)[3],
                     COEF_TOL, "H_res logits")


@pytest.mark.parametrize("case", EXTREME_CASES)
def test_coefficient_heads_extreme_res_logits(case):
    """The fused kernel's Sinkhorn (the same device functions) at the logit ranges of the
    stand-alone test: H_res logits = α·mix + b with mix spanning the extreme range."""
    n, iters, learned = 4, 20, ("pre", "post", "res")
    g = gen_for("heads", case)
    T = 70
    res = extreme_logits(case, (T, n, n), seed=1).reshape(T, n * n).to(DEVICE)
    mix = torch.cat([rand(T, 2 * n, gen=g), res], dim=1)
    alphas = [(0.5 + torch.rand((), generator=g)).to(DEVICE) for _ in learned]
    biases = [rand(n, gen=g), rand(n, gen=g), rand(n, n, gen=g)]
    cfg = dict(n=n, learned=learned, res_kind="sinkhorn", sk_iters=iters, sk_mode="paper")
    outs, grads, outs64, grads64 = run_both(lambda m, *p: coefficient_heads(m, p[:3], p[3:], backend="triton", **cfg)[:3],
                                            lambda m, *p: heads_reference(m, p[:3], p[3:], **cfg)[:3],
                                            [mix, *alphas, *biases], g)
    for name, o, o64 in zip(("H_pre", "H_post", "H_res"), outs, outs64):
        assert_close(o, o64, COEF_TOL, f"{name} ({case})")
    for name, d, d64 in zip(["dmix", *(f"dalpha_{m}" for m in learned), *(f"dbias_{m}" for m in learned)], grads, grads64):
        assert_close(d, d64, COEF_TOL, f"{name} ({case})")
    assert stochasticity_gaps(outs[2].detach())[0].max() <= 1e-6, "rows of H_res must sum to 1"


# ---------------------------------------------------------------------------------------------
# The variants: backend=triton matches backend=torch, outputs and every gradient
# ---------------------------------------------------------------------------------------------
VARIANT_CASES = [("hc", n, {}) for n in (1, 3, 4)] + [("hc", 3, {"mode": "static"}), ("hc", 3, {"fixed": "pre,res"})]
VARIANT_CASES += [("mhc", n, {}) for n in (1, 2, 3, 4)] + [
    ("mhc", 4, {"sk_mode": "kernel", "sk_iters": 3}), ("mhc", 3, {"sk_iters": 0}), ("mhc", 3, {"mode": "static"}),
    ("mhc", 3, {"fixed": "pre,post"}), ("mhc", 3, {"fixed": "res"}), ("mhc", 2, {"fixed": "pre,post,res"})]
VARIANT_CASES += [("mhc-lite", n, {}) for n in (2, 3, 4)] + [("mhc-lite", 3, {"fixed": "post"}), ("mhc-lite", 3, {"mode": "static"})]


@pytest.mark.parametrize("name,n,extra", VARIANT_CASES)
def test_variant_backends_agree(name, n, extra):
    from harness.core.config import VariantConfig
    from variants.registry import build_variant

    C, index = 24, 3
    options = {"precision": "ieee", **({"sk_iters": 5} if name == "mhc" else {}), **extra}  # exact; tf32 has its bound above
    modules = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        modules[backend] = build_variant(VariantConfig(name=name, n_streams=n, backend=backend, **options), C, 8).make(index).to(DEVICE)
    r_torch, r_triton = modules["torch"], modules["triton"]
    g = gen_for(name, n, extra)
    with torch.no_grad():  # move every parameter off its init so that each one matters
        for p in r_torch.parameters():
            p.add_(rand(*p.shape, scale=0.5, gen=g))
    r_triton.load_state_dict(r_torch.state_dict())
    torch.manual_seed(2)
    branch = torch.nn.Linear(C, C).to(DEVICE)
    x = rand(2, 5, n, C, gen=g)
    upstream = rand(2, 5, n, C, gen=g)
    results = {}
    for backend, r in (("torch", r_torch), ("triton", r_triton)):
        xi = leaf(x)
        out = r(xi, branch)
        params = [xi, *r.parameters()]
        results[backend] = (out, torch.autograd.grad(out, params, upstream))
    (out_t, grads_t), (out_k, grads_k) = results["torch"], results["triton"]
    assert_close(out_k, out_t, COEF_TOL, "x'")
    names = ["x"] + [k for k, _ in r_torch.named_parameters()]
    for pname, gk, gt in zip(names, grads_k, grads_t):
        assert_close(gk, gt, COEF_TOL, f"d{pname}")


# ---------------------------------------------------------------------------------------------
# The backend switch
# ---------------------------------------------------------------------------------------------
def test_auto_is_torch_without_cuda_and_triton_on_cuda():
    assert kb.resolve("auto", torch.device("cpu")) == "torch"
    assert kb.resolve("torch", DEVICE) == "torch"
    if DEVICE.type == "cuda":
        assert kb.resolve("auto", DEVICE) == "triton"
    x = torch.randn(3, 2, 5, dtype=torch.float64)  # gradcheck dtype: auto quietly runs the reference
    torch.testing.assert_close(premix(x, None, "auto"), premix_reference(x, None))


def test_triton_never_silently_falls_back(monkeypatch):
    x64 = torch.randn(3, 2, 5, dtype=torch.float64, device=DEVICE)
    with pytest.raises(UserError, match="float32/bfloat16/float16"):
        premix(x64, None, "triton")
    with pytest.raises(UserError, match="'converged' has no kernel"):
        sinkhorn(torch.randn(2, 3, 3, device=DEVICE), 5, "converged", "triton")
    with pytest.raises(UserError, match="at most 256 output columns"):
        project(torch.randn(2, 8, device=DEVICE), torch.randn(8, 300, device=DEVICE), 1e-6, "triton")
    with pytest.raises(UserError, match="unknown kernel backend 'cuda'"):
        premix(torch.randn(3, 2, 5), None, "cuda")
    monkeypatch.setattr(kb, "interpreting", lambda: False)
    with pytest.raises(UserError, match="need a CUDA device.*TRITON_INTERPRET=1"):
        kb.resolve("triton", torch.device("cpu"))


def test_poisoned_outputs_are_nan_and_fail_the_comparison():
    t = kb.empty((2, 3), torch.float32, DEVICE)
    assert torch.isnan(t).all()
    with pytest.raises(AssertionError, match="non-finite value nan at \\(0, 0\\)"):
        assert_close(t, torch.zeros(2, 3), COEF_TOL, "unwritten")
    with pytest.raises(AssertionError, match="first mismatch at \\(1,\\)"):
        assert_close(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.1]), COEF_TOL, "off")
