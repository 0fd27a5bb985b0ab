"""The run's own held-out text in bits per byte: lm-eval's built-in `wikitext` scoring on the run's
validation documents (harness/eval/heldout.py writes them as JSONL), whatever the corpus.

One file: this module holds the whole suite. Its task YAML is generated from TEMPLATE at run
time (no YAML file ships); it needs no hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.core.errors import UserError
from harness.eval.suites.base import Suite
from harness.eval.suites.registry import register_suite

if TYPE_CHECKING:
    from harness.eval.render import Renderer

TEMPLATE = """\
# The run's held-out validation documents (data.val_files, else the last data.val_fraction;
# by default Wikipedia's wiki_48 and wiki_49, never trained on), one per line of a JSONL file
# written by harness/eval/heldout.py: lm-eval's built-in `wikitext` scoring (word/byte
# perplexity, bits per byte), the text scored as it is (no detokenizer: it is not tokenized).
include: ${BUILTIN}
task: ${TASK}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: ${HELDOUT}
  cache_dir: ${CACHE}
training_split: null
validation_split: null
test_split: test
doc_to_target: "{{page}}"
num_fewshot: 0
"""


@register_suite("wiki")
class HeldOutText(Suite):
    title = "Held-out text"
    shots = 0
    metric, filter = "bits_per_byte", "none"
    note = ("the run's validation documents, never trained on (data.val_files, else the last "
            "data.val_fraction; wiki_48 and wiki_49 of the default Wikipedia corpus), one per article, "
            "row or line; token shards decoded with the run's tokenizer; scored in disjoint windows "
            "of model.seq_len tokens")
    aliases = ("ppl", "heldout")  # heldout: the run's own validation documents, whatever the corpus
    uses_heldout = True
    order = 60

    def render(self, out: Renderer) -> None:
        if out.heldout is None:
            raise UserError("task 'wiki' scores a run's held-out validation documents; render it for a run "
                            "(mhc-bench eval RUN_DIR --tasks wiki)")
        out.need(out.heldout)
        out.write(TEMPLATE, self.lm_eval_name, BUILTIN=str(out.builtin / "wikitext" / "wikitext.yaml"),
                  TASK=self.lm_eval_name, HELDOUT=str(out.heldout))
