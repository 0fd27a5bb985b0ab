"""Faults a run meets from outside: its storage (full, read-only, forbidden), Ctrl-C and SIGTERM,
divergence before any checkpoint, and refusals before the first step. Each is one clear line or
a clean stop, the status says what happened, the last checkpoint stays whole, and a refused run
leaves nothing behind.

A tmpfs small enough to fill needs root to mount, and chmod does not stop root: a full disk is a
writer that fails with ENOSPC (or /dev/full, a real one), and a read-only folder is chmod where
that binds, else the calls that create files under it failing with EROFS as a read-only mount's do.
"""

import builtins
import errno
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_train import nan_loss_from_step

import harness.core.checkpoint
from harness.cli import main
from harness.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = os.geteuid() == 0


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


def train_args(cfg, *more) -> list[str]:
    """`mhc-bench train` arguments for a tiny_cfg run, plus `more` overrides."""
    args = ["train", "--runs-dir", cfg.run.runs_dir, "--set", f"data.cache_dir={cfg.data.cache_dir}",
            "--set", "run.progress=off", "--set", "train.threads=1"]
    for o in more:
        args += ["--set", o]
    return args


def one_error_line(err: list[str]) -> str:
    """The output's `mhc-bench: error:` line, which must be its last and only one."""
    errors = [line for line in err if line.startswith("mhc-bench: error: ")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    assert not any("Traceback" in line for line in err), err
    return errors[0]


def status_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


def checkpoint_step(run_dir: Path) -> int:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]


def temp_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*.tmp")]


# ---------------------------------------------------------------------- read-only / permission
def _write_flags(flags: int) -> bool:
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


def deny_writes(monkeypatch, request, root: Path) -> str:
    """Nothing can be created or written under `root` from now on; returns the errno name to expect.

    chmod 555 where that binds; as root (which chmod does not stop), os.mkdir, os.open and open()
    fail there with EROFS, which is what a read-only filesystem answers."""
    root = root.resolve()
    if not IS_ROOT:
        modes = {p: p.stat().st_mode for p in [root, *root.rglob("*")] if p.is_dir()}
        for p in modes:
            p.chmod(0o555)
        request.addfinalizer(lambda: [p.chmod(m) for p, m in modes.items()])
        return "EACCES"

    def under(path) -> bool:
        try:
            return Path(os.fsdecode(path)).resolve().is_relative_to(root)
        except (TypeError, ValueError):
            return False  # a file descriptor, not a path

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    real_mkdir, real_os_open, real_open = os.mkdir, os.open, builtins.open

    def mkdir(path, *a, **k):
        return refuse(path) if under(path) else real_mkdir(path, *a, **k)

    def os_open(path, flags, *a, **k):
        return refuse(path) if _write_flags(flags) and under(path) else real_os_open(path, flags, *a, **k)

    def open_(file, mode="r", *a, **k):
        return refuse(file) if any(c in mode for c in "wax+") and under(file) else real_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    return "EROFS"


def test_fresh_run_in_a_read_only_runs_dir_is_one_line(capsys, tiny_cfg, tmp_path, monkeypatch, request):
    cfg = tiny_cfg("train.steps=2")
    runs = tmp_path / "readonly"
    runs.mkdir()
    cfg.run.runs_dir = str(runs)
    expected = deny_writes(monkeypatch, request, runs)
    code, _, err = run_cli(capsys, *train_args(cfg))
    line = one_error_line(err)
    assert code == 2 and expected in line and str(runs) in line, line
    assert list(runs.iterdir()) == []


def test_prepare_into_a_read_only_folder_is_one_line(capsys, tmp_path, monkeypatch, request):
    """Any command, not only train: the top level turns a filesystem fault into the error line."""
    runs = tmp_path / "readonly"
    runs.mkdir()
    expected = deny_writes(monkeypatch, request, runs)
    code, _, err = run_cli(capsys, "prepare", "--runs-dir", str(runs))
    line = one_error_line(err)
    assert code == 2 and expected in line and str(runs) in line, line
    assert list(runs.iterdir()) == []


def test_resume_into_a_read_only_run_folder_keeps_everything(capsys, tiny_cfg, monkeypatch, request):
    """The run's folder became read-only between two sessions: the resume is one line, and the
    checkpoint and the status it found are as they were (it cannot record anything there)."""
    cfg = tiny_cfg("train.steps=6", "train.checkpoint_every=2", "train.stop_after=2")
    first = train(cfg)
    assert first.status == "stopped"
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
    expected = deny_writes(monkeypatch, request, first.run_dir)
    code, _, err = run_cli(capsys, *train_args(cfg, "train.steps=6", "train.checkpoint_every=2"), "--resume")
    line = one_error_line(err)
    assert code == 2 and expected in line and str(first.run_dir) in line, line
    after = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
    assert after == before  # the checkpoint is intact; status.json still says stopped at step 2
    assert status_of(first.run_dir)["status"] == "stopped" and checkpoint_step(first.run_dir) == 2


# ---------------------------------------------------------------------- a full disk
def test_a_checkpoint_on_a_full_device_is_an_oserror_and_the_old_one_stays(tmp_path, monkeypatch):
    """Written through /dev/full, a real ENOSPC: it surfaces as OSError(ENOSPC) naming the
    checkpoint (torch's own path writer calls it a RuntimeError), the temporary file goes and
    the previous checkpoint is untouched."""
    path = tmp_path / "checkpoint.pt"
    harness.core.checkpoint.save_checkpoint(path, step=1, tokens=8, model_state={"w": torch.ones(4)}, optimizer_state={}, config={})
    good = path.read_bytes()
    monkeypatch.setattr(harness.core.checkpoint, "open", lambda file, mode="r": builtins.open("/dev/full", mode), raising=False)
    with pytest.raises(OSError) as caught:
        harness.core.checkpoint.save_checkpoint(path, step=2, tokens=16, model_state={"w": torch.zeros(100_000)},
                                           optimizer_state={}, config={})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert path.read_bytes() == good and temp_files(tmp_path) == []


class _FullAfter:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, b) -> int:
        if len(b) > self.room:
            self.f.write(bytes(b)[: self.room])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(b)
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_checkpoint_that_does_not_fit_fails_the_run_in_one_line(capsys, tiny_cfg, monkeypatch):
    """The second checkpoint runs out of space half-way: one line, exit 2, status failed with the
    reason, the first checkpoint whole, no temporary file left; --resume continues once there is room."""
    cfg = tiny_cfg("train.steps=6", "train.checkpoint_every=2")
    calls = {"n": 0}
    real_open = builtins.open

    def nearly_full(file, mode="r"):
        calls["n"] += 1
        f = real_open(file, mode)
        return _FullAfter(f, room=1000) if calls["n"] == 2 else f

    monkeypatch.setattr(harness.core.checkpoint, "open", nearly_full, raising=False)
    code, out, err = run_cli(capsys, *train_args(cfg, "train.steps=6", "train.checkpoint_every=2"))
    line = one_error_line(err)
    run_dir = Path(cfg.run.runs_dir) / cfg.run_name()
    assert code == 2 and "checkpoint.pt" in line and "ENOSPC" in line and "checkpoint at step 2 is intact" in line, line
    assert "status.json says failed" in line and "--resume" in line, line
    status = status_of(run_dir)
    assert status["status"] == "failed" and "No space left on device" in status["error"] and status["step"] == 4, status
    assert status["checkpoint_step"] == 2 and checkpoint_step(run_dir) == 2
    assert temp_files(run_dir) == []
    monkeypatch.undo()
    assert train(cfg, resume=True).status == "done"
    tr = pd.read_parquet(run_dir / "metrics.parquet").query("split == 'train'")
    assert tr.step.tolist() == list(range(1, 7))


def test_disk_full_for_every_file_says_the_status_could_not_be_written(capsys, tiny_cfg, monkeypatch):
    """From the second checkpoint on nothing can be created: the line says status.json still says
    'running' (which grid status shows as interrupted) and the checkpoint of step 2 is whole."""
    cfg = tiny_cfg("train.steps=6", "train.checkpoint_every=2")
    real_mkstemp, state = tempfile.mkstemp, {"checkpoints": 0, "full": False}

    def mkstemp(*a, prefix=None, **k):
        if prefix and prefix.startswith(".checkpoint.pt."):
            state["checkpoints"] += 1
            state["full"] = state["full"] or state["checkpoints"] == 2
        if state["full"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.path.join(k.get("dir", ""), prefix or ""))
        return real_mkstemp(*a, prefix=prefix, **k)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    code, _, err = run_cli(capsys, *train_args(cfg, "train.steps=6", "train.checkpoint_every=2"))
    line = one_error_line(err)
    run_dir = Path(cfg.run.runs_dir) / cfg.run_name()
    assert code == 2 and f"{run_dir / 'checkpoint.pt'}: No space left on device (ENOSPC)" in line, line
    assert "status.json could not be updated" in line and "still says 'running'" in line and "interrupted" in line, line
    assert status_of(run_dir)["status"] == "running" and checkpoint_step(run_dir) == 2
    assert temp_files(run_dir) == []


# ---------------------------------------------------------------------- divergence
def test_divergence_before_any_checkpoint_prints_no_missing_path(capsys, tiny_cfg, monkeypatch):
    nan_loss_from_step(monkeypatch, 3)
    opts = ("train.steps=10", "train.checkpoint_every=20")
    cfg = tiny_cfg(*opts)
    code, out, _ = run_cli(capsys, *train_args(cfg, *opts))
    assert code == 3
    paths = [Path(word) for line in out.splitlines() for word in line.split() if word.startswith("/")]
    assert paths and all(p.exists() for p in paths), out
    assert "checkpoint:  none" in out and "status:      diverged at step 3" in out
    run_dir = Path(cfg.run.runs_dir) / cfg.run_name()
    assert "no checkpoint was written before it" in (run_dir / "train.log").read_text()


def test_divergence_after_a_checkpoint_prints_it_with_its_step(capsys, tiny_cfg, monkeypatch):
    nan_loss_from_step(monkeypatch, 5)
    opts = ("train.steps=10", "train.checkpoint_every=2")
    cfg = tiny_cfg(*opts)
    code, out, _ = run_cli(capsys, *train_args(cfg, *opts))
    run_dir = Path(cfg.run.runs_dir) / cfg.run_name()
    assert code == 3 and f"checkpoint:  {run_dir / 'checkpoint.pt'} (step 4)" in out, out
    assert checkpoint_step(run_dir) == 4


# ---------------------------------------------------------------------- refusals before step 1
def tiny_corpus(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("case", ["seq_len", "utf8", "vocab"])
def test_refused_run_leaves_no_folder_and_no_lock(capsys, tmp_path, data_cache, case):
    """Refused before step 1 (too little text for model.seq_len, a corpus that is not UTF-8, a
    model.vocab_size below the tokenizer's): one line, and no run folder, lock or empty folder."""
    runs = tmp_path / "runs"
    args = ["train", "--runs-dir", str(runs), "--set", "run.progress=off"]
    if case == "seq_len":
        args += ["--data-dir", str(tiny_corpus(tmp_path, b"hello world\n\nsecond line\nmore text\n"))]
        message = "fewer than model.seq_len+1"
    elif case == "utf8":
        args += ["--data-dir", str(tiny_corpus(tmp_path, b"fine text\n\xff\xfe not text\n"))]
        message = "is not UTF-8 text"
    else:
        args += ["--set", f"data.cache_dir={data_cache}", "--set", "model.vocab_size=64"]
        message = "model.vocab_size=64 is smaller than the tokenizer's"
    code, _, err = run_cli(capsys, *args)
    line = one_error_line(err)
    assert code == 2 and message in line, line
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert not any(p.endswith(".lock") for p in left), left
    runs_left = [p for p in left if p.startswith("runs")]
    if case == "seq_len":  # the shards of the corpus are a finished, reusable cache; nothing else is there
        assert runs_left and all(p == "runs" or p.startswith("runs/data") for p in runs_left), runs_left
        assert (runs / "data").is_dir() and all((d / "meta.json").is_file() for d in (runs / "data").iterdir())
    else:
        assert runs_left == [], runs_left
    assert not list(Path(data_cache).rglob("*.lock"))


def test_refused_resume_leaves_an_existing_run_untouched(capsys, tiny_cfg):
    """A refusal in a folder that was already there (here a changed config on --resume) deletes
    nothing and records nothing."""
    cfg = tiny_cfg("train.steps=4", "train.stop_after=2")
    first = train(cfg)
    before = {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()}
    code, _, err = run_cli(capsys, *train_args(cfg, "train.steps=4", "optim.lr=0.5", f"run.name={first.run_dir.name}"), "--resume")
    assert code == 2 and "config differs" in one_error_line(err)
    assert {p.name: p.read_bytes() for p in first.run_dir.iterdir() if p.is_file()} == before


# ---------------------------------------------------------------------- Ctrl-C and SIGTERM
@pytest.fixture
def sigint_default():
    """SIGINT as a terminal's Python has it (a test runner started in the background may ignore it)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def signals_at_forward(monkeypatch, at: dict[int, int]) -> None:
    """Send this process signal `at[n]` during the n-th training forward (1-based), as a Ctrl-C
    arriving in the middle of that step would."""
    from harness.train import model as model_mod
    real_forward = model_mod.GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        if self.training:
            calls["n"] += 1
            if calls["n"] in at:
                signal.raise_signal(at[calls["n"]])
        return real_forward(self, idx, targets)

    monkeypatch.setattr(model_mod.GPT, "forward", forward)


def test_ctrl_c_mid_step_checkpoints_at_the_step_boundary(tiny_cfg, monkeypatch, sigint_default):
    signals_at_forward(monkeypatch, {5: signal.SIGINT})  # forward 5 is step 5's (one micro-batch a step)
    cfg = tiny_cfg("train.steps=20", "train.checkpoint_every=100", "train.eval_every=100")
    try:
        result = train(cfg)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C interrupted the run mid-step instead of stopping it at the step boundary")
    assert result.status == "stopped" and result.step == 5 and result.checkpoint_step == 5
    assert result.stopped_by == signal.SIGINT
    status = status_of(result.run_dir)
    assert status["status"] == "stopped" and status["step"] == 5 and status["reason"] == "SIGINT"
    assert checkpoint_step(result.run_dir) == 5
    assert "stopped after step 5 (SIGINT)" in (result.run_dir / "train.log").read_text()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is given back
    assert train(tiny_cfg("train.steps=20", "train.checkpoint_every=100", "train.eval_every=100"), resume=True).status == "done"


def test_second_ctrl_c_stops_at_once_and_marks_the_run_stopped(tiny_cfg, monkeypatch, sigint_default):
    """Ctrl-C twice within step 4: the step is abandoned, the status says stopped at the last
    checkpoint (step 3), which is whole and resumes."""
    signals_at_forward(monkeypatch, {7: signal.SIGINT, 8: signal.SIGINT})
    opts = ("train.steps=10", "train.checkpoint_every=3", "train.eval_every=100", "train.grad_accum=2")  # 2 forwards a step
    with pytest.raises(KeyboardInterrupt):
        train(tiny_cfg(*opts))
    run_dir = Path(tiny_cfg().run.runs_dir) / tiny_cfg(*opts).run_name()
    status = status_of(run_dir)
    assert status["status"] == "stopped" and status["step"] == 3 and "interrupted after step 3" in status["reason"], status
    assert checkpoint_step(run_dir) == 3
    monkeypatch.undo()
    resumed = train(tiny_cfg(*opts), resume=True)
    assert resumed.status == "done"
    tr = pd.read_parquet(run_dir / "metrics.parquet").query("split == 'train'")
    assert tr.step.tolist() == list(range(1, 11))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_command_stops_cleanly_and_resumes_exactly(tiny_cfg, tmp_path, sig):
    """A real SIGINT / SIGTERM to `mhc-bench train`: exit 128+signal, status stopped with a
    checkpoint at that step, and --resume ends where an uninterrupted run does, bit for bit."""
    opts = ("train.steps=150", "train.eval_every=5", "train.checkpoint_every=1000", "train.threads=1")
    cfg = tiny_cfg(*opts, "run.name=signalled")
    cmd = [sys.executable, "-m", "harness", *train_args(cfg, *opts, "run.name=signalled")]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not inherited as ignored
    log = Path(cfg.run.runs_dir) / "signalled" / "train.log"
    deadline = time.time() + 120
    while not (log.exists() and "step 10/150" in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, "the run never reached step 10"
        time.sleep(0.02)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    status = status_of(log.parent)
    stopped = status["step"]
    assert status["status"] == "stopped" and 10 <= stopped < 150 and status["reason"] == signal.Signals(sig).name
    assert checkpoint_step(log.parent) == stopped and f"(step {stopped})" in out
    assert f"stopped after step {stopped} ({signal.Signals(sig).name})" in log.read_text()

    resumed = train(cfg, resume=True)
    clean = train(tiny_cfg(*opts, "run.name=clean"))
    a, b = (pd.read_parquet(r.run_dir / "metrics.parquet") for r in (clean, resumed))
    assert b.query("split == 'train'").step.tolist() == list(range(1, 151))
    assert a.loss.tolist() == b.loss.tolist()  # bitwise on CPU
