"""Downstream scores stated honestly: which benchmarks a model this size has not lifted above chance.

The paper's benchmarks (BBH, DROP, GSM8K, MMLU) measure a 27B model; a few-million-parameter
model with a 64-token window scores at their chance level whatever its residual connection, so
a table of them invites reading differences that are noise. The report therefore says in one
line which of them are at chance here and ranks the variants by the held-out bits per byte
(the run's own validation documents), which does move with the model.

"At chance": no configuration's mean score (over its evaluated seeds) exceeds the benchmark's
chance level (harness/eval/suites: Suite.chance_level) by two of lm-eval's standard errors.
The seeds share the documents, so the standard error is the documents' one (the mean of the
runs' stderrs), not divided by the seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

from harness.analysis.table import headline_score
from harness.eval.suites import ALIASES, SUITES

HELDOUT = "wiki"  # the suite of the run's own held-out documents (bits per byte)
STDERRS = 2.0  # a mean this many standard errors above chance is "above chance"


def suite_scores(row, suite) -> tuple[list[float], list[float]]:
    """(values, stderrs) of the row's runs evaluated on `suite` (headline metric)."""
    hits = [h for h in (headline_score(run.evals, suite) for run in row.runs) if h is not None]
    return [float(h["value"]) for h in hits], [float(h["stderr"]) for h in hits]


def heldout_bpb(run) -> float:
    """The run's held-out bits per byte, NaN when it was not evaluated."""
    hit = headline_score(run.evals, SUITES[HELDOUT])
    return float(hit["value"]) if hit is not None else math.nan


def above_chance(values: list[float], stderrs: list[float], chance: float) -> bool:
    """Whether the mean score stands more than STDERRS standard errors above chance."""
    mean = sum(values) / len(values)
    errs = [e for e in stderrs if e == e]
    se = sum(errs) / len(errs) if errs else 0.0
    return mean - STDERRS * se > chance


def chance_line(rows, data: Path) -> str | None:
    """One sentence on the paper's benchmarks this experiment was scored on: which are at chance
    in every configuration, which rise above it where; None when none was run."""
    at, above, unknown = [], [], []
    scored_runs, limits = set(), set()
    for row in rows:
        for run in row.runs:
            for key in ALIASES["paper"]:
                if (hit := headline_score(run.evals, SUITES[key])) is not None:
                    scored_runs.add(id(run))
                    limits.add(_limit(hit["limit"]))
    for key in ALIASES["paper"]:
        suite = SUITES[key]
        scored = [(row, *suite_scores(row, suite)) for row in rows]
        scored = [(row, v, e) for row, v, e in scored if v]
        if not scored:
            continue
        chance = suite.chance_level(data)
        if chance is None:
            unknown.append(suite.title)
            continue
        level = f"{suite.title} (chance {chance * suite.scale:.3g}{'%' if suite.scale == 100 else ''})"
        lifted = [row.label for row, v, e in scored if above_chance(v, e, chance)]
        if lifted:
            above.append(f"{level} in {len(lifted)} of {len(scored)} configurations ({', '.join(lifted)})")
        else:
            at.append(level)
    if not (at or above or unknown):
        return None
    total = sum(len(row.runs) for row in rows)
    parts = [f"The paper's benchmarks were scored on {len(scored_runs)} of the {total} runs ({', '.join(sorted(limits))})."]
    if at:
        parts.append(f"At chance at this size: {_join(at)}: no configuration's mean score is "
                     f"{STDERRS:g} standard errors above the chance level, so these benchmarks cannot rank "
                     "the variants here.")
    if above:
        parts.append(f"Above chance: {_join(above)}.")
    if unknown:
        parts.append(f"No chance level known for {_join(unknown)} (its data folder is missing).")
    parts.append("Held-out bits per byte is the discriminating metric.")
    return " ".join(parts)


def _limit(limit) -> str:
    """evals.parquet's `limit` (Int64, <NA> = every document) as the reader's words."""
    import pandas as pd

    return "all documents" if pd.isna(limit) else f"--limit {int(limit)}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
