"""Diagnostics: Amax gains on hand-computed matrices, span composites, token aggregation, the
collector on real models, and diagnose_run writing diagnostics.parquet."""

import math
import types

import pandas as pd
import pytest
import torch

from harness.core.checkpoint import save_checkpoint
from harness.core.presets import get_preset
from harness.train import diagnostics
from harness.train.diagnostics import (
    amax_backward,
    amax_forward,
    capped_summary,
    collect_mixing,
    composite,
    diagnose_run,
    diagnostics_rows,
    log_inv_nu,
    max_abs_log_colsum,
    span_list,
    span_products,
    span_rows,
    uniform_distance,
)
from harness.train.model import build_model
from kernels.sinkhorn_reference import sinkhorn_paper
from variants.base import Mixing
from variants.mhc_lite import permutation_matrices, permutation_mixture

VOCAB = 64


pytestmark = pytest.mark.usefixtures("single_thread")  # tiny tensors: see conftest.single_thread


def small_cfg(name: str, n: int = 0):
    cfg = get_preset("tiny")
    cfg.model.n_layer, cfg.model.d_model, cfg.model.n_head, cfg.model.seq_len = 2, 32, 2, 16
    cfg.variant.name, cfg.variant.n_streams = name, n
    return cfg


def small_model(name: str, n: int = 0, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(small_cfg(name, n), VOCAB)


def rows_frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index(["scope", "start", "end", "metric", "stat"])["value"]


# ---------------------------------------------------------------------- Amax on known matrices
def test_amax_of_identity_and_permutation_is_one():
    for m in (torch.eye(4), permutation_matrices(4)[17], torch.eye(1)):
        assert amax_forward(m) == 1 and amax_backward(m) == 1


def test_amax_hand_computed():
    m = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    assert amax_forward(m) == 3.5  # rows: |1| + |-2| = 3, |0.5| + |3| = 3.5
    assert amax_backward(m) == 5.0  # columns: 1 + 0.5 = 1.5, 2 + 3 = 5


def test_composite_order_is_later_layers_on_the_left():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # layer a (first)
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # layer a + 1
    c = composite([a, b])  # = b @ a = [[2, 1], [0, 1]]
    torch.testing.assert_close(c, torch.tensor([[2.0, 1.0], [0.0, 1.0]]))
    assert amax_forward(c) == 3 and amax_backward(c) == 2  # a @ b would give 4 and 3


def test_other_span_metrics_hand_computed():
    m = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert math.isclose(max_abs_log_colsum(m).item(), math.log(2.0), rel_tol=1e-6)
    assert max_abs_log_colsum(torch.full((3, 3), 1 / 3)) < 1e-6
    assert math.isclose(uniform_distance(torch.eye(4)).item(), 1.0, rel_tol=1e-6)
    assert math.isclose(uniform_distance(permutation_matrices(3)[4]).item(), 1.0, rel_tol=1e-6)
    assert uniform_distance(torch.full((4, 4), 0.25)) < 1e-6
    assert uniform_distance(torch.ones(1, 1)) == 0
    logits = torch.tensor([[0.0, -8.0], [3.0, 1.0]])
    assert log_inv_nu(logits) == 11.0


def test_unconstrained_gain_grows_with_depth_projected_stays_bounded():
    g = torch.Generator().manual_seed(0)
    depth = 64
    raw = [torch.eye(4) + 0.5 * torch.randn(256, 4, 4, generator=g) for _ in range(depth)]
    gains = [amax_forward(composite(raw[:d])).mean().item() for d in (1, 8, 32, 64)]
    assert all(b > 2 * a for a, b in zip(gains, gains[1:])) and gains[-1] > 1e6

    sk = [sinkhorn_paper(torch.randn(256, 4, 4, generator=g) * 3, 1) for _ in range(depth)]
    lite = [permutation_mixture(torch.randn(256, 24, generator=g) * 3, permutation_matrices(4)) for _ in range(depth)]
    for d in (1, 8, 32, 64):
        assert amax_forward(composite(sk[:d])).max() <= 1 + 1e-5  # rows exact at every k >= 1
        lite_c = composite(lite[:d])
        assert amax_forward(lite_c).max() <= 1 + 1e-5 and amax_backward(lite_c).max() <= 1 + 1e-5


# ---------------------------------------------------------------------- spans
def test_span_sets():
    assert span_list(4, "paper") == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 3), (2, 2), (2, 3), (3, 3)]
    assert len(span_list(4, "all")) == 10
    with pytest.raises(ValueError, match="paper, all"):
        span_list(4, "every")


def test_span_products_match_composite():
    mats = [torch.randn(5, 3, 3) for _ in range(6)]
    spans = span_list(6, "all")
    products = span_products(mats, spans)
    for a, b in spans:
        torch.testing.assert_close(products[(a, b)], composite(mats[a : b + 1]))


def test_token_mean_versus_mean_matrix():
    # Two tokens whose H_res differ in sign: each has forward gain 2, their average is I (gain 1).
    h = torch.tensor([[[1.0, -1.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]]).view(1, 2, 2, 2)
    like = torch.zeros(1, 2, dtype=torch.long)
    v = rows_frame(span_rows([Mixing(h_res=h)], 2, like))
    assert v[("span", 0, 0, "amax_fwd", "token_mean")] == 2
    assert v[("span", 0, 0, "amax_fwd", "token_max")] == 2
    assert v[("span", 0, 0, "amax_fwd", "mean_matrix")] == 1


# ---------------------------------------------------------------------- on real models
def test_identity_model_gains_are_one():
    model = small_model("identity")
    rows = diagnostics_rows(model, torch.randint(0, VOCAB, (2, 16)), step=7)
    df = pd.DataFrame(rows)
    assert set(df.columns) == {"step", "scope", "start", "end", "metric", "stat", "value"} and (df.step == 7).all()
    gains = df[df.metric.isin(["amax_fwd", "amax_bwd"])]
    assert len(gains) == 2 * 3 * len(span_list(4)) and (gains.value == 1).all()
    assert (df[df.metric == "uniform_distance"].value == 0).all()


@pytest.mark.parametrize("name", ["hc", "mhc", "mhc-lite"])
def test_collect_mixing_records_per_token_and_restores_state(name):
    model = small_model(name, 3)
    model.train()
    x = torch.randint(0, VOCAB, (2, 16))
    mixings = collect_mixing(model, x)
    assert len(mixings) == 4 and all(m.h_res.shape == (2, 16, 3, 3) for m in mixings)
    assert all(not m.h_res.requires_grad for m in mixings)
    assert model.training and not any(r.recording for r in model.residuals())


@pytest.mark.parametrize("name", ["hc", "mhc", "mhc-lite"])
def test_rows_are_complete_and_finite(name):
    df = pd.DataFrame(diagnostics_rows(small_model(name, 4), torch.randint(0, VOCAB, (2, 16)), step=0))
    assert df.value.map(math.isfinite).all()
    layer = df[df.scope == "layer"]
    assert set(layer.metric) >= {"h_pre", "h_post", "h_res", "res_row_gap", "res_col_gap"}
    assert ("log_inv_nu" in set(layer.metric)) == (name == "mhc")  # only mhc has n×n logits
    spans = df[df.scope == "span"]
    assert set(zip(spans.start, spans.end)) == set(span_list(4)) and set(spans["stat"]) == {"token_mean", "token_max", "mean_matrix"}


def test_randomised_hc_gains_exceed_one_mhc_forward_gains_do_not():
    x = torch.randint(0, VOCAB, (2, 16))
    out = {}
    for name in ("hc", "mhc"):
        model = small_model(name, 4)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for r in model.residuals():
                r.bias_res.add_(torch.randn(r.bias_res.shape, generator=g) * 2)
        out[name] = pd.DataFrame(diagnostics_rows(model, x, step=0))
    fwd = {k: df[(df.scope == "span") & (df.metric == "amax_fwd")].value for k, df in out.items()}
    assert fwd["hc"].max() > 2 and fwd["mhc"].max() <= 1 + 1e-5


def test_converged_sinkhorn_reports_its_rounds_and_the_tokens_that_hit_the_cap():
    """A 'converged' reference that stopped at sk_max_iters must say so, not pass as exact."""
    x = torch.randint(0, VOCAB, (2, 16))
    found = {}
    for cap in (2000, 2):
        cfg = small_cfg("mhc", 4)
        cfg.variant.sk_mode, cfg.variant.sk_tol, cfg.variant.sk_max_iters = "converged", 1e-6, cap
        torch.manual_seed(0)
        model = build_model(cfg, VOCAB)
        with torch.no_grad():  # logits far from a scaled permutation: many rounds to converge
            for r in model.residuals():
                r.bias_res.add_(torch.randn(r.bias_res.shape, generator=torch.Generator().manual_seed(1)) * 3)
        rows = diagnostics_rows(model, x, step=0)
        found[cap] = (rows_frame(rows), capped_summary(rows))
    ok, warning = found[2000]
    assert warning is None and (ok.xs(("layer", "sk_capped"), level=("scope", "metric")) == 0).all()
    assert (ok.xs(("layer", "sk_rounds", "token_max"), level=("scope", "metric", "stat")) > 2).all()
    hit, warning = found[2]
    assert (hit.xs(("layer", "sk_capped", "token_mean"), level=("scope", "metric", "stat")) == 1).all()
    assert (hit.xs(("layer", "sk_rounds", "token_max"), level=("scope", "metric", "stat")) == 2).all()
    assert warning is not None and "4 sub-layers" in warning and "sk_max_iters" in warning
    assert "sk_rounds" not in set(pd.DataFrame(diagnostics_rows(small_model("mhc", 4), x, step=0)).metric)  # paper mode


# ---------------------------------------------------------------------- diagnose_run
def fake_data_module():
    """Stands in for harness.train.data (prepare / Batches): byte-sized vocab, seeded val batches."""
    module = types.ModuleType("harness.train.data")

    def prepare(cfg):
        return types.SimpleNamespace(tokenizer=types.SimpleNamespace(vocab_size=VOCAB - 7))

    class Batches:
        def __init__(self, prepared, seq_len, batch_size, seed):
            self.shape, self.seed = (batch_size, seq_len), seed

        def val_batch(self, i):
            g = torch.Generator().manual_seed(1000 + i)
            x = torch.randint(0, VOCAB - 7, self.shape, generator=g)
            return x, x

    module.prepare, module.Batches = prepare, Batches
    return module


def test_diagnose_run_writes_and_merges_parquet(tmp_path, monkeypatch):
    fake = fake_data_module()
    monkeypatch.setattr(diagnostics, "prepare", fake.prepare)
    monkeypatch.setattr(diagnostics, "Batches", fake.Batches)
    cfg = small_cfg("mhc", 2)
    cfg.train.batch_size = 2
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB - 7)
    opt = torch.optim.AdamW(model.parameters())
    old = pd.DataFrame(diagnostics_rows(model, torch.randint(0, VOCAB - 7, (1, 16)), step=3))
    old.to_parquet(tmp_path / "diagnostics.parquet", index=False)  # as if recorded during training
    with torch.no_grad():
        model.blocks[0].mlp_res.bias_res.add_(1.0)  # the checkpoint differs from the model at step 3
    save_checkpoint(tmp_path / "checkpoint.pt", step=5, tokens=0, model_state=model.state_dict(), optimizer_state=opt.state_dict(), config=cfg.to_dict())

    df = diagnose_run(tmp_path)
    assert (df.step == 5).all() and len(df) > 0
    on_disk = pd.read_parquet(tmp_path / "diagnostics.parquet")
    assert sorted(on_disk.step.unique()) == [3, 5] and len(on_disk) == len(old) + len(df)
    # the loaded weights are the checkpoint's: recompute on the same batch
    x, _ = fake_data_module().Batches(None, 16, 2, 0).val_batch(0)
    expected = rows_frame(diagnostics_rows(model, x, step=5))
    pd.testing.assert_series_equal(rows_frame(df.to_dict("records")), expected)
    diagnose_run(tmp_path)  # idempotent: step 5 replaced, not duplicated
    assert len(pd.read_parquet(tmp_path / "diagnostics.parquet")) == len(on_disk)
    assert not list(tmp_path.glob(".diagnostics.parquet.*"))  # no temporary left behind
