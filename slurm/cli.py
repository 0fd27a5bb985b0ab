"""`mhc-bench grid ...` and `mhc-bench sweep`: plan, submit, follow, collect and tune ablation grids.

    mhc-bench grid plan    slurm/grids/smoke.toml                 (the runs and resources; writes nothing)
    mhc-bench grid submit  slurm/grids/smoke.toml                 (local, parallelism 1, waits)
    mhc-bench grid submit  slurm/grids/main.toml --cluster slurm --preset gpt-s --gpus-per-node 1 --time 4:00:00
    mhc-bench grid status  smoke                                  (an experiment name, folder or grid file)
    mhc-bench grid collect smoke                                  (runs.parquet, metrics.parquet, ...)
    mhc-bench sweep        slurm/grids/tune_lr.toml --trials 12   (Optuna, a study per variant arm; `grid tune` is an alias)
    mhc-bench sweep best   slurm/grids/tune_lr.toml               (each arm's best settings as a grid file)

`register(subparsers)` adds the `grid` and `sweep` commands to the main CLI (harness/cli.py). submitit and
optuna are imported only when a command needs them, so `mhc-bench` starts without them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.core.errors import UserError


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="grid file (TOML), e.g. slurm/grids/smoke.toml")
    p.add_argument("--preset", help="replace the grid's preset (e.g. gpt-s on GPUs); the experiment becomes <name>-<preset>")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every run, after the grid's [base] (repeatable)")
    p.add_argument("--experiment", help="experiment (folder) name instead of the grid's name")
    p.add_argument("--runs-dir", help="where experiment folders go (default: runs/)")


def _experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment", metavar="EXPERIMENT", help="experiment name (under --runs-dir), folder, or its grid file")
    p.add_argument("--runs-dir", help="where experiment folders are (default: runs/)")
    p.add_argument("--all", action="store_true", help="also the runs of earlier versions of the grid file")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cluster and resources (override the grid's [slurm] table)")
    g.add_argument("--cluster", choices=("local", "slurm", "debug"), default="local",
                   help="local: subprocesses here (default); slurm: one job array; debug: in this process")
    g.add_argument("--partition")
    g.add_argument("--time", help="time limit per job: minutes or [D-]HH:MM:SS (90 s before it a job checkpoints and requeues itself)")
    g.add_argument("--max-requeues", type=int, metavar="N",
                   help="time-outs after which a run's job may requeue itself (default 10; the next one fails the run, resumable)")
    g.add_argument("--nodes", type=int)
    g.add_argument("--tasks-per-node", type=int, help="processes per node (DDP ranks); default: --gpus-per-node, else 1")
    g.add_argument("--gpus-per-node", type=int)
    g.add_argument("--gpus-per-task", type=int)
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--array-parallelism", "--parallel", dest="array_parallelism", type=int,
                   help="jobs running at once (slurm array throttle; local default 1)")
    g.add_argument("--account")
    g.add_argument("--qos")
    g.add_argument("--constraint")
    g.add_argument("--exclude")
    g.add_argument("--sbatch", action="append", default=[], metavar="KEY[=VALUE]",
                   help="extra #SBATCH option, e.g. --sbatch reservation=abc (repeatable)")
    g.add_argument("--setup", action="append", default=[], metavar="CMD",
                   help="shell line run before the job on the node, e.g. 'module load cuda' (repeatable)")
    e = p.add_argument_group("the estimate of tokens, FLOPs, time and device-hours (slurm/estimate.py)")
    e.add_argument("--gpu", help="GPU kind for an assumed rate when nothing was measured: A100, H100, H200, B200")
    e.add_argument("--mfu", type=float, default=None,
                   help="fraction of the peak rate assumed when nothing was measured (default 0.2 on GPUs, 0.1 on a CPU)")
    e.add_argument("--bench", default="", metavar="PATH",
                   help="a bench model table (or folder of them) to take the rate from (default: the newest under "
                        "<runs-dir>/bench/ and the experiment's bench/ timed on this kind of device)")
    e.add_argument("--calibrate-from", default="", metavar="EXPERIMENT",
                   help="take the rate from an experiment's finished runs (the tokens/s they trained at)")


def _load(args):
    from slurm.grid import load_grid

    return load_grid(args.file, preset=args.preset, overrides=args.overrides, experiment=args.experiment, runs_dir=args.runs_dir)


def _load_kwargs(args) -> dict:
    return {"preset": args.preset, "overrides": args.overrides, "experiment": args.experiment, "runs_dir": args.runs_dir}


def _resources(args, grid, runs=None):
    """The resources asked for (grid's [slurm], then the command line), checked against `runs` (default: the grid's)
    as their jobs would check them, so nothing that would fail in the queue is submitted."""
    from slurm.dispatch import check_request, resources

    sbatch = {}
    for item in args.sbatch:
        key, eq, value = item.partition("=")
        sbatch[key.strip().lstrip("-")] = value if eq else True
    cli = {k: getattr(args, k) for k in ("time", "partition", "nodes", "tasks_per_node", "gpus_per_node", "gpus_per_task",
                                         "cpus_per_task", "mem_gb", "array_parallelism", "account", "qos", "constraint", "exclude",
                                         "max_requeues")}
    cli["sbatch"] = {**grid.slurm.get("sbatch", {}), **sbatch}
    cli["setup"] = list(grid.slurm.get("setup", [])) + list(args.setup)
    res = resources(grid.slurm, cli)
    check_request(grid.runs if runs is None else runs, res, args.cluster)
    return res


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _fmt_count(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def _fmt_loss(x) -> str:
    return "" if x is None else f"{x:.4f}"


def _estimate(args, grid, res, runs):
    """(per-run estimates, the rates' description) for `runs`, refusing a run predicted past the
    requeue cap (one line), or (None, why) where there is no rate to estimate with."""
    from slurm import estimate as est
    from slurm.dispatch import SIGNAL_LEAD_S, requeue_limit
    from slurm.grid import find_experiment

    gpus = (res.gpus_per_node or 0) * res.nodes or (res.gpus_per_task or 0) * res.world
    device = "gpu" if gpus or args.cluster == "slurm" and args.gpu else "cpu"
    mfu = args.mfu if args.mfu is not None else (est.DEFAULT_MFU if device == "gpu" else 0.1)
    est.check_options(args.gpu, mfu)
    calibrated = est.calibration(find_experiment(args.calibrate_from, args.runs_dir).path) if args.calibrate_from else None
    paths = [Path(args.bench)] if args.bench else [grid.exp_dir.parent / "bench", grid.exp_dir / "bench"]
    bench, bench_path = est.newest_bench(paths, device, args.gpu)
    if args.bench and bench is None:
        raise UserError(f"--bench {args.bench}: no bench model table timed on {'a CPU' if device == 'cpu' else args.gpu} there")
    if device == "gpu" and args.gpu is None and bench is None and calibrated is None:
        return None, "no estimate: name the GPU with --gpu (A100, H100, H200, B200), or give --bench / --calibrate-from"
    rates = est.Rates(device, args.gpu, mfu, bench, bench_path, calibrated, args.calibrate_from)
    ests = est.estimate(runs, rates, max(1, gpus) if device == "gpu" else 1)
    lead = SIGNAL_LEAD_S.get(args.cluster, 0)
    cap = requeue_limit(args.cluster, res)
    worst = max(ests, key=lambda e: e.seconds, default=None)
    if worst and res.time and est.requeues(worst.seconds, res.time, lead) > cap:
        raise UserError(f"run {worst.name} is predicted to train for {est.duration(worst.seconds)} ({rates.describe().split(' (')[0]}), "
                        f"more than its {res.time} min limit allows with {cap} requeues: ask for --time "
                        f"{est.time_for(worst.seconds, lead)} (or raise --max-requeues)")
    return ests, rates.describe()


def _print_estimate(args, res, ests, described: str) -> None:
    from harness.train.flops import FORMULA
    from slurm import estimate as est
    from slurm.dispatch import SIGNAL_LEAD_S

    if ests is None:
        print(described)
        return
    rows, totals = est.summary(ests, res.array_parallelism if args.cluster == "local" else None)
    print(f"\nestimate: FLOPs = {FORMULA}; rate {described}")
    print(_table(rows, ["configuration", "runs", "tokens/run", "FLOPs/run", "time/run", "device-h", "rate"]))
    for line in totals:
        print(line)
    lead = SIGNAL_LEAD_S.get(args.cluster, 0)
    late = [e for e in ests if est.requeues(e.seconds, res.time, lead)]
    if late:
        worst = max(late, key=lambda e: e.seconds)
        print(f"requeues: {len(late)} run(s) predicted past the {res.time} min limit (the longest, {worst.name}, "
              f"~{est.duration(worst.seconds)}: {est.requeues(worst.seconds, res.time, lead)} requeue(s)); "
              f"--time {est.time_for(worst.seconds, lead)} avoids them")


# ---------------------------------------------------------------------- commands
def cmd_plan(args) -> int:
    from harness.core.rundir import RunDir
    from slurm.dispatch import SIGNAL_LEAD_S, requeue_limit

    grid = _load(args)
    res = _resources(args, grid)
    rows = []
    for i, r in enumerate(grid.runs):
        c = r.cfg
        status = RunDir(r.path).read_status()
        tokens = c.train.steps * c.train.batch_size * c.train.grad_accum * c.model.seq_len
        swept = ", ".join(f"{k}={v}" for k, v in r.settings.items() if k not in ("preset", "variant.name"))
        rows.append([i, r.name, r.id, c.preset, c.variant.name, c.variant.n_streams or "default", swept,
                     c.train.steps, _fmt_count(tokens), status["status"] if status else "new"])
    print(f"grid:        {grid.path}" + (f"  ({grid.description})" if grid.description else ""))
    print(f"experiment:  {grid.exp_dir}")
    print(_table(rows, ["#", "name", "id", "preset", "variant", "n", "settings", "steps", "tokens", "state"]))
    todo = sum(1 for row in rows if row[-1] not in ("done", "diverged"))
    gpus = (res.gpus_per_node or 0) * res.nodes or (res.gpus_per_task or 0) * res.world
    per_job = (f"{res.nodes} node(s) x {res.tasks} task(s)" + (f", {gpus} GPU(s)" if gpus else "")
               + (f", {res.cpus_per_task} CPU(s)/task" if res.cpus_per_task else "")
               + (f", {res.mem_gb:g} GB" if res.mem_gb else "") + (f", {res.time} min limit" if res.time else ", no time limit set"))
    print(f"\n{len(rows)} runs ({todo} to train); each job: {per_job}")
    if res.time and gpus:
        print(f"budget: at most {todo * res.time * gpus / 60:.1f} GPU-hours per round of jobs ({todo} jobs x {res.time} min x {gpus} GPU; "
              "each requeue of a job is another round for it)")
    if res.time and args.cluster in SIGNAL_LEAD_S:
        print(f"requeue: {SIGNAL_LEAD_S[args.cluster]} s before its {res.time} min limit a job checkpoints and requeues itself, "
              f"at most {requeue_limit(args.cluster, res)} times per job on time-outs; after that its run is failed (resumable)")
    if res.partition or res.account or res.qos:
        print("slurm: " + ", ".join(f"{k}={getattr(res, k)}" for k in ("partition", "account", "qos") if getattr(res, k)))
    _print_estimate(args, res, *_estimate(args, grid, res, grid.runs))
    print("nothing submitted (plan only)")
    return 0


def cmd_submit(args) -> int:
    from slurm.dispatch import (
        Dispatcher,
        ProgressLine,
        freeze_code,
        plan_submission,
        print_outcome,
        progress_line,
    )
    from slurm.experiment import Experiment
    from slurm.grid import select_runs
    from slurm.reuse import copy_run, reusable, source_experiments

    grid = _load(args)
    chosen, others = select_runs(grid.runs, args.only)
    res = _resources(args, grid, chosen)
    if args.cluster != "slurm":  # jobs on this machine: a tracker package it lacks fails them all, so refuse now
        from harness.train.tracking import check

        for run in chosen:
            check(run.cfg)
    exp = Experiment(grid.exp_dir)
    sources = source_experiments(args.reuse_from, args.runs_dir, grid.exp_dir)
    copies = reusable(chosen, sources)
    todo, skipped = plan_submission(exp, [r for r in chosen if r.id not in copies], force=args.force)
    ests, described = _estimate(args, grid, res, todo)  # a run past the requeue cap is refused here, before anything
    exp.register(grid)
    for run in chosen:
        if run.id in copies:
            copy_run(run, copies[run.id])
            skipped.append((run, f"reused: a copy of {copies[run.id].parent.name}/{copies[run.id].name}, finished"))
    if ests:
        from slurm.estimate import save

        save(exp.path, ests, described)
    print(f"experiment:  {exp.path}")
    if others:
        print(f"  not selected by --only: {len(others)} run(s)")
    for run, why in skipped:
        print(f"  skip  {run.name}: {why}")
    if not todo:
        print(f"nothing to submit: all {len(chosen)} {'selected ' if others else ''}runs are done or in progress")
        return 0
    code = freeze_code(exp) if args.cluster != "debug" else None
    if code:
        print(f"code:        {code}")
    dispatcher = Dispatcher(exp, args.cluster, res, code)
    handles = dispatcher.submit(todo, note={"grid_sha": grid.sha})
    if args.cluster == "slurm":
        ids = sorted({str(h.job.job_id).split("_")[0] for h in handles})
        print(f"submitted {len(todo)} run(s) as SLURM job array {', '.join(ids)}"
              + (f" ({len(skipped)} skipped)" if skipped else ""))
        if not args.wait:
            print(f"follow with: mhc-bench grid status {exp.path}")
            return 0
    else:
        print(f"running {len(todo)} run(s) on {args.cluster}" + (f", {dispatcher.parallelism} at a time" if args.cluster == "local" else ""))
    progress = ProgressLine() if args.cluster == "local" else None  # runs and steps done, from their status.json

    def done(h, out):
        if progress:
            progress.clear()
        print_outcome(h, out)

    def tick(finished):
        progress.tick(lambda: progress_line(handles, finished), final=finished == len(handles))

    outcomes = dispatcher.wait(handles, on_done=done, on_tick=tick if progress else None)
    counts = {}
    for o in outcomes:
        counts[o.get("status", "?")] = counts.get(o.get("status", "?"), 0) + 1
    print("finished: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"tables with: mhc-bench grid collect {exp.path}")
    return 1 if counts.get("failed") else 0


def cmd_status(args) -> int:
    from slurm.grid import find_experiment

    exp = find_experiment(args.experiment, args.runs_dir)
    rows = exp.run_rows(all_versions=args.all)
    hidden = len(exp.run_ids(all_versions=True)) - len(rows)
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "config"} for r in rows], indent=2, default=str))
        return 0
    from slurm import estimate as est

    predicted = est.load(exp.path)
    table = []
    for r in rows:
        job = f"{r['job_id']} {r['job_state']}".strip() if r["job_id"] else ""
        err = (r["error"] or "")
        pred = predicted.get(r["run_id"], {}).get("seconds")
        actual = est.actual_seconds(exp.path / r["folder"]) if r["folder"] and (exp.path / r["folder"]).is_dir() else None
        times = f"{est.duration(actual) if actual else '-'} / {est.duration(pred) if pred else '-'}"
        table.append([r["name"], r["state"], f"{r['step']}/{r['steps']}", _fmt_loss(r["train_loss"]), _fmt_loss(r["val_loss"]),
                      times, job, err if len(err) <= 80 else err[:77] + "..."])
    print(f"experiment: {exp.path}")
    print(_table(table, ["run", "state", "steps", "train", "val", "time (actual / predicted)", "job", "error"]))
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    print(", ".join(f"{counts[s]} {s}" for s in sorted(counts, key=lambda s: ("pending running stopped interrupted done diverged failed".split() + [s]).index(s)))
          + (f"  ({hidden} run(s) of earlier versions of the grid not shown; --all shows them)" if hidden else ""))
    return 0


def cmd_collect(args) -> int:
    import pandas as pd

    from slurm.experiment import collect
    from slurm.grid import find_experiment

    exp = find_experiment(args.experiment, args.runs_dir)
    for name, path in collect(exp, all_versions=args.all).items():
        print(f"{name + ':':14s} {path}  ({len(pd.read_parquet(path, columns=['run_id']))} rows)")
    return 0


def cmd_sweep(args) -> int:
    from slurm.sweep import export_best, sweep

    if getattr(args, "action", None) == "best":
        export_best(args.file, storage=args.storage, load_kwargs=_load_kwargs(args), output=args.output)
        return 0
    grid = _load(args)
    res = _resources(args, grid, runs=[])
    trials = args.trials or grid.tune.get("trials")
    ests, described = _estimate(args, grid, res, grid.runs)  # one trial of each arm at the grid's own values
    if ests and trials:
        from slurm.estimate import duration

        per_trial = sum(e.seconds for e in ests)
        print(f"estimate: a trial of every arm (its runs at the grid's base values) trains for {duration(per_trial)} "
              f"({sum(e.device_hours for e in ests):.2f} device-hours); {trials} trials per arm: about "
              f"{sum(e.device_hours for e in ests) * trials:.2f} device-hours; rate {described}")
    elif ests is None:
        print(described)
    sweep(args.file, cluster=args.cluster, res=res, trials=args.trials, parallel=args.trial_parallel,
          storage=args.storage, load_kwargs=_load_kwargs(args), output=args.output)
    return 0


def _sweep_args(q: argparse.ArgumentParser) -> None:
    _grid_args(q)
    _cluster_args(q)
    q.add_argument("--trials", type=int, help="finished trials wanted per arm (default: [tune] trials); reruns continue the studies")
    q.add_argument("--trial-parallel", type=int, help="trials in flight at once, all arms (default: [tune] parallel, else 1)")
    q.add_argument("--storage", metavar="URL", help="Optuna storage: an RDB URL (sqlite:///sweep.db, postgresql://...) "
                                                    "or a journal file (default: <experiment>/optuna.journal)")
    q.add_argument("-o", "--output", metavar="PATH", help="where the best-settings grid goes (default: <experiment>/best.toml)")
    q.set_defaults(func=cmd_sweep)


def register(subparsers) -> None:
    """Add `grid` (plan/submit/status/collect/tune) and `sweep` to the main parser's sub-commands."""
    p = subparsers.add_parser("grid", help="ablation grids: plan, submit (local or SLURM), status, collect, tune",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="grid_command", required=True, metavar="ACTION")

    q = sub.add_parser("plan", help="list a grid's runs and resources (submits and writes nothing)")
    _grid_args(q)
    _cluster_args(q)
    q.set_defaults(func=cmd_plan)

    q = sub.add_parser("submit", help="submit a grid's unfinished runs (skips done ones, resumes stopped ones)")
    _grid_args(q)
    _cluster_args(q)
    q.add_argument("--wait", action="store_true", help="slurm: wait for the jobs and print each outcome (local/debug always wait)")
    q.add_argument("--force", action="store_true", help="submit runs even if a live job of an earlier submission owns them")
    q.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="submit only the runs whose name matches this shell pattern, e.g. 'mhc-lite-*' (repeatable); "
                        "the experiment still holds the whole grid")
    q.add_argument("--reuse-from", action="append", default=[], metavar="EXPERIMENT",
                   help="copy finished runs of the same id (the same config, seed included) from this experiment "
                        "instead of training them again, e.g. the headline grid's identity into table1_deep (repeatable)")
    q.set_defaults(func=cmd_submit)

    q = sub.add_parser("status", help="per-run state of an experiment: pending/running/stopped/done/diverged/failed")
    _experiment_args(q)
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=cmd_status)

    q = sub.add_parser("collect", help="merge the runs' tables into experiment-level Parquet tables")
    _experiment_args(q)
    q.set_defaults(func=cmd_collect)

    q = sub.add_parser("tune", help="the same as `mhc-bench sweep FILE` (Optuna over [tune.params], a study per arm)")
    _sweep_args(q)

    p = subparsers.add_parser("sweep", help="Optuna sweeps: a study per variant arm over the grid's [tune.params]; `sweep best` exports",
                              description="Optuna: one study per variant arm of the grid over its [tune.params], trials dispatched "
                                          "like `grid submit`, pruned on validation loss; ends with (and `sweep best FILE` only does) "
                                          "the export of each arm's best settings as a grid file.")
    p.add_argument("action", nargs="?", choices=("best",), help="best: only export the best settings (no trials run)")
    _sweep_args(p)
