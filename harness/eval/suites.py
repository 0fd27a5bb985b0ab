"""The evaluation suites users name (`--tasks paper|bbh,drop,...`) and what each one means.

A suite is one benchmark as the paper reports it: a lm-eval task or group defined by the
YAMLs `render.py` writes, the paper's few-shot count, the headline metric the tables use,
and the caveats the output must state (they are written into every row's `notes`).

Any other name is an lm-eval task, group or tag the user has locally (lm-eval's own, or one
under `--include-path`): it runs as lm-eval defines it, as an `external` suite whose rows
carry its own metrics (our tables lay out only the paper's suites).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

from harness.core.errors import UserError

PREFIX = "mhc_"  # our lm-eval task names: mhc_bbh_<subtask>, mhc_mmlu_<subject>, mhc_gsm8k, ...

TRUNCATION_NOTE = ("contexts longer than model.seq_len keep their last tokens (left truncation); "
                   "column context_truncated is the share of requests cut")


@dataclass(frozen=True)
class Suite:
    key: str  # what users type
    lm_eval_name: str  # the task or group simple_evaluate runs
    title: str  # column title in tables
    shots: int  # few-shot examples (the paper's count)
    metric: str  # headline metric of the tables
    filter: str  # lm-eval filter of that metric
    scale: float  # tables show value * scale (percent for the benchmarks)
    note: str  # what a reader of the numbers must know (written into every row)
    caveat: str = ""  # the part `mhc-bench eval` prints beside the number
    external: bool = False  # an lm-eval task of the user's, not one of ours


def external_suite(name: str) -> Suite:
    """An lm-eval task/group/tag by its own name, run exactly as lm-eval defines it."""
    return Suite(name, name, name, 0, "", "", 1.0,
                 f"lm-eval's task {name!r} as lm-eval defines it (its data, prompts, shots and metrics)", external=True)


SUITES: dict[str, Suite] = {s.key: s for s in (
    Suite("bbh", "mhc_bbh", "BBH", 3, "exact_match", "get-answer", 100.0,
          "BIG-Bench Hard, 27 subtasks, chain-of-thought 3-shot prompts from bbh/cot-prompts, "
          "exact match after lm-eval's 'the answer is' filter, size-weighted mean"),
    Suite("drop", "mhc_drop", "DROP", 3, "f1", "none", 100.0,
          "DROP dev (no train split ships): the 3 few-shot examples come from other passages of "
          "the dev set, never the question's own; accepted answers are the simple-evals flattening "
          "(a multi-span answer is one string); few-shot answers follow a space and '\\n\\n' also "
          "stops generation (lm-eval's DROP YAML is written for 0-shot)",
          "few-shot examples from other dev passages: no DROP train split ships"),
    Suite("gsm8k", "mhc_gsm8k", "GSM8K", 8, "exact_match", "strict-match", 100.0,
          "GSM8K test, 8 few-shot examples from train; 8-shot prompts are far longer than small "
          "models' context and are left-truncated"),
    Suite("mmlu", "mhc_mmlu", "MMLU", 5, "acc", "none", 100.0,
          "MMLU test, 57 subjects, 5-shot from dev, log-likelihood of A/B/C/D, size-weighted accuracy"),
    Suite("wikitext2", "mhc_wikitext2", "WikiText-2", 0, "bits_per_byte", "none", 1.0,
          "WikiText-2 test as shipped (the tokenized release with <unk>, not lm-eval's raw one) "
          "through lm-eval's detokenizer; scored in disjoint windows of model.seq_len tokens",
          "the tokenized WikiText-2 release: not comparable with published WikiText numbers"),
    Suite("wiki", "mhc_wiki", "Held-out text", 0, "bits_per_byte", "none", 1.0,
          "the run's validation documents, never trained on (data.val_files, else the last "
          "data.val_fraction; wiki_48 and wiki_49 of the default Wikipedia corpus), one per article, "
          "row or line; token shards decoded with the run's tokenizer; scored in disjoint windows "
          "of model.seq_len tokens"),
)}

ALIASES: dict[str, tuple[str, ...]] = {
    "paper": ("bbh", "drop", "gsm8k", "mmlu"),  # the paper's Table 4 columns we can run
    "ppl": ("wiki", "wikitext2"),  # held-out perplexity / bits per byte
    "heldout": ("wiki",),  # the run's own validation documents, whatever the corpus
    "all": tuple(SUITES),
}


def parse_tasks(text: str, lm_eval_names: Callable[[], Collection[str]] | None = None) -> list[Suite]:
    """'paper,wiki' -> the suites, in order, each once; unknown names are one clear error.

    A name that is not ours is looked up among `lm_eval_names()` (the tasks, groups and tags
    lm-eval finds locally; asked only when such a name occurs, since indexing them takes
    seconds) and becomes an external suite; without it, or when lm-eval lacks it too, the error
    suggests the closest names of both.
    """
    keys: list[str] = []
    external: dict[str, Suite] = {}
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise UserError(f"--tasks is empty; choose from {', '.join([*ALIASES, *SUITES])}")
    ours = [*ALIASES, *SUITES]
    known: Collection[str] | None = None
    for name in names:
        low = name.lower()
        if low in ALIASES:
            keys += ALIASES[low]
        elif low in SUITES:
            keys.append(low)
        else:
            if known is None and lm_eval_names is not None:
                known = lm_eval_names()
            if known is None or name not in known:
                raise UserError(unknown_task(name, ours, known or ()))
            external[name] = external_suite(name)
            keys.append(name)
    return [SUITES[k] if k in SUITES else external[k] for k in dict.fromkeys(keys)]


def unknown_task(name: str, ours, theirs) -> str:
    """The one-line error for a task name neither we nor lm-eval know, with the closest names."""
    import difflib

    close = difflib.get_close_matches(name.lower(), list(dict.fromkeys([*ours, *theirs])), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    where = (f"mhc-bench's {', '.join(ours)}, or one of the {len(theirs)} lm-eval tasks found locally "
             "(`lm_eval ls tasks`; your own YAMLs with --include-path)") if theirs else f"{', '.join(ours)}"
    return f"unknown task {name!r}{hint}; choose from {where}"


def locate(lm_eval_name: str) -> tuple[Suite, str, str] | None:
    """lm-eval task/group name -> (suite, subtask, level); level is 'task' (the suite's own
    number, subtask ""), 'group' (an intermediate group, e.g. MMLU's stem) or 'subtask'."""
    for suite in SUITES.values():
        base = suite.lm_eval_name
        if lm_eval_name == base:
            return suite, "", "task"
        if lm_eval_name.startswith(base + "_"):
            sub = lm_eval_name[len(base) + 1:]
            level = "group" if suite.key == "mmlu" and sub in MMLU_CATEGORIES else "subtask"
            return suite, sub, level
    return None


MMLU_CATEGORIES = ("stem", "other", "social_sciences", "humanities")
