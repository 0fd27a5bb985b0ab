"""`mhc-bench demo`: the README's main job, the whole harness end to end on a CPU.

    prepare data -> the `smoke` grid on the local executor -> evaluation with a small limit
    -> throughput comparison -> tables, figures and the report

Each stage is the same command a user would type, so the demo is also a tour. Re-running
reuses finished work: the grid skips runs that are done, evaluation reuses the results cached
for each run's checkpoint and the demo's settings, and the benchmark table is kept once written.
All runs are evaluated by one `eval` command, so each task's data is built once, not per run.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness.errors import UserError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SMOKE_GRID = PROJECT_ROOT / "slurm" / "grids" / "smoke.toml"
DEMO_TASKS = "paper,ppl"


def _stage(title: str):
    print(f"\n==> {title}", flush=True)
    return time.perf_counter()


def _done(t0: float) -> None:
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)


def run_demo(args) -> int:
    main = args.cli  # harness/cli.main: every stage is the command a user would type

    runs_dir = args.runs_dir
    exp_name = args.experiment
    exp = Path(runs_dir) / exp_name
    t_all = time.perf_counter()

    t0 = _stage(f"1/5 training the smoke grid ({SMOKE_GRID.relative_to(PROJECT_ROOT)}) on the local executor")
    grid = ["grid", "submit", str(SMOKE_GRID), "--cluster", "local", "--runs-dir", runs_dir, "--experiment", exp_name,
            "--parallel", str(args.parallel)] + [a for o in args.overrides for a in ("--set", o)]
    code = main(grid)
    if code not in (0, 1):  # 1: some run failed; it is recorded and the demo reports the rest
        return code
    _done(t0)

    t0 = _stage(f"2/5 evaluating every run with lm-eval ({DEMO_TASKS}, --limit {args.limit})")
    run_dirs = sorted(p for p in exp.iterdir() if (p / "checkpoint.pt").is_file())
    if not run_dirs:
        raise UserError(f"no trained runs in {exp}; see `mhc-bench grid status {exp}`")
    code = main(["eval", *map(str, run_dirs), "--tasks", DEMO_TASKS, "--limit", str(args.limit), "--max-gen-toks",
                 str(args.max_gen_toks), "--device", "cpu", "--progress", "auto"])
    if code:
        return code
    _done(t0)

    t0 = _stage("3/5 comparing training-step cost (bench model)")
    bench = exp / "bench" / "model.parquet"
    if bench.is_file():
        print(f"    {bench}: already measured")
    else:
        code = main(["bench", "model", "--preset", "tiny", "--variants", "identity,hc,mhc,mhc-lite", "--backends", "torch",
                     "--rounds", str(args.bench_rounds), "--device", "cpu", "--out", str(bench)])
        if code:
            return code
    _done(t0)

    t0 = _stage("4/5 collecting the experiment's tables")
    main(["grid", "collect", str(exp)])
    _done(t0)

    t0 = _stage("5/5 writing the report")
    code = main(["report", str(exp), "--runs-dir", runs_dir])
    _done(t0)
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s; open {exp / 'report' / 'report.html'}")
    return code


def register(sub) -> None:
    p = sub.add_parser("demo", help="the whole harness on a CPU: smoke grid -> eval -> cost -> report (the README's main job)")
    p.add_argument("--runs-dir", default="runs", help="where the experiment goes (default runs)")
    p.add_argument("--experiment", default="demo", help="experiment folder name (default demo)")
    p.add_argument("--limit", type=int, default=3, help="documents per eval subtask (default 3)")
    p.add_argument("--max-gen-toks", type=int, default=32, help="generation budget per answer (default 32)")
    p.add_argument("--bench-rounds", type=int, default=5, help="interleaved timing rounds of bench model (default 5)")
    p.add_argument("--parallel", type=int, default=2, help="runs trained at once (default 2: one per core)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every grid run (e.g. train.steps=10 for a quicker look)")
    p.set_defaults(func=run_demo)
