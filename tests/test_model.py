"""Model: causality, shapes, the variant interface and weight-decay grouping."""

import torch

from harness.core.presets import get_preset
from harness.train.model import build_model
from harness.train.optim import make_optimizer


def tiny_model(**overrides):
    cfg = get_preset("tiny")
    for k, v in overrides.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(0)
    return build_model(cfg, 257), cfg


def test_changing_future_tokens_leaves_past_logits_unchanged():
    model, cfg = tiny_model()
    x = torch.randint(0, 257, (2, cfg.model.seq_len))
    t = 17
    y = x.clone()
    y[:, t + 1 :] = torch.randint(0, 257, y[:, t + 1 :].shape)
    assert (y[:, t + 1 :] != x[:, t + 1 :]).any()
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(y)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1 :] - b[:, t + 1 :]).abs().max() > 1e-3  # the future does matter after t


def test_vocab_padded_and_loss_near_uniform_at_init():
    model, cfg = tiny_model()
    assert model.vocab_size == 320
    x = torch.randint(0, 257, (4, cfg.model.seq_len))
    y = torch.randint(0, 257, (4, cfg.model.seq_len))
    _, loss = model(x, y)
    assert abs(loss.item() - torch.log(torch.tensor(320.0)).item()) < 0.5


def test_no_weight_decay_on_vectors():
    model, cfg = tiny_model()
    decay, no_decay = make_optimizer(model, cfg).param_groups
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == cfg.optim.weight_decay
    assert all(p.ndim < 2 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    n_norms = 2 * cfg.model.n_layer + 1
    assert len(no_decay["params"]) == n_norms


def test_residual_per_sublayer_in_depth_order():
    model, cfg = tiny_model()
    assert [r.index for r in model.residuals()] == list(range(2 * cfg.model.n_layer))
