"""`mhc-bench` command line: one sub-command per job, all driven by the same typed config.

    mhc-bench train   --preset small --set variant.name=identity [--resume]
    mhc-bench prepare --preset small [--data-dir PATH]
    mhc-bench config  --preset tiny --set model.d_model=128     (print the resolved config)
    mhc-bench variants                                          (list registered variants)
    mhc-bench diagnose RUN_DIR                                  (Amax gains etc. of a checkpoint)
    mhc-bench export RUN_DIR OUT [--force]                      (safetensors weights + config + tokenizer)
    mhc-bench grid plan|submit|status|collect FILE              (ablation grids, local or SLURM)
    mhc-bench sweep FILE / sweep best FILE                      (Optuna per variant; best settings as a grid)
    mhc-bench eval / table / report / publish / bench / demo    (see README.md)

A user error (bad preset, key, type, missing corpus, corrupt checkpoint) or a filesystem fault
(full disk, read-only or forbidden folder) prints one line `mhc-bench: error: ...` and exits with
status 2; a diverged run exits with status 3; a run stopped by Ctrl-C or SIGTERM (checkpointed,
resumable) with 128 + the signal's number, as a shell reports a process a signal ended.
"""

from __future__ import annotations

import argparse
import sys

from harness.core.errors import UserError, filesystem_fault, filesystem_fix

EXIT_USER_ERROR, EXIT_DIVERGED = 2, 3


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="named preset: tiny, small, gpt-s, gpt-m, gpt-l (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.d_model=256 (repeatable; see `mhc-bench config`)")
    p.add_argument("--data-dir", help="your own training data (folder or file of .txt/.jsonl[.gz], .parquet or .bin token shards); same as --set data.corpus=PATH")
    p.add_argument("--runs-dir", help="where run folders go (default: runs/); same as --set run.runs_dir=PATH")


def config_from_args(args):
    from harness.core.config import apply_overrides
    from harness.core.presets import get_preset

    cfg = get_preset(args.preset)
    apply_overrides(cfg, args.overrides)
    if args.data_dir:
        cfg.data.corpus = args.data_dir
        if "data.val_files" not in " ".join(args.overrides):
            cfg.data.val_files = ""  # a user corpus has no wiki_48/49: hold out the last documents
    if args.runs_dir:
        cfg.run.runs_dir = args.runs_dir
    return cfg.validate()


def cmd_train(args) -> int:
    from harness.train.loop import train

    cfg = config_from_args(args)
    result = train(cfg, resume=args.resume)
    print(f"run folder:  {result.run_dir}")
    if (result.run_dir / "metrics.parquet").is_file():
        print(f"metrics:     {result.run_dir / 'metrics.parquet'}")
    if result.checkpoint_step is not None:
        print(f"checkpoint:  {result.run_dir / 'checkpoint.pt'} (step {result.checkpoint_step})")
    else:  # a run that diverged before its first checkpoint has none: never name a file that is not there
        print("checkpoint:  none (the run has not written one)")
    print(f"status:      {result.status} at step {result.step}"
          + (f" (val loss {result.val_loss:.4f})" if result.val_loss is not None else ""))
    if result.stopped_by:  # Ctrl-C or SIGTERM: stopped cleanly, but the caller should know it was asked to
        return 128 + result.stopped_by
    return EXIT_DIVERGED if result.status == "diverged" else 0


def cmd_prepare(args) -> int:
    from harness.train.data import prepare

    data = prepare(config_from_args(args))
    print(f"shards: {data.dir}  (train {len(data.train):,} tokens, val {len(data.val):,} tokens)")
    return 0


def cmd_config(args) -> int:
    from harness.core.config import describe

    print(describe(config_from_args(args)), end="")
    return 0


def cmd_diagnose(args) -> int:
    from pathlib import Path

    from harness.core.rundir import RunDir
    from harness.train.diagnostics import DIAGNOSTICS_NAME, diagnose_run

    run_dir = Path(args.run_dir)
    if not RunDir.is_run(run_dir):
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass a folder under runs/")
    df = diagnose_run(run_dir, batch_index=args.batch, spans=args.spans, device=args.device)
    spans = df[(df.scope == "span") & (df.start == 0) & (df.stat == "token_mean")]
    full = spans[spans.end == spans.end.max()].set_index("metric")["value"]
    print(f"step {int(df.step.iloc[0])}: composite over all {int(spans.end.max()) + 1} sub-layers: "
          f"forward gain {full.get('amax_fwd', float('nan')):.4g}, backward gain {full.get('amax_bwd', float('nan')):.4g}")
    print(f"diagnostics: {run_dir / DIAGNOSTICS_NAME} ({len(df)} rows)")
    return 0


def cmd_export(args) -> int:
    from harness.eval.export import export_run

    out = export_run(args.run_dir, args.out, force=args.force)
    print(f"exported: {out}")
    return 0


def cmd_report(args) -> int:
    from harness.analysis.report import build_report

    path = build_report(args.experiment, args.runs_dir)
    print(f"report: {path}\n        {path.with_suffix('.html')}")
    return 0


def cmd_publish(args) -> int:
    from harness.analysis.report import publish

    print(f"published: {publish(args.experiment, args.runs_dir, args.results_dir)}")
    return 0


def cmd_variants(args) -> int:
    from variants.registry import describe_variants

    print(describe_variants(verbose=args.verbose))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mhc-bench", description="Benchmark and ablation harness for residual-connection variants.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one run")
    add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoint (or reuse it if done)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("prepare", help="tokenize the corpus into cached shards")
    add_config_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("config", help="print the resolved config with each field's doc")
    add_config_args(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("diagnose", help="mixing-matrix diagnostics (Amax gains, stochasticity gaps) of a run's checkpoint")
    p.add_argument("run_dir", help="a run folder, e.g. runs/tiny-mhc-<hash>")
    p.add_argument("--batch", type=int, default=0, help="validation batch to diagnose on (default 0, as during training)")
    p.add_argument("--spans", choices=("paper", "all"), default="paper", help="composite spans: prefixes/suffixes/single layers, or every span")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("export", help="a run's newest checkpoint as a folder of safetensors weights, config.json and tokenizer")
    p.add_argument("run_dir", help="a run folder, e.g. runs/tiny-mhc-<hash>")
    p.add_argument("out", help="the folder to write (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="benchmarks: `bench model` (training-step cost per variant), `bench kernels` (fused ops vs the copy ceiling), "
                                     "`bench data` (loader tokens/s vs a GPU's step)")
    bench = p.add_subparsers(dest="bench_command", required=True, metavar="WHAT")
    from harness.bench.model import register as register_bench_model

    register_bench_model(bench)
    from harness.bench.kernels_cli import register as register_bench_kernels

    register_bench_kernels(bench)
    from harness.bench.data import register as register_bench_data

    register_bench_data(bench)

    p = sub.add_parser("report", help="report.md/.html with tables, significance tests and figures for an experiment")
    p.add_argument("experiment", help="an experiment folder (a folder of run folders) or its name under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where experiments live (default runs)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("publish", help="copy an experiment's report and small tables to results/<experiment>/")
    p.add_argument("experiment", help="an experiment folder or its name under --runs-dir")
    p.add_argument("--runs-dir", default="runs", help="where experiments live (default runs)")
    p.add_argument("--results-dir", default="results", help="destination root (default results)")
    p.set_defaults(func=cmd_publish)

    from harness.demo import register as register_demo
    from harness.eval_cli import register as register_eval
    from slurm.cli import register as register_grid

    register_eval(sub)
    register_grid(sub)
    register_demo(sub)

    p = sub.add_parser("variants", help="list the registered residual variants: description, n range, backends, paper, options")
    p.add_argument("--verbose", action="store_true", help="each option with its documentation")
    p.set_defaults(func=cmd_variants)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.cli = main  # commands made of commands (the demo) run each as a user would, without importing this module
    try:
        return args.func(args)
    except UserError as e:
        print(f"mhc-bench: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as e:  # a full disk, a read-only or forbidden folder: the user's to fix, not a bug
        if (fault := filesystem_fault(e)) is None:
            raise
        print(f"mhc-bench: error: {fault}; {filesystem_fix(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mhc-bench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
