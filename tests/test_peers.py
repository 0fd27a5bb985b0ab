"""Peers (lucidrains' hyper-connections) inside our GPT, in `bench model`, and in `bench kernels`.

The package is part of the `peers` extra that `make test` installs; the tests that need it
import it with importorskip so a bare checkout still runs the rest, but under `make test` they
all run. The "package missing" path is tested by making it unimportable, not by its absence.
"""

import sys

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.train.model import GPT, build_model, padded_vocab
from variants.peers import PEERS, PeerUnavailable, build_peer, package_version

VOCAB = 256
BENCH = ["bench", "model", "--preset", "tiny", "--streams", "2", "--rounds", "2", "--steps", "1", "--warmup", "1",
         "--device", "cpu", "--set", "model.seq_len=16", "--set", "train.batch_size=2"]


@pytest.fixture
def hc_package():
    return pytest.importorskip("hyper_connections")


def peer_model(cfg, name: str) -> GPT:
    """Our GPT with the peer's connection, configured like its counterpart (as bench model does)."""
    cfg.variant.name = PEERS[name].counterpart
    cfg.validate()
    torch.manual_seed(0)
    variant = build_peer(name, cfg.variant, cfg.model.d_model, 2 * cfg.model.n_layer)
    return GPT(cfg.model, variant, padded_vocab(cfg, VOCAB))


def peer_parameters(model: GPT) -> dict[str, torch.nn.Parameter]:
    return {f"{i}.{k}": p for i, r in enumerate(model.residuals()) for k, p in r.named_parameters()}


def perturb(model: GPT, scale: float = 0.5) -> None:
    """Random peer parameters, so streams differ and every coefficient depends on its input."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in peer_parameters(model).values():
            p.add_(torch.randn(p.shape, generator=g) * scale)


@pytest.mark.parametrize("name", list(PEERS))
def test_peer_in_our_gpt_trains_every_peer_parameter(name, hc_package, tiny_cfg, single_thread):
    from harness.train.optim import make_optimizer

    cfg = tiny_cfg("model.seq_len=16", "variant.n_streams=3")
    model = peer_model(cfg, name)
    ours = build_model(tiny_cfg("model.seq_len=16", f"variant.name={PEERS[name].counterpart}", "variant.n_streams=3"), VOCAB)
    body = lambda m: {k: tuple(p.shape) for k, p in m.named_parameters() if "_res." not in k}  # noqa: E731
    assert body(model) == body(ours)  # the same model around a different connection
    params = peer_parameters(model)
    assert params and all(id(p) in {id(q) for q in model.parameters()} for p in params.values())

    opt = make_optimizer(model, cfg)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, VOCAB, (2, 16), generator=g)
    upstream = torch.randn(2, 16, model.vocab_size, generator=g)
    nonzero = set()
    for _ in range(2):  # the peer's projections start at zero: its scales and norm gains learn from step 2
        logits, loss = model(x, x)
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward([logits], [upstream])
        for k, p in params.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), k
            if p.grad.abs().max() > 0:
                nonzero.add(k)
        opt.step()
    assert nonzero == set(params), f"never reached: {sorted(set(params) - nonzero)}"


@pytest.mark.parametrize("name", list(PEERS))
def test_streams_of_different_sequences_never_mix(name, hc_package, tiny_cfg, single_thread):
    """The peer folds streams into the batch: a layout mix-up would leak one sequence into another."""
    model = peer_model(tiny_cfg("model.seq_len=16"), name)
    perturb(model)
    x = torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        together, _ = model(x)
        alone = torch.cat([model(x[i:i + 1])[0] for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    emb = torch.randn(2, 5, 64)
    torch.testing.assert_close(model.variant.reduce(model.variant.expand(emb)), model.variant.n_streams * emb)


def test_peer_mhc_h_res_is_doubly_stochastic_and_applied_as_recorded(hc_package, tiny_cfg, single_thread):
    gaps = {}
    for k in (1, 20):
        model = peer_model(tiny_cfg("model.seq_len=16", "variant.name=mhc", "variant.n_streams=4", f"variant.sk_iters={k}"),
                           "peer:hyper-connections-mhc")
        assert f"sinkhorn_iters={k}" in model.variant.note()
        perturb(model, 0.2)  # logits spread enough to need the rounds (at 0.5, 20 rounds leave a 2.5% row gap)
        r = model.residuals()[1]
        r.recording = True
        xs = torch.randn(2, 16, 4, 64, generator=torch.Generator().manual_seed(4))  # ours: (B, T, n, C)
        folded = xs.transpose(1, 2).reshape(8, 16, 64)  # theirs: (B n, T, C)
        with torch.no_grad():
            out = r(folded, torch.zeros_like)  # zero branch: the new streams are H_res x alone
        h = r.last_h_res
        assert h.shape == (2, 16, 4, 4) and (h >= 0).all()
        expected = torch.einsum("btij,btjc->btic", h, xs)  # our orientation: new_i = sum_j H[i, j] x_j
        torch.testing.assert_close(out.view(2, 4, 16, 64).transpose(1, 2), expected, rtol=1e-5, atol=1e-5)
        gaps[k] = ((h.sum(-1) - 1).abs().max().item(), (h.sum(-2) - 1).abs().max().item())  # rows, columns
    assert gaps[1][1] < 1e-5 and gaps[20][1] < 1e-5  # columns exact after every round (normalised last)
    assert gaps[20][0] < 1e-4  # rows too after 20 rounds: doubly stochastic
    assert gaps[1][0] > 1e-2  # ... but not after one: sinkhorn_iters really is our sk_iters


def test_bench_model_times_peers_as_extra_rows(hc_package, tmp_path, capsys, single_thread):
    from harness.analysis import plots
    from harness.bench.model import summary

    out = tmp_path / "bench.parquet"
    assert main([*BENCH, "--variants", "identity,mhc", "--out", str(out)]) == 0  # --peers defaults to all
    printed = capsys.readouterr().out
    df = pd.read_parquet(out)
    assert set(df.variant) == {"identity", "mhc", *PEERS} and "skipped" not in set(df.metric)
    wide = df.pivot_table(index=["variant", "n_streams"], columns="metric", values="value")
    ident = wide.loc[("identity", 1), "step_time_s"]
    for name in PEERS:
        rows = df[df.variant == name]
        assert set(rows.backend) == {"torch"} and set(rows.peer) == {"hyper-connections"}
        assert set(rows.peer_version) == {package_version()} == {"0.4.11"}
        assert "num_residual_streams=2" in rows.note.iloc[0] and name in printed
        w = wide.loc[(name, 2)]
        assert w["step_time_s"] > 0 and w["tokens_per_s"] > 0
        assert abs(w["overhead"] - (w["step_time_s"] / ident - 1)) < 1e-12 and w["overhead_predicted_io"] > 0
    assert "sinkhorn_iters=20" in df[df.variant == "peer:hyper-connections-mhc"].note.iloc[0]
    assert "peer:hyper-connections-mhc" in summary(df)
    bars = plots.overhead_bars(df, tmp_path / "overhead.png")
    assert bars is not None and bars.read_bytes()[:4] == b"\x89PNG"


def test_unimportable_package_gives_skipped_rows_with_the_reason(monkeypatch, tiny_cfg, tmp_path, single_thread):
    from harness.analysis import plots
    from harness.bench.model import summary

    monkeypatch.setitem(sys.modules, "hyper_connections", None)  # `import hyper_connections` now fails
    with pytest.raises(PeerUnavailable, match="not importable"):
        build_peer("peer:hyper-connections-mhc", tiny_cfg("variant.name=mhc").variant, 64, 4)
    out = tmp_path / "bench.parquet"
    assert main([*BENCH, "--variants", "identity", "--backends", "torch,triton", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    peers = df[df.variant.isin(list(PEERS))]
    assert len(peers) == 2 * len(PEERS) and set(peers.metric) == {"skipped"} and peers.value.isna().all()
    torch_rows = peers[peers.backend == "torch"]
    assert torch_rows.note.str.contains("hyper-connections not importable").all()
    assert peers[peers.backend == "triton"].note.str.contains("no Triton path").all()
    assert (peers.n_streams == 2).all()
    assert df[(df.variant == "identity") & (df.metric == "step_time_s")].value.gt(0).all()
    assert summary(df).count("skipped:") == 2 * len(PEERS)  # identity has no stream maths: it runs under triton
    assert plots.overhead_bars(df, tmp_path / "o.png") is None and plots.throughput_bars(df, tmp_path / "t.png") is not None


def test_api_drift_is_a_failed_row_not_a_crash(hc_package, monkeypatch, tmp_path, single_thread):
    def drifted(*args, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'sinkhorn_iters'")

    monkeypatch.setattr(hc_package, "ManifoldConstrainedHyperConnections", drifted)
    out = tmp_path / "bench.parquet"
    assert main([*BENCH, "--variants", "identity", "--out", str(out)]) == 0
    df = pd.read_parquet(out)
    mhc = df[df.variant == "peer:hyper-connections-mhc"]
    assert list(mhc.metric) == ["skipped"] and mhc.note.iloc[0].startswith("failed: TypeError: __init__() got")
    hc = df[df.variant == "peer:hyper-connections-hc"]
    assert {"step_time_s", "overhead"} <= set(hc.metric)  # one peer failing costs nothing else


def test_peers_option(tmp_path, capsys):
    assert main([*BENCH, "--peers", "peer:hyper-connections-mch"]) == 2
    err = capsys.readouterr().err
    assert "unknown peer 'peer:hyper-connections-mch'" in err and "peer:hyper-connections-mhc" in err
    out = tmp_path / "bench.parquet"
    assert main([*BENCH, "--variants", "identity", "--peers", "none", "--rounds", "1", "--out", str(out)]) == 0
    assert set(pd.read_parquet(out).variant) == {"identity"}


def test_kernels_bench_hyper_connections_provider_runs(hc_package, single_thread):
    from harness.bench.kernels import Shape, _runner, build, make_inputs

    shape = Shape(tokens=8, C=16, n=3)
    fn, params, note = build("connection", "hyper-connections", shape, torch.device("cpu"), 3, "ieee")
    assert note.startswith("hyper-connections 0.4.11") and params
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    inputs = make_inputs("connection", shape, torch.float32, torch.device("cpu"))
    (out,) = fn(**inputs)
    assert out.shape == (3, 8, 16) and torch.isfinite(out).all()  # their '(b s) t d' with b = 1
    perm = torch.randperm(8, generator=g)  # tokens are independent: permuting them permutes the output
    (out_perm,) = fn(**dict(inputs, x=inputs["x"][perm]))
    torch.testing.assert_close(out_perm, out[:, perm])
    grads = _runner(fn, inputs, params, "fwd+bwd")()
    assert grads[0] is not None and grads[0].shape == inputs["x"].shape
    for gr in (grads[0], *grads[-len(params):]):  # the stream input and every peer parameter
        assert gr is not None and torch.isfinite(gr).all() and gr.abs().max() > 0
