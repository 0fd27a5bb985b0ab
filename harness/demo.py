"""`mhc-bench demo`: the README's main job, the whole harness end to end on a CPU.

    prepare data -> the `demo` grid on the local executor -> evaluation with a small limit
    -> throughput comparison -> tables, figures and the report

The answer it prints is what two minutes on 2 cores can measure (slurm/grids/demo.toml says
why): HC's composite residual gain growing with depth against mHC's 1, and each variant's
training-step cost. The losses of single 100-step runs are seed noise, and it says so.

Each stage is the same command a user would type, so the demo is also a tour. Re-running
reuses finished work: the grid skips runs that are done, evaluation reuses the results cached
for each run's checkpoint and the demo's settings, and the benchmark table is kept once written.
All runs are evaluated by one `eval` command, so each task's data is built once, not per run.
The console gets one line per stage and the results; the commands' own output (what a user
typing them would see) goes to <experiment>/demo.log, whose tail is shown if a stage fails.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from harness import PROJECT_ROOT
from harness.core.errors import UserError

DEMO_GRID = PROJECT_ROOT / "slurm" / "grids" / "demo.toml"
DEMO_TASKS = "paper,ppl"
LOG_TAIL = 15  # lines of the log shown when a stage fails


@contextlib.contextmanager
def _stage(log: Path, title: str):
    """Run one stage with its commands' own output (tables, per-run lines, bars) sent to the
    demo's log, and print one line for it: the console keeps the phases and the results."""
    print(f"{title} ...", end=" ", flush=True)
    t0 = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        f.write(f"\n==> {title}\n")
        f.flush()
        with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    print(f"{time.perf_counter() - t0:.0f} s", flush=True)


def _failed(log: Path, code: int) -> int:
    """A stage's command failed: its last lines and where the rest is."""
    print("failed")
    lines = log.read_text(errors="replace").splitlines()
    print("\n".join(lines[-LOG_TAIL:]))
    print(f"the whole output: {log}")
    return code


def _results(exp: Path) -> None:
    """The answer in a few lines: what was measured (the composite gain against depth, the cost),
    then why the losses are not a comparison."""
    import pandas as pd

    runs = pd.read_parquet(exp / "runs.parquet")
    gain = "signals.amax_fwd_final"
    col = lambda name, default: runs[name] if name in runs else pd.Series(default, index=runs.index)  # noqa: E731
    plain = (col("variant.fixed", "").fillna("") == "") & (col("variant.sk_iters", 20).fillna(20) == 20)
    steps = col("train.steps", 0)
    print("\nmeasured here (one seed): the composite gain of H_res over the whole depth at the end of training "
          "(forward, token mean; 1 = the residual neither grows nor shrinks the signal):")
    for variant, label, why, at in (("hc", "HC ", "unconstrained: grows with depth, as in the paper's Fig. 3", steps == steps.max()),
                                    ("mhc", "mHC", "doubly stochastic: 1 at any depth, by construction", steps == steps.min())):
        sel = runs[(runs["variant.name"] == variant) & plain & at]
        by_depth = sel.groupby("model.n_layer")[gain].mean() if gain in sel and len(sel) else pd.Series(dtype=float)
        cells = "   ".join(f"{int(d)} blocks: {v:.2f}" for d, v in by_depth.items())
        trained = f"{int(sel['train.steps'].iloc[0])} steps" if len(sel) and "train.steps" in sel else ""
        print(f"  {label}  {cells or 'not measured'}   ({trained}; {why})")
    bench = exp / "bench" / "model.parquet"
    if bench.is_file():
        b = pd.read_parquet(bench)
        over = b[(b.metric == "overhead") & (b.variant != "identity")]
        print("training-step time vs identity (tiny preset, this CPU, eager PyTorch): "
              + ", ".join(f"{r.variant} {r.value:+.0%}" for r in over.itertuples()))
    print("final validation losses are in the report, but single 100-step runs differ by seed noise (seeds of one "
          "configuration ended up to 0.7 apart at 400 steps, results/README.md): they are not a comparison here")


def run_demo(args) -> int:
    main = args.cli  # harness/cli.main: every stage is the command a user would type

    runs_dir = args.runs_dir
    exp_name = args.experiment
    exp = Path(runs_dir) / exp_name
    log = exp / "demo.log"
    t_all = time.perf_counter()
    print(f"mhc-bench demo: the demo grid, evaluation, cost and report in {exp} (every command's output: {log})")

    grid = ["grid", "submit", str(DEMO_GRID), "--cluster", "local", "--runs-dir", runs_dir, "--experiment", exp_name,
            "--parallel", str(args.parallel)] + [a for o in args.overrides for a in ("--set", o)]
    with _stage(log, f"1/5 training the demo grid ({DEMO_GRID.relative_to(PROJECT_ROOT)}, 9 runs) on the local executor"):
        code = main(grid)
    if code not in (0, 1):  # 1: some run failed; it is recorded and the demo reports the rest
        return _failed(log, code)

    run_dirs = sorted(p for p in exp.iterdir() if (p / "checkpoint.pt").is_file())
    if not run_dirs:
        raise UserError(f"no trained runs in {exp}; see `mhc-bench grid status {exp}` and {log}")
    with _stage(log, f"2/5 evaluating {len(run_dirs)} runs with lm-eval ({DEMO_TASKS}, --limit {args.limit})"):
        code = main(["eval", *map(str, run_dirs), "--tasks", DEMO_TASKS, "--limit", str(args.limit), "--max-gen-toks",
                     str(args.max_gen_toks), "--device", "cpu", "--progress", "off"])
    if code:
        return _failed(log, code)

    bench = exp / "bench" / "model.parquet"
    with _stage(log, "3/5 comparing training-step cost (bench model)"):
        if bench.is_file():
            print(f"    {bench}: already measured")
        else:
            code = main(["bench", "model", "--preset", "tiny", "--variants", "identity,hc,mhc,mhc-lite", "--backends", "torch",
                         "--rounds", str(args.bench_rounds), "--device", "cpu", "--out", str(bench)])
    if code:
        return _failed(log, code)

    with _stage(log, "4/5 collecting the experiment's tables"):
        code = main(["grid", "collect", str(exp)])
    if code:
        return _failed(log, code)

    with _stage(log, "5/5 writing the report"):
        code = main(["report", str(exp), "--runs-dir", runs_dir])
    if code:
        return _failed(log, code)
    _results(exp)
    print(f"\ndemo finished in {time.perf_counter() - t_all:.0f} s; open {exp / 'report' / 'report.html'}")
    return 0


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
