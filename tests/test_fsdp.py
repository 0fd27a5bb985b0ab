"""FSDP (`train.parallel=fsdp`): two local tasks shard the model (gloo on CPU) through the same
dispatch path a SLURM job takes, and must train what one process trains, write checkpoints a
single process can read, and resume without losing or repeating a step."""

import json
import shutil

import pandas as pd
import pytest
import torch
from grid_helpers import metrics, registered, train_reference, write

from harness.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

BODY = """
    name = "fsdp"
    preset = "tiny"
    [base]
    variant.name = "{variant}"
    train.steps = 6
    train.grad_accum = 2
    train.eval_every = 3
    train.checkpoint_every = 3
    train.diag_every = 3
    train.threads = 1
    train.parallel = "fsdp"
    train.stop_after = {stop_after}
"""


def fsdp_job(tmp_path, body, data_cache, folder):
    """Submit a one-run grid as ONE job of two tasks on the local executor; the run's folder."""
    from slurm.dispatch import Dispatcher, Resources, freeze_code

    grid, exp = registered(write(tmp_path, body, f"{folder}.toml"), tmp_path / folder, f"data.cache_dir={data_cache}")
    d = Dispatcher(exp, "local", Resources(tasks_per_node=2), freeze_code(exp))
    [out] = d.wait(d.submit(grid.runs))
    assert out.get("world_size") == 2, out
    return out, grid.runs[0].path


def diagnostics(run_dir):
    d = pd.read_parquet(run_dir / "diagnostics.parquet")
    return d.sort_values(list(d.columns.drop("value"))).reset_index(drop=True)


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_fsdp_two_tasks_match_a_single_process_run(tmp_path, data_cache, variant):
    body = BODY.format(variant=variant, stop_after=0)
    out, run_dir = fsdp_job(tmp_path, body, data_cache, "sharded")
    assert out["status"] == "done"
    assert json.loads((run_dir / "env.json").read_text())["parallel"] == "fsdp"
    assert "x 2 processes (fsdp)" in (run_dir / "train.log").read_text()
    single = train_reference(tmp_path, body, data_cache, "one")  # world 1: parallel is ignored

    a, b = metrics(single.run_dir), metrics(run_dir)
    assert a.step.tolist() == b.step.tolist()  # rank 0 alone wrote the table
    assert (a.loss - b.loss).abs().max() < 1e-5, (a.loss.tolist(), b.loss.tolist())
    # norms of the WHOLE gradient, not of rank 0's shard (a shard's norm is ~1/sqrt(2) of it)
    norm_cols = [c for c in a.columns if c.startswith("grad_norm")]
    assert len(norm_cols) > 3 and norm_cols == [c for c in b.columns if c.startswith("grad_norm")]
    ta, tb = a[a.split == "train"], b[b.split == "train"]
    for c in norm_cols:
        assert ((ta[c] - tb[c]).abs() <= 1e-4 * ta[c].abs() + 1e-7).all(), (c, ta[c].tolist(), tb[c].tolist())

    da, db = diagnostics(single.run_dir), diagnostics(run_dir)
    assert len(da) == len(db) > 0 and sorted(da.step.unique()) == [0, 3, 6]
    assert db.value.notna().all() and ((da.value - db.value).abs() <= 1e-4 * da.value.abs() + 1e-5).all()

    # the checkpoint is consolidated: the single-process format, whole tensors, same keys
    ca, cb = load_checkpoint(single.run_dir / "checkpoint.pt"), load_checkpoint(run_dir / "checkpoint.pt")
    assert ca["model"].keys() == cb["model"].keys()
    for k, v in ca["model"].items():
        assert type(cb["model"][k]) is torch.Tensor and cb["model"][k].shape == v.shape, k
        torch.testing.assert_close(cb["model"][k], v, rtol=1e-4, atol=1e-5)
    assert ca["optimizer"]["state"].keys() == cb["optimizer"]["state"].keys()
    assert [g["params"] for g in ca["optimizer"]["param_groups"]] == [g["params"] for g in cb["optimizer"]["param_groups"]]
    for i, s in ca["optimizer"]["state"].items():
        torch.testing.assert_close(cb["optimizer"]["state"][i]["exp_avg_sq"], s["exp_avg_sq"], rtol=1e-3, atol=1e-9)
        assert float(cb["optimizer"]["state"][i]["step"]) == float(s["step"]) == 6


def test_fsdp_run_resumes_exactly_and_its_checkpoint_resumes_in_one_process(tmp_path, data_cache):
    """Stop after step 3, resubmit: the same losses bit for bit as an uninterrupted FSDP run."""
    from harness.train.loop import train
    from slurm.grid import load_grid

    clean_out, clean = fsdp_job(tmp_path, BODY.format(variant="mhc", stop_after=0), data_cache, "clean")
    assert clean_out["status"] == "done"
    first, run_dir = fsdp_job(tmp_path, BODY.format(variant="mhc", stop_after=3), data_cache, "split")
    assert first["status"] == "stopped" and first["step"] == 3
    elsewhere = tmp_path / "one-process"
    shutil.copytree(run_dir.parent, elsewhere)  # the stopped run, to be finished by a single process

    second, again = fsdp_job(tmp_path, BODY.format(variant="mhc", stop_after=0), data_cache, "split")
    assert again == run_dir and second["status"] == "done" and second["step"] == 6
    a, b = metrics(clean), metrics(run_dir)
    assert b[b.split == "train"].step.tolist() == list(range(1, 7))  # none lost, none repeated
    assert a.loss.tolist() == b.loss.tolist()  # bitwise: gloo on CPU is deterministic
    assert "resuming" in (run_dir / "train.log").read_text()

    # a checkpoint written under FSDP continues in one process (e.g. on a single bigger GPU)
    cfg = load_grid(write(tmp_path, BODY.format(variant="mhc", stop_after=0), "one.toml"), runs_dir=elsewhere,
                    overrides=[f"data.cache_dir={data_cache}"]).runs[0].cfg
    result = train(cfg, resume=True)
    assert result.status == "done" and result.step == 6
    c = metrics(result.run_dir)
    assert c[c.split == "train"].step.tolist() == list(range(1, 7))
    assert (a.loss - c.loss).abs().max() < 1e-5, (a.loss.tolist(), c.loss.tolist())
