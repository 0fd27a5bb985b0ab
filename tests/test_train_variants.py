"""Every variant trains on the real corpus in the `tiny` budget, and its diagnostics are recorded."""

import json
import math

import pandas as pd
import pytest

from harness.cli import main
from harness.train.loop import train

CASES = {
    "identity": [],
    "hc": ["variant.name=hc"],
    "hc-static": ["variant.name=hc", "variant.mode=static"],
    "mhc": ["variant.name=mhc"],
    "mhc-k1-kernel": ["variant.name=mhc", "variant.sk_iters=1", "variant.sk_mode=kernel"],
    "mhc-res-only": ["variant.name=mhc", "variant.fixed=pre,post"],
    "mhc-lite": ["variant.name=mhc-lite"],
    "kromhc": ["variant.name=kromhc"],
    "frac": ["variant.name=frac"],
    "orthostochastic": ["variant.name=orthostochastic"],
}


@pytest.mark.parametrize("case", CASES)
def test_variant_trains_with_finite_falling_loss(tiny_cfg, case):
    result = train(tiny_cfg("train.steps=40", "train.eval_every=20", "train.diag_every=20", *CASES[case]))
    assert result.status == "done"
    m = pd.read_parquet(result.run_dir / "metrics.parquet")
    tr, val = m[m.split == "train"], m[m.split == "val"].set_index("step")["loss"]
    assert tr["loss"].map(math.isfinite).all() and tr["grad_norm"].map(math.isfinite).all()
    assert val.loc[40] < val.loc[0] - 1.5, val.to_dict()
    if case != "identity":
        assert tr["grad_norm_mixing"].gt(0).all()  # the mixing parameters get gradient every step
    d = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    assert sorted(d.step.unique()) == [0, 20, 40]
    whole = d[(d.scope == "span") & (d.start == 0) & (d.end == d.end.max()) & (d.stat == "token_mean")].set_index(["step", "metric"])["value"]
    if case in ("identity", "mhc-res-only", "mhc", "mhc-lite", "kromhc"):
        assert whole.xs("amax_fwd", level="metric").le(1 + 1e-4).all()  # row-stochastic composites


def test_diagnose_command_on_a_trained_run(tiny_cfg, capsys):
    cfg = tiny_cfg("train.steps=6", "variant.name=mhc", "train.diag_every=0")
    result = train(cfg)
    before = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    code = main(["diagnose", str(result.run_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "forward gain" in out and "diagnostics.parquet" in out
    after = pd.read_parquet(result.run_dir / "diagnostics.parquet")
    assert sorted(after.step.unique()) == [0, 6] and len(after) == len(before)  # step 6 replaced, not doubled
    assert json.loads((result.run_dir / "status.json").read_text())["status"] == "done"


def test_diagnose_rejects_a_non_run_folder(tmp_path, capsys):
    assert main(["diagnose", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
