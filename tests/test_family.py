"""What is particular to mHC's relatives: KromHC's exact Kronecker structure, orthostochastic
H_res and its identity-init trap, Frac-Connections' layout and its plain-residual start."""

import pytest
import torch

from harness.core.errors import UserError
from tests.variant_contract import residual, tiny_model
from variants.kromhc import kron_factors
from variants.orthostochastic import newton_schulz, orthostochastic
from variants.registry import VariantConfig, build_variant

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------- kromhc
def test_kron_factors_are_exactly_doubly_stochastic_and_symmetric():
    p = torch.rand(5, 7, 3, dtype=torch.float64)  # n = 8
    h = kron_factors(p)
    assert h.shape == (5, 7, 8, 8) and (h >= 0).all()
    torch.testing.assert_close(h.sum(-1), torch.ones(5, 7, 8, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(h.sum(-2), torch.ones(5, 7, 8, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(h, h.transpose(-1, -2))


def test_the_first_factor_acts_on_the_most_significant_bit():
    h = kron_factors(torch.tensor([1.0, 0.0]))  # U_1 = I, U_2 = the swap: streams 0<->1 and 2<->3
    assert h.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    h = kron_factors(torch.tensor([0.0, 1.0]))  # U_1 = the swap: streams 0<->2 and 1<->3
    assert h.tolist() == [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]]


def test_kromhc_starts_near_the_identity_with_k_logits_for_h_res():
    r = residual("kromhc", {}, 8, d_model=16)
    assert r.phi.shape == (8 * 16, 8 + 8 + 3)  # 2n + K columns (mHC: 2n + n^2)
    mix = r.coefficients(torch.randn(2, 3, 8, 16))
    assert (mix.h_res.diagonal(dim1=-2, dim2=-1) > 0.998).all()


def test_kromhc_refuses_a_stream_count_that_is_not_a_power_of_two_and_foreign_options():
    with pytest.raises(UserError, match="power-of-2 variant.n_streams"):
        build_variant(VariantConfig("kromhc", 6), 32, 4)
    with pytest.raises(UserError, match="variant.sk_iters is not an option of 'kromhc'; mhc has it"):
        VariantConfig("kromhc", sk_iters=5)


# ---------------------------------------------------------------------- orthostochastic
def test_newton_schulz_reaches_an_orthogonal_factor_and_h_res_is_near_doubly_stochastic():
    g = torch.Generator().manual_seed(0)
    L = torch.eye(4) + 0.3 * torch.randn(50, 4, 4, generator=g, dtype=torch.float64)
    o = newton_schulz(L, 40)  # the fixed point is approached linearly (p'(1) = -0.6): many steps for 1e-6
    torch.testing.assert_close(o @ o.transpose(-1, -2), torch.eye(4, dtype=torch.float64).expand(50, 4, 4), atol=1e-6, rtol=0)
    near = torch.eye(4) + 0.1 * torch.randn(50, 4, 4, generator=g, dtype=torch.float64)
    h = orthostochastic(near, 5)  # the default 5 steps: nearly orthogonal when L is well conditioned
    assert (h >= 0).all() and (h.sum(-1) - 1).abs().max() < 0.05 and (h.sum(-2) - 1).abs().max() < 0.05
    rough = orthostochastic(L, 5)  # ... and not when some singular values start small
    assert (rough >= 0).all() and (rough.sum(-1) - 1).abs().max() > 0.05


def test_a_rank_deficient_logit_matrix_is_not_doubly_stochastic():
    h = orthostochastic(torch.ones(1, 4, 4), 5)  # rank 1: the zero singular values stay zero
    assert (h.sum(-1) - 1).abs().max() > 0.5


@pytest.mark.parametrize("angle, learns", [(0.1, True), (0.0, False)])
def test_the_identity_init_trap_and_its_way_out(angle, learns):
    """At O = I (any symmetric positive-definite L) H_res's off-diagonal entries are squares of
    first-order terms: their gradient is zero and mixing never starts. The default small rotation
    gives every entry a gradient."""
    r = residual("orthostochastic", {"res_init_angle": angle, "mode": "static"}, 4, d_model=8)
    h = r.res_map(r.bias_res.flatten().expand(1, 1, -1))[0, 0]
    off = h - torch.diag(h.diagonal())
    assert h.diagonal().min() > 1 - 4 * angle**2 - 1e-3
    grad = torch.autograd.grad(off.sum(), r.bias_res)[0]
    assert (grad.abs().max() > 1e-3) == learns


# ---------------------------------------------------------------------- frac
def test_frac_starts_as_exactly_the_plain_residual():
    frac, plain = tiny_model("frac", {}, n=4), tiny_model("identity", {})
    missing, _ = plain.load_state_dict({k: v for k, v in frac.state_dict().items() if k in plain.state_dict()}, strict=False)
    assert not missing
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(frac(x)[0], plain(x)[0])


def test_frac_mixes_fractions_with_its_matrices_and_keeps_the_state_c_wide():
    r = residual("frac", {"mode": "static"}, 2, d_model=4)  # m = 2 fractions of width 2
    with torch.no_grad():
        r.static_pre.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # output fraction 0 reads input fraction 1
        r.static_res.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
        r.static_post.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))  # y's fraction 0 goes to fraction 1
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (B, T, m, d)
    seen = {}

    def branch(h):
        seen["h"] = h
        return torch.tensor([[[10.0, 20.0, 30.0, 40.0]]])

    out = r(x, branch)
    assert seen["h"].tolist() == [[[3.0, 4.0, 1.0, 2.0]]]  # (B, T, C): the fractions swapped
    assert out.tolist() == [[[[2.0, 4.0], [13.0, 24.0]]]]


def test_frac_needs_d_model_divisible_by_the_fractions():
    with pytest.raises(UserError, match="splits model.d_model=30 into variant.n_streams=4"):
        build_variant(VariantConfig("frac", 4), 30, 4)


def test_frac_saves_about_what_identity_saves_for_backward_and_less_than_hc():
    """The point of Frac-Connections: the state stays C wide, not n C."""
    from harness.bench.activation_memory import bytes_per_token

    saved = {name: bytes_per_token(tiny_model(name, {}, n=0 if name == "identity" else 4), 16)
             for name in ("identity", "frac", "hc")}
    assert saved["frac"] < saved["hc"] and saved["frac"] < 1.5 * saved["identity"], saved
