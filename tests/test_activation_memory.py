"""Activation memory: saved-for-backward bytes, counted exactly (harness/bench/activation_memory.py)."""

import torch

from harness.bench.activation_memory import (
    bytes_per_token,
    count_saved_bytes,
    measure,
    measure_in_subprocess,
)
from harness.core.config import apply_overrides
from harness.core.presets import get_preset
from harness.train.model import build_model


def test_count_is_exact_on_a_toy_graph_whose_saved_tensors_are_known():
    def toy(x):
        a = x.exp()  # saves its output a: 40 fp32 = 160 bytes
        b = a * 2.0  # a scalar multiply saves nothing
        c = b.sin()  # saves b: 160 bytes
        d = a.view(-1).cos()  # saves a view of a: the same storage, not counted again
        e = a[:, :5].tanh()  # saves its output e: 20 fp32 = 80 bytes
        f = x.to(torch.bfloat16).square()  # saves its bf16 input: 40 x 2 = 80 bytes
        return c.sum() + d.sum() + e.sum() + f.float().sum()

    x = torch.randn(4, 10, requires_grad=True)
    with count_saved_bytes() as counted:
        loss = toy(x)
    assert counted == {"bytes": 160 + 160 + 80 + 80, "tensors": 5}
    loss.backward()  # the hooks hand every saved tensor back unchanged
    expected = torch.autograd.grad(toy(x), x)[0]
    assert torch.equal(x.grad, expected)


def tiny_model(name, *overrides):
    cfg = apply_overrides(get_preset("tiny"), [f"variant.name={name}", *overrides])
    torch.manual_seed(0)
    return cfg, build_model(cfg, 256)


def test_tiny_model_identity_below_mhc_and_recompute_below_plain_mhc(single_thread):
    _, identity = tiny_model("identity")
    _, mhc = tiny_model("mhc")
    ident, plain = bytes_per_token(identity), bytes_per_token(mhc)
    mhc.set_recompute(2)
    rc = bytes_per_token(mhc)
    assert ident < rc < plain, (ident, rc, plain)
    # per token, not per sequence: the same at another length
    assert bytes_per_token(mhc, seq_len=8) == rc and bytes_per_token(identity, seq_len=8) == ident
    # what recompute keeps over identity (tiny: C = 64, n = 4, 4 sub-layers in 2 blocks), fp32:
    # every F's output y (C per sub-layer) and each block's input stream (n C per block)
    assert rc - ident == 4 * (4 * 64 + 2 * 4 * 64)


def test_measure_says_identity_has_nothing_to_recompute(single_thread):
    cfg, _ = tiny_model("identity")
    assert measure(cfg, 256)["on"] is None
    cfg, _ = tiny_model("hc")
    out = measure(cfg, 256)
    assert out["on"] < out["off"] and out["recompute_block"] == 2


def test_triton_backend_is_measured_in_an_interpreter_subprocess():
    cfg, _ = tiny_model("mhc", "variant.backend=triton")
    out = measure_in_subprocess(cfg, 256, seq_len=4, env={"TRITON_INTERPRET": "1"})
    assert out["recompute_block"] == 2 and 0 < out["on"] < out["off"]
    torch_cfg, _ = tiny_model("mhc")
    assert out["on"] == measure(torch_cfg, 256, seq_len=4)["on"]  # recompute stores the same either way
