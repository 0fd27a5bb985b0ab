"""What an evaluation suite is: one benchmark as the paper reports it, declared in one module.

A suite subclasses `Suite`, sets the class attributes below and defines
`render(self, out)`, which writes its lm-eval task YAMLs through `out`
(harness.eval.render.Renderer: where the data, lm-eval's built-in tasks and the run's held-out
documents are). `@register_suite("key")` (registry.py) makes it one of the names users type.
Everything the rest of mhc-bench knows about a suite is read from these attributes: the
`--tasks` names and aliases, the `--num-fewshot` cap, the headline metric of the tables and
plots, the caveats written into every row, and the paper's Table 4 numbers laid beside ours.

Any other `--tasks` name is an lm-eval task, group or tag the user has locally: it runs as
lm-eval defines it, as an `ExternalSuite` whose rows carry its own metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

PREFIX = "mhc_"  # our lm-eval task names: mhc_bbh_<subtask>, mhc_mmlu_<subject>, mhc_gsm8k, ...

TRUNCATION_NOTE = ("contexts longer than model.seq_len keep their last tokens (left truncation); "
                   "column context_truncated is the share of requests cut")

REQUIRED = ("title", "shots", "metric", "filter", "note")  # what every registered suite must set


class Suite:
    """One benchmark: the class attributes a suite module sets (`key` comes from @register_suite)."""

    key: str  # what users type
    title: str  # column title in tables
    shots: int  # few-shot examples (the paper's count)
    metric: str  # headline metric of the tables
    filter: str  # lm-eval filter of that metric
    note: str  # what a reader of the numbers must know (written into every row)
    scale: float = 1.0  # tables show value * scale (100: percent for the benchmarks)
    caveat: str = ""  # the part `mhc-bench eval` prints beside the number
    max_shots: int | None = None  # --num-fewshot cap: the worked examples each subtask ships
    paper: Mapping[str, float] = MappingProxyType({})  # the paper's Table 4 number (percent) per row label
    aliases: tuple[str, ...] = ()  # --tasks groups: paper (Table 4 columns), ppl (bits per byte), heldout, ...
    groups: tuple[str, ...] = ()  # its subtask names that are lm-eval groups (MMLU's categories)
    uses_heldout: bool = False  # renders the run's own validation documents (harness.eval.heldout)
    order: int = 100  # its place in `all`, in listings and in plots (ties: by key)
    external: bool = False  # an lm-eval task of the user's, not one of ours
    chance: float | None = None  # the headline metric's score of guessing, in its own units; None: no such level

    def chance_level(self, data: Path) -> float | None:
        """What guessing scores on this benchmark's headline metric (before `scale`), so that a
        report can say which scores a model has not lifted above it. `data` is the evaluation
        data folder, for a suite whose level depends on its answers (BBH); None: the metric has
        no chance level (bits per byte) or it cannot be known."""
        return self.chance

    @property
    def lm_eval_name(self) -> str:
        """The task or group simple_evaluate runs (its subtasks are named <this>_<subtask>)."""
        return PREFIX + self.key

    def __repr__(self) -> str:
        return f"<suite {self.key!r}>"


class ExternalSuite(Suite):
    """An lm-eval task/group/tag by its own name, run exactly as lm-eval defines it."""

    external = True
    shots, metric, filter = 0, "", ""

    def __init__(self, name: str):
        self.key = self.title = name
        self.note = f"lm-eval's task {name!r} as lm-eval defines it (its data, prompts, shots and metrics)"

    @property
    def lm_eval_name(self) -> str:
        return self.key
