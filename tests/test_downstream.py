"""The report's downstream line: which of the paper's benchmarks are at chance, and held-out bits
per byte compared across configurations (harness/analysis/downstream.py)."""

import json
import math
from types import SimpleNamespace

import pandas as pd
import pytest

from harness.analysis.downstream import above_chance, chance_line, heldout_bpb
from harness.eval.results import frame
from harness.eval.suites import SUITES


def _evals(scores: dict[str, tuple[float, float]]):
    rows = []
    for key, (value, stderr) in scores.items():
        s = SUITES[key]
        rows.append({"run": "r", "run_dir": "r", "preset": "tiny", "variant": "mhc", "variant_fixed": "", "n_streams": 4,
                     "seed": 0, "step": 8, "seq_len": 64, "task": key, "subtask": "", "level": "task",
                     "lm_eval_task": s.lm_eval_name, "metric": s.metric, "filter": s.filter, "value": value,
                     "stderr": stderr, "higher_is_better": s.metric != "bits_per_byte", "samples": 20, "num_fewshot": s.shots,
                     "limit": 20, "context_truncated": 1.0, "task_version": "1", "task_hash": "h", "lm_eval_version": "0.4",
                     "device": "cpu", "evaluated_at": "t", "notes": ""})
    return frame(rows)


def _row(label, *scores):
    return SimpleNamespace(label=label, runs=[SimpleNamespace(evals=_evals(s)) for s in scores])


def _bbh_data(tmp_path):
    folder = tmp_path / "bbh" / "bbh"
    folder.mkdir(parents=True)
    (folder / "yes_no.json").write_text(json.dumps({"examples": [{"target": t} for t in ("Yes", "No", "Yes", "No")]}))
    (folder / "three_way.json").write_text(json.dumps({"examples": [{"target": t} for t in ("(A)", "(B)", "(C)")]}))
    return tmp_path


def test_bbh_chance_is_a_uniform_guess_among_each_subtasks_answers_weighted_by_size(tmp_path):
    # yes_no: 4 docs, 2 answers -> 2 expected hits; three_way: 3 docs, 3 answers -> 1: (2 + 1) / 7
    assert SUITES["bbh"].chance_level(_bbh_data(tmp_path)) == pytest.approx(3 / 7)
    assert SUITES["bbh"].chance_level(tmp_path / "missing") is None
    assert SUITES["mmlu"].chance_level(tmp_path) == 0.25 and SUITES["gsm8k"].chance_level(tmp_path) == 0.0
    assert SUITES["wiki"].chance_level(tmp_path) is None  # bits per byte has no chance level


def test_above_chance_needs_two_standard_errors():
    assert not above_chance([0.27, 0.29], [0.02, 0.02], 0.25)  # mean 0.28, 0.28 - 0.04 < 0.25
    assert above_chance([0.31, 0.33], [0.02, 0.02], 0.25)
    assert not above_chance([0.0], [0.0], 0.0)  # nothing right is chance for a free-form answer
    assert above_chance([0.05], [math.nan], 0.0)  # no stderr: the mean alone


def test_the_line_names_the_benchmarks_at_chance_and_those_above_it(tmp_path):
    data = _bbh_data(tmp_path)
    at = {"bbh": (0.10, 0.02), "drop": (0.0, 0.0), "gsm8k": (0.0, 0.0), "mmlu": (0.26, 0.03), "wiki": (3.5, 0.0)}
    line = chance_line([_row("Baseline", at, at), _row("mHC", at)], data)
    assert line.startswith("The paper's benchmarks were scored on 3 of the 3 runs (--limit 20). At chance at this size: "
                           "BBH (chance 42.9%), DROP (chance 0%), GSM8K (chance 0%) and "
                           "MMLU (chance 25%): no configuration's mean score is 2 standard errors above"), line
    assert "Above chance" not in line and line.endswith("Held-out bits per byte is the discriminating metric.")
    lifted = dict(at, mmlu=(0.40, 0.02))
    line = chance_line([_row("Baseline", at), _row("mHC", lifted)], data)
    assert "Above chance: MMLU (chance 25%) in 1 of 2 configurations (mHC)." in line and "and MMLU" not in line, line
    assert chance_line([_row("Baseline", {"wiki": (3.5, 0.0)})], data) is None  # no benchmark of the paper scored


def test_heldout_bits_per_byte_of_a_run_or_nan():
    assert heldout_bpb(SimpleNamespace(evals=_evals({"wiki": (3.25, 0.0)}))) == 3.25
    assert math.isnan(heldout_bpb(SimpleNamespace(evals=_evals({"mmlu": (0.3, 0.01)}))))
    assert math.isnan(heldout_bpb(SimpleNamespace(evals=None)))


def test_a_run_scored_on_every_document_says_so():
    from harness.analysis.downstream import _limit

    assert _limit(pd.NA) == "all documents" and _limit(3) == "--limit 3"
