"""Know the bill before you submit (slurm/estimate.py): what `grid plan` predicts, where the rate
comes from, the requeue flags and refusals, and predicted against actual afterwards."""

from pathlib import Path

import pandas as pd
import pytest
from grid_helpers import cli

from harness.cli import main
from harness.core.config import apply_overrides
from harness.core.presets import get_preset
from harness.train.flops import (
    flops_per_token,
    model_params,
    run_flops,
    tokenizer_vocab,
)
from harness.train.model import build_model

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "slurm" / "grids" / "smoke.toml"
MAIN = ROOT / "slurm" / "grids" / "main.toml"


@pytest.mark.parametrize("variant", ["identity", "mhc", "orthostochastic", "go-mhc", "frac"])
def test_flops_count_the_models_own_parameters(variant):
    cfg = apply_overrides(get_preset("tiny"), [f"variant.name={variant}", "variant.n_streams=0"])
    model = build_model(cfg, tokenizer_vocab(cfg))
    n = sum(p.numel() for p in model.parameters())
    assert model_params(cfg) == (n, n)  # tiny ties the embedding: it is also the output head
    tokens, flops = run_flops(cfg)
    m = cfg.model
    assert tokens == cfg.train.steps * cfg.train.batch_size * m.seq_len
    assert flops == tokens * (6 * n + 12 * m.n_layer * m.seq_len * m.d_model) == tokens * flops_per_token(cfg, n)


def test_plan_prints_tokens_flops_time_and_device_hours_with_their_source(tmp_path, capsys):
    assert main(["grid", "plan", str(SMOKE), "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "estimate: FLOPs = 6·N·tokens + 12·L·T·C·tokens" in out
    assert "rate assumed: this CPU's matmul rate measured now x MFU 0.1" in out
    assert "preset=tiny, variant.name=mhc, variant.sk_iters=20" in out and "total: 7 runs, 358k tokens" in out
    assert main(["grid", "plan", str(MAIN), "--preset", "gpt-s", "--cluster", "slurm", "--gpus-per-node", "8", "--nodes", "2",
                 "--set", "train.grad_accum=16", "--set", "train.batch_size=8", "--gpu", "H100", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "assumed: H100 at 989 TFLOP/s dense bf16 x MFU 0.2" in out and "1.31B" in out and "device-hours" in out


@pytest.mark.parametrize("args, message", [
    (["--gpu", "V100"], "unknown GPU 'V100' for --gpu (did you mean 'H100'?); known: A100, H100, H200, B200"),
    (["--mfu", "0"], "--mfu is the fraction of the peak rate a run reaches, in (0, 1]; got 0.0"),
    (["--mfu", "1.5"], "--mfu is the fraction of the peak rate a run reaches, in (0, 1]; got 1.5"),
])
def test_bad_estimate_options_are_one_line(tmp_path, capsys, args, message):
    assert main(["grid", "plan", str(SMOKE), "--runs-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_runs_past_the_limit_are_flagged_and_past_the_requeue_cap_refused_before_anything(tmp_path, capsys):
    gpus = ["--preset", "gpt-s", "--cluster", "slurm", "--gpus-per-node", "1", "--gpu", "A100", "--runs-dir", str(tmp_path)]
    assert main(["grid", "plan", str(MAIN), *gpus, "--time", "45"]) == 0  # ~1 h a run on one A100 at 20% MFU
    out = capsys.readouterr().out
    assert "requeues: 21 run(s) predicted past the 45 min limit" in out and "1 requeue(s)); --time 1:" in out
    assert main(["grid", "plan", str(MAIN), *gpus, "--time", "5"]) == 2
    err = capsys.readouterr().err
    assert "is predicted to train for" in err and "allows with 10 requeues: ask for --time 1:" in err and err.count("\n") == 1
    # submitting the same is refused before anything is written (the local executor, no cluster needed)
    assert main(["grid", "submit", str(MAIN), "--preset", "gpt-s", "--gpu", "A100", "--gpus-per-node", "1", "--time", "5",
                 "--runs-dir", str(tmp_path), "--cluster", "local"]) == 2
    assert not (tmp_path / "main-gpt-s").exists() and not (tmp_path / "main").exists()


@pytest.mark.slow
def test_a_calibrated_estimate_is_within_2x_of_the_steps_the_smoke_grid_then_takes(tmp_path, data_cache, capsys):
    """bench model times the smoke grid's variants on this CPU; grid plan then predicts each run's
    training time from that table; grid submit trains them: every run within 2x of its prediction,
    and status, report and the next calibrated plan say so. (20 steps a round: bench model's rounds
    start cache-cold after another model, which a few steps would overweigh.)"""
    runs = tmp_path / "runs"
    one_thread = ["--set", "train.threads=1"]
    assert main(["bench", "model", "--preset", "tiny", "--variants", "identity,hc,mhc,mhc-lite", "--peers", "none",
                 "--rounds", "3", "--steps", "20", "--warmup", "3", "--device", "cpu", *one_thread,
                 "--out", str(runs / "bench" / "model.parquet")]) == 0
    capsys.readouterr()
    grid = [str(SMOKE), "--runs-dir", str(runs), *one_thread, "--set", f"data.cache_dir={data_cache}"]
    assert main(["grid", "plan", *grid]) == 0
    assert "rate measured by bench model (" in capsys.readouterr().out
    code, out, err = cli("submit", *grid, "--cluster", "local", "--parallel", "1")
    assert code == 0 and "finished: 7 done" in out, out + err
    from slurm.estimate import actual_seconds, load

    predicted = load(runs / "smoke")
    assert len(predicted) == 7 and {p["source"] for p in predicted.values()} == {"measured"}
    for folder in sorted((runs / "smoke").glob("*-*")):
        rid = folder.name.rsplit("-", 1)[-1]
        if rid in predicted:
            ratio = actual_seconds(folder) / predicted[rid]["seconds"]
            assert 0.5 <= ratio <= 2.0, (folder.name, ratio)
    code, out, _ = cli("status", runs / "smoke")
    assert "time (actual / predicted)" in out
    assert main(["report", str(runs / "smoke")]) == 0
    md = (runs / "smoke" / "report" / "report.md").read_text()
    assert "## What did it cost against the estimate?" in md and "actual / predicted" in md
    capsys.readouterr()
    assert main(["grid", "plan", *grid, "--calibrate-from", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "calibrated from smoke" in out and "calibrated" in out.splitlines()[-3]
    table = pd.read_parquet(runs / "bench" / "model.parquet")
    assert set(table.variant) == {"identity", "hc", "mhc", "mhc-lite"}
