"""Live views of runs (harness/train/tracking.py, slurm/dispatch.py): TensorBoard event files, W&B
offline, the running status `grid status` shows, and a local grid's progress line."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from grid_helpers import cli, registered, write

from harness.core.errors import UserError
from harness.core.rundir import RunDir
from harness.train.tracking import TENSORBOARD_DIR


def scalars(run_path: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of a run's TensorBoard event files, read back as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_path / TENSORBOARD_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_what_the_run_records(tiny_cfg, single_thread):
    from harness.train.loop import train

    cfg = tiny_cfg("train.steps=6", "train.eval_every=3", "train.diag_every=3", "train.log_every=2",
                   "variant.name=mhc", "variant.n_streams=2", "run.tensorboard=true")
    result = train(cfg)
    metrics = pd.read_parquet(result.run_dir / "metrics.parquet")
    train_rows = metrics[metrics.split == "train"]
    groups = sorted(c.removeprefix("grad_norm_") for c in metrics.columns if c.startswith("grad_norm_"))
    assert groups, "the mhc model reports gradient norms per role group"
    got = scalars(result.run_dir)
    expected = {"train/loss", "train/lr", "train/grad_norm", "train/step_time_s", "train/tokens_per_s", "val/loss",
                "composite/amax_fwd", "composite/amax_bwd"} | {f"grad_norm/{g}" for g in groups}
    assert expected <= set(got), sorted(expected - set(got))
    assert [s for s, _ in got["train/loss"]] == train_rows.step.tolist() == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in got["train/loss"]] == pytest.approx(train_rows.loss.tolist(), rel=1e-6)
    assert [v for _, v in got["train/lr"]] == pytest.approx(train_rows.lr.tolist(), rel=1e-6)
    assert [s for s, _ in got["val/loss"]] == [0, 3, 6]
    assert [s for s, _ in got["composite/amax_fwd"]] == [0, 3, 6]


def test_without_the_flag_no_event_files_are_written(tiny_cfg, single_thread):
    from harness.train.loop import train

    result = train(tiny_cfg("train.steps=2", "train.diag_every=0"))
    assert not (result.run_dir / TENSORBOARD_DIR).exists()


def test_tracking_fields_change_no_run_id(tiny_cfg):
    from harness.core.config import apply_overrides

    plain = tiny_cfg()
    tracked = apply_overrides(tiny_cfg(), ["run.tensorboard=true", "run.wandb=offline"])
    assert tracked.run.tensorboard and tracked.run.wandb == "offline"
    assert tracked.config_hash() == plain.config_hash() and tracked.run_name() == plain.run_name()


def test_wandb_without_the_package_is_one_clear_refusal(tiny_cfg, tmp_path, monkeypatch, capsys, data_cache):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    from harness.cli import main
    from harness.train.loop import train

    with pytest.raises(UserError, match=r"run.wandb=offline needs the wandb package.*pip install wandb"):
        train(tiny_cfg("run.wandb=offline"))
    assert not (tmp_path / "runs").exists()  # refused before any file
    code = main(["train", "--preset", "tiny", "--set", f"run.runs_dir={tmp_path / 'cli'}", "--set", f"data.cache_dir={data_cache}",
                 "--set", "run.wandb=offline"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [err[-1]] and err[-1].startswith("mhc-bench: error: run.wandb=offline needs the wandb package")


def wandb_history(offline_run: Path) -> tuple[dict, dict[int, dict]]:
    """(run record, {step: logged values}) of one offline W&B run, read from its transaction
    log: a 7-byte header, then LevelDB log records (32 KiB blocks, each piece with a 7-byte
    header: crc, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) holding `Record` protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    [path] = offline_run.glob("*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    run, history, pos, piece = {}, {}, 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        piece, pos = piece + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(piece)
            piece = b""
            if record.WhichOneof("record_type") == "run":
                r = record.run
                run = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags),
                       "config": {i.key: json.loads(i.value_json) for i in r.config.update}}
            elif record.WhichOneof("record_type") == "history":
                history[record.history.step.num] = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                                                    for i in record.history.item}
    return run, history


def test_wandb_offline_with_the_real_package_holds_what_the_run_records(tiny_cfg, tmp_path, monkeypatch, single_thread):
    """The installed wandb package, offline: an interrupted and resumed run leaves two offline
    folders of one run id that `wandb sync` would upload into one W&B run; what they hold, later
    values winning, is metrics.parquet's train and validation losses step for step."""
    from harness.train.loop import train

    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    cfg = tiny_cfg("train.steps=5", "train.eval_every=3", "train.checkpoint_every=2", "train.diag_every=0",
                   "train.seed=7", "run.wandb=offline")
    cfg.run.runs_dir = str(tmp_path / "runs" / "my-exp")
    cfg.run.name = "identity-seed=7"

    def interrupt(step, val):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_validation=interrupt)
    result = train(cfg, resume=True)
    folders = sorted((result.run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 2
    merged, runs = {}, []
    for folder in folders:
        run, history = wandb_history(folder)
        runs.append(run)
        for step, values in history.items():
            merged.setdefault(step, {}).update(values)
    assert runs[0] == runs[1] and runs[0]["name"] == "identity-seed=7" and runs[0]["group"] == "my-exp"
    assert runs[0]["job_type"] == "identity" and set(runs[0]["tags"]) == {"identity", "seed=7"}
    assert runs[0]["config"]["train"]["seed"] == 7 and runs[0]["config"]["variant"]["name"] == "identity"
    metrics = pd.read_parquet(result.run_dir / "metrics.parquet")
    for split, key in (("train", "train/loss"), ("val", "val/loss")):
        rows = metrics[metrics.split == split]
        assert [s for s in sorted(merged) if key in merged[s]] == rows.step.tolist()
        assert [merged[s][key] for s in rows.step] == pytest.approx(rows.loss.tolist(), rel=1e-6)
    log = (result.run_dir / "train.log").read_text()
    assert log.count("wandb: offline run in") == 2 and "Run summary" not in log


def test_a_running_status_holds_the_step_and_last_train_loss(tiny_cfg, monkeypatch, single_thread):
    """Between checkpoints the status is refreshed (here at every host read) with the last train loss."""
    from harness.train import loop as train_mod
    monkeypatch.setattr(train_mod, "STATUS_EVERY_S", 0.0)
    seen = []
    cfg = tiny_cfg("train.steps=4", "train.eval_every=2", "train.checkpoint_every=0", "train.diag_every=0")

    def look(step, val):
        seen.append((step, RunDir(Path(cfg.run.runs_dir) / cfg.run_name()).read_status()))

    result = train_mod.train(cfg, on_validation=look)
    metrics = pd.read_parquet(result.run_dir / "metrics.parquet")
    loss_at = metrics[metrics.split == "train"].set_index("step").loss
    step, status = seen[1]  # at step 4's validation the status is the one written at step 2
    assert step == 4 and status["status"] == "running" and status["step"] == 2
    assert status["train_loss"] == pytest.approx(loss_at[2])


def test_grid_status_shows_a_running_runs_step_and_last_loss(tmp_path):
    path = write(tmp_path, """
        name = "live"
        preset = "tiny"
        [axes]
        seed = [0, 1]
    """)
    grid, exp = registered(path, tmp_path / "runs")
    running, _ = grid.runs
    rd = RunDir(running.path)
    rd.acquire()  # a live job holds the run's lock
    try:
        rd.write_status("running", step=37, steps=running.cfg.train.steps, train_loss=4.56789)
        code, out, _ = cli("status", "live", "--runs-dir", tmp_path / "runs")
        rows = {r["name"]: r for r in json.loads(cli("status", "live", "--runs-dir", tmp_path / "runs", "--json")[1])}
    finally:
        rd.release()
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith(running.name))
    assert "running" in line and f"37/{running.cfg.train.steps}" in line and "4.5679" in line
    assert rows[running.name]["step"] == 37 and rows[running.name]["train_loss"] == pytest.approx(4.56789)


def test_progress_line_counts_ended_runs_and_the_steps_their_status_files_say(tmp_path):
    from slurm.dispatch import Handle, progress_line

    path = write(tmp_path, """
        name = "p"
        preset = "tiny"
        [base]
        train.steps = 10
        [axes]
        seed = [0, 1, 2]
    """)
    grid, _ = registered(path, tmp_path / "runs")
    a, b, _ = grid.runs
    RunDir(a.path).write_status("done", step=10, steps=10)
    RunDir(b.path).write_status("running", step=4, steps=10, train_loss=5.0)
    assert progress_line([Handle(r) for r in grid.runs], 1) == "progress: 1/3 runs, 14/30 steps"


def test_progress_line_on_a_terminal_is_rewritten_in_place():
    import io

    from slurm.dispatch import ProgressLine

    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    p = ProgressLine(out, tty_s=0)
    p.tick(lambda: "progress: 0/2 runs")
    p.clear()
    p.tick(lambda: "progress: 2/2 runs", final=True)
    assert out.getvalue() == "\rprogress: 0/2 runs\x1b[K\r\x1b[K\rprogress: 2/2 runs\x1b[K\n"


@pytest.mark.slow
def test_local_submit_ends_with_every_run_in_its_progress_line(tmp_path, data_cache):
    path = write(tmp_path, """
        name = "prog"
        preset = "tiny"
        [base]
        train.steps = 3
        train.threads = 1
        train.diag_every = 0
        [axes]
        seed = [0, 1]
    """)
    code, out, _ = cli("submit", path, "--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}", "--cluster", "local")
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("progress:")]
    assert lines and lines[-1] == "progress: 2/2 runs, 6/6 steps"
    assert out.index(lines[-1]) > out.index("done")  # after the outcomes, before the summary


def test_a_resumed_run_shows_each_step_once(tiny_cfg, single_thread):
    """Interrupted after step 3 with its checkpoint at step 2: the resumed run trains step 3 again;
    its event files then hold one value per step, the resumed run's, and keep step 2's."""
    from harness.train.loop import train

    cfg = tiny_cfg("train.steps=5", "train.eval_every=3", "train.checkpoint_every=2", "train.log_every=1",
                   "train.diag_every=0", "run.tensorboard=true")

    def interrupt(step, val):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_validation=interrupt)
    result = train(cfg, resume=True)
    metrics = pd.read_parquet(result.run_dir / "metrics.parquet")
    train_rows = metrics[metrics.split == "train"]
    got = scalars(result.run_dir)
    assert [s for s, _ in got["train/loss"]] == train_rows.step.tolist() == [1, 2, 3, 4, 5]
    assert [v for _, v in got["train/loss"]] == pytest.approx(train_rows.loss.tolist(), rel=1e-6)
    assert [s for s, _ in got["val/loss"]] == [0, 3, 5]


def test_a_local_grid_asking_for_a_missing_tracker_is_refused_before_anything_runs(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    path = write(tmp_path, """
        name = "wb"
        preset = "tiny"
        [axes]
        seed = [0, 1]
    """)
    code, out, err = cli("submit", path, "--runs-dir", tmp_path / "runs", "--set", "run.wandb=offline", "--cluster", "local")
    assert code == 2 and err.strip() == ("mhc-bench: error: run.wandb=offline needs the wandb package, which is not "
                                         "installed: pip install wandb")
    assert not (tmp_path / "runs").exists() and "running" not in out
