"""BIG-Bench Hard, chain-of-thought 3-shot exact match (paper Table 4): lm-eval's built-in
`bbh_cot_fewshot` tasks on the shipped json files, with the description and the three worked
examples of each subtask parsed from the shipped cot-prompts files (`parse_cot_prompt`).

One file: this module holds the whole suite. Its task YAMLs (one per subtask and the group)
are generated from TEMPLATE and GROUP_TEMPLATE at run time (no YAML file ships); it needs
no hooks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from harness.core.errors import UserError
from harness.eval.suites.base import Suite
from harness.eval.suites.registry import register_suite

if TYPE_CHECKING:
    from harness.eval.render import Renderer

TEMPLATE = """\
# One BIG-Bench Hard subtask, chain-of-thought 3-shot (paper Table 4): lm-eval's built-in
# `bbh_cot_fewshot_<subtask>` (prompt, "the answer is" filter, exact match), on the shipped
# json file, with the description and the three worked examples parsed from the shipped
# cot-prompts/<subtask>.txt (the same prompts lm-eval's generator read from upstream).
include: ${BUILTIN}
task: ${TASK}
dataset_path: json
dataset_name: null
dataset_kwargs:
  data_files:
    test: ${BBH_EXAMPLES}
  field: examples
  cache_dir: ${CACHE}
description: ${BBH_DESCRIPTION}
fewshot_config:
  sampler: first_n
  samples: ${BBH_SAMPLES}
num_fewshot: 3
"""

GROUP_TEMPLATE = """\
# BIG-Bench Hard as one number: lm-eval's `bbh_cot_fewshot` group (exact match, filter
# get-answer, mean weighted by subtask size) over our 27 subtasks.
include: ${BUILTIN}
group: ${GROUP}
task: ${SUBTASKS}
"""

COT_SEPARATOR = "\n-----\n"  # ends the canary header of a cot-prompts file
COT_ANSWER = "\nA: Let's think step by step."  # then a newline (a space in sports_understanding)


@register_suite("bbh")
class BBH(Suite):
    title = "BBH"
    shots = 3
    max_shots = 3  # the worked examples each cot-prompts file ships
    metric, filter, scale = "exact_match", "get-answer", 100.0
    note = ("BIG-Bench Hard, 27 subtasks, chain-of-thought 3-shot prompts from bbh/cot-prompts, "
            "exact match after lm-eval's 'the answer is' filter, size-weighted mean")
    paper = {"Baseline": 43.8, "HC": 48.9, "mHC": 51.0}
    aliases = ("paper",)
    order = 10

    def chance_level(self, data: Path) -> float | None:
        """A uniform guess among the answers each subtask uses (True/False: 1/2; a seven-way
        deduction: 1/7; word sorting: 1/250), weighted by subtask size as the group's mean is;
        None when the shipped json files are not there."""
        files = sorted((data / "bbh" / "bbh").glob("*.json"))
        if not files:
            return None
        docs = hits = 0.0
        for path in files:
            targets = [e["target"] for e in json.loads(path.read_text())["examples"]]
            docs += len(targets)
            hits += len(targets) / len(set(targets))
        return hits / docs

    def render(self, out: Renderer) -> None:
        folder = out.builtin / "bbh" / "cot_fewshot"
        group = out.read(folder / "_bbh_cot_fewshot.yaml")
        subtasks = [t.removeprefix("bbh_cot_fewshot_") for t in group["task"]]
        names = []
        for sub in subtasks:
            examples, prompt = out.data / "bbh" / "bbh" / f"{sub}.json", out.data / "bbh" / "cot-prompts" / f"{sub}.txt"
            out.need(examples, prompt)
            description, samples = parse_cot_prompt(prompt)
            name = f"{self.lm_eval_name}_{sub}"
            out.write(TEMPLATE, f"bbh/{name}", BUILTIN=str(folder / f"{sub}.yaml"), TASK=name,
                      BBH_EXAMPLES=str(examples), BBH_DESCRIPTION=description, BBH_SAMPLES=samples)
            names.append(name)
        out.write(GROUP_TEMPLATE, f"bbh/{self.lm_eval_name}", BUILTIN=str(folder / "_bbh_cot_fewshot.yaml"),
                  GROUP=self.lm_eval_name, SUBTASKS=names)


def parse_cot_prompt(path: Path) -> tuple[str, list[dict]]:
    """A BBH cot-prompts file -> (description, [{input, target}] x 3).

    After the canary header, paragraphs before the first "Q: " are the task description
    (snarks has two), each "Q: ..." paragraph opens a worked example. lm-eval's built-in
    YAMLs were generated from the same upstream files; the prompt-fidelity test checks that
    both render identically.
    """
    text = path.read_text(encoding="utf-8").split(COT_SEPARATOR)[-1]
    intro: list[str] = []
    shots: list[str] = []
    for block in text.split("\n\n"):
        if block.startswith("Q: "):
            shots.append(block)
        elif shots:
            shots[-1] += "\n\n" + block
        else:
            intro.append(block)
    samples = []
    for shot in shots:
        question, sep, target = shot.partition(COT_ANSWER)
        if not sep or target[:1] not in ("\n", " "):
            raise UserError(f"{path}: a worked example does not look like 'Q: ...\\nA: Let's think step by step.\\n...'")
        samples.append({"input": question[len("Q: "):], "target": target[1:]})
    if len(samples) != 3 or not intro:
        raise UserError(f"{path}: expected a description and 3 worked examples, found {len(samples)} examples")
    return "\n\n".join(intro) + "\n\n", samples
