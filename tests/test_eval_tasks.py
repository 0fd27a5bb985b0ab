"""Task definitions: our rendered YAMLs prompt exactly as lm-eval's built-in tasks do, and
missing data or unknown names are one clear error."""

import csv
import gzip
import json
import re
import shutil

import pytest

pytest.importorskip("lm_eval")

from harness.core.errors import UserError  # noqa: E402
from harness.eval.render import default_data_dir, lm_eval_tasks_dir, render_tasks  # noqa: E402
from harness.eval.suites import parse_tasks  # noqa: E402
from harness.eval.suites.bbh import parse_cot_prompt  # noqa: E402

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"no evaluation data at {DATA}")
SEED = 1234  # lm-eval's default few-shot seed


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    """Our four benchmark tasks, loaded the way `mhc-bench eval` loads them."""
    from lm_eval.tasks import TaskManager

    from harness.eval.runner import offline_hf

    tmp = tmp_path_factory.mktemp("tasks")
    rendered = render_tasks(parse_tasks("paper"), tmp / "tasks", data_dir=DATA, cache_dir=tmp / "hf-cache")
    with offline_hf(tmp / "hf-cache"):
        manager = TaskManager(include_path=str(rendered.dir), include_defaults=False)
        loaded = manager.load(["mhc_bbh", "mhc_drop", "mhc_gsm8k", "mhc_mmlu"])
    return loaded["tasks"]


def builtin(relpath: str, splits: dict):
    """lm-eval's built-in task from its own YAML, with `splits` (Hub-schema docs) as its data."""
    from datasets import Dataset, DatasetDict
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(lm_eval_tasks_dir() / relpath)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)

    class Injected(ConfigurableTask):
        def download(self, dataset_kwargs=None, **kwargs):
            self.dataset = DatasetDict({k: Dataset.from_list(v) for k, v in splits.items()})

    return Injected(config=cfg)


def prompt(task, doc, shots):
    task.set_fewshot_seed(SEED)
    return task.fewshot_context(doc, shots)


# ---------------------------------------------------------------------- prompt fidelity
def test_bbh_prompts_equal_builtin_for_all_27_subtasks(ours):
    subtasks = sorted(n.removeprefix("mhc_bbh_") for n in ours if n.startswith("mhc_bbh_"))
    assert len(subtasks) == 27
    for sub in subtasks:
        first = json.loads((DATA / "bbh" / "bbh" / f"{sub}.json").read_text())["examples"][0]
        ref = builtin(f"bbh/cot_fewshot/{sub}.yaml", {"test": [first]})
        mine = ours[f"mhc_bbh_{sub}"]
        doc = mine.eval_docs[0]
        assert dict(doc) == first
        assert prompt(mine, doc, 3) == prompt(ref, ref.eval_docs[0], 3), sub
        assert mine.doc_to_target(doc) == ref.doc_to_target(ref.eval_docs[0])


def test_gsm8k_prompt_equals_builtin(ours):
    def rows(name):
        return [json.loads(line) for line in (DATA / "gsm8k" / name).read_text().splitlines() if line.strip()]

    train, test = rows("train.jsonl"), rows("test.jsonl")
    ref = builtin("gsm8k/gsm8k.yaml", {"train": train, "test": test[:1]})
    mine = ours["mhc_gsm8k"]
    text = prompt(mine, mine.eval_docs[0], 8)
    assert text == prompt(ref, ref.eval_docs[0], 8)
    assert text.count("Question:") == 9 and text.endswith(test[0]["question"] + "\nAnswer:")


def _mmlu_rows(subject, split):
    with open(DATA / "mmlu" / split / f"{subject}_{split}.csv", newline="", encoding="utf-8") as f:
        return [{"question": r[0], "subject": subject, "choices": r[1:5], "answer": "ABCD".index(r[5])}
                for r in csv.reader(f)]


@pytest.mark.parametrize("subject", ["anatomy", "high_school_statistics", "professional_law"])
def test_mmlu_prompt_equals_builtin(ours, subject):
    test = _mmlu_rows(subject, "test")
    ref = builtin(f"mmlu/default/mmlu_{subject}.yaml", {"test": test[:1], "dev": _mmlu_rows(subject, "dev")})
    mine = ours[f"mhc_mmlu_{subject}"]
    doc = mine.eval_docs[0]
    assert prompt(mine, doc, 5) == prompt(ref, ref.eval_docs[0], 5)
    assert mine.doc_to_target(doc) == ref.doc_to_target(ref.eval_docs[0]) == test[0]["answer"]
    assert mine.doc_to_choice(doc) == ["A", "B", "C", "D"]


def _drop_rows(n):
    with gzip.open(DATA / "drop" / "drop_v0_dev.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def test_drop_prompt_equals_builtin_and_fewshot_avoids_the_passage(ours):
    raw = _drop_rows(1)[0]
    m = re.fullmatch(r"Passage: (.*)\nQuestion: (.*)\nAnswer:", raw["context"], re.S)
    empty = {"day": "", "month": "", "year": ""}
    hub = {"section_id": "s", "query_id": "q", "passage": m.group(1), "question": m.group(2),
           "answer": {"number": "", "date": empty, "spans": [raw["ref_text"].split("|")[0]]},
           "validated_answers": {"number": [], "date": [], "spans": []}}
    ref = builtin("drop/default.yaml", {"train": [hub], "validation": [hub]})
    mine = ours["mhc_drop"]
    doc = mine.eval_docs[0]
    # the question as lm-eval's DROP asks it (0-shot, the built-in's own setting)
    assert prompt(mine, doc, 0) == prompt(ref, ref.eval_docs[0], 0) == f"{m.group(1)} {m.group(2)}"
    # 3-shot: other passages, each shot "<passage> <question> <answer>\n\n"
    mine.sampler.set_rnd(SEED)
    shots = mine.sampler.sample(3, eval_doc=doc)
    assert len({s["passage"] for s in shots} | {doc["passage"]}) == 4
    expect = "".join(f"{s['passage']} {s['question']} {s['answer'][0]}\n\n" for s in shots) + f"{doc['passage']} {doc['question']}"
    assert prompt(mine, doc, 3) == expect
    assert mine.config.generation_kwargs["until"] == [".", "\n\n"]


def test_cot_prompt_parser_handles_the_odd_files():
    description, samples = parse_cot_prompt(DATA / "bbh" / "cot-prompts" / "snarks.txt")
    assert description.count("\n\n") == 2 and len(samples) == 3  # two-paragraph description
    _, samples = parse_cot_prompt(DATA / "bbh" / "cot-prompts" / "sports_understanding.txt")
    assert samples[0]["target"].startswith("Bam Adebayo")  # answer on the "A:" line


# ---------------------------------------------------------------------- errors
def test_missing_data_file_is_one_error_naming_it(tmp_path):
    data = tmp_path / "eval"
    shutil.copytree(DATA / "gsm8k", data / "gsm8k")
    with pytest.raises(UserError, match=r"drop_v0_dev\.jsonl\.gz"):
        render_tasks(parse_tasks("gsm8k,drop"), tmp_path / "tasks", data_dir=data, cache_dir=tmp_path / "c")
    (data / "gsm8k" / "train.jsonl").unlink()
    with pytest.raises(UserError, match=r"gsm8k/train\.jsonl"):
        render_tasks(parse_tasks("gsm8k"), tmp_path / "tasks", data_dir=data, cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="evaluation data folder not found"):
        render_tasks(parse_tasks("gsm8k"), tmp_path / "tasks", data_dir=tmp_path / "nowhere", cache_dir=tmp_path / "c")


def test_task_names():
    assert [s.key for s in parse_tasks("paper")] == ["bbh", "drop", "gsm8k", "mmlu"]
    assert [s.key for s in parse_tasks("mmlu, ppl,mmlu")] == ["mmlu", "wiki", "wikitext2"]
    with pytest.raises(UserError, match="did you mean 'gsm8k'"):
        parse_tasks("gsm8")


def test_wikitext_pages_split_the_release_into_its_articles():
    from datasets import Dataset

    from harness.eval.suites.wikitext2 import wikitext_pages

    corpus = DATA.parent / "corpus"
    wikitext = (corpus / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    articles = wikitext_pages(Dataset.from_dict({"text": [wikitext]}))["page"]
    assert len(articles) == 62 and articles[0].startswith(" = Robert <unk> = \n")
    assert "".join(articles).split() == wikitext.split()  # nothing lost or duplicated
