"""Beyond our suites: any lm-eval task found locally runs through `mhc-bench eval`, an unknown
name is one error with suggestions, and lm-eval's own CLI loads a run (`lm_eval --model
mhc-bench`) through the start-up hook `mhc-bench lm-eval-model install` writes."""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from harness.cli import main  # noqa: E402
from harness.core.errors import UserError  # noqa: E402
from harness.eval.render import default_data_dir, render_tasks  # noqa: E402
from harness.eval.runner import evaluate, resolve_tasks  # noqa: E402
from harness.eval.suites import parse_tasks  # noqa: E402
from tests.eval_helpers import copy_run, train_tiny  # noqa: E402

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="no evaluation data")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    return train_tiny(tmp_path_factory.mktemp("trained") / "runs", data_cache)


def local_task(folder: Path) -> Path:
    """A user's own lm-eval task: a YAML and its data, nothing of mhc-bench's."""
    folder.mkdir(parents=True)
    docs = [{"question": f"{a} plus {b} is", "choices": [str(a + b), str(a + b + 1)], "answer": 0} for a, b in ((1, 2), (3, 4), (5, 6))]
    (folder / "sums.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "sums.yaml").write_text(
        "task: my_sums\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {json.dumps(str(folder / 'sums.jsonl'))}\n"
        f"  cache_dir: {json.dumps(str(folder / 'hf'))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\n"
        "metric_list:\n  - metric: acc\n")
    return folder


def test_a_local_lm_eval_task_is_evaluated_beside_ours(trained, tmp_path):
    run = copy_run(trained, tmp_path / "exp")
    mine = local_task(tmp_path / "my-tasks")
    lines: list[str] = []
    rows = evaluate(run, "my_sums,gsm8k", include_path=[str(mine)], limit=2, max_gen_toks=2, log=lines.append)
    sums = rows[rows["task"] == "my_sums"]
    assert list(sums["metric"]) == ["acc"] and list(sums["level"]) == ["task"] and list(sums["samples"]) == [2]
    assert 0.0 <= sums["value"].iloc[0] <= 1.0 and "as lm-eval defines it" in sums["notes"].iloc[0]
    assert {"gsm8k", "my_sums"} == set(rows["task"])
    assert any(line.strip().startswith("my_sums") and "acc/none" in line for line in lines)
    # lm-eval's own tasks are accepted by name too (running them needs their data on this machine)
    assert [(s.key, s.external) for s in resolve_tasks("arc_easy,gsm8k")] == [("arc_easy", True), ("gsm8k", False)]


def test_an_unknown_task_is_one_error_with_suggestions(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "exp")
    assert main(["eval", str(run), "--tasks", "gsm8k,hellaswagg"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mhc-bench: error: unknown task 'hellaswagg' (did you mean 'hellaswag'"), err
    assert not (run / "evals.parquet").exists()
    with pytest.raises(UserError, match="did you mean 'gsm8k'"):
        parse_tasks("gsm8")  # without lm-eval's index: our names only
    with pytest.raises(UserError, match="not a folder"):
        evaluate(run, "my_sums", include_path=[str(tmp_path / "nowhere")])


@pytest.mark.slow
def test_lm_eval_cli_scores_a_run_once_the_hook_is_installed(trained, tmp_path):
    """The real `lm_eval` console script, run as a user would, with the hook installed in a site
    folder the interpreter reads at start-up (a sitecustomize adds it: this test must not write
    into the environment's own site-packages)."""
    from harness.eval.lm_eval_plugin import PTH_NAME

    script = Path(sys.executable).parent / "lm_eval"
    if not script.is_file():
        pytest.skip("no lm_eval console script beside this interpreter")
    run = copy_run(trained, tmp_path / "exp")
    render_tasks(parse_tasks("mmlu"), run / "eval" / "tasks", data_dir=DATA, cache_dir=tmp_path / "hf")
    site, boot = tmp_path / "site", tmp_path / "boot"
    assert main(["lm-eval-model", "install", "--site-dir", str(site)]) == 0
    assert (site / PTH_NAME).is_file()
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(site)!r})\n")
    args = ["--model", "mhc-bench", "--model_args", f"run={run}", "--include_path", str(run / "eval" / "tasks"),
            "--tasks", "mhc_mmlu_abstract_algebra", "--limit", "1", "--device", "cpu"]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}

    def run_cli(command, pythonpath: str):
        return subprocess.run(command + args, env={**env, "PYTHONPATH": pythonpath}, cwd=tmp_path, capture_output=True,
                              text=True, timeout=600)

    out = run_cli([str(script)], f"{boot}{os.pathsep}{ROOT}")  # as a user runs it
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if "abstract_algebra" in line]
    assert len(table) == 1 and "|acc" in table[0], out.stdout
    # the same without any start-up hook (-S: no site-packages .pth, no sitecustomize; where
    # make installed the hook, that is the only way to leave it out): lm-eval lacks the model
    purelib = sysconfig.get_paths()["purelib"]
    without = run_cli([sys.executable, "-S", str(script)], f"{ROOT}{os.pathsep}{purelib}")
    assert without.returncode != 0 and "no model for this name found" in without.stderr, without.stderr[-2000:]


def test_the_start_up_hook_imports_nothing_of_ours_until_lm_eval_loads_its_registry(tmp_path):
    """A grid job imports the code frozen at submit time: a `harness` already imported from the
    live checkout at interpreter start-up would silently replace it."""
    site, boot = tmp_path / "site", tmp_path / "boot"
    assert main(["lm-eval-model", "install", "--site-dir", str(site)]) == 0
    boot.mkdir()
    (boot / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(site)!r})\n")
    probe = ("import sys; print('harness' in sys.modules); import lm_eval.api.registry as r, lm_eval.models; "
             "print('mhc-bench' in r.model_registry)")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": f"{boot}{os.pathsep}{ROOT}"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.split() == ["False", "True"], out.stdout + out.stderr[-2000:]
