"""GSM8K, 8-shot exact match (paper Table 4): lm-eval's built-in `gsm8k` on the shipped jsonl files.

One file: this module holds the whole suite. Its task YAML is generated from TEMPLATE at run
time (no YAML file ships); GSM8K needs no hooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.eval.suites.base import Suite
from harness.eval.suites.registry import register_suite

if TYPE_CHECKING:
    from harness.eval.render import Renderer

TEMPLATE = """\
# GSM8K, 8-shot (paper Table 4): lm-eval's built-in `gsm8k` task as it is (prompt, the
# strict-match and flexible-extract filters, exact match), on the shipped jsonl files.
# ${...} placeholders are filled with JSON strings by harness/eval/render.py at run time.
include: ${BUILTIN}
task: ${TASK}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    train: ${GSM8K_TRAIN}
    test: ${GSM8K_TEST}
  cache_dir: ${CACHE}
num_fewshot: 8
"""


@register_suite("gsm8k")
class GSM8K(Suite):
    title = "GSM8K"
    shots = 8
    metric, filter, scale = "exact_match", "strict-match", 100.0
    note = ("GSM8K test, 8 few-shot examples from train; 8-shot prompts are far longer than small "
            "models' context and are left-truncated")
    paper = {"Baseline": 46.7, "HC": 53.2, "mHC": 53.8}
    aliases = ("paper",)
    order = 30
    chance = 0.0  # a free-form number: a guess is not an answer

    def render(self, out: Renderer) -> None:
        train, test = out.data / "gsm8k" / "train.jsonl", out.data / "gsm8k" / "test.jsonl"
        out.need(train, test)
        out.write(TEMPLATE, self.lm_eval_name, BUILTIN=str(out.builtin / "gsm8k" / "gsm8k.yaml"),
                  TASK=self.lm_eval_name, GSM8K_TRAIN=str(train), GSM8K_TEST=str(test))
