"""The contract every residual variant meets, as plain functions of a registry name and options.

tests/test_variant_contract.py runs them for every registered variant (and the option sets
the variant lists in `contract_options`); a variant added in a new file, or registered at run
time (tests/test_variant_contract.py's throwaway variant), gets them without editing a test.

    shapes        a GPT with the variant trains one step: right shapes, finite loss, every
                  parameter of every residual gets a finite gradient
    causality     logits of earlier tokens do not move when later tokens change (after the
                  mixing parameters are moved off their init, where some maths is inert)
    gradients     the residual's whole forward (coefficients, pre-mix, branch, merge) in float64:
                  torch.autograd.gradcheck, and a random upstream gradient checked against
                  central differences (never all-ones: for a doubly stochastic H_res an
                  all-ones gradient is zero)
    autocast      under bf16 autocast the fp32 stream stays fp32, and so do the coefficients
    diagnostics   the diagnostics rows of a model with the variant are complete and finite
    n = 1         at one stream (where the variant takes it) the model trains like any other
    backends      where the variant has kernels: triton's outputs and gradients (random inputs and
                  upstream gradients, fp32, precision ieee where it has one) are as close to the
                  float64 reference as the torch backend's own fp32 run
    foreign       an option of another variant is refused in one line that names its owners
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pandas as pd
import pytest
import torch

from harness.core.config import apply_overrides
from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.train.diagnostics import diagnostics_rows
from harness.train.model import build_model
from variants.registry import VariantConfig, build_variant, get_variant_class

VOCAB = 64


def tiny_model(name: str, options: dict, n: int = 0, layers: int = 2, seed: int = 0):
    cfg = get_preset("tiny")
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.seq_len = layers, 32, 2, 16
    cfg.variant = VariantConfig(name, n, **options)
    torch.manual_seed(seed)
    return build_model(cfg.validate(), VOCAB)


def randomise(module: torch.nn.Module, scale: float = 0.5, seed: int = 1) -> None:
    """Move every mixing parameter off its init (zero projections hide input dependence)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def residual(name: str, options: dict, n: int, d_model: int = 8, index: int = 1, backend: str = "torch"):
    return build_variant(VariantConfig(name, n, backend, **options), d_model, 4).make(index)


def stream_input(name: str, options: dict, n: int, d_model: int, B: int, T: int, g, dtype=torch.float32):
    """Random streams in the variant's own layout (B, T, n, C) or, for frac, (B, T, m, C/m):
    its expand() of a random embedding, plus independent noise so the streams differ."""
    variant = build_variant(VariantConfig(name, n, **options), d_model, 4)
    x = variant.expand(torch.randn(B, T, d_model, generator=g, dtype=dtype))
    return x + torch.randn(x.shape, generator=g, dtype=dtype)


def streams(name: str) -> int:
    """The stream count the variant's contract runs at (its `contract_n`, within its range)."""
    cls = get_variant_class(name)
    lo, hi = cls.n_range
    return min(max(cls.contract_n, lo), hi)


# =============================================================================================
def check_shapes(name: str, options: dict) -> None:
    model = tiny_model(name, options)
    x = torch.randint(0, VOCAB, (2, 16))
    logits, loss = model(x, x)
    assert logits.shape == (2, 16, model.vocab_size) and torch.isfinite(loss)
    loss.backward()
    for i, r in enumerate(model.residuals()):
        for key, p in r.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"sub-layer {i} {key}: no finite gradient"


def check_causality(name: str, options: dict) -> None:
    model = tiny_model(name, options, n=streams(name))
    for r in model.residuals():
        randomise(r)
    x = torch.randint(0, VOCAB, (2, 16))
    y, t = x.clone(), 7
    y[:, t + 1:] = (x[:, t + 1:] + 1 + torch.randint(0, VOCAB - 1, x[:, t + 1:].shape)) % VOCAB
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-3


def check_gradients(name: str, options: dict) -> None:
    n, C = streams(name), 4
    r = residual(name, options, n, d_model=C).double()
    randomise(r)
    branch = torch.nn.Linear(C, C).double()
    names, params = zip(*r.named_parameters()) if list(r.parameters()) else ((), ())
    g = torch.Generator().manual_seed(3)
    x = stream_input(name, options, n, C, 1, 3, g, torch.float64)

    def f(x, *ps):
        return torch.func.functional_call(r, dict(zip(names, ps)), (x, branch))

    inputs = tuple(t.detach().clone().requires_grad_() for t in (x, *params))
    assert torch.autograd.gradcheck(f, inputs)
    # a random upstream gradient, against a central difference along a random direction
    up = torch.randn(f(*inputs).shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad(f(*inputs), inputs, up)
    dirs = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in inputs]
    eps = 1e-6
    with torch.no_grad():
        plus = f(*(t + eps * d for t, d in zip(inputs, dirs)))
        minus = f(*(t - eps * d for t, d in zip(inputs, dirs)))
    numeric = ((plus - minus) / (2 * eps) * up).sum()
    analytic = sum((gr * d).sum() for gr, d in zip(grads, dirs))
    assert math.isclose(numeric.item(), analytic.item(), rel_tol=1e-6, abs_tol=1e-9), (numeric.item(), analytic.item())


def check_autocast(name: str, options: dict) -> None:
    n = streams(name)
    r = residual(name, options, n)
    x = stream_input(name, options, n, 8, 2, 5, torch.Generator().manual_seed(5))
    branch = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h, mix = r.prepare(x)
        out = r.merge(x, branch(h), mix)
    assert h.dtype == torch.float32 and out.dtype == torch.float32 and torch.isfinite(out).all()
    for field in dataclasses.fields(mix):
        t = getattr(mix, field.name)
        assert t is None or t.dtype == torch.float32, f"{field.name} is {t.dtype} under autocast"


def check_diagnostics(name: str, options: dict) -> None:
    model = tiny_model(name, options, n=streams(name))
    df = pd.DataFrame(diagnostics_rows(model, torch.randint(0, VOCAB, (2, 16)), step=0))
    assert len(df) and df.value.map(math.isfinite).all()
    spans = df[(df.scope == "span") & (df.metric == "amax_fwd")]
    assert len(spans) and set(spans["stat"]) == {"token_mean", "token_max", "mean_matrix"}


def check_one_stream(name: str, options: dict) -> None:
    if get_variant_class(name).n_range[0] > 1:
        pytest.skip(f"{name} takes no single stream")
    if options.get("expand") == "lss":  # scales n >= 2 copies: refused at n = 1, in one line
        with pytest.raises(UserError, match="variant.expand=lss scales n >= 2 copies"):
            tiny_model(name, options, n=1)
        return
    model = tiny_model(name, options, n=1)
    x = torch.randint(0, VOCAB, (2, 16))
    _, loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss)


def check_backends(name: str, options: dict) -> None:
    """Triton's outputs and gradients are as close to the float64 reference as the torch backend's
    own float32 run is (within 2x, plus 1e-5 of the largest value): some maps, Newton-Schulz
    among them, amplify fp32 rounding on their own, so a fixed tolerance would be wrong for them."""
    from kernels import backend as kb

    if "triton" not in get_variant_class(name).backends:
        pytest.skip(f"{name} has no Triton kernels")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kb.triton_unavailable_reason(device):
        pytest.skip(kb.triton_unavailable_reason(device))
    fields = {f.name for f in dataclasses.fields(get_variant_class(name).options_cls)}
    opts = {**options, **({"precision": "ieee"} if "precision" in fields else {})}  # fp32 dots, no tf32
    n = streams(name)
    try:
        residual(name, opts, n, d_model=24, backend="triton")
    except UserError as e:  # options the kernels do not cover: refused up front, in one line, pointing to torch
        assert "\n" not in str(e) and "variant.backend=torch" in str(e), str(e)
        return
    torch.manual_seed(0)
    ref = residual(name, opts, n, d_model=24, index=3)
    randomise(ref)
    g = torch.Generator().manual_seed(4)
    x = stream_input(name, opts, n, 24, 2, 5, g)
    up = torch.randn(x.shape, generator=g)
    torch.manual_seed(2)
    branch = torch.nn.Linear(24, 24)

    def run(backend: str, dtype) -> list:
        r = residual(name, opts, n, d_model=24, index=3, backend=backend)
        r.load_state_dict(ref.state_dict())
        r, b = r.to(device=device, dtype=dtype), copy.deepcopy(branch).to(device=device, dtype=dtype)
        xi = x.to(device=device, dtype=dtype).requires_grad_()
        out = r(xi, b)
        return [out, *torch.autograd.grad(out, [xi, *r.parameters()], up.to(device=device, dtype=dtype))]

    exact, plain, fused = run("torch", torch.float64), run("torch", torch.float32), run("triton", torch.float32)
    names = ["out", "dx"] + [f"d{k}" for k, _ in ref.named_parameters()]
    for what, e, p, f in zip(names, exact, plain, fused):
        e = e.detach().double().cpu()
        assert torch.isfinite(f).all(), f"{what}: triton gave non-finite values"
        err_plain = (p.detach().double().cpu() - e).abs().max().item()
        err_fused = (f.detach().double().cpu() - e).abs().max().item()
        assert err_fused <= 2 * err_plain + 1e-5 * max(1.0, e.abs().max().item()), (what, err_fused, err_plain)


def check_foreign_option_refused(name: str, options: dict) -> None:
    """Another variant's option, given to this one, is one line naming the variants that have it."""
    from variants.options import option_fields
    from variants.registry import options_class, variant_names

    own = set(option_fields(options_class(name)))
    foreign = next(((k, other) for other in variant_names() if other != name
                    for k in option_fields(options_class(other)) if k not in own), None)
    if foreign is None:
        pytest.skip("every other variant's options are this one's too")
    key, owner = foreign
    with pytest.raises(UserError, match=rf"variant\.{key} is not an option of '{name}'.*{owner}") as err:
        apply_overrides(get_preset("tiny"), [f"variant.name={name}", f"variant.{key}=1"])
    assert "\n" not in str(err.value)


CHECKS = {"shapes": check_shapes, "causality": check_causality, "gradients": check_gradients,
          "autocast": check_autocast, "diagnostics": check_diagnostics, "one_stream": check_one_stream,
          "backends": check_backends, "foreign_option": check_foreign_option_refused}
