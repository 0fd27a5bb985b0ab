"""WikiText-2 bits per byte: lm-eval's built-in `wikitext` scoring on the shipped (tokenized) release.

One file: this module holds the whole suite, including `wikitext_pages`, the `!function` hook
its YAML names. Its task YAML is generated from TEMPLATE at run time (no YAML file ships).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from harness.eval.suites.base import Suite
from harness.eval.suites.registry import register_suite

if TYPE_CHECKING:
    from harness.eval.render import Renderer

TEMPLATE = """\
# WikiText-2 held-out perplexity / bits per byte: lm-eval's built-in `wikitext` task (its
# detokenizer, word/byte perplexity, bits per byte) on the shipped valid/test files, one
# document per article. The shipped release is the tokenized one (<unk>, " @-@ "), not the
# raw one lm-eval downloads, so numbers are not comparable with published WikiText results.
include: ${BUILTIN}
task: ${TASK}
dataset_path: text
dataset_name: null
dataset_kwargs:
  data_files:
    validation: ${WIKITEXT_VALID}
    test: ${WIKITEXT_TEST}
  sample_by: document
  cache_dir: ${CACHE}
training_split: null
process_docs: !function harness.eval.suites.wikitext2.wikitext_pages
num_fewshot: 0
"""


@register_suite("wikitext2")
class WikiText2(Suite):
    title = "WikiText-2"
    shots = 0
    metric, filter = "bits_per_byte", "none"
    note = ("WikiText-2 test as shipped (the tokenized release with <unk>, not lm-eval's raw one) "
            "through lm-eval's detokenizer; scored in disjoint windows of model.seq_len tokens")
    caveat = "the tokenized WikiText-2 release: not comparable with published WikiText numbers"
    aliases = ("ppl",)
    order = 50

    def render(self, out: Renderer) -> None:
        folder = (out.corpus_dir or out.data.parent / "corpus") / "wikitext-2"
        valid, test = folder / "valid.txt", folder / "test.txt"
        out.need(valid, test)
        out.write(TEMPLATE, self.lm_eval_name, BUILTIN=str(out.builtin / "wikitext" / "wikitext.yaml"),
                  TASK=self.lm_eval_name, WIKITEXT_VALID=str(valid), WIKITEXT_TEST=str(test))


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
