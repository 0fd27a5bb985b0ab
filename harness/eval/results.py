"""lm-eval's results dict -> tidy, typed rows: one per (run, task, subtask, metric, filter).

Everything a reader needs to trust or compare a number travels with it: its stderr, how many
documents it covers, the few-shot count, the `--limit`, the lm-eval version, a hash of the
exact prompts and targets (lm-eval's own task hash), the share of contexts that did not fit
the model's window, and the suite's caveats.
"""

from __future__ import annotations

import math

from harness.eval.suites import SUITES, TRUNCATION_NOTE, locate

# column -> pandas dtype; the Parquet schema of evals.parquet
SCHEMA: dict[str, str] = {
    "run": "string",  # run folder name
    "run_dir": "string",
    "preset": "string",
    "variant": "string",  # variant.name
    "variant_fixed": "string",  # variant.fixed ("" = nothing fixed)
    "n_streams": "int64",
    "seed": "int64",
    "step": "int64",  # optimiser step of the evaluated checkpoint
    "seq_len": "int64",  # the model's context window
    "task": "string",  # suite: bbh, drop, gsm8k, mmlu, wikitext2, wiki
    "subtask": "string",  # "" = the suite's own number (level "task")
    "level": "string",  # task | group | subtask
    "lm_eval_task": "string",  # the lm-eval task or group name
    "metric": "string",
    "filter": "string",
    "value": "float64",
    "stderr": "float64",  # NaN when lm-eval gives none
    "higher_is_better": "bool",
    "samples": "int64",  # documents scored
    "num_fewshot": "int64",
    "limit": "Int64",  # --limit (documents per subtask); <NA> = all
    "context_truncated": "float64",  # share of requests whose context was left-truncated
    "task_version": "string",
    "task_hash": "string",  # lm-eval's hash of the documents, prompts and targets scored
    "lm_eval_version": "string",
    "device": "string",
    "evaluated_at": "string",  # UTC, ISO 8601
    "notes": "string",
}


def task_hashes(samples: dict) -> dict[str, str]:
    """lm-eval's task hash (EvaluationTracker's formula) of each task's logged samples."""
    from lm_eval.utils import hash_string

    return {name: hash_string("".join(s["doc_hash"] + s["prompt_hash"] + s["target_hash"] for s in rows))
            for name, rows in samples.items()}


def _leaves(name: str, group_subtasks: dict) -> list[str]:
    kids = group_subtasks.get(name)
    if not kids:
        return [name]
    return [leaf for kid in kids for leaf in _leaves(kid, group_subtasks)]


def _float(x) -> float:
    try:
        out = float(x)
    except (TypeError, ValueError):  # lm-eval writes "N/A" when it has no stderr
        return math.nan
    return out


def external_locator(owners: dict, group_subtasks: dict) -> dict:
    """lm-eval name -> (suite, subtask, level) for external suites: `owners` maps each object
    lm-eval built for a suite (its task or group, or each task of a tag) to the suite; their
    members below (group_subtasks) are groups or subtasks, named as lm-eval names them."""
    found = {}

    def walk(name, suite):
        kids = group_subtasks.get(name) or []
        level = "task" if name == suite.lm_eval_name else ("group" if kids else "subtask")
        found.setdefault(name, (suite, "" if level == "task" else name, level))
        for kid in kids:
            walk(kid, suite)

    for name, suite in owners.items():
        walk(name, suite)
    return found


def rows_from_results(results: dict, samples: dict, stats: dict, meta: dict, owners: dict | None = None) -> list[dict]:
    """One row per metric and filter of every task and group of our suites in `results`.

    `stats` is the adapter's per-task request/truncation count; `meta` holds the run's
    columns (run, preset, variant, ..., limit, device, evaluated_at); `owners` maps the
    lm-eval objects of external suites to their suite (see external_locator).
    """
    hashes = task_hashes(samples)
    groups = results.get("group_subtasks", {})
    external = external_locator(owners or {}, groups)
    rows = []
    for name, res in results["results"].items():
        found = external.get(name) or locate(name)
        if found is None:
            continue
        suite, subtask, level = found
        leaves = _leaves(name, groups)
        if name in hashes:
            task_hash = hashes[name]
        else:
            from lm_eval.utils import hash_string

            task_hash = hash_string("".join(hashes.get(leaf, "") for leaf in leaves))
        requests = sum(stats.get(leaf, {}).get("requests", 0) for leaf in leaves)
        truncated = sum(stats.get(leaf, {}).get("truncated", 0) for leaf in leaves)
        n_docs = results.get("n-samples", {}).get(name, {}).get("effective")
        if n_docs is None:
            n_docs = sum(results.get("n-samples", {}).get(leaf, {}).get("effective", 0) for leaf in leaves)
        notes = suite.note + ("; " + TRUNCATION_NOTE if truncated else "")
        for key, value in res.items():
            if "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            rows.append({
                **meta,
                "task": suite.key,
                "subtask": subtask,
                "level": level,
                "lm_eval_task": name,
                "metric": metric,
                "filter": filt,
                "value": _float(value),
                "stderr": _float(res.get(f"{metric}_stderr,{filt}")),
                "higher_is_better": bool(results.get("higher_is_better", {}).get(name, {}).get(metric, True)),
                "samples": int(n_docs),
                "num_fewshot": int(results.get("n-shot", {}).get(name, suite.shots) or 0),
                "context_truncated": truncated / requests if requests else 0.0,
                "task_version": str(results.get("versions", {}).get(name, "")),
                "task_hash": task_hash,
                "lm_eval_version": str(results.get("lm_eval_version", "")),
                "notes": notes,
            })
    return rows


def headline(evals):
    """The rows the tables report: each suite's own number in its headline metric and filter
    (BBH exact_match/get-answer, DROP f1, GSM8K exact_match/strict-match, MMLU acc,
    held-out bits_per_byte)."""
    import numpy as np


    wanted = [t in SUITES and SUITES[t].metric == m and SUITES[t].filter == f
              for t, m, f in zip(evals["task"], evals["metric"], evals["filter"])]
    return evals[(evals["level"] == "task").to_numpy() & np.array(wanted, dtype=bool)]


def frame(rows: list[dict]):
    """Rows as a DataFrame with exactly the SCHEMA columns and dtypes."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(SCHEMA))
    return df.astype(SCHEMA)
