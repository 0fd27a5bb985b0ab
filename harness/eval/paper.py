"""The mHC paper's published numbers (arXiv 2512.24880 v2), laid beside ours by `table`.

Source: ../shared/notes/SCIENCE.md, "Results to lay beside ours". Table 4 is a 27B MoE trained
on 262B tokens; its number for each benchmark we run lives with that benchmark's suite
(`paper` in harness/eval/suites/<key>.py) and is read from the registry here. Table 1 is the
HC component ablation (final-loss gap vs the baseline, a disabled mapping fixed at
pre = 1/n, post = 1, res = I). Our models are orders of magnitude smaller: the comparison is
about direction and ordering, not absolute values.
"""

from __future__ import annotations

from harness.eval.suites import SUITES

PAPER = "mHC (DeepSeek, arXiv 2512.24880 v2)"
TABLE4_SETTING = "27B MoE (4.14B active), 262B tokens"

# Table 4's columns for the benchmarks we have no suite for, in percent, kept for completeness:
# a suite for one of them moves its column into its module's `paper`.
TABLE4_NOT_RUN: dict[str, dict[str, float]] = {
    "hellaswag": {"Baseline": 73.7, "HC": 74.3, "mHC": 74.7},
    "math": {"Baseline": 22.0, "HC": 26.4, "mHC": 26.0},
    "piqa": {"Baseline": 78.5, "HC": 79.9, "mHC": 80.5},
    "triviaqa": {"Baseline": 54.3, "HC": 56.3, "mHC": 57.6},
}

# Table 1: loss gap vs the baseline, keyed by the set of HC mappings that are learned.
TABLE1: dict[frozenset, float] = {
    frozenset(): 0.0,
    frozenset({"res"}): -0.022,
    frozenset({"res", "pre"}): -0.025,
    frozenset({"res", "pre", "post"}): -0.027,
}


def table4(label: str, suite_key: str) -> float | None:
    """The paper's Table 4 number (percent) of row `label` on a registered suite, or None."""
    suite = SUITES.get(suite_key)
    return suite.paper.get(label) if suite is not None else None


def table4_rows() -> dict[str, dict[str, float]]:
    """The paper's Table 4 as {row label: {suite key: percent}} over the registered suites that
    carry its numbers, rows in the order the suites list them (Baseline, HC, mHC)."""
    rows: dict[str, dict[str, float]] = {}
    for suite in SUITES.values():
        for label, value in suite.paper.items():
            rows.setdefault(label, {})[suite.key] = value
    return rows


def published(suite_key: str) -> bool:
    """Whether the paper's Table 4 has a number for the registered suite `suite_key`."""
    suite = SUITES.get(suite_key)
    return bool(suite is not None and suite.paper)


def table1(variant: str, learned: frozenset) -> float | None:
    """The paper's gap for a row: the baseline (identity), or HC with `learned` mappings."""
    if variant == "identity":
        return TABLE1[frozenset()]
    if variant == "hc" and learned:
        return TABLE1.get(frozenset(learned))
    return None
