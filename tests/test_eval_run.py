"""`mhc-bench eval` end to end, offline: a briefly trained `tiny` run on the four benchmarks,
and fixture models that answer every question right (score 1) or wrong (score 0)."""

import argparse
import shutil

import pandas as pd
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.model import LM  # noqa: E402

from harness.core.config import apply_overrides  # noqa: E402
from harness.core.errors import UserError  # noqa: E402
from harness.core.presets import get_preset  # noqa: E402
from harness.eval.render import default_data_dir  # noqa: E402
from harness.eval.results import SCHEMA  # noqa: E402
from harness.eval.runner import evaluate, evaluate_run  # noqa: E402
from harness.eval.suites import SUITES, parse_tasks  # noqa: E402

pytestmark = pytest.mark.skipif(not default_data_dir().is_dir(), reason="no evaluation data")
PAPER = parse_tasks("paper")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_cache):
    """A `tiny` run trained for 4 steps (the token cache is shared with the other tests)."""
    from harness.train.loop import train

    cfg = get_preset("tiny")
    cfg.run.runs_dir = str(tmp_path_factory.mktemp("exp") / "experiment")
    cfg.run.progress = "off"
    cfg.data.cache_dir = str(data_cache)
    apply_overrides(cfg, ["train.steps=4", "train.eval_every=0", "train.diag_every=0"])
    return train(cfg).run_dir


class Oracle(LM):
    """Answers from the gold of each request's document: right, or certainly wrong."""

    def __init__(self, right: bool):
        super().__init__()
        self.right = right

    @property
    def device(self):
        return "cpu"

    def loglikelihood(self, requests, disable_tqdm=False):
        return [(0.0, True) if (r.idx == r.doc["answer"]) == self.right else (-10.0, False) for r in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise AssertionError("not used by the four benchmarks")

    def generate_until(self, requests, disable_tqdm=False):
        out = []
        for r in requests:
            if r.task_name.startswith("mhc_bbh_"):
                out.append(f"Step by step. So the answer is {r.doc['target'] if self.right else 'zzz'}.")
            elif r.task_name == "mhc_gsm8k":
                gold = r.doc["answer"].split("####")[-1].strip() if self.right else "-987654321.5"
                out.append(f"Working it out gives {gold}.\n#### {gold}")
            elif r.task_name == "mhc_drop":
                out.append(r.doc["answers"][0][0] if self.right else "zzzq")
            else:
                raise AssertionError(r.task_name)
        return out


@pytest.mark.parametrize("right", [True, False])
def test_scoring_path_gold_answers_score_one_and_wrong_ones_zero(run_dir, right):
    rows = evaluate_run(run_dir, PAPER, limit=2, lm=Oracle(right), log=lambda m: None)
    assert set(rows["task"]) == {"bbh", "drop", "gsm8k", "mmlu"}
    expected = 1.0 if right else 0.0
    bad = rows[rows["value"] != expected]
    assert bad.empty, bad[["lm_eval_task", "metric", "filter", "value"]].to_string()
    metrics = set(zip(rows["task"], rows["metric"], rows["filter"]))
    assert {("bbh", "exact_match", "get-answer"), ("drop", "em", "none"), ("drop", "f1", "none"),
            ("gsm8k", "exact_match", "strict-match"), ("gsm8k", "exact_match", "flexible-extract"),
            ("mmlu", "acc", "none")} <= metrics


def test_tiny_model_on_all_four_benchmarks_gives_complete_typed_rows(run_dir):
    rows = evaluate_run(run_dir, PAPER, limit=2, max_gen_toks=4, log=lambda m: None)
    stored = pd.read_parquet(run_dir / "evals.parquet")
    assert list(stored.columns) == list(SCHEMA)
    assert {c: str(t) for c, t in stored.dtypes.items()} == {c: str(pd.Series(dtype=t).dtype) for c, t in SCHEMA.items()}
    assert not stored.isna().any().any(), stored.columns[stored.isna().any()].tolist()
    assert len(stored) == len(rows)
    assert not stored.duplicated(["run", "task", "subtask", "metric", "filter"]).any()
    heads = stored[stored["level"] == "task"]
    for suite in PAPER:
        head = heads[(heads["task"] == suite.key) & (heads["metric"] == suite.metric) & (heads["filter"] == suite.filter)]
        assert len(head) == 1, suite.key
        r = head.iloc[0]
        assert 0.0 <= r["value"] <= 1.0 and r["num_fewshot"] == suite.shots and r["limit"] == 2
        assert r["samples"] == {"bbh": 27 * 2, "mmlu": 57 * 2}.get(suite.key, 2)
        assert r["context_truncated"] > 0  # few-shot prompts never fit 64 tokens
        assert len(r["task_hash"]) == 64 and r["lm_eval_version"] and r["step"] == 4 and r["seq_len"] == 64
    assert set(stored[stored["task"] == "bbh"]["subtask"]) >= {"", "snarks", "word_sorting"}
    assert set(stored[(stored["task"] == "mmlu") & (stored["level"] == "group")]["subtask"]) == {
        "stem", "other", "social_sciences", "humanities"}
    assert "other passages" in heads[heads["task"] == "drop"]["notes"].iloc[0]
    lm_eval_files = [p.name for p in (run_dir / "eval" / "lm-eval").iterdir()]
    assert any(n.startswith("samples_mhc_gsm8k_") for n in lm_eval_files)
    assert any(n.startswith("results_") for n in lm_eval_files)
    assert any((run_dir.parent / "eval-cache" / "hf-datasets").iterdir())  # the experiment's shared datasets cache
    assert "datasets" in (run_dir / "eval" / "eval.log").read_text()  # the libraries' chatter, kept aside


def test_experiment_folder_and_errors(run_dir, tmp_path):
    exp = run_dir.parent
    # an experiment: every run is scored and its rows gathered beside them
    evaluate(exp, "gsm8k", limit=1, max_gen_toks=2, log=lambda m: None)
    gathered = pd.read_parquet(exp / "evals.parquet")
    assert set(gathered["run"]) == {run_dir.name} and "gsm8k" in set(gathered["task"])
    assert {"bbh", "mmlu"} <= set(pd.read_parquet(run_dir / "evals.parquet")["task"])  # earlier rows kept
    with pytest.raises(UserError, match="unknown task"):
        evaluate(exp, "bbh,nope")
    with pytest.raises(UserError, match="more than the 3 worked examples"):
        evaluate(run_dir, "bbh", num_fewshot=5)
    broken = tmp_path / "broken-run"
    broken.mkdir()
    shutil.copy(run_dir / "config.json", broken / "config.json")
    with pytest.raises(UserError, match="has no checkpoint.pt"):
        evaluate(broken, "gsm8k")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no run folders"):
        evaluate(tmp_path / "empty", "gsm8k")


def test_register_adds_eval_and_table_subcommands():
    from harness.eval_cli import register

    parser = argparse.ArgumentParser(prog="mhc-bench")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "runs/x", "--tasks", "bbh,mmlu", "--limit", "3", "--num-fewshot", "0"])
    assert (args.command, args.target, args.tasks, args.limit, args.num_fewshot) == ("eval", ["runs/x"], "bbh,mmlu", 3, 0)
    args = parser.parse_args(["table", "runs", "--layout", "table1"])
    assert (args.command, args.experiment, args.layout) == ("table", "runs", "table1")
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "runs/x", "--limit", "0"])
    assert set(SUITES) == {"bbh", "drop", "gsm8k", "mmlu", "wikitext2", "wiki"}
