"""DROP, 3-shot F1 (paper Table 4): lm-eval's built-in `drop` on the shipped simple-evals dev file.

One file: this module holds the whole suite, including the `!function` hooks its YAML names
(`drop_docs`, `OtherPassageSampler`). Its task YAML is generated from TEMPLATE at run time (no
YAML file ships).

`OtherPassageSampler` subclasses lm-eval's ContextSampler, so it is built on first access
(the module's `__getattr__`, which lm-eval's `!function` lookup goes through): the registry
imports this module on machines without lm-eval.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

from harness.eval.suites.base import Suite
from harness.eval.suites.registry import register_suite

if TYPE_CHECKING:
    from harness.eval.render import Renderer

TEMPLATE = """\
# DROP, 3-shot F1 (paper Table 4): lm-eval's built-in `drop` task (prompt "{{passage}}
# {{question}}", its answer normalisation, EM and F1) on the shipped simple-evals dev file.
# No train split ships, so the few-shot examples come from the dev set itself, drawn from
# passages other than the evaluated question's (OtherPassageSampler). The built-in is written
# for 0-shot: its few-shot answers would follow the question with no separator and the
# model's answer would run on into the next example, so few-shot answers get a space and
# "\\n\\n" also stops generation.
include: ${BUILTIN}
task: ${TASK}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: ${DROP_DEV}
  cache_dir: ${CACHE}
training_split: null
validation_split: null
test_split: test
fewshot_split: test
process_docs: !function harness.eval.suites.drop.drop_docs
fewshot_config:
  sampler: !function harness.eval.suites.drop.OtherPassageSampler
  target_delimiter: " "
generation_kwargs:
  until:
    - "."
    - "\\n\\n"
num_fewshot: 3
"""


@register_suite("drop")
class DROP(Suite):
    title = "DROP"
    shots = 3
    metric, filter, scale = "f1", "none", 100.0
    note = ("DROP dev (no train split ships): the 3 few-shot examples come from other passages of "
            "the dev set, never the question's own; accepted answers are the simple-evals flattening "
            "(a multi-span answer is one string); few-shot answers follow a space and '\\n\\n' also "
            "stops generation (lm-eval's DROP YAML is written for 0-shot)")
    caveat = "few-shot examples from other dev passages: no DROP train split ships"
    paper = {"Baseline": 47.0, "HC": 51.6, "mHC": 53.9}
    aliases = ("paper",)
    order = 20
    chance = 0.0  # a free-form span: guessing has no level above 0 worth stating

    def render(self, out: Renderer) -> None:
        dev = out.data / "drop" / "drop_v0_dev.jsonl.gz"
        out.need(dev)
        out.write(TEMPLATE, self.lm_eval_name, BUILTIN=str(out.builtin / "drop" / "default.yaml"),
                  TASK=self.lm_eval_name, DROP_DEV=str(dev))


_DROP = re.compile(r"\APassage: (?P<passage>.*)\nQuestion: (?P<question>.*)\nAnswer:\Z", re.S)


def drop_docs(dataset):
    """simple-evals DROP rows {context, completion, ref_text} -> the fields lm-eval's DROP task
    reads: passage, question, answers (each accepted answer as a 1-tuple of spans, as its
    `process_results` expects) and answer (the first accepted answer's spans, which its
    `doc_to_target` joins for the few-shot examples)."""

    def convert(row, idx):
        m = _DROP.match(row["context"])
        if m is None:
            raise ValueError(f"DROP row {idx}: context is not 'Passage: ...\\nQuestion: ...\\nAnswer:'")
        refs = [r.strip() for r in row["ref_text"].split("|") if r.strip()] or [row["completion"].strip()]
        question = m.group("question")
        if "\nQuestion: " in question:  # the passage itself held a "Question:" line
            extra, _, question = question.rpartition("\nQuestion: ")
            passage = m.group("passage") + "\nQuestion: " + extra
        else:
            passage = m.group("passage")
        return {"id": f"drop-dev-{idx}", "passage": passage, "question": question,
                "answers": [[r] for r in refs], "answer": [refs[0]]}

    return dataset.map(convert, with_indices=True, remove_columns=list(dataset.column_names))


@functools.cache
def other_passage_sampler() -> type:
    """The OtherPassageSampler class (lm-eval imported here, once)."""
    from lm_eval.api.samplers import ContextSampler

    class OtherPassageSampler(ContextSampler):
        """Few-shot DROP examples drawn at random from the pool, never from the evaluated
        question's passage (questions on one passage would leak its answer), and each from a
        different passage. Seeded by lm-eval's fewshot seed, like its default sampler."""

        def sample(self, n: int, eval_doc=None, df=None, **kwargs):
            if n <= 0:
                return []
            if df:
                self.df = df
            pool = self.fewshot_docs()
            banned = {eval_doc["passage"]} if eval_doc is not None else set()
            out: list = []
            # a few spare draws almost always suffice; a full shuffle settles the rare rest
            for draw in (min(len(pool), 4 * n + 8), len(pool)):
                for i in self.rnd.sample(range(len(pool)), draw):
                    if pool[i]["passage"] not in banned:
                        banned.add(pool[i]["passage"])
                        out.append(pool[i])
                        if len(out) == n:
                            return out
                out, banned = [], {eval_doc["passage"]} if eval_doc is not None else set()
            raise ValueError(f"the DROP few-shot pool has fewer than {n} passages besides the evaluated one")

    OtherPassageSampler.__qualname__ = OtherPassageSampler.__name__  # its name in lm-eval's logged config
    return OtherPassageSampler


def __getattr__(name: str):
    """`OtherPassageSampler`, the few-shot sampler the YAML names, built on first access."""
    if name == "OtherPassageSampler":
        return other_passage_sampler()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
