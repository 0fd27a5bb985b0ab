"""An evaluation suite is one file: a throwaway suite, written here as a temporary module and
registered by its own decorator, is listed by `--tasks`, rendered, built and scored through
lm-eval, capped by its `max_shots` and laid beside its paper numbers by `mhc-bench table`, with
no other file edited. A key registered twice, a class that is no suite, or a name nobody
registered is one clear line."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.eval import paper
from harness.eval.runner import check_options
from harness.eval.suites import (
    ALIASES,
    SUITES,
    Suite,
    locate,
    parse_tasks,
    register_suite,
    unregister_suite,
)

MODULE = "throwaway_suite"
SOURCE = textwrap.dedent('''
    """Three sums, multiple choice: a suite in one file (its YAML is TEMPLATE, its hook `question`)."""

    from harness.eval.suites import Suite, register_suite

    TEMPLATE = """\\
    task: ${TASK}
    dataset_path: json
    dataset_name: null
    dataset_kwargs:
      data_files:
        test: ${DOCS}
      cache_dir: ${CACHE}
    test_split: test
    fewshot_split: test
    output_type: multiple_choice
    doc_to_text: !function throwaway_suite.question
    doc_to_choice: "{{choices}}"
    doc_to_target: "{{answer}}"
    metric_list:
      - metric: acc
    num_fewshot: ${SHOTS}
    """


    @register_suite("sums")
    class Sums(Suite):
        title = "Sums"
        shots = 2
        max_shots = 4
        metric, filter, scale = "acc", "none", 100.0
        note = "three-term sums, a throwaway suite"
        paper = {"Baseline": 11.0, "HC": 22.0, "mHC": 33.0}
        aliases = ("paper",)

        def render(self, out):
            docs = out.data / "sums" / "sums.jsonl"
            out.need(docs)
            out.write(TEMPLATE, self.lm_eval_name, TASK=self.lm_eval_name, DOCS=str(docs), SHOTS=self.shots)


    def question(doc):
        return f"{doc['a']} + {doc['b']} + {doc['c']} ="
''')
PAPER_SUITES = ["bbh", "drop", "gsm8k", "mmlu"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sums(tmp_path, monkeypatch):
    """The throwaway suite, registered by importing its module; unregistered afterwards."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(MODULE)
    yield SUITES["sums"]
    unregister_suite("sums")
    sys.modules.pop(MODULE, None)
    assert module.Sums.key == "sums" and "sums" not in SUITES and list(ALIASES["paper"]) == PAPER_SUITES


def sums_data(data_dir):
    docs = [{"a": a, "b": b, "c": c, "choices": [str(a + b + c), str(a + b + c + 1)], "answer": 0}
            for a, b, c in ((1, 2, 3), (4, 5, 6), (7, 8, 9), (2, 2, 2), (3, 1, 4))]
    (data_dir / "sums").mkdir(parents=True)
    (data_dir / "sums" / "sums.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return data_dir


# ---------------------------------------------------------------------- one file is enough
def test_a_registered_suite_is_listed_like_ours(sums):
    assert isinstance(sums, Suite) and sums.lm_eval_name == "mhc_sums"
    assert parse_tasks("sums") == [sums]
    assert [s.key for s in parse_tasks("paper")] == [*PAPER_SUITES, "sums"]  # it joined the alias it names
    assert [s.key for s in parse_tasks("all")] == ["bbh", "drop", "gsm8k", "mmlu", "wikitext2", "wiki", "sums"]
    assert locate("mhc_sums") == (sums, "", "task") and locate("mhc_sums_part") == (sums, "part", "subtask")
    with pytest.raises(UserError, match="did you mean 'sums'"):
        parse_tasks("sumz")


def test_its_shots_and_paper_numbers_are_read_where_ours_are(sums):
    check_options([sums], None, 4)
    with pytest.raises(UserError, match=r"^--num-fewshot 5 is more than the 4 worked examples Sums ships per subtask$"):
        check_options([sums], None, 5)
    assert paper.table4("HC", "sums") == 22.0 and paper.published("sums")
    assert paper.table4_rows()["mHC"] == {"bbh": 51.0, "drop": 53.9, "gsm8k": 53.8, "mmlu": 63.4, "sums": 33.0}


def test_mhc_bench_table_lays_it_beside_the_paper(sums, tmp_path):
    from harness.analysis.table import make_table
    from harness.eval.results import frame

    experiment = tmp_path / "exp"
    for variant, value in (("identity", 0.5), ("hc", 0.75)):
        run = experiment / variant
        run.mkdir(parents=True)
        cfg = get_preset("tiny")
        cfg.variant.name = variant
        (run / "config.json").write_text(json.dumps(cfg.to_dict()))
        pd.DataFrame({"step": [60], "split": ["val"], "loss": [3.0]}).to_parquet(run / "metrics.parquet")
        frame([{"run": variant, "run_dir": str(run), "preset": "tiny", "variant": variant, "variant_fixed": "",
                "n_streams": 4, "seed": 0, "step": 60, "seq_len": 64, "task": "sums", "subtask": "", "level": "task",
                "lm_eval_task": sums.lm_eval_name, "metric": sums.metric, "filter": sums.filter, "value": value,
                "stderr": 0.01, "higher_is_better": True, "samples": 5, "num_fewshot": sums.shots, "limit": None,
                "context_truncated": 0.0, "task_version": "1", "task_hash": "h", "lm_eval_version": "0.4.13",
                "device": "cpu", "evaluated_at": "t", "notes": sums.note}]).to_parquet(run / "evals.parquet")
    md, files = make_table(experiment, "table4", formats=("md", "csv"))
    cell = pd.read_csv(files["csv"]).set_index(["row", "benchmark"])
    assert cell.loc[("HC", "sums"), "ours"] == pytest.approx(75.0) and cell.loc[("HC", "sums"), "paper"] == 22.0
    assert cell.loc[("Baseline", "sums"), "gap"] == pytest.approx(50.0 - 11.0)
    assert "Sums Acc (2-shot)" in md and f"Sums (5 documents): {sums.note}." in md


def test_it_renders_builds_and_scores_through_lm_eval(sums, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.api.model import LM

    from harness.eval.results import headline, rows_from_results
    from harness.eval.runner import offline_hf
    from harness.eval.taskset import TaskSet

    class Oracle(LM):
        def loglikelihood(self, requests, disable_tqdm=False):
            return [(0.0, True) if r.idx == r.doc["answer"] else (-10.0, False) for r in requests]

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise AssertionError("multiple choice only")

        def generate_until(self, requests, disable_tqdm=False):
            raise AssertionError("multiple choice only")

    with pytest.raises(UserError, match=r"sums/sums\.jsonl"):  # its data is checked like ours
        TaskSet([sums], data_dir=tmp_path, hf_cache=tmp_path / "hf").render(tmp_path / "exp" / "run", None)
    taskset = TaskSet([sums], data_dir=sums_data(tmp_path / "data"), hf_cache=tmp_path / "hf")
    rendered = taskset.render(tmp_path / "exp" / "run", None)
    assert [p.name for p in rendered.rglob("*.yaml")] == ["mhc_sums.yaml"]
    assert "num_fewshot: 2" in (rendered / "mhc_sums.yaml").read_text()
    with offline_hf(taskset.hf_cache):
        (task,), owners = taskset.objects(rendered, [sums])
        assert task.doc_to_text(task.eval_docs[0]) == "1 + 2 + 3 =" and owners == {}  # its hook, from its module
        results = simple_evaluate(model=Oracle(), tasks=[task], task_manager=taskset.manager(rendered),
                                  log_samples=True, bootstrap_iters=0)
    rows = pd.DataFrame(rows_from_results(results, results["samples"], {}, {"run": "run"}))
    head = headline(rows)
    assert list(head["task"]) == ["sums"] and list(head["metric"]) == ["acc"] and list(head["value"]) == [1.0]
    assert list(head["num_fewshot"]) == [2] and list(head["notes"]) == [sums.note]


# ---------------------------------------------------------------------- one-line errors
def test_a_key_registered_twice_is_one_error(sums):
    class Again(Suite):
        title, shots, metric, filter, note = "Again", 0, "acc", "none", "again"

        def render(self, out):
            raise AssertionError("never rendered")

    before = (list(SUITES), dict(ALIASES))
    for key, where in (("sums", "throwaway_suite.Sums"), ("gsm8k", "harness.eval.suites.gsm8k.GSM8K")):
        with pytest.raises(UserError) as e:
            register_suite(key)(Again)
        assert str(e.value) == (f"suite {key!r} is registered twice: by {where} and by "
                                f"{__name__}.test_a_key_registered_twice_is_one_error.<locals>.Again")
    with pytest.raises(UserError, match=r"^cannot register suite 'paper' .*: key 'paper' is already the name of a --tasks alias$"):
        register_suite("paper")(Again)
    with pytest.raises(UserError, match=r"^cannot register suite 'Loud' .*: key 'Loud' is not lower-case letters"):
        register_suite("Loud")(Again)
    assert (list(SUITES), dict(ALIASES)) == before  # nothing half-registered


def test_a_class_that_is_no_suite_is_one_error():
    class Bare(Suite):
        title = "Bare"

    with pytest.raises(UserError, match=r"^cannot register suite 'bare' .*: it does not set shots, metric, filter, note, "
                                        r"render\(\)$"):
        register_suite("bare")(Bare)
    with pytest.raises(UserError, match="it is not a subclass of harness.eval.suites.base.Suite"):
        register_suite("plain")(object)
    assert "bare" not in SUITES and "plain" not in SUITES


def test_an_unknown_suite_name_is_one_error():
    with pytest.raises(UserError) as e:
        parse_tasks("gsm9k")
    assert str(e.value).startswith("unknown task 'gsm9k' (did you mean 'gsm8k'?); choose from paper, ppl, heldout, all, bbh")
    with pytest.raises(UserError) as e:
        unregister_suite("nope")
    assert str(e.value) == "no suite 'nope' is registered; registered: bbh, drop, gsm8k, mmlu, wikitext2, wiki"
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- the registry itself
def test_each_paper_number_lives_in_one_place():
    """The Table 4 columns paper.py keeps are those no suite carries (a suite's are in its module)."""
    assert not set(paper.TABLE4_NOT_RUN) & set(SUITES)
    assert [k for k, s in SUITES.items() if s.paper] == PAPER_SUITES == list(ALIASES["paper"])


def test_the_registry_imports_without_lm_eval():
    code = ("import sys; import harness.eval.suites, harness.eval.paper, harness.analysis.table; "
            "assert 'lm_eval' not in sys.modules, 'lm_eval imported'; print(len(harness.eval.suites.SUITES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "6", out.stderr
