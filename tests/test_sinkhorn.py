"""Sinkhorn-Knopp conventions and the permutation mixture: marginals, convergence, gradients."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.sinkhorn_reference import (
    KERNEL_EPS,
    capped,
    sinkhorn,
    sinkhorn_converged,
    sinkhorn_kernel,
    sinkhorn_paper,
    stochasticity_gaps,
)
from tests.sinkhorn_helpers import (
    EXTREME_CASES,
    assert_matches,
    extreme_logits,
    linear_paper,
)
from variants.mhc_lite import permutation_matrices, permutation_mixture

pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread


def logits(scale: float, shape=(256, 4, 4), seed=0) -> torch.Tensor:
    """Random logits; scale 5 gives a max - min range of ~30 per matrix (badly scaled)."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_badly_scaled_fixture_really_is_badly_scaled():
    l = logits(5.0)
    assert (l.amax((-2, -1)) - l.amin((-2, -1))).max() > 30


@pytest.mark.parametrize("scale", [1.0, 5.0, 10.0])
@pytest.mark.parametrize("n", [2, 4])
def test_paper_rows_exact_after_every_round(scale, n):
    l = logits(scale, (256, n, n))
    for k in range(1, 21):
        m = sinkhorn_paper(l, k)
        assert m.dtype == torch.float32 and (m >= 0).all()
        row_gap, _ = stochasticity_gaps(m)
        assert row_gap.max() <= 1e-6, (k, row_gap.max())


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_paper_column_error_non_increasing_on_average(scale):
    l = logits(scale, (1024, 4, 4))
    errors = [stochasticity_gaps(sinkhorn_paper(l, k))[1].mean().item() for k in range(1, 21)]
    for k, (a, b) in enumerate(zip(errors, errors[1:]), start=1):
        assert b <= a * (1 + 1e-6) + 1e-7, f"mean column error rose from k={k} to {k + 1}: {a} -> {b}"
    assert errors[-1] < 0.1 * errors[0]


def test_paper_zero_iterations_is_plain_exp():
    l = logits(1.0, (8, 3, 3))
    torch.testing.assert_close(sinkhorn_paper(l, 0), torch.exp(l))


def test_shift_invariance_and_no_overflow():
    l = logits(1.0, (16, 4, 4))
    torch.testing.assert_close(sinkhorn_paper(l + 500.0, 5), sinkhorn_paper(l, 5))
    # a whole column far below the max (exp(L - max L) would underflow to 0 in fp32): finite
    bad = l.clone()
    bad[:, :, 0] -= 200.0
    assert torch.isfinite(sinkhorn_paper(bad, 20)).all()


# ---------------------------------------------------------------------------------------------
# Extreme logit ranges: in the linear domain a whole column or row of exp(L - max L) underflows
# past a range of ~87 in fp32 and the backward divides by its 0 sum (mHC went NaN at lr >= 0.1)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("case", EXTREME_CASES)
def test_paper_at_extreme_logit_ranges_is_finite_and_matches_fp64(case, k):
    l = extreme_logits(case, seed=k)
    x = l.clone().requires_grad_()
    h = sinkhorn_paper(x, k)
    upstream = torch.randn(l.shape, generator=torch.Generator().manual_seed(1))  # random: all-ones is vacuous
    (dl,) = torch.autograd.grad(h, x, upstream)
    x64 = l.double().requires_grad_()
    h64 = sinkhorn_paper(x64, k)
    (dl64,) = torch.autograd.grad(h64, x64, upstream.double())
    bad = int((~torch.isfinite(dl)).sum())
    assert bad == 0 and torch.isfinite(h).all(), f"{bad} of {dl.numel()} gradients non-finite ({case}, k={k})"
    assert_matches(h, h64, f"H ({case}, k={k})")
    assert_matches(dl, dl64, f"dlogits ({case}, k={k})")
    assert stochasticity_gaps(h)[0].max() <= 1e-6  # rows exact, as at any range
    assert dl.abs().max() > 1e-3  # the gradient is not vacuously 0


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("case", ["range 100", "range 300", "row and column -200"])
def test_log_domain_is_the_linear_recursion_in_float64(case, k):
    """Below a range of ~700, float64's exp does not underflow: the textbook linear-domain
    recursion, differentiated by autograd, is an independent check of the log-domain maths."""
    l = extreme_logits(case, seed=k).double()
    upstream = torch.randn(l.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for fn in (sinkhorn_paper, linear_paper):
        x = l.clone().requires_grad_()
        h = fn(x, k)
        results.append((h, *torch.autograd.grad(h, x, upstream)))
    (h, dl), (h_lin, dl_lin) = results
    torch.testing.assert_close(h, h_lin, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(dl, dl_lin, rtol=1e-9, atol=1e-12)


def test_converged_at_extreme_logit_ranges_is_finite():
    l = extreme_logits("range 300", (16, 4, 4)).requires_grad_()
    m, rounds = sinkhorn_converged(l, 1e-6, 200)
    (dl,) = torch.autograd.grad(m, l, torch.randn(m.shape, generator=torch.Generator().manual_seed(3)))
    assert torch.isfinite(m).all() and torch.isfinite(dl).all() and dl.abs().max() > 1e-3
    row_gap, col_gap = stochasticity_gaps(m)
    assert row_gap.max() <= 1e-6 and col_gap[~capped(m, 1e-6)].max() <= 1e-6 and (rounds < 200).any()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), width=st.floats(0.0, 1000.0), offset=st.floats(-1e3, 1e3), k=st.integers(1, 20),
       seed=st.integers(0, 2**31 - 1))
def test_paper_finite_with_exact_rows_at_any_logit_range(n, width, offset, k, seed):
    l = (extreme_logits(f"range {width}", (3, n, n), seed=seed) + offset).requires_grad_()
    h = sinkhorn_paper(l, k)
    (dl,) = torch.autograd.grad(h, l, torch.randn(h.shape, generator=torch.Generator().manual_seed(seed)))
    assert torch.isfinite(h).all() and torch.isfinite(dl).all() and (h >= 0).all()
    assert stochasticity_gaps(h)[0].max() <= 1e-6


def test_kernel_mode_columns_exact_and_rows_carry_the_error():
    l = logits(1.0)
    m = sinkhorn_kernel(l, 0)  # row softmax (+ eps) only
    torch.testing.assert_close(m.sum(-1), torch.full((256, 4), 1 + 4 * KERNEL_EPS))
    for k in (1, 2, 5, 20):
        row_gap, col_gap = stochasticity_gaps(sinkhorn_kernel(l, k))
        assert col_gap.max() <= 10 * KERNEL_EPS, k  # exact up to the eps offsets
    assert stochasticity_gaps(sinkhorn_kernel(l, 1))[0].mean() > 0.05  # rows are not


def test_kernel_and_paper_differ_at_finite_k_but_share_the_limit():
    l = logits(1.0, (64, 4, 4))
    assert (sinkhorn_kernel(l, 3) - sinkhorn_paper(l, 3)).abs().max() > 1e-3
    exact, _ = sinkhorn_converged(l.double(), 1e-12, 10_000)
    torch.testing.assert_close(sinkhorn_paper(l, 200).double(), exact, atol=1e-5, rtol=0)
    torch.testing.assert_close(sinkhorn_kernel(l, 200).double(), exact, atol=1e-5, rtol=0)


def test_converged_meets_its_tolerance():
    l = logits(2.0)
    m, rounds = sinkhorn_converged(l, 1e-6, 2000)
    row_gap, col_gap = stochasticity_gaps(m)
    assert row_gap.max() <= 1e-6 and col_gap.max() <= 1e-6 and rounds.max() < 2000
    assert rounds.shape == l.shape[:-2] and rounds.min() < rounds.max()  # each matrix its own count
    assert not capped(m, 1e-6).any()
    torch.testing.assert_close(sinkhorn(l, mode="converged", tol=1e-6, max_iters=2000), m)


def test_converged_stops_per_matrix_so_no_token_changes_another():
    # A batch-wide stopping rule let the batch's worst matrix set every token's round count:
    # appending a badly scaled token changed the H_res of the tokens before it (not causal).
    easy = logits(0.5, (16, 4, 4))
    hard = logits(5.0, (1, 4, 4), seed=1)
    alone, rounds_alone = sinkhorn_converged(easy, 1e-6, 2000)
    together, rounds_together = sinkhorn_converged(torch.cat([easy, hard]), 1e-6, 2000)
    assert rounds_together[-1] > rounds_alone.max()  # the hard one needed more rounds ...
    assert torch.equal(together[:16], alone) and torch.equal(rounds_together[:16], rounds_alone)  # ... and took none of the others along
    for i in (0, 7):
        assert torch.equal(sinkhorn_converged(easy[i:i + 1], 1e-6, 2000)[0][0], alone[i])


def test_converged_on_badly_scaled_logits_stops_at_the_cap_but_beats_k20():
    # Sinkhorn converges only sub-linearly on some badly scaled matrices: the cap is real.
    l = logits(5.0)
    m, rounds = sinkhorn_converged(l, 1e-6, 300)
    row_gap, col_gap = stochasticity_gaps(m)
    hit = capped(m, 1e-6)
    assert hit.any() and (rounds[hit] == 300).all() and (rounds[~hit] < 300).all() and row_gap.max() <= 1e-6
    assert col_gap.mean() < 0.2 * stochasticity_gaps(sinkhorn_paper(l, 20))[1].mean()


def test_doubly_stochastic_input_is_a_fixed_point():
    ds = permutation_mixture(logits(1.0, (32, 24)), permutation_matrices(4))
    torch.testing.assert_close(sinkhorn_paper(ds.log(), 1), ds, atol=1e-6, rtol=0)


def test_always_fp32_or_fp64():
    l = logits(1.0, (4, 3, 3))
    for mode in ("paper", "kernel", "converged"):
        assert sinkhorn(l.bfloat16(), 5, mode).dtype == torch.float32
        assert sinkhorn(l.double(), 5, mode).dtype == torch.float64


def test_all_ones_upstream_gradient_is_vacuous_random_is_not():
    # The public trap: rows sum to 1 exactly, so d(sum of all entries) = 0 whatever the logits.
    l = logits(1.0, (8, 4, 4)).double().requires_grad_()
    m = sinkhorn_paper(l, 5)
    (ones,) = torch.autograd.grad(m, l, torch.ones_like(m), retain_graph=True)
    (rand,) = torch.autograd.grad(m, l, torch.randn_like(m))
    assert ones.abs().max() < 1e-12 and rand.abs().max() > 1e-2


@pytest.mark.parametrize(
    "mode,k",
    [("paper", 0), ("paper", 1), ("paper", 3), ("paper", 20), ("kernel", 0), ("kernel", 1), ("kernel", 3), ("kernel", 10)],
)
def test_gradcheck_sinkhorn(mode, k):
    l = logits(1.5, (2, 3, 3), seed=k).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sinkhorn(t, k, mode), (l,))


@pytest.mark.parametrize("k", [1, 3, 20])
@pytest.mark.parametrize("case", ["range 300", "range 1000", "row and column -200"])
def test_gradcheck_paper_at_extreme_logit_ranges(case, k):
    l = extreme_logits(case, (2, 3, 3), seed=k).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sinkhorn_paper(t, k), (l,))


def test_gradcheck_sinkhorn_converged():
    l = logits(1.0, (2, 3, 3)).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: sinkhorn_converged(t, 1e-13, 2000)[0], (l,))


def test_gradcheck_permutation_mixture():
    perms = permutation_matrices(3).double()
    l = logits(2.0, (2, 6)).double().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: permutation_mixture(t, perms), (l,))


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_permutation_matrices(n):
    p = permutation_matrices(n)
    assert p.shape == (math.factorial(n), n, n)
    torch.testing.assert_close(p[0], torch.eye(n))
    assert (p.sum(-1) == 1).all() and (p.sum(-2) == 1).all()
    assert len({tuple(m.flatten().tolist()) for m in p}) == math.factorial(n)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 5), scale=st.floats(0.0, 60.0), offset=st.floats(-1e3, 1e3), seed=st.integers(0, 2**31 - 1))
def test_permutation_mixture_exactly_doubly_stochastic(n, scale, offset, seed):
    l = logits(scale, (3, math.factorial(n)), seed=seed) + offset
    m = permutation_mixture(l, permutation_matrices(n))
    row_gap, col_gap = stochasticity_gaps(m)
    assert (m >= 0).all() and row_gap.max() <= 1e-6 and col_gap.max() <= 1e-6
