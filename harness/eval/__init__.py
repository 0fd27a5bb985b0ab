"""Evaluation of trained runs with lm-evaluation-harness, and the paper's tables.

    loading.py   a run folder -> model, tokenizer, config (weights-only checkpoint load)
    decode.py    batched greedy decoding with the model's KV cache and a sliding window
    adapter.py   the lm-eval model `mhc-bench` (loglikelihood, rolling, generate_until)
    lm_eval_plugin.py   the start-up hook that puts `mhc-bench` in lm-eval's own CLI
    suites/      one module per suite (bbh, drop, gsm8k, mmlu, wikitext2, wiki): its task YAML
                 templates, the `!function` hooks they name, shots, metric, caveats and the
                 paper's numbers, registered with @register_suite; the names users type
                 (paper, bbh, mmlu, ...) -> suites
    render.py    writes the suites' task YAMLs: lm-eval's built-ins `include:`d, datasets at local files
    runner.py    `mhc-bench eval`: simple_evaluate on each run -> evals.parquet + samples
    heldout.py   a run's validation documents as JSONL, the `wiki` suite's data
    taskset.py   the lm-eval tasks of one call, built once for all its runs
    cache.py     results per (checkpoint, task, limit, shots, ...): reruns score nothing twice
    quiet.py     lm-eval's and the datasets' output -> the run's eval.log, not the console
    results.py   lm-eval's results dict -> tidy, typed rows
    paper.py     the paper's published numbers: Table 1, and Table 4 as the suites carry it
    export.py    a run's model as a standalone folder (`mhc-bench export`)

(`mhc-bench table` is harness/analysis/table.py; the sub-commands are in harness/eval_cli.py.)

lm_eval is imported lazily, inside functions: machines without it (the GPU image) must still
import the rest of mhc-bench.
"""

