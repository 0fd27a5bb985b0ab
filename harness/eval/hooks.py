"""`!function` targets of the rendered task YAMLs: the shipped files -> lm-eval's schemas.

The built-in tasks expect the Hugging Face Hub versions of the datasets. The files shipped in
../shared/data/eval are the upstream originals in other layouts, so each hook rewrites the
local rows into exactly the fields the built-in prompt templates and metrics read, and
nothing else changes: prompts, filters and metrics stay lm-eval's own.
"""

from __future__ import annotations

import re

from lm_eval.api.samplers import ContextSampler

# ---------------------------------------------------------------------- MMLU
LETTERS = "ABCD"


def mmlu_csv(test: str, dev: str, **_metadata):
    """The two Hendrycks CSVs of one subject (no header: question, A, B, C, D, answer letter)
    as cais/mmlu's {question, choices, answer: index}, the fields lm-eval's mmlu template
    reads. lm-eval calls this as the task's `custom_dataset` with the YAML's dataset_kwargs.

    Python's csv module keeps every cell an exact string (a type-guessing reader would turn
    an answer "0.50" into 0.5), and converting here, once, rather than in `process_docs`
    (which lm-eval re-runs on every access) keeps 57 subjects cheap.
    """
    import csv

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


# ---------------------------------------------------------------------- DROP
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


# ---------------------------------------------------------------------- held-out text
_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def wikitext_pages(dataset):
    """WikiText-2 files (one row per file) -> one {page} per article, split at the
    top-level ' = Title = ' lines, the document level lm-eval's wikitext task scores."""
    from datasets import Dataset

    pages = []

    def flush(lines: list[str]) -> None:
        while lines and not lines[0].strip():
            lines.pop(0)
        while lines and not lines[-1].strip():
            lines.pop()
        if lines:
            pages.append("\n".join(lines) + "\n")

    for text in dataset["text"]:
        current: list[str] = []
        for line in text.split("\n"):
            if _WIKITEXT_TITLE.match(line):
                flush(current)
                current = []
            current.append(line)
        flush(current)
    return Dataset.from_dict({"page": pages})
