"""The compiled CPU kernels (kernels/*_cpu.cpp) against their PyTorch references, forward and backward.

Every case draws fresh random inputs and a random upstream gradient (never all-ones: for a doubly
stochastic output an all-ones gradient is zero), covers token counts that leave a partial tile
(the kernels work on tiles of 16 tokens), n from 1 to 16, and runs with the kernels' outputs
poisoned (NaN) first, so an element a kernel forgets to write fails. The reference is evaluated
in float64 on the same inputs; the kernel runs in fp32 (the tolerance of tests/test_kernels.py's
fp32 coefficient maths) and in fp64 (to 1e-10: the same maths, only rounded differently).
"""

from __future__ import annotations

import os

import pytest
import torch

from harness.core.errors import UserError
from kernels import backend as kb
from kernels import cpu_build
from kernels.orthostochastic import orthostochastic, orthostochastic_reference
from kernels.post_res import post_res, post_res_reference
from kernels.premix import premix, premix_reference
from kernels.project import project, project_reference
from kernels.sinkhorn import sinkhorn, sinkhorn_reference
from kernels.sinkhorn_reference import stochasticity_gaps
from tests.sinkhorn_helpers import EXTREME_CASES, assert_matches, extreme_logits

if cpu_build.unavailable_reason():  # a machine without a compiler says why; CI (MHC_REQUIRE_CPU_KERNELS=1) fails instead
    if os.environ.get("MHC_REQUIRE_CPU_KERNELS") == "1":
        raise RuntimeError(f"MHC_REQUIRE_CPU_KERNELS=1 but the CPU kernels cannot be built: {cpu_build.unavailable_reason()}")
    pytestmark = pytest.mark.skip(reason=f"the CPU kernels cannot be built here: {cpu_build.unavailable_reason()}")

TOL = {torch.float32: (1e-4, 1e-5), torch.float64: (1e-10, 1e-12)}
DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def kernels_on_poisoned(single_thread):
    with kb.cpu_kernels("on"), kb.poisoned_outputs():
        yield


def both(fn, ref, inputs, dtype, seed):
    """(outputs and input gradients of fn in `dtype`, the same of ref in float64), one random upstream."""
    results = []
    for f, dt in ((fn, dtype), (ref, torch.float64)):
        xs = [t.detach().to(dt).requires_grad_() for t in inputs]
        out = f(*xs)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dt)
        results.append((out, torch.autograd.grad(out, xs, up)))
    return results


def check(fn, ref, inputs, dtype, what, seed=0):
    (out, grads), (out64, grads64) = both(fn, ref, inputs, dtype, seed)
    assert out.dtype == dtype, f"{what}: output {out.dtype}, wanted {dtype}"
    rtol, atol = TOL[dtype]
    assert_matches(out, out64, f"{what} output", rtol, atol)
    for k, (a, e) in enumerate(zip(grads, grads64)):
        assert_matches(a, e, f"{what} gradient {k}", rtol, atol)


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# ---------------------------------------------------------------------------------------------
# Sinkhorn
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("mode,k", [("paper", 0), ("paper", 1), ("paper", 3), ("paper", 20), ("kernel", 0),
                                    ("kernel", 1), ("kernel", 3), ("kernel", 20)])
@pytest.mark.parametrize("n,T", [(1, 5), (2, 17), (3, 33), (4, 64), (4, 1), (8, 19), (16, 3)])
def test_sinkhorn_matches_reference(n, T, mode, k, dtype):
    logits = rand(T, n, n, seed=n * 100 + k, scale=3.0)
    check(lambda l: sinkhorn(l, k, mode), lambda l: sinkhorn_reference(l, k, mode), [logits], dtype,
          f"sinkhorn {mode} k={k} n={n} T={T}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("case", EXTREME_CASES)
def test_sinkhorn_extreme_logit_ranges(case, k, dtype):
    """The log-domain tests' ranges (100 to 1000 within a matrix, a row and column 200 below): where
    the linear domain would underflow, these tokens take the log-domain recursion; finite, rows exact."""
    logits = extreme_logits(case, (37, 4, 4), seed=k).double()
    check(lambda l: sinkhorn(l, k), lambda l: sinkhorn_reference(l, k, "paper"), [logits], dtype, f"sinkhorn {case} k={k}")
    h = sinkhorn(logits.to(dtype), k)
    assert stochasticity_gaps(h)[0].max() <= 1e-6


def test_sinkhorn_tile_mixing_large_and_small_ranges():
    """Tokens of one tile take different paths (linear below the range threshold, log domain above
    it, at 29, 31, 300 and a row 200 down): each matches the reference, none disturbs another."""
    parts = [extreme_logits(f"range {w}", (5, 4, 4), seed=i) for i, w in enumerate((1, 29, 31, 300))]
    parts.append(extreme_logits("row and column -200", (5, 4, 4)))
    logits = torch.cat(parts)[torch.randperm(25, generator=torch.Generator().manual_seed(0))].double()
    check(lambda l: sinkhorn(l, 20), lambda l: sinkhorn_reference(l, 20, "paper"), [logits], torch.float32, "mixed tile")


def test_sinkhorn_nan_stays_in_its_token():
    logits = rand(20, 4, 4, seed=3).float()
    logits[7, 1, 2] = float("nan")
    logits[9, 0, 0] = float("inf")
    h = sinkhorn(logits, 20)
    ref = sinkhorn_reference(logits, 20, "paper")
    bad = ~torch.isfinite(h).flatten(1).all(1)
    assert bad.tolist() == [t in (7, 9) for t in range(20)]
    assert torch.isnan(h[7]).all() and torch.isnan(ref[7]).all()
    keep = ~bad
    assert_matches(h[keep], ref[keep], "tokens without NaN")


@pytest.mark.parametrize("mode,k", [("paper", 0), ("paper", 1), ("paper", 20), ("kernel", 1), ("kernel", 5)])
def test_gradcheck_sinkhorn(mode, k):
    l = rand(17, 3, 3, seed=k, scale=1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sinkhorn(t, k, mode), (l,))


@pytest.mark.parametrize("case", ["range 300", "range 1000", "row and column -200"])
def test_gradcheck_sinkhorn_extreme(case):
    l = extreme_logits(case, (3, 3, 3), seed=1).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sinkhorn(t, 5), (l,))


# ---------------------------------------------------------------------------------------------
# Newton-Schulz (orthostochastic), projection, pre-mix, merge
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("steps", [0, 1, 5])
@pytest.mark.parametrize("n,T", [(1, 3), (2, 17), (3, 20), (4, 64), (8, 5), (16, 2)])
def test_orthostochastic_matches_reference(n, T, steps, dtype):
    logits = rand(T, n, n, seed=n + steps) + torch.eye(n, dtype=torch.float64)
    check(lambda l: orthostochastic(l, steps), lambda l: orthostochastic_reference(l, steps), [logits], dtype,
          f"orthostochastic n={n} steps={steps}")


def test_orthostochastic_zero_logits_have_the_reference_gradient():
    z = torch.zeros(3, 4, 4, dtype=torch.float64)
    z[1] = rand(4, 4, seed=1)
    check(lambda l: orthostochastic(l, 5), lambda l: orthostochastic_reference(l, 5), [z], torch.float64, "zero logits")


def test_gradcheck_orthostochastic():
    l = (rand(17, 3, 3, seed=2) + torch.eye(3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: orthostochastic(t, 3), (l,))


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("R,K,W", [(1, 4, 3), (7, 37, 24), (33, 300, 80), (5, 130, 6), (64, 256, 24)])
def test_project_matches_reference(R, K, W, dtype):
    x, phi = rand(R, K, seed=R), rand(K, W, seed=K, scale=K**-0.5)
    check(lambda x, p: project(x, p, 1e-6), lambda x, p: project_reference(x, p, 1e-6), [x, phi], dtype,
          f"project {R}x{K}x{W}")


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("n,T,C", [(1, 3, 37), (2, 9, 130), (3, 5, 17), (4, 33, 64), (8, 2, 300)])
@pytest.mark.parametrize("fixed", ["", "pre", "post", "res", "post,res"])
def test_premix_and_merge_match_reference(n, T, C, fixed, dtype):
    x, y = rand(2, T, n, C, seed=1), rand(2, T, C, seed=2)
    pre, post, res = rand(2, T, n, seed=3).sigmoid(), 2 * rand(2, T, n, seed=4).sigmoid(), rand(2, T, n, n, seed=5).softmax(-1)
    if "pre" in fixed:
        check(lambda x: premix(x, None), lambda x: premix_reference(x, None), [x], dtype, "premix 1/n")
    else:
        check(premix, premix_reference, [x, pre], dtype, "premix")
    ins = [x, y] + ([] if "post" in fixed else [post]) + ([] if "res" in fixed else [res])

    def with_fixed(fn):
        def run(x, y, *h):
            it = iter(h)
            return fn(x, y, None if "post" in fixed else next(it), None if "res" in fixed else next(it))
        return run

    check(with_fixed(post_res), with_fixed(post_res_reference), ins, dtype, f"post_res fixed={fixed!r}")


def test_broadcast_static_coefficients_get_their_summed_gradient():
    """Static mode hands per-layer coefficients expanded over (B, T); autograd sums them back."""
    x, y, b = rand(2, 5, 4, 16, seed=1), rand(2, 5, 16, seed=2), rand(4, 4, seed=3).softmax(-1)
    check(lambda x, y, b: post_res(x, y, None, b.expand(2, 5, 4, 4)),
          lambda x, y, b: post_res_reference(x, y, None, b.expand(2, 5, 4, 4)), [x, y, b], torch.float32, "broadcast H_res")


def test_gradcheck_stream_ops():
    x, y = rand(2, 3, 3, 5, seed=1).requires_grad_(), rand(2, 3, 5, seed=2).requires_grad_()
    pre, res = rand(2, 3, 3, seed=3).requires_grad_(), rand(2, 3, 3, 3, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(premix, (x, pre))
    assert torch.autograd.gradcheck(lambda x, y, p, r: post_res(x, y, p, r), (x, y, pre, res))
    phi = rand(5, 4, seed=5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: project(x, p, 1e-6), (x.reshape(-1, 5), phi))


def test_other_dtypes_and_options_run_the_reference():
    """bf16 streams, the converged Sinkhorn and n > 16 have no CPU kernel: the reference, bit for bit."""
    x = rand(2, 3, 4, 8, seed=1).bfloat16()
    assert torch.equal(premix(x, None), premix_reference(x, None))
    l = rand(3, 4, 4, seed=2).float()
    with kb.cpu_kernels("on"):
        from kernels.coefficients import coefficient_heads

        got = coefficient_heads(None, None, [l[0].flatten()], n=4, learned=("res",), sk_mode="converged", batch_shape=(3,))[2]
    assert torch.equal(got, sinkhorn_reference(l[0].expand(3, 4, 4), mode="converged"))
    big = rand(2, 17, 17, seed=3).float()
    assert torch.equal(sinkhorn(big, 3), sinkhorn_reference(big, 3, "paper"))


# ---------------------------------------------------------------------------------------------
# Under torch.compile: Sinkhorn and Newton-Schulz are custom ops (opcheck: schema, fake shapes,
# autograd, AOT dispatch); pre-mix and merge leave the reference to inductor. A compiled model's
# loss and gradients equal the eager ones.
# ---------------------------------------------------------------------------------------------
def test_cpu_custom_ops_pass_opcheck():
    from kernels.orthostochastic import (
        orthostochastic_cpu_backward_op,
        orthostochastic_cpu_op,
    )
    from kernels.sinkhorn import sinkhorn_cpu_backward_op, sinkhorn_cpu_op

    f = lambda *s: rand(*s, seed=sum(s)).float()  # noqa: E731
    g = lambda *s: f(*s).requires_grad_()  # noqa: E731
    T, n = 19, 3
    for mode in ("paper", "kernel"):
        torch.library.opcheck(sinkhorn_cpu_op, (g(T, n, n), 4, mode))
        torch.library.opcheck(sinkhorn_cpu_backward_op, (f(T, n, n), f(T, n, n), 4, mode))
    torch.library.opcheck(orthostochastic_cpu_op, (g(T, n, n), 3))
    torch.library.opcheck(orthostochastic_cpu_backward_op, (f(T, n, n), f(T, n, n), 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mhc", "orthostochastic", "hc"])
def test_compiled_model_matches_eager_through_the_kernels(name):
    from harness.core.config import apply_overrides
    from harness.core.presets import get_preset
    from harness.train.model import build_model

    cfg = apply_overrides(get_preset("tiny"), [f"variant.name={name}"])
    torch.manual_seed(0)
    model = build_model(cfg, 256)
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    results = []
    for fwd in (model, torch.compile(model, fullgraph=True)):
        model.zero_grad(set_to_none=True)
        _, loss = fwd(idx, idx)
        loss.backward()
        results.append((loss.detach(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}))
    torch._dynamo.reset()
    (loss, grads), (loss_c, grads_c) = results
    assert_matches(loss_c, loss, "compiled loss")
    assert grads.keys() == grads_c.keys()
    for k in grads:
        assert_matches(grads_c[k], grads[k], f"compiled gradient of {k}", 1e-3, 1e-5)


# ---------------------------------------------------------------------------------------------
# The switch: auto falls back silently, on refuses in one line, off is the reference
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def broken_build(monkeypatch, tmp_path):
    """A machine whose compiler fails: an empty cache and a CXX that cannot compile."""
    monkeypatch.setenv("MHC_BENCH_CPU_KERNELS_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CXX", "false")
    cpu_build.forget()
    yield
    cpu_build.forget()


def test_a_failed_build_falls_back_silently_under_auto(broken_build):
    assert "false failed" in cpu_build.unavailable_reason()
    l = rand(5, 4, 4, seed=1).float()
    with kb.cpu_kernels("auto"):
        assert torch.equal(sinkhorn(l, 20), sinkhorn_reference(l, 20, "paper"))


def test_a_failed_build_is_one_line_under_on(broken_build):
    with pytest.raises(UserError) as e:
        kb.set_cpu_kernels("on")
    msg = str(e.value)
    assert "\n" not in msg and "train.cpu_kernels=on" in msg and "false failed" in msg
    assert kb.cpu_kernel_mode() == "on"  # the fixture's block, unchanged by the refused call


def test_no_compiler_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("MHC_BENCH_CPU_KERNELS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    cpu_build.forget()
    try:
        assert cpu_build.unavailable_reason() == "no C++ compiler found (set CXX, or install g++ or clang++)"
    finally:
        cpu_build.forget()


def test_train_refuses_on_without_a_build_before_writing_anything(broken_build, tiny_cfg, tmp_path):
    from harness.train.loop import train

    cfg = tiny_cfg("variant.name=mhc", "train.cpu_kernels=on", "train.steps=2")
    with kb.cpu_kernels("auto"), pytest.raises(UserError, match="train.cpu_kernels=on: the CPU kernels cannot be built"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


def test_build_is_cached_and_keyed_by_source(monkeypatch, tmp_path):
    """A second process reuses the build; an edited source builds anew (its own folder)."""
    monkeypatch.setenv("MHC_BENCH_CPU_KERNELS_DIR", str(tmp_path))
    lib = cpu_build.build()
    assert lib.parent.parent == tmp_path and cpu_build.build() == lib
    assert [p.name for p in lib.parent.iterdir()] == [cpu_build.LIBRARY]  # no temporary left behind
    cxx = cpu_build.compiler()
    key = cpu_build.build_key(cxx)
    monkeypatch.setattr(cpu_build, "FLAGS", (*cpu_build.FLAGS, "-DMHC_TEST_VARIANT"))
    assert cpu_build.build_key(cxx) != key


def test_unknown_mode_is_refused():
    with pytest.raises(UserError, match="unknown CPU-kernel mode 'fast'"):
        kb.set_cpu_kernels("fast")


# ---------------------------------------------------------------------------------------------
# Training numbers: unchanged, to fp32 round-off
# ---------------------------------------------------------------------------------------------
def train_losses(cfg):
    import json

    import pandas as pd

    from harness.train.loop import train

    result = train(cfg)
    assert result.status == "done"
    env = json.loads((result.run_dir / "env.json").read_text())
    df = pd.read_parquet(result.run_dir / "metrics.parquet")
    return env["cpu_kernels"], df[df.split == "train"].set_index("step")["loss"], df[df.split == "val"]["loss"].to_numpy()


@pytest.mark.slow
def test_a_16_block_mhc_run_trains_the_same_losses_with_and_without_the_kernels(tiny_cfg):
    """50 steps of mHC at 16 blocks (where the CPU studies train): the kernels compute the
    reference's maths in another order, so the losses agree to fp32 round-off, step by step."""
    common = ("variant.name=mhc", "model.n_layer=16", "train.steps=50", "train.eval_every=25", "train.checkpoint_every=0")
    ran_on, on, val_on = train_losses(tiny_cfg(*common, "train.cpu_kernels=on", "run.name=on"))
    ran_off, off, val_off = train_losses(tiny_cfg(*common, "train.cpu_kernels=off", "run.name=off"))
    assert (ran_on, ran_off) == ("on", "off")
    assert list(on.index) == list(range(1, 51))
    assert not (on.values == off.values).all(), "the kernels did not run (bitwise equal to the reference)"
    rel = ((on - off).abs() / off.abs()).max()
    assert rel < 1e-4, f"train losses differ by up to {rel:.2e} (relative)"
    assert abs(val_on - val_off).max() < 1e-4 * abs(val_off).max()
