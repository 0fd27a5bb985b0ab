"""Residual variants (hc, mhc, mhc-lite), what is particular to each: reduction to identity at
n = 1, every n and option set trains, H_res really applied, ablations, inits that learn, weight
decay groups, option errors. What every variant must meet (causality, float64 gradients,
autocast, diagnostics, backend parity) is tests/test_variant_contract.py."""

import pytest
import torch

from harness.core.config import VariantConfig
from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.train.model import build_model
from harness.train.optim import make_optimizer
from variants.base import Mixing
from variants.registry import build_variant, variant_names

MIXING = ["hc", "mhc", "mhc-lite"]
VOCAB = 64


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread


def small_cfg(name: str, n: int = 0, **variant):
    cfg = get_preset("tiny")
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.seq_len = 2, 32, 2, 16
    cfg.variant.name, cfg.variant.n_streams = name, n
    for key, value in variant.items():
        setattr(cfg.variant, key, value)
    return cfg


def small_model(name: str, n: int = 0, seed: int = 0, **variant):
    cfg = small_cfg(name, n, **variant)
    torch.manual_seed(seed)
    return build_model(cfg, VOCAB), cfg


def randomise_mixing(model, scale: float = 0.5, seed: int = 1):
    """Move every mixing parameter off its init, so input dependence and H_res are visible."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for r in model.residuals():
            for p in r.parameters():
                p.add_(torch.randn(p.shape, generator=g) * scale)


def residual_module(name: str, n: int, index: int = 1, d_model: int = 8, **variant):
    cfg = VariantConfig(name=name, n_streams=n, **variant)
    return build_variant(cfg, d_model, 4).make(index)


def mixing_params(model) -> dict[str, torch.Tensor]:
    return {f"{i}.{k}": p for i, r in enumerate(model.residuals()) for k, p in r.named_parameters()}


# ---------------------------------------------------------------------- registry & defaults
def test_registered_with_default_four_streams():
    assert {"identity", *MIXING} <= set(variant_names())
    for name in MIXING:
        assert build_variant(VariantConfig(name=name), 32, 4).n_streams == 4


# ---------------------------------------------------------------------- n = 1 is the identity
@pytest.mark.parametrize("name,randomise", [("hc", False), ("mhc", True), ("mhc-lite", True)])
def test_n1_with_fixed_pre_post_is_the_identity_residual(name, randomise):
    # hc: H_res = 1 + α tanh(x̃θ) is 1 only while θ = 0; mhc/mhc-lite: a 1×1 Sinkhorn matrix or
    # a mixture of the single 1×1 permutation is exactly 1 for ANY parameters, so randomise.
    model, cfg = small_model(name, 1, fixed="pre,post")
    if randomise:
        randomise_mixing(model, scale=2.0)
    baseline = build_model(small_cfg("identity"), VOCAB)
    missing, _ = baseline.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    x = torch.randint(0, VOCAB, (3, 16))
    with torch.no_grad():
        a, _ = model(x)
        b, _ = baseline(x)
    torch.testing.assert_close(a, b)
    assert any(r.learned == ("res",) for r in model.residuals())


# ---------------------------------------------------------------------- runs at every n
@pytest.mark.parametrize(
    "name,n,extra",
    [(v, n, {}) for v in MIXING for n in (1, 2, 3, 4)]
    + [("mhc", 4, {"sk_mode": "kernel"}), ("mhc", 3, {"sk_mode": "converged", "sk_tol": 1e-5}), ("mhc", 2, {"sk_iters": 0})]
    + [(v, 4, {"mode": "static"}) for v in MIXING]
    + [(v, 3, {"fixed": f}) for v in MIXING for f in ("pre", "post", "res", "pre,post,res")],
)
def test_gpt_forward_backward(name, n, extra):
    model, _ = small_model(name, n, **extra)
    x = torch.randint(0, VOCAB, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss)
    for key, p in mixing_params(model).items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key


# ---------------------------------------------------------------------- H_res really acts
@pytest.mark.parametrize("name", MIXING)
def test_merge_applies_the_given_h_res(name):
    r = residual_module(name, 3)
    x, y = torch.randn(2, 5, 3, 8), torch.randn(2, 5, 8)
    _, mix = r.prepare(x)
    h_res = torch.rand(2, 5, 3, 3)  # anything but I: a merge that ignored H_res would return x + ...
    out = r.merge(x, y, Mixing(mix.h_pre, mix.h_post, h_res))
    expected = torch.einsum("btij,btjc->btic", h_res, x) + mix.h_post[..., None] * y[:, :, None]
    torch.testing.assert_close(out, expected)
    with pytest.raises(RuntimeError, match="H_res"):
        r.merge(x, y, Mixing(mix.h_pre, mix.h_post, None))


@pytest.mark.parametrize("name", MIXING)
def test_perturbing_h_res_parameters_changes_the_block_output(name):
    torch.manual_seed(0)
    r = residual_module(name, 3)
    x = torch.randn(2, 5, 3, 8)  # streams differ: a stochastic H_res acting on equal streams is invisible
    branch = torch.nn.Linear(8, 8)
    before = r(x, branch)
    _, mix0 = r.prepare(x)
    with torch.no_grad():
        # the init favours the identity by a logit gap of 8: a random nudge may leave H_res within 1e-2 of it, a
        # rolled bias favours another matrix (a cyclic shift of the streams, another permutation for mhc-lite)
        r.bias_res.copy_(torch.roll(r.bias_res.flatten(), 1).view_as(r.bias_res))
    _, mix1 = r.prepare(x)
    after = r(x, branch)
    assert (mix1.h_res - mix0.h_res).abs().max() > 1e-2
    # pre/post are untouched, so the whole change is (ΔH_res) x
    torch.testing.assert_close(after - before, (mix1.h_res - mix0.h_res) @ x, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------- ablations & modes
@pytest.mark.parametrize("name", MIXING)
@pytest.mark.parametrize("fixed", ["pre", "post", "res", "pre,res", "pre,post,res"])
def test_fixed_mappings_have_no_parameters_and_report_none(name, fixed):
    r = residual_module(name, 3, fixed=fixed)
    names = {k for k, _ in r.named_parameters()}
    for m in ("pre", "post", "res"):
        assert any(k.endswith(f"_{m}") for k in names) == (m not in fixed)
    _, mix = r.prepare(torch.randn(2, 5, 3, 8))
    for m in ("pre", "post", "res"):
        assert (getattr(mix, f"h_{m}") is None) == (m in fixed)


@pytest.mark.parametrize("name", MIXING)
def test_static_mode_ignores_the_input_dynamic_does_not(name):
    x1, x2 = torch.randn(2, 5, 3, 8), torch.randn(2, 5, 3, 8)
    for mode, same in (("static", True), ("dynamic", False)):
        r = residual_module(name, 3, mode=mode)
        with torch.no_grad():
            for p in r.parameters():
                p.add_(torch.randn(p.shape))
        (_, a), (_, b) = r.prepare(x1), r.prepare(x2)
        assert torch.equal(a.h_res, b.h_res) == same and torch.equal(a.h_pre, b.h_pre) == same
        if mode == "static":
            assert not any(k.startswith(("theta", "phi", "alpha")) for k, _ in r.named_parameters())


# ---------------------------------------------------------------------- init
def test_hc_init_is_the_papers():
    r = residual_module("hc", 4, index=6)
    _, mix = r.prepare(torch.randn(2, 5, 4, 8))
    torch.testing.assert_close(mix.h_pre, torch.tensor([0.0, 0, 1, 0]).expand(2, 5, 4))  # stream 6 mod 4
    torch.testing.assert_close(mix.h_post, torch.ones(2, 5, 4))
    torch.testing.assert_close(mix.h_res, torch.eye(4).expand(2, 5, 4, 4))


@pytest.mark.parametrize("name", ["mhc", "mhc-lite"])
def test_mhc_init_is_near_identity_and_doubly_stochastic(name):
    r = residual_module(name, 4, index=5)
    _, mix = r.prepare(torch.randn(2, 5, 4, 8))
    own = torch.tensor([0.0, 1, 0, 0])  # stream 5 mod 4: σ(±1) and 2σ(±1), up to the 1% dynamic part
    sig = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(mix.h_pre, (own * sig + (1 - own) * (1 - sig)).expand(2, 5, 4), atol=0.02, rtol=0)
    torch.testing.assert_close(mix.h_post, 2 * mix.h_pre, atol=0.04, rtol=0)
    assert (mix.h_res.diagonal(dim1=-2, dim2=-1) > 0.99).all()
    torch.testing.assert_close(mix.h_res.sum(-1), torch.ones(2, 5, 4))  # rows exact (paper order)
    col_tol = 1e-6 if name == "mhc-lite" else 1e-3  # Sinkhorn's finite-k error sits in the columns
    torch.testing.assert_close(mix.h_res.sum(-2), torch.ones(2, 5, 4), atol=col_tol, rtol=0)


@pytest.mark.parametrize("name", MIXING)
def test_init_is_not_identity_blocking(name):
    """A few AdamW steps on an LM loss move every mixing parameter (φ/θ, α, b) off its init."""
    model, cfg = small_model(name, 3)
    cfg.optim.lr = 1e-2
    opt = make_optimizer(model, cfg)
    params = mixing_params(model)
    start = {k: p.detach().clone() for k, p in params.items()}
    assert any(k.endswith(("phi", "theta_res")) for k in start) and any("alpha" in k for k in start)
    # Structurally inert H_res (zero gradient up to rounding, whatever the init):
    # - sub-layer 0 of mhc/mhc-lite sees n identical copies of the embedding, which every
    #   row-stochastic H_res maps to themselves;
    # - the last sub-layer of mhc-lite: the streams are then summed, and Σ_i (H x)_i = Σ_j x_j
    #   for exact column sums (mhc's last H_res only acts through Sinkhorn's column error).
    last = 2 * cfg.model.n_layer - 1
    inert = {"mhc": {0}, "mhc-lite": {0, last}}.get(name, set())
    inert = {f"{l}.{p}_res" for l in inert for p in ("bias", "alpha")}
    max_grad = dict.fromkeys(params, 0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randint(0, VOCAB, (4, 16), generator=g)
        _, loss = model(x, torch.randint(0, VOCAB, (4, 16), generator=g))
        loss.backward()
        for k, p in params.items():
            max_grad[k] = max(max_grad[k], p.grad.abs().max().item())
        opt.step()
        opt.zero_grad()
    stuck = [k for k, p in params.items() if k not in inert and (p - start[k]).abs().max() < 1e-4]
    assert not stuck, f"never left their init: {stuck}"
    assert all(max_grad[k] < 1e-8 for k in inert), {k: max_grad[k] for k in inert}
    assert all(max_grad[k] > 1e-8 for k in params if k not in inert), max_grad


@pytest.mark.parametrize("name,decayed", [("hc", "theta_"), ("mhc", "phi"), ("mhc-lite", "phi")])
def test_weight_decay_on_projections_only(name, decayed):
    model, cfg = small_model(name, 3)
    decay, no_decay = make_optimizer(model, cfg).param_groups
    decay_ids = {id(p) for p in decay["params"]}
    for key, p in mixing_params(model).items():
        assert (id(p) in decay_ids) == (key.split(".", 1)[1].startswith(decayed)), key


# ---------------------------------------------------------------------- option errors
@pytest.mark.parametrize(
    "variant,match",
    [
        (dict(name="mhc-lit"), "did you mean 'mhc-lite'.*choose from identity, hc, mhc, mhc-lite"),
        (dict(name="hc", fixed="pre,rez"), "unknown mapping 'rez'.*subset of pre, post, res"),
        (dict(name="mhc", fixed="all"), "subset of pre, post, res"),
        (dict(name="mhc-lite", n_streams=9), "'mhc-lite' takes variant.n_streams from 1 to 8"),
        (dict(name="identity", n_streams=2), "'identity' takes variant.n_streams from 1 to 1"),
        (dict(name="identity", fixed="res"), "variant.fixed is not an option of 'identity'; hc, mhc, mhc-lite, kromhc, orthostochastic, go-mhc, shc, tbp-mhc have it"),
        (dict(name="hc", sk_iters=5), "variant.sk_iters is not an option of 'hc'; mhc has it"),
        (dict(name="hc", backend="cuda"), "variant.backend='cuda' is not one of torch, triton, auto"),
        (dict(name="mhc", backend="triton", sk_mode="converged"), "triton.*'converged' has no kernel.*variant.backend=torch"),
        (dict(name="mhc-lite", backend="triton", n_streams=6), "triton.*at most 120 permutations.*variant.backend=torch"),
        (dict(name="mhc", mode="dynamc"), "dynamic, static"),
        (dict(name="mhc", sk_mode="papr"), "paper, kernel, converged"),
        (dict(name="mhc", sk_iters=-1), "sk_iters must be >= 0"),
        (dict(name="mhc", sk_mode="converged", sk_tol=0.0), "sk_tol > 0"),
    ],
)
def test_bad_options_are_one_line_user_errors(variant, match):
    with pytest.raises(UserError, match=match) as err:
        build_variant(VariantConfig(**variant), 32, 4)
    assert "\n" not in str(err.value)
