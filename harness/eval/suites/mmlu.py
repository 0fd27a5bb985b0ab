"""MMLU, 5-shot accuracy (paper Table 4): lm-eval's built-in `mmlu_<subject>` tasks and its groups
on the shipped Hendrycks CSVs, which `mmlu_csv` (the `custom_dataset` hook its YAML names)
puts in the Hub's schema.

One file: this module holds the whole suite. Its task YAMLs (one per subject, one per category
group and the whole) are generated from TEMPLATE and GROUP_TEMPLATE at run time (no YAML file
ships).
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

from harness.eval.suites.base import Suite
from harness.eval.suites.registry import register_suite

if TYPE_CHECKING:
    from harness.eval.render import Renderer

TEMPLATE = """\
# One MMLU subject, 5-shot (paper Table 4): lm-eval's built-in `mmlu_<subject>` (prompt,
# A/B/C/D log-likelihood, accuracy), on the shipped Hendrycks CSVs; few-shot = the first 5
# dev rows, as lm-eval does. The CSVs are read (exact strings) and put in the Hub's schema by
# harness.eval.suites.mmlu.mmlu_csv, lm-eval's `custom_dataset` hook.
include: ${BUILTIN}
task: ${TASK}
tag: ${TAG}
dataset_path: null
dataset_name: null
custom_dataset: !function harness.eval.suites.mmlu.mmlu_csv
dataset_kwargs:
  test: ${MMLU_TEST}
  dev: ${MMLU_DEV}
num_fewshot: 5
"""

GROUP_TEMPLATE = """\
# An MMLU group (the whole of it, or one of its four categories): lm-eval's own group YAML
# (accuracy, mean weighted by subject size) over our subjects.
include: ${BUILTIN}
group: ${GROUP}
task: ${SUBTASKS}
"""

CATEGORIES = ("stem", "other", "social_sciences", "humanities")  # lm-eval's groups between MMLU and its subjects
LETTERS = "ABCD"


@register_suite("mmlu")
class MMLU(Suite):
    title = "MMLU"
    shots = 5
    max_shots = 5  # the dev rows each subject ships
    metric, filter, scale = "acc", "none", 100.0
    note = "MMLU test, 57 subjects, 5-shot from dev, log-likelihood of A/B/C/D, size-weighted accuracy"
    paper = {"Baseline": 59.0, "HC": 63.0, "mHC": 63.4}
    aliases = ("paper",)
    groups = CATEGORIES
    chance = 0.25  # one of A/B/C/D at random
    order = 40

    def render(self, out: Renderer) -> None:
        name = self.lm_eval_name
        folder = out.builtin / "mmlu" / "default"
        subjects = sorted(p.stem.removeprefix("mmlu_") for p in folder.glob("mmlu_*.yaml"))
        by_category: dict[str, list[str]] = {c: [] for c in CATEGORIES}
        for subject in subjects:
            test, dev = out.data / "mmlu" / "test" / f"{subject}_test.csv", out.data / "mmlu" / "dev" / f"{subject}_dev.csv"
            out.need(test, dev)
            builtin = folder / f"mmlu_{subject}.yaml"
            category = str(out.read(builtin)["tag"]).removeprefix("mmlu_").removesuffix("_tasks")
            task = f"{name}_{subject}"
            out.write(TEMPLATE, f"mmlu/{task}", BUILTIN=str(builtin), TASK=task, TAG=f"{name}_{category}_tasks",
                      MMLU_TEST=str(test), MMLU_DEV=str(dev))
            by_category[category].append(task)
        for category in CATEGORIES:
            out.write(GROUP_TEMPLATE, f"mmlu/{name}_{category}", BUILTIN=str(folder / f"_mmlu_{category}.yaml"),
                      GROUP=f"{name}_{category}", SUBTASKS=[f"{name}_{category}_tasks"])
        out.write(GROUP_TEMPLATE, f"mmlu/{name}", BUILTIN=str(folder / "_mmlu.yaml"), GROUP=name,
                  SUBTASKS=[f"{name}_{c}" for c in CATEGORIES])


def mmlu_csv(test: str, dev: str, **_metadata):
    """The two Hendrycks CSVs of one subject (no header: question, A, B, C, D, answer letter)
    as cais/mmlu's {question, choices, answer: index}, the fields lm-eval's mmlu template
    reads. lm-eval calls this as the task's `custom_dataset` with the YAML's dataset_kwargs.

    Python's csv module keeps every cell an exact string (a type-guessing reader would turn
    an answer "0.50" into 0.5), and converting here, once, rather than in `process_docs`
    (which lm-eval re-runs on every access) keeps 57 subjects cheap.
    """
    from datasets import Dataset, DatasetDict

    splits = {}
    for split, path in (("test", test), ("dev", dev)):
        docs = {"question": [], "choices": [], "answer": []}
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row:
                    continue
                if len(row) != 6 or row[5].strip() not in LETTERS:
                    raise ValueError(f"{path} row {n}: expected question, A, B, C, D, answer letter (A-D)")
                docs["question"].append(row[0])
                docs["choices"].append(row[1:5])
                docs["answer"].append(LETTERS.index(row[5].strip()))
        splits[split] = Dataset.from_dict(docs)
    return DatasetDict(splits)
