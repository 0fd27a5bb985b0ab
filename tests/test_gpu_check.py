"""`make gpu-check` is ready for the GPU machine it has never seen: its dry run (the same steps on
the CPU at toy sizes) finishes, writes every output, and needs none of lm-eval, submitit or
optuna, which the device image lacks (here they are made unimportable for the subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_every_output_without_the_optional_packages(tmp_path):
    shim = tmp_path / "shim"
    for name in ("lm_eval", "submitit", "optuna"):
        (shim / name).mkdir(parents=True)
        (shim / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(shim)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "harness.bench.gpu_check", "--dry-run", "--out", str(out)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    log = (out / "gpu-check.log").read_text() if (out / "gpu-check.log").exists() else r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    info = json.loads((out / "env.json").read_text())
    assert info["dry_run"] and set(info["steps"]) == {"tests", "precision", "kernels", "model", "data"}
    assert all(s["status"] == 0 for s in info["steps"].values()), info["steps"]
    assert "passed" in (out / "tests.log").read_text()
    precision = pd.read_parquet(out / "precision.parquet")
    assert set(precision.precision) == {"tf32", "ieee"} and (precision.mix_rms_rel < 1e-3).all()
    kernels = pd.read_parquet(out / "bench-kernels.parquet")
    assert {"torch", "triton", "liger"} <= set(kernels.provider)
    model = pd.read_parquet(out / "bench-model.parquet")
    assert {"identity", "mhc"} <= set(model.variant)
    data = pd.read_parquet(out / "bench-data.parquet")
    assert set(data.source) == {"modded-nanogpt"} and (data[data.metric == "tokens_per_s"].value > 0).all()


def test_without_a_gpu_the_real_run_refuses_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the real run would start")
    r = subprocess.run([sys.executable, "-m", "harness.bench.gpu_check", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no CUDA device" in r.stderr
