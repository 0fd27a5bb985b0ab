"""Evaluation of trained runs with lm-evaluation-harness, and the paper's tables.

    loading.py   a run folder -> model, tokenizer, config (weights-only checkpoint load)
    decode.py    batched greedy decoding with the model's KV cache and a sliding window
    adapter.py   the lm-eval model `mhc-bench` (loglikelihood, rolling, generate_until)
    lm_eval_plugin.py   the start-up hook that puts `mhc-bench` in lm-eval's own CLI
    suites.py    task names users type (paper, bbh, mmlu, ...) -> lm-eval task/group names
    render.py    task YAMLs: lm-eval's built-ins `include:`d, datasets pointed at local files
    hooks.py     `!function` targets of those YAMLs (local file formats -> lm-eval's schema)
    runner.py    `mhc-bench eval`: simple_evaluate on each run -> evals.parquet + samples
    taskset.py   the lm-eval tasks of one call, built once for all its runs
    cache.py     results per (checkpoint, task, limit, shots, ...): reruns score nothing twice
    quiet.py     lm-eval's and the datasets' output -> the run's eval.log, not the console
    results.py   lm-eval's results dict -> tidy, typed rows
    paper.py     the paper's published numbers (Tables 1 and 4)
    table.py     `mhc-bench table`: our runs beside the paper, as Markdown, LaTeX, CSV
    cli.py       `register(subparsers)` adds the `eval`, `table` and `lm-eval-model` sub-commands

lm_eval is imported lazily, inside functions: machines without it (the GPU image) must still
import the rest of mhc-bench.
"""

