"""Bad input: one clear error line, a non-zero exit code, and nothing half-written."""

import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def files_under(path: Path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--set", "model.d_modle=8"], "did you mean 'model.d_model'"),
        (["--set", "model.d_model=big"], "model.d_model expects an integer"),
        (["--set", "variant.name=mhcc"], "unknown variant 'mhcc'"),
        (["--set", "data.corpus=/nonexistent/corpus"], "corpus not found"),
    ],
)
def test_bad_input_one_line_nonzero_nothing_written(capsys, tmp_path, argv, message):
    code, err = run_cli(capsys, "train", "--runs-dir", str(tmp_path / "runs"), *argv)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("mhc-bench: error: ") and message in err[0], err
    assert files_under(tmp_path / "runs") == []


def test_missing_corpus_error_says_where_and_how(capsys, tmp_path):
    _, err = run_cli(capsys, "prepare", "--runs-dir", str(tmp_path), "--data-dir", str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in err[0] and "--data-dir" in err[0]


def test_corrupt_checkpoint_is_one_clear_error(capsys, tiny_cfg):
    from harness.train.loop import train

    cfg = tiny_cfg("train.steps=4", "train.stop_after=2")
    result = train(cfg)
    ckpt = result.run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a full disk
    capsys.readouterr()
    before = {p: p.read_bytes() for p in result.run_dir.iterdir() if p.is_file()}
    code, err = run_cli(capsys, "train", "--runs-dir", cfg.run.runs_dir, "--set", f"data.cache_dir={cfg.data.cache_dir}",
                        "--set", "train.steps=4", "--set", "run.progress=off", "--resume")
    assert code == 2 and len(err) == 1 and "corrupt" in err[0] and "checkpoint.pt" in err[0], err
    after = {p: p.read_bytes() for p in result.run_dir.iterdir() if p.is_file()}
    assert before.keys() == after.keys()
    assert before[ckpt] == after[ckpt]


def test_existing_run_needs_resume(capsys, tiny_cfg):
    from harness.train.loop import train

    cfg = tiny_cfg("train.steps=2")
    train(cfg)
    capsys.readouterr()
    code, err = run_cli(capsys, "train", "--runs-dir", cfg.run.runs_dir, "--set", f"data.cache_dir={cfg.data.cache_dir}",
                        "--set", "train.steps=2")
    assert code == 2 and "--resume" in err[0]
    assert main(["train", "--runs-dir", cfg.run.runs_dir, "--set", f"data.cache_dir={cfg.data.cache_dir}",
                 "--set", "train.steps=2", "--resume"]) == 0  # a done run is reused


def test_console_script_exit_code(tmp_path):
    exe = Path(sys.executable).parent / "mhc-bench"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "harness"]
    out = subprocess.run(cmd + ["train", "--preset", "nope", "--runs-dir", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and out.stderr.strip() == "mhc-bench: error: unknown preset 'nope'; choose from tiny, small, gpt-s, gpt-m, gpt-l"
