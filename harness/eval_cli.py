"""The `eval` and `table` sub-commands; `register(subparsers)` adds them to mhc-bench's CLI.

    mhc-bench eval RUN_DIR|EXPERIMENT ... [--tasks paper|all|ppl|bbh,drop,gsm8k,mmlu,wiki,wikitext2|LM_EVAL_TASK]
                   [--include-path DIR] [--limit N] [--num-fewshot K] [--data-dir PATH]
                   [--device auto|cpu|cuda] [--batch-size B] [--max-gen-toks T] [--progress auto|on|off]
    mhc-bench table EXPERIMENT [--layout table4|table1] [--out DIR] [--format md,tex,csv]
    mhc-bench lm-eval-model install|remove [--site-dir DIR]   (`lm_eval --model mhc-bench`)
"""

from __future__ import annotations

import sys

from harness.eval.suites import ALIASES, SUITES
from harness.eval.suites.registry import ALL


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonnegative(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def cmd_eval(args) -> int:
    from harness.eval.runner import evaluate

    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    evaluate(args.target, args.tasks, limit=args.limit, num_fewshot=args.num_fewshot, data_dir=args.data_dir,
             batch_size=args.batch_size, device=args.device, max_gen_toks=args.max_gen_toks,
             bootstrap_iters=args.bootstrap_iters, progress=progress, include_path=args.include_path)
    return 0


def cmd_lm_eval_model(args) -> int:
    from harness.eval.lm_eval_plugin import install, remove

    if args.action == "install":
        print(f"lm_eval --model mhc-bench: start-up hook {install(args.site_dir)}")
    else:
        path = remove(args.site_dir)
        print(f"removed {path}" if path else "no start-up hook was installed")
    return 0


def cmd_table(args) -> int:
    from harness.analysis.table import make_table
    from harness.core.errors import UserError

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("md", "tex", "csv")]
    if bad or not formats:
        raise UserError(f"--format takes a comma-separated subset of md, tex, csv; got {args.format!r}")
    text, written = make_table(args.experiment, args.layout, out_dir=args.out, formats=formats, runs_dir=args.runs_dir)
    print(text, end="")
    for fmt, path in written.items():
        print(f"{fmt}: {path}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    """Add `eval` and `table` to the `mhc-bench` sub-command parser (the suites named in its help
    are the registry's: harness/eval/suites/)."""
    aliases = ", ".join(f"{name} (= {','.join(keys)})" for name, keys in ALIASES.items() if name != ALL)
    shots = ", ".join(f"{s.title} {s.shots}" for s in SUITES.values() if s.paper)
    p = subparsers.add_parser(
        "eval", help="score run checkpoints with lm-eval (BBH, DROP, GSM8K, MMLU, held-out perplexity) into evals.parquet",
        description="Evaluate run folders, or every run folder of experiments, with lm-evaluation-harness "
                    "on the local datasets (no network). Writes <run>/evals.parquet and lm-eval's own "
                    "results and per-sample files under <run>/eval/lm-eval/; lm-eval's and the datasets' "
                    "output goes to <run>/eval/eval.log. Results are cached per checkpoint, task, limit and "
                    "shots: a rerun scores only what changed.")
    p.add_argument("target", nargs="+", metavar="RUN_DIR|EXPERIMENT",
                   help="run folders (config.json + checkpoint.pt) or folders of them; all are scored in one process")
    p.add_argument("--tasks", default="paper",
                   help=f"comma-separated: {aliases}, all, single tasks {', '.join(sorted(SUITES))}, or any lm-eval "
                        "task, group or tag found locally (its data must be on this machine) (default: paper)")
    p.add_argument("--include-path", action="append", default=[], metavar="DIR",
                   help="a folder of your own lm-eval task YAMLs whose tasks --tasks may name (repeatable)")
    p.add_argument("--limit", type=_positive, help="score only the first N documents of each subtask (smoke tests)")
    p.add_argument("--num-fewshot", type=_nonnegative,
                   help=f"override the paper's few-shot counts ({shots}) for every benchmark")
    p.add_argument("--data-dir", help="folder with bbh/, drop/, gsm8k/, mmlu/ (default: ../shared/data/eval); "
                                      "WikiText-2 is read from its sibling corpus/wikitext-2")
    p.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--batch-size", type=_positive, default=16, help="sequences per forward pass (default: 16)")
    p.add_argument("--max-gen-toks", type=_positive,
                   help="cap on generated tokens per answer (default: each task's own, e.g. BBH 1024, else 256)")
    p.add_argument("--bootstrap-iters", type=_nonnegative, default=1000,
                   help="bootstrap resamples for stderrs without a closed form (default: 1000; 0 = none)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto", help="progress bars (default: auto, on a terminal)")
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "table", help="the paper's Table 4 or Table 1 layout with an experiment's runs, as Markdown, LaTeX and CSV",
        description="Lay an experiment's runs out like the mHC paper's Table 4 (benchmarks) or Table 1 "
                    "(validation-loss gaps vs the identity baseline), with the published numbers beside ours.")
    p.add_argument("experiment", metavar="EXPERIMENT", help="a folder of run folders (or one run folder), or its name under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where experiments named by name live (default runs)")
    p.add_argument("--layout", choices=("table4", "table1"), default="table4", help="which paper table (default: table4)")
    p.add_argument("--out", help="folder for <layout>.md/.tex/.csv (default: the experiment folder)")
    p.add_argument("--format", default="md,tex,csv", help="files to write: a subset of md,tex,csv (default: all three)")
    p.set_defaults(func=cmd_table)

    p = subparsers.add_parser(
        "lm-eval-model", help="install the start-up hook that lets lm-eval's own CLI load runs (lm_eval --model mhc-bench)",
        description="lm-eval's CLI knows only models registered before it runs and has no plugin mechanism. "
                    "`install` writes a one-line .pth start-up hook into site-packages (make does this) that "
                    "registers `mhc-bench` when lm-eval loads its registry; then: lm_eval --model mhc-bench "
                    "--model_args run=RUN_DIR --include_path RUN_DIR/eval/tasks --tasks mhc_gsm8k ...")
    p.add_argument("action", choices=("install", "remove"))
    p.add_argument("--site-dir", help="where to write it (default: this interpreter's site-packages)")
    p.set_defaults(func=cmd_lm_eval_model)
