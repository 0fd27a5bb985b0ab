"""What is particular to the 2026 proposals (SCIENCE-FRONTIER): sHC's sphere, go-mHC's block energies,
TBP-mHC's charts, each with the property its paper claims and the init trap it must avoid."""

import pytest
import torch

from harness.core.errors import UserError
from tests.variant_contract import randomise, residual
from variants.go_mhc import go_orthostochastic
from variants.registry import VariantConfig, build_variant
from variants.shc import helmert, spectral_sphere
from variants.tbp_mhc import identity_logits, transport

pytestmark = pytest.mark.usefixtures("single_thread")
F64 = torch.float64


def rows_and_columns_sum_to_one(h: torch.Tensor, tol: float = 1e-12) -> None:
    ones = torch.ones(h.shape[:-1], dtype=h.dtype)
    torch.testing.assert_close(h.sum(-1), ones, rtol=0, atol=tol)
    torch.testing.assert_close(h.sum(-2), ones, rtol=0, atol=tol)


# ---------------------------------------------------------------------- sHC
@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_shc_sums_to_one_with_spectral_norm_one_and_negative_entries(n):
    g = torch.Generator().manual_seed(n)
    h = spectral_sphere(3 * torch.randn(50, (n - 1) ** 2, generator=g, dtype=F64), n)
    rows_and_columns_sum_to_one(h)
    torch.testing.assert_close(torch.linalg.matrix_norm(h, ord=2), torch.ones(50, dtype=F64), rtol=0, atol=1e-12)
    if n > 2:  # (n = 2: J + σ zzᵀ has entries (1 ± σ)/2 ≥ 0)
        assert (h.amin((-2, -1)) < 0).any()  # not in the Birkhoff polytope: entries may be negative


def test_helmert_basis_is_orthonormal_and_orthogonal_to_ones():
    z = helmert(5, F64)
    torch.testing.assert_close(z.T @ z, torch.eye(4, dtype=F64))
    torch.testing.assert_close(z.T @ torch.ones(5, dtype=F64), torch.zeros(4, dtype=F64))


def test_shc_starts_near_the_identity_and_its_rotations_learn():
    r = residual("shc", {}, 4, d_model=16)
    x = torch.randn(2, 3, 4, 16)
    h = r.coefficients(x).h_res
    assert (h.diagonal(dim1=-2, dim2=-1) > 0.995).all()
    h.backward(torch.randn_like(h))
    grad = r.bias_res.grad
    assert grad[:6].abs().max() > 1e-3  # the rotations (U = V = I at init)
    assert 0 < grad[6:].abs().max() < grad[:6].abs().max()  # the singular values, nearly frozen at tanh'(4)


# ---------------------------------------------------------------------- go-mHC
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("n", [2, 4])
def test_go_mhc_is_exactly_doubly_stochastic_and_non_negative(n, s):
    m = n * s
    g = torch.Generator().manual_seed(m)
    h = go_orthostochastic(2 * torch.randn(40, m * (m - 1) // 2, generator=g, dtype=F64), n, s)
    rows_and_columns_sum_to_one(h)
    assert (h >= 0).all()


def test_go_mhc_starts_near_the_identity_with_a_gradient_and_a_zero_angle_has_none():
    """Static logits (no projection, as the code's zero-initialised W) show the trap: at Q = I the
    block energies are second order in A, so a zero b_res has a zero gradient; a small rotation not."""
    x = torch.randn(2, 3, 4, 16)
    grads = {}
    for angle in (0.1, 0.0):
        r = residual("go-mhc", {"res_init_angle": angle, "mode": "static"}, 4, d_model=16)
        h = r.coefficients(x).h_res
        if angle:
            assert (h.diagonal(dim1=-2, dim2=-1) > 0.9).all()
        h.backward(torch.randn_like(h))
        grads[angle] = r.bias_res.grad.abs().max().item()
    assert grads[0.1] > 1e-3 and grads[0.0] < 1e-12  # the trap: Q = I has zero gradient


def test_go_mhc_refuses_a_block_size_it_does_not_have():
    with pytest.raises(UserError) as e:
        build_variant(VariantConfig("go-mhc", 4, s=0), 16, 4)
    assert "variant.s=0 is not one of 1, 2, 3" in str(e.value) and "\n" not in str(e.value)


# ---------------------------------------------------------------------- TBP-mHC
@pytest.mark.parametrize("chart", ["recursive", "sequential"])
@pytest.mark.parametrize("n", [2, 3, 4, 5, 8])
def test_tbp_is_exactly_doubly_stochastic_for_random_logits(n, chart):
    g = torch.Generator().manual_seed(n)
    h = transport(3 * torch.randn(30, (n - 1) ** 2, generator=g, dtype=F64), n, chart)
    rows_and_columns_sum_to_one(h)
    assert h.min() > -1e-6  # the code's 1e-7 floor on an interval's width, at most n of them


def test_tbp_paper_init_is_uniform_averaging_and_identity_init_is_near_i():
    n = 4
    torch.testing.assert_close(transport(torch.zeros((n - 1) ** 2, dtype=F64), n, "recursive"),
                               torch.full((n, n), 1 / n, dtype=F64))
    r = residual("tbp-mhc", {}, n, d_model=16)
    mix = r.coefficients(torch.randn(2, 3, n, 16))
    torch.testing.assert_close(mix.h_res, torch.full((2, 3, n, n), 1 / n), rtol=0, atol=0.02)
    for chart in ("recursive", "sequential"):
        t = torch.tensor(identity_logits(n, chart), dtype=F64)
        assert set(t.abs().tolist()) == {8.0}
        assert (transport(t, n, chart) - torch.eye(n, dtype=F64)).abs().max() < 2e-3
        near = residual("tbp-mhc", {"init": "identity", "chart": chart}, n, d_model=16)
        assert (near.coefficients(torch.randn(2, 3, n, 16)).h_res.diagonal(dim1=-2, dim2=-1) > 0.99).all()


def test_tbp_has_no_dead_weights_and_refuses_an_unknown_chart():
    r = residual("tbp-mhc", {}, 4, d_model=16)
    assert r.phi.shape == (4 * 16, 4 + 4 + 9)  # 2n + (n - 1)² columns, every one read by the chart
    randomise(r)
    x = torch.randn(2, 3, 4, 16)
    h = r.coefficients(x).h_res
    h.backward(torch.randn_like(h))
    assert (r.phi.grad[:, 8:].abs().sum(0) > 0).all()  # each res column of φ has a gradient
    with pytest.raises(UserError) as e:
        VariantConfig("tbp-mhc", chart="diagonal").opts()
    assert "variant.chart='diagonal' is not one of recursive, sequential" in str(e.value)


# ---------------------------------------------------------------------- learned stream scaling
def test_lss_at_one_is_the_plain_copy_bit_for_bit_and_its_scales_learn_without_decay():
    from tests.variant_contract import tiny_model

    plain, lss = tiny_model("mhc-lite", {}, 4), tiny_model("mhc-lite", {"expand": "lss"}, 4)
    assert plain.expander is None and lss.expander.scale.shape == (4, 32)
    assert 0.6 - 0.43 < lss.expander.scale.min() and lss.expander.scale.max() < 0.6 + 0.43  # 0.6 + U(±√(6/36))
    missing, unexpected = lss.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["expander.scale"] and not unexpected
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lss.expander.scale.fill_(1.0)
        assert torch.equal(lss(idx)[0], plain(idx)[0])
        lss.expander.scale.normal_(0.6, 0.2)
    _, loss = lss(idx, idx)
    loss.backward()
    assert lss.expander.scale.grad.abs().min() > 0
    assert id(lss.expander.scale) in lss.no_decay_parameters()
    assert any(p is lss.expander.scale for p in lss.parameter_groups()["mixing"])


def test_lss_needs_several_streams_and_a_variant_that_copies_them():
    with pytest.raises(UserError) as e:
        build_variant(VariantConfig("mhc", 1, expand="lss"), 16, 4)
    assert "variant.expand=lss scales n >= 2 copies" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="variant.expand is not an option of 'identity'; .*mhc.* have it"):
        VariantConfig("identity", expand="lss")
    with pytest.raises(UserError, match="variant.expand='scale' is not one of copy, lss"):
        VariantConfig("mhc", expand="scale").opts()


def test_stream_collapse_diagnostics_per_layer_and_over_the_model():
    from harness.train.diagnostics import diagnostics_rows
    from tests.variant_contract import tiny_model

    model = tiny_model("mhc", {}, 4)
    rows = diagnostics_rows(model, torch.randint(0, 64, (2, 8)), step=0)
    share = {(r["scope"], r["start"]): r["value"] for r in rows if r["metric"] == "stream_share" and r["stat"] == "token_mean"}
    dist = [r["value"] for r in rows if r["metric"] == "res_identity_distance" and r["scope"] == "layer"]
    assert share[("layer", 0)] == pytest.approx(0.25)  # identical copies of the embedding: balanced
    assert all(0.25 <= v <= 1 for v in share.values()) and ("model", 0) in share
    assert len(dist) == 2 * 4 and all(0 <= d < 0.05 for d in dist)  # H_res starts near I
    spectral = [r["value"] for r in rows if r["metric"] == "res_spectral_norm" and r["stat"] == "token_max"]
    assert len(spectral) == 4 and all(v <= 1 + 1e-5 for v in spectral)
