"""Training core: learning on the real corpus, exact resume, divergence, run-folder contents."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.train.loop import train
from harness.train.optim import adamw_options, lr_at, make_optimizer

ROOT = Path(__file__).resolve().parents[1]


def train_losses(run_dir):
    df = pd.read_parquet(Path(run_dir) / "metrics.parquet")
    return df[df.split == "train"].set_index("step")["loss"], df[df.split == "val"].set_index("step")["loss"]


def test_loss_falls_on_real_corpus_within_tiny_budget(tiny_cfg):
    result = train(tiny_cfg())
    assert result.status == "done"
    tr, val = train_losses(result.run_dir)
    assert list(tr.index) == list(range(1, 61))
    assert val.index[0] == 0 and val.index[-1] == 60
    # byte-level: uniform over 320 logits is ln(320) = 5.77; the model must get well below
    assert val.iloc[0] > 5.0
    assert val.iloc[-1] < val.iloc[0] - 2.0, (val.iloc[0], val.iloc[-1])
    for name in ("config.json", "env.json", "status.json", "metrics.parquet", "checkpoint.pt", "train.log"):
        assert (result.run_dir / name).stat().st_size > 0, name
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "done" and status["step"] == 60
    env = json.loads((result.run_dir / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "git_commit" in env


def test_stop_and_resume_is_bitwise_identical(tiny_cfg):
    full = train(tiny_cfg("train.steps=30", "train.checkpoint_every=10", "run.name=full"))
    part = train(tiny_cfg("train.steps=30", "train.checkpoint_every=10", "train.stop_after=13", "run.name=part"))
    assert part.status == "stopped" and part.step == 13
    resumed = train(tiny_cfg("train.steps=30", "train.checkpoint_every=10", "run.name=part"), resume=True)
    assert resumed.status == "done"
    (a, av), (b, bv) = train_losses(full.run_dir), train_losses(resumed.run_dir)
    assert list(b.index) == list(range(1, 31))  # no step lost or repeated
    assert (a.values == b.values).all() and (av.values == bv.values).all()  # bitwise on CPU


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tiny_cfg, tmp_path):
    """A real kill -9 after a checkpoint, resumed from the command line, matches a clean run."""
    args = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--set", "run.progress=off",
            "--set", f"data.cache_dir={tiny_cfg().data.cache_dir}", "--set", "train.steps=150",
            "--set", "train.checkpoint_every=3", "--set", "train.eval_every=50"]
    clean = train(tiny_cfg("train.steps=150", "train.checkpoint_every=3", "train.eval_every=50", "run.name=clean"))
    cmd = [sys.executable, "-m", "harness", "train", *args, "--set", "run.name=killed"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = tmp_path / "runs" / "killed" / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if status.exists() and json.loads(status.read_text()).get("step", 0) >= 6:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(status.read_text())
    assert killed_at["status"] == "running" and 6 <= killed_at["step"] < 150, killed_at
    out = subprocess.run(cmd + ["--resume"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (a, av), (b, bv) = train_losses(clean.run_dir), train_losses(tmp_path / "runs" / "killed")
    assert list(b.index) == list(range(1, 151))
    assert (a.values == b.values).all() and (av.values == bv.values).all()


def nan_loss_from_step(monkeypatch, step: int) -> None:
    """From the `step`-th training forward on (1-based), the loss is NaN."""
    from harness.train import model as model_mod
    real_forward = model_mod.GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None):
        logits, loss = real_forward(self, idx, targets)
        if self.training:
            calls["n"] += 1
            if calls["n"] >= step:
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(model_mod.GPT, "forward", poisoned)


def test_nan_loss_stops_cleanly_as_diverged(tiny_cfg, monkeypatch):
    nan_loss_from_step(monkeypatch, 5)
    result = train(tiny_cfg("train.checkpoint_every=2"))
    assert result.status == "diverged" and result.step == 5
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and "nan" in status["error"]
    tr, _ = train_losses(result.run_dir)
    assert tr.index[-1] == 5 and pd.isna(tr.iloc[-1])
    # the last good checkpoint is kept, not overwritten with the diverged weights
    state = torch.load(result.run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4


def test_lr_schedule_step_decay(tiny_cfg):
    cfg = tiny_cfg("train.steps=100", "optim.warmup_steps=10", "optim.lr=1.0")
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[79] == 1.0 and lrs[80] == pytest.approx(0.316) and lrs[90] == pytest.approx(0.1)
    cfg = tiny_cfg("train.steps=100", "optim.warmup_steps=0", "optim.schedule=cosine", "optim.min_lr_ratio=0.1", "optim.lr=1.0")
    assert lr_at(0, cfg) == pytest.approx(1.0) and lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)


def test_checkpoint_of_format_1_with_scalar_alphas_still_resumes_exactly(tiny_cfg):
    """Runs saved before α became a 1-element vector (format 1, 0-d α and moments) keep working."""
    from harness.core.checkpoint import load_checkpoint
    from harness.eval.loading import load_run

    opts = ("variant.name=mhc", "train.steps=10", "train.checkpoint_every=5")
    full = train(tiny_cfg(*opts, "run.name=full"))
    part = train(tiny_cfg(*opts, "train.stop_after=5", "run.name=part"))
    state = load_checkpoint(part.run_dir / "checkpoint.pt")
    alphas = [k for k in state["model"] if k.rsplit(".", 1)[-1].startswith("alpha_")]
    assert alphas and all(state["model"][k].shape == (1,) for k in alphas)
    state["model"] = {k: v.reshape(()) if k in alphas else v for k, v in state["model"].items()}
    squeezed = 0
    for moments in state["optimizer"]["state"].values():
        if moments["exp_avg"].shape == (1,):
            moments["exp_avg"], moments["exp_avg_sq"] = moments["exp_avg"].reshape(()), moments["exp_avg_sq"].reshape(())
            squeezed += 1
    assert squeezed == len(alphas)
    torch.save(state | {"format_version": 1}, part.run_dir / "checkpoint.pt")

    assert load_run(part.run_dir, device="cpu").model(torch.zeros(1, 4, dtype=torch.long))[0].isfinite().all()
    resumed = train(tiny_cfg(*opts, "run.name=part"), resume=True)
    (a, _), (b, _) = train_losses(full.run_dir), train_losses(resumed.run_dir)
    assert resumed.status == "done" and (a.values == b.values).all()
    assert load_checkpoint(resumed.run_dir / "checkpoint.pt")["format_version"] == 2


def test_host_reads_once_per_interval_change_no_number(tiny_cfg):
    """log_every only changes when the host reads: same rows, losses and norms as reading every step."""
    every = train(tiny_cfg("train.steps=12", "train.log_every=1", "run.name=every"))
    batched = train(tiny_cfg("train.steps=12", "train.log_every=5", "run.name=batched"))
    a = pd.read_parquet(every.run_dir / "metrics.parquet")
    b = pd.read_parquet(batched.run_dir / "metrics.parquet")
    assert list(a.columns) == list(b.columns) and list(a.step) == list(b.step)
    norms = [c for c in a.columns if c.startswith("grad_norm")]
    assert len(norms) > 3
    for c in ["loss", "lr", *norms]:
        assert ((a[c].values == b[c].values) | (a[c].isna().values & b[c].isna().values)).all(), c
    tr = b[b.split == "train"].set_index("step")
    # rows of one interval share its mean step time; intervals end at 5, 10 and the last step (12)
    for steps in ([1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]):
        assert tr.loc[steps, "step_time_s"].nunique() == 1, steps
    assert (tr.tokens_per_s * tr.step_time_s - 8 * 64).abs().max() < 1e-6


def test_stop_and_resume_mid_interval_is_bitwise_identical(tiny_cfg):
    opts = ("train.steps=17", "train.log_every=6", "train.checkpoint_every=4", "train.eval_every=8")
    full = train(tiny_cfg(*opts, "run.name=full"))
    part = train(tiny_cfg(*opts, "train.stop_after=9", "run.name=part"))  # 9: inside the interval 7..12
    assert part.status == "stopped" and part.step == 9
    assert list(train_losses(part.run_dir)[0].index) == list(range(1, 10))  # read before stopping
    resumed = train(tiny_cfg(*opts, "run.name=part"), resume=True)
    (a, av), (b, bv) = train_losses(full.run_dir), train_losses(resumed.run_dir)
    assert list(b.index) == list(range(1, 18))
    assert (a.values == b.values).all() and (av.values == bv.values).all()


@pytest.mark.parametrize("checkpoint_every, kept", [(3, 3), (20, None)])
def test_divergence_inside_an_interval_reports_its_exact_step(tiny_cfg, monkeypatch, checkpoint_every, kept):
    """NaN at step 5 with reads every 10 steps: found at the next read, reported as step 5, and no
    checkpoint written after step 4 (a checkpoint due at step 6 reads first and never happens)."""
    nan_loss_from_step(monkeypatch, 5)
    result = train(tiny_cfg("train.log_every=10", f"train.checkpoint_every={checkpoint_every}", "train.eval_every=0"))
    assert result.status == "diverged" and result.step == 5
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and status["step"] == 5 and "at step 5" in status["error"]
    tr, _ = train_losses(result.run_dir)
    assert list(tr.index) == [1, 2, 3, 4, 5] and pd.isna(tr.iloc[-1]) and tr.iloc[:-1].notna().all()
    ckpt = result.run_dir / "checkpoint.pt"
    assert (torch.load(ckpt, weights_only=True)["step"] if ckpt.exists() else None) == kept


def test_fused_adamw_on_cuda_only():
    assert adamw_options(torch.device("cuda")) == {"fused": True}
    assert adamw_options(torch.device("cuda", 1)) == {"fused": True}
    assert adamw_options(torch.device("cpu")) == {}  # CPU keeps the implementation its bitwise resume was tested with
    model = torch.nn.Linear(3, 2)
    model.no_decay_parameters = lambda: {id(model.bias)}
    from harness.core.presets import get_preset

    opt = make_optimizer(model, get_preset("tiny"))
    assert all(not g["fused"] and not g["foreach"] for g in opt.param_groups)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_steps_do_not_synchronise_with_the_host(tiny_cfg):
    """With CUDA's sync debug mode counting synchronising calls, twice the steps in one interval
    costs no extra synchronisation: every sync is in the read, validation or checkpoint."""
    import warnings

    def syncs(steps: int) -> int:
        cfg = tiny_cfg(f"train.steps={steps}", f"train.log_every={steps}", "train.eval_every=0", "train.diag_every=0",
                       "train.checkpoint_every=0", "train.device=cuda", f"run.name=s{steps}")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train(cfg)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(2)  # warm-up: first-use allocations and library loads
    assert syncs(4) == syncs(8)
