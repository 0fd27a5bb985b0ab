"""Evaluation does no work twice and keeps the console readable: results are cached per
(checkpoint, task, limit, shots, ...), an experiment's tasks are built once for all its runs,
and lm-eval's / datasets' output goes to the run's eval.log, not the console."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytest.importorskip("lm_eval")

from harness.eval.render import default_data_dir  # noqa: E402
from harness.eval.runner import evaluate, evaluate_run  # noqa: E402
from harness.eval.suites import parse_tasks  # noqa: E402
from tests.eval_helpers import copy_run, train_tiny  # noqa: E402

pytestmark = pytest.mark.skipif(not default_data_dir().is_dir(), reason="no evaluation data")
ROOT = Path(__file__).resolve().parents[1]
QUIET = dict(log=lambda m: None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    return train_tiny(tmp_path_factory.mktemp("trained") / "runs", data_cache)


@pytest.fixture
def counted(monkeypatch):
    """How often the model is asked to score or generate (the adapter's two model paths)."""
    from harness.eval.adapter import MhcBenchLM

    calls = {"n": 0}
    for name in ("_loglikelihood_tokens", "generate_until"):
        original = getattr(MhcBenchLM, name)

        def wrapper(self, *args, _original=original, **kwargs):
            calls["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(MhcBenchLM, name, wrapper)
    return calls


def _scores(rows):
    return rows.sort_values(["task", "subtask", "metric", "filter"])[["task", "subtask", "metric", "filter", "value"]].reset_index(drop=True)


def test_rerun_reuses_results_and_only_a_new_checkpoint_or_setting_is_scored(trained, tmp_path, counted):
    run = copy_run(trained, tmp_path / "exp")
    gsm8k = parse_tasks("gsm8k")
    first = evaluate_run(run, gsm8k, limit=1, max_gen_toks=2, **QUIET)
    assert counted["n"] > 0
    stamp = (run / "evals.parquet").stat().st_mtime_ns

    counted["n"] = 0
    again = evaluate_run(run, gsm8k, limit=1, max_gen_toks=2, **QUIET)
    assert counted["n"] == 0  # nothing scored again
    pd.testing.assert_frame_equal(_scores(again), _scores(first))
    assert (run / "evals.parquet").stat().st_mtime_ns == stamp  # and nothing rewritten

    for options in ({"limit": 2, "max_gen_toks": 2}, {"limit": 1, "max_gen_toks": 2, "num_fewshot": 1}):
        counted["n"] = 0
        rows = evaluate_run(run, gsm8k, **options, **QUIET)
        assert counted["n"] > 0, options  # another limit / other shots: evaluated
        assert set(rows["limit"]) == {options["limit"]}

    state = torch.load(run / "checkpoint.pt", weights_only=True)  # "retrained": other weights
    name = next(iter(state["model"]))
    state["model"][name] = state["model"][name] + 0.5
    torch.save(state, run / "checkpoint.pt")
    counted["n"] = 0
    evaluate_run(run, gsm8k, limit=1, max_gen_toks=2, **QUIET)
    assert counted["n"] > 0


def test_an_experiment_builds_each_task_once_for_all_its_runs(trained, tmp_path, monkeypatch):
    from lm_eval.api.task import ConfigurableTask

    exp = tmp_path / "exp"
    for name in ("run-a", "run-b"):
        copy_run(trained, exp, name)
    downloads: list[str] = []
    original = ConfigurableTask.download

    def counting(self, *args, **kwargs):
        downloads.append(self.config.task)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConfigurableTask, "download", counting)
    rows = evaluate(exp, "gsm8k,mmlu", limit=1, max_gen_toks=2, **QUIET)
    assert set(rows["run"]) == {"run-a", "run-b"}
    assert len(downloads) == 1 + 57 and len(set(downloads)) == len(downloads)  # once each, not once per run
    gathered = pd.read_parquet(exp / "evals.parquet")
    assert set(gathered["run"]) == {"run-a", "run-b"}
    hashes = gathered.pivot_table(index=["task", "subtask"], columns="run", values="task_hash", aggfunc="first")
    assert (hashes["run-a"] == hashes["run-b"]).all()  # reused tasks: the very same documents and prompts

    # a later call (a new process, say) finds the datasets prepared in the experiment's cache
    copy_run(trained, exp, "run-c")
    evaluate(exp / "run-c", "gsm8k", limit=1, max_gen_toks=2, **QUIET)
    log = (exp / "run-c" / "eval" / "eval.log").read_text()
    assert "Found cached dataset" in log and "Generating dataset" not in log


@pytest.mark.slow
def test_console_shows_one_line_per_run_a_bar_and_the_results(trained, tmp_path):
    run = copy_run(trained, tmp_path / "exp")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "harness", "eval", str(run), "--tasks", "paper", "--limit", "2",
                          "--max-gen-toks", "2", "--progress", "on"], cwd=tmp_path, env=env, capture_output=True,
                         timeout=900)  # bytes: text mode would turn each \r of a redrawn bar into a new line
    # cwd outside any checkout: lm-eval's `git describe` then fails, and its child's message must not reach the console
    text = (out.stdout + out.stderr).decode()
    assert out.returncode == 0, text[-3000:]
    console = text.split("\n")
    lines = [line.split("\r")[-1] for line in console if line.strip()]  # a redrawn bar is one line
    assert len(lines) <= 10, "\n".join(lines)  # header, bar, 4 results (+ the DROP note), where the rows went
    assert not [line for line in lines if "Generating" in line or "Map" in line or "INFO" in line or "WARNING" in line]
    assert sum("100%|" in line for line in lines) == 1  # the run's one bar, finished
    assert any(line.strip().startswith("MMLU") for line in lines)
    assert "fatal" not in text
    log = (run / "eval" / "eval.log").read_text()
    assert "Generating" in log and "lm_eval" in log  # what the console no longer shows is kept here
    if shutil.which("git"):
        assert "not a git repository" in log
