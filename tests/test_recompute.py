"""Selective recompute of the stream maths (train.recompute): the same numbers, less stored."""

import gc

import pandas as pd
import pytest
import torch

from harness.core.config import apply_overrides
from harness.core.presets import get_preset
from harness.train.loop import train
from harness.train.model import build_model, recompute_block

VARIANTS = ["identity", "hc", "mhc", "mhc-lite"]


def model_of(name: str, *overrides: str):
    cfg = apply_overrides(get_preset("tiny"), [f"variant.name={name}", *overrides])
    torch.manual_seed(0)
    return build_model(cfg, 256)


def loss_and_grads(model, batches, autocast=None):
    """Accumulated over micro-batches, as the training loop does."""
    model.zero_grad(set_to_none=True)
    losses = []
    for x, y in batches:
        with autocast or torch.autocast("cpu", enabled=False):
            _, loss = model(x, y)
        (loss / len(batches)).backward()
        losses.append(loss.detach())
    return torch.stack(losses), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def batches(k=2, B=2, T=24):
    g = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 256, (B, T), generator=g), torch.randint(0, 256, (B, T), generator=g)) for _ in range(k)]


@pytest.mark.parametrize("name, extra", [(v, ()) for v in VARIANTS] + [
    ("hc", ("variant.fixed=res",)), ("mhc", ("variant.mode=static",)), ("mhc", ("variant.sk_mode=kernel",)),
    ("mhc-lite", ("variant.n_streams=3",))])
@pytest.mark.parametrize("block", [1, 3])
def test_recompute_gives_bitwise_the_same_loss_and_gradients(single_thread, name, extra, block):
    model, data = model_of(name, *extra), batches()
    loss, grads = loss_and_grads(model, data)
    assert model.set_recompute(block) == (name != "identity")
    loss_rc, grads_rc = loss_and_grads(model, data)
    assert torch.equal(loss, loss_rc)
    assert grads.keys() == grads_rc.keys() and len(grads) > 10
    for n in grads:
        assert torch.equal(grads[n], grads_rc[n]), (n, (grads[n] - grads_rc[n]).abs().max())


def test_recompute_under_bf16_autocast_and_with_triton_kernels(single_thread):
    """The rebuild runs under the forward's autocast; the kernels' own Functions recompute too
    (Triton's interpreter on a CPU, TRITON_INTERPRET=1 from conftest)."""
    for extra, autocast in [((), lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
                            (("variant.backend=triton",), lambda: torch.autocast("cpu", enabled=False))]:
        model, data = model_of("mhc", *extra), batches(k=1, T=8)
        loss, grads = loss_and_grads(model, data, autocast())
        model.set_recompute(2)
        loss_rc, grads_rc = loss_and_grads(model, data, autocast())
        assert torch.equal(loss, loss_rc) and all(torch.equal(grads[n], grads_rc[n]) for n in grads), extra


def test_recompute_is_off_without_grad_and_its_blocks_free_without_gc(single_thread):
    model, [(x, y)] = model_of("mhc"), batches(k=1)
    model.set_recompute(2)
    with torch.no_grad():
        model(x, y)  # evaluation and diagnostics take the plain path
    assert model.residuals()[0].recompute._open is None
    gc.disable()
    try:
        loss = model(x, y)[1]
        block = model.residuals()[0].recompute._open
        assert block() is not None and len(block().residuals) == 2
        loss.backward()
        del loss
        assert block() is None  # no reference cycle keeps a block (and what it saved) alive
    finally:
        gc.enable()


def test_default_block_is_the_papers_optimum():
    # L_r* = sqrt(n L / (n + 2)), L sub-layers, n = 4: tiny/small L = 4/8 -> 1.6/2.3 -> 2; gpt-s L = 12 -> 2.8 -> 3
    assert [recompute_block(get_preset(p), 4) for p in ("tiny", "small", "gpt-s", "gpt-m")] == [2, 2, 3, 4]
    assert recompute_block(apply_overrides(get_preset("tiny"), ["train.recompute_block=3"]), 4) == 3
    assert recompute_block(get_preset("tiny"), 1) == 1


def test_training_with_recompute_is_bitwise_the_same_run(tiny_cfg):
    opts = ("variant.name=mhc", "train.steps=6", "train.eval_every=3", "train.checkpoint_every=3")
    plain = train(tiny_cfg(*opts, "run.name=plain"))
    rc = train(tiny_cfg(*opts, "train.recompute=true", "run.name=rc"))
    a, b = (pd.read_parquet(r.run_dir / "metrics.parquet") for r in (plain, rc))
    for c in ["loss"] + [c for c in a.columns if c.startswith("grad_norm")]:
        assert a[c].equals(b[c]), c


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_recompute_under_two_processes_matches_a_single_plain_run(tmp_path, data_cache, parallel):
    """DDP's gradient hooks and FSDP's unshard/reshard around the rebuilt stream maths."""
    from grid_helpers import metrics, registered, train_reference, write

    from slurm.dispatch import Dispatcher, Resources, freeze_code

    body = f"""
        name = "rc"
        preset = "tiny"
        [base]
        variant.name = "mhc"
        train.steps = 4
        train.grad_accum = 2
        train.eval_every = 2
        train.threads = 1
        train.diag_every = 0
        train.recompute = true
        train.parallel = "{parallel}"
    """
    grid, exp = registered(write(tmp_path, body), tmp_path / "runs", f"data.cache_dir={data_cache}")
    d = Dispatcher(exp, "local", Resources(tasks_per_node=2), freeze_code(exp))
    [out] = d.wait(d.submit(grid.runs))
    assert out["status"] == "done" and out["world_size"] == 2, out
    single = train_reference(tmp_path, body.replace("train.recompute = true", ""), data_cache, "one")
    a, b = metrics(single.run_dir), metrics(grid.runs[0].path)
    assert (a.loss - b.loss).abs().max() < 1e-5, (a.loss.tolist(), b.loss.tolist())
    ta, tb = a[a.split == "train"], b[b.split == "train"]
    norms = [c for c in a.columns if c.startswith("grad_norm")]
    assert len(norms) > 3
    for c in norms:
        assert ((ta[c] - tb[c]).abs() <= 1e-4 * ta[c].abs() + 1e-7).all(), c


def test_a_second_backward_through_the_same_graph_is_a_clear_error(single_thread):
    model, [(x, y)] = model_of("mhc"), batches(k=1)
    model.set_recompute(2)
    loss = model(x, y)[1]
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
