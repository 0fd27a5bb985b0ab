"""`mhc-bench eval`: score run folders with lm-eval, offline, into `evals.parquet`.

For each run: find which suites already have results for this checkpoint and these settings
(`cache.py`) and reuse them; score the rest with lm-eval's `simple_evaluate` on the live model,
with the tasks built once for all runs of the call (`taskset.py`); keep lm-eval's own results
and per-sample files under `<run>/eval/lm-eval/`, and merge the tidy rows into
`<run>/evals.parquet` (rows of tasks evaluated again are replaced, others kept; the file is
rewritten only when its content changes). For an experiment folder, `<experiment>/evals.parquet`
then gathers every run's rows.

The console shows one line per run, its progress bar and its results; everything lm-eval,
datasets and the other libraries print goes to the run's `eval/eval.log` (`quiet.py`).

    <run>/evals.parquet                one row per (task, subtask, metric, filter)
    <run>/eval/eval.log                third-party output of each evaluation (appended)
    <run>/eval/cache/                  results per (checkpoint, task, limit, shots, ...)
    <run>/eval/tasks/                  the task YAMLs this evaluation used
    <run>/eval/lm-eval/                results_<date>.json, samples_<task>_<date>.jsonl
    <experiment>/eval-cache/hf-datasets/   the Hugging Face datasets cache the runs share (nothing global)
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable

from harness.core.atomic import write_parquet
from harness.core.checkpoint import CHECKPOINT_NAME
from harness.core.device import resolve_device
from harness.core.errors import UserError
from harness.eval import cache
from harness.eval.loading import find_runs, is_run_dir, load_run, read_config
from harness.eval.quiet import console, to_log
from harness.eval.quiet import console as console_stream
from harness.eval.render import default_data_dir
from harness.eval.results import SCHEMA, frame, headline, rows_from_results
from harness.eval.suites import Suite, parse_tasks
from harness.eval.taskset import (
    HF_DATASETS,
    TaskSet,
    lm_eval_index,
    search_path,
    shared_dir,
)

EVALS_NAME = "evals.parquet"
LOG_NAME = "eval.log"


def _printer(stream) -> Callable[[str], None]:
    """Console lines go to the stream that was stderr when the command started (inside an
    evaluation, sys.stderr points at the log file)."""

    def log(msg: str) -> None:
        print(msg, file=stream, flush=True)

    return log


@contextlib.contextmanager
def offline_hf(cache_dir: Path | None):
    """No network for Hugging Face libraries, restored afterwards; with `cache_dir`, no global
    cache either (None keeps the user's cache: lm-eval tasks of the user's may be in it)."""
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        env |= {"HF_DATASETS_CACHE": str(cache_dir), "HF_HOME": str(cache_dir)}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched = []
    for module, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        mod = sys.modules.get(module)  # imported before us: its flags were read from the old env
        if mod is not None and hasattr(mod, attr):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    try:
        yield
    finally:
        for mod, attr, value in patched:
            setattr(mod, attr, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def require_lm_eval() -> None:
    """lm-eval is optional for the rest of mhc-bench (the GPU image lacks it); say so clearly."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise UserError("mhc-bench eval needs lm-evaluation-harness: pip install 'lm-eval>=0.4.13' "
                        "(with -c constraints.txt so torch stays pinned)") from None


def check_options(suites: list[Suite], limit, num_fewshot) -> None:
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise UserError(f"--limit must be a positive number of documents per subtask, got {limit!r}")
    if num_fewshot is not None:
        if num_fewshot < 0:
            raise UserError(f"--num-fewshot must be >= 0, got {num_fewshot}")
        for s in suites:  # a suite's max_shots: the worked examples each of its subtasks ships
            if s.max_shots is not None and num_fewshot > s.max_shots:
                raise UserError(f"--num-fewshot {num_fewshot} is more than the {s.max_shots} worked examples "
                                f"{s.title} ships per subtask")


def run_meta(loaded, limit, device) -> dict:
    import datetime as dt

    cfg = loaded.cfg
    return {
        "run": loaded.run_dir.name, "run_dir": str(loaded.run_dir), "preset": cfg.preset,
        "variant": cfg.variant.name, "variant_fixed": cfg.variant.resolved().get("fixed", ""),
        "n_streams": int(loaded.model.variant.n_streams), "seed": int(cfg.train.seed),
        "step": loaded.step, "seq_len": int(cfg.model.seq_len), "limit": limit, "device": str(device),
        "evaluated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def new_taskset(suites: list[Suite], first_run: Path, data_dir=None, include_path=()):
    """The TaskSet of one call, its datasets cache in the (first) run's experiment folder."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    return TaskSet(suites, data_dir=data_dir, hf_cache=shared_dir(first_run) / HF_DATASETS, include_path=include_path)


def evaluate_run(run_dir: Path, suites: list[Suite], *, data_dir=None, limit: int | None = None,
                 num_fewshot: int | None = None, batch_size: int = 16, device: str = "auto",
                 max_gen_toks: int | None = None, bootstrap_iters: int = 1000, progress: bool = False,
                 lm=None, log: Callable[[str], None] | None = None, taskset=None, include_path=()):
    """Evaluate one run folder; returns its rows (a DataFrame) and merges them into
    <run>/evals.parquet. Suites with cached results for this checkpoint and these settings are
    not scored again. `taskset` shares built tasks between the runs of one call (a fresh one
    otherwise). `lm` replaces the run's model (tests score a fixture model): nothing is then
    read from or written to the cache, which identifies models by their checkpoint."""
    import pandas as pd


    console = console_stream()  # before any redirection: stays on the terminal
    log = log or _printer(console)
    require_lm_eval()
    check_options(suites, limit, num_fewshot)
    run_dir = Path(run_dir).resolve()
    eval_dir = run_dir / "eval"
    cache_dir = eval_dir / cache.CACHE_DIR
    taskset = taskset or new_taskset(suites, run_dir, data_dir, include_path)
    rendered = taskset.render(run_dir, read_config(run_dir), limit)
    definitions = taskset.definitions(rendered)
    keys, rows_by_suite = {}, {}
    if lm is None:
        from lm_eval import __version__ as lm_eval_version


        digest = cache.checkpoint_digest(run_dir / CHECKPOINT_NAME, cache_dir)
        code = cache.code_version()
        for s in suites:
            keys[s.key] = cache.key(checkpoint=digest, task=s.key, definition=definitions[s.key], limit=limit,
                                    num_fewshot=num_fewshot, max_gen_toks=max_gen_toks,
                                    bootstrap_iters=bootstrap_iters, device=resolve_device(device).type,
                                    lm_eval=lm_eval_version, code=code)
            hit = cache.read(cache_dir, s.key, keys[s.key])
            if hit is not None:
                hit["run"], hit["run_dir"] = run_dir.name, str(run_dir)
                rows_by_suite[s.key] = hit
    pending = [s for s in suites if s.key not in rows_by_suite]
    if not pending:
        log(f"eval: {run_dir.name}: already evaluated ({', '.join(s.key for s in suites)}: results cached for this "
            "checkpoint and settings)")
    else:
        if rows_by_suite:
            log(f"eval: {run_dir.name}: reusing cached {', '.join(rows_by_suite)}")
        new = _score(run_dir, pending, taskset, rendered, console=console, log=log, limit=limit,
                     num_fewshot=num_fewshot, batch_size=batch_size, device=device, max_gen_toks=max_gen_toks,
                     bootstrap_iters=bootstrap_iters, progress=progress, lm=lm)
        for s in pending:
            part = new[new["task"] == s.key].reset_index(drop=True)
            rows_by_suite[s.key] = part
            if lm is None and len(part):
                cache.write(cache_dir, s.key, keys[s.key], part)

    rows = frame(pd.concat([rows_by_suite[s.key] for s in suites], ignore_index=True).to_dict("records"))
    merge_evals(run_dir / EVALS_NAME, rows)
    for line in summary(rows, suites):
        log(line)
    return rows


def _score(run_dir: Path, suites: list[Suite], taskset, rendered: Path, *, console, log, limit, num_fewshot,
           batch_size, device, max_gen_toks, bootstrap_iters, progress, lm):
    """Score `suites` on the run with lm-eval; its output goes to <run>/eval/eval.log."""
    from tqdm import tqdm


    eval_dir = run_dir / "eval"
    log_path = eval_dir / LOG_NAME
    loaded = load_run(run_dir, device)
    if loaded.status and loaded.status != "done":
        log(f"eval: note: {run_dir.name} is '{loaded.status}' at step {loaded.step}; evaluating that checkpoint")
    log(f"eval: {run_dir.name} (step {loaded.step}, context {loaded.cfg.model.seq_len} tokens) on "
        f"{', '.join(s.key for s in suites)}" + (f", {limit} documents per subtask" if limit else ""))
    bar = tqdm(total=0, desc=f"  {run_dir.name}", unit="seq", file=console, disable=not progress, leave=True)
    try:
        with to_log(log_path, f"mhc-bench eval {run_dir.name}"), \
                offline_hf(None if any(s.external for s in suites) else taskset.hf_cache):
            from lm_eval import simple_evaluate
            from lm_eval.loggers import EvaluationTracker

            from harness.eval.adapter import MhcBenchLM

            if lm is None:
                lm = MhcBenchLM(model=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                                gen_cap=max_gen_toks, progress=progress, progress_bar=bar)
            objects, owners = taskset.objects(rendered, suites)
            tracker = EvaluationTracker(output_path=str(eval_dir / "lm-eval" / "results.json"))
            results = simple_evaluate(model=lm, tasks=objects, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=taskset.manager(rendered), log_samples=True,
                                      bootstrap_iters=bootstrap_iters, evaluation_tracker=tracker)
            samples = results.pop("samples")
            tracker.general_config_tracker.model_name = f"mhc-bench:{run_dir.name}"
            tracker.save_results_aggregated(results=results, samples=samples)
            for name in results["configs"]:
                tracker.save_results_samples(task_name=name, samples=samples[name])
    except Exception as e:
        if not isinstance(e, UserError):  # a user error is its own one line
            bar.close()
            log(f"eval: {run_dir.name} failed; lm-eval's and the datasets' output is in {log_path}")
        raise
    finally:
        bar.close()
    meta = run_meta(loaded, limit, lm.device)
    return frame(rows_from_results(results, samples, dict(getattr(lm, "stats", {})), meta, owners))


def _same(a, b) -> bool:
    """Whether two evals tables hold the same rows (in any order)."""
    cols = ["task", "subtask", "metric", "filter", "run"]
    if len(a) != len(b) or list(a.columns) != list(b.columns):
        return False
    a = a.sort_values(cols, ignore_index=True)
    b = b.sort_values(cols, ignore_index=True)
    return a.astype(b.dtypes.to_dict()).equals(b)


def write_if_changed(path: Path, rows) -> bool:
    """Write `rows` (atomically) unless the file already holds exactly them; True if written.
    A rerun that reuses every result leaves the tables, and their timestamps, alone."""
    import pandas as pd


    rows = rows[list(SCHEMA)]
    if path.is_file():
        try:
            if _same(pd.read_parquet(path), rows):
                return False
        except Exception:  # unreadable: rewrite it
            pass
    write_parquet(path, rows)
    return True


def merge_evals(path: Path, rows) -> bool:
    """Replace the rows of the tasks just evaluated, keep the others; True if the file changed."""
    import pandas as pd


    if path.is_file():
        old = pd.read_parquet(path)
        old = old[~old["task"].isin(set(rows["task"]))]
        rows = frame(pd.concat([old, rows], ignore_index=True).to_dict("records")) if len(old) else rows
    return write_if_changed(path, rows)


def summary(rows, suites: list[Suite]) -> list[str]:
    """One line per suite: the headline number and what to know about it (an external task's
    first metric at its own level, as lm-eval reports it)."""
    lines = []
    heads = headline(rows)
    for suite in suites:
        if suite.external:
            mine = rows[rows["task"] == suite.key]
            sel = mine[mine["level"] == "task"] if (mine["level"] == "task").any() else mine
        else:
            sel = heads[heads["task"] == suite.key]
        if sel.empty:
            continue
        r = sel.iloc[0]
        metric = f"{r['metric']}/{r['filter']}"
        err = "" if r["stderr"] != r["stderr"] else f" ± {r['stderr'] * suite.scale:.2f}"
        cut = f"; {r['context_truncated']:.0%} of contexts left-truncated to fit {r['seq_len']} tokens" if r["context_truncated"] else ""
        lines.append(f"  {suite.title:<20s} {metric} = {r['value'] * suite.scale:.2f}{err} "
                     f"({r['samples']} docs, {r['num_fewshot']}-shot{cut})")
        if suite.caveat:
            lines.append(f"  {'':<20s} note: {suite.caveat}")
    return lines


def resolve_tasks(tasks: str, include_path=(), first_run: Path | None = None) -> list[Suite]:
    """--tasks -> suites; names that are not ours are looked up among lm-eval's local tasks
    (its index is built only then; its chatter goes to the first run's log)."""

    def lm_eval_names():
        require_lm_eval()

        log_path = (first_run / "eval" / LOG_NAME) if first_run else Path(os.devnull)
        with to_log(log_path, "indexing lm-eval's tasks"):
            return set(lm_eval_index(search_path(include_path)).all_tasks)

    return parse_tasks(tasks, lm_eval_names)


def evaluate(target, tasks: str = "paper", **options):
    """`mhc-bench eval TARGET [TARGET ...]`: run folders, or every run folder of experiments;
    all in one process, so each task is built once for all of them."""
    import pandas as pd


    targets = [Path(t).expanduser().resolve() for t in (target if isinstance(target, (list, tuple)) else [target])]
    runs = list(dict.fromkeys(r for t in targets for r in find_runs(t)))
    include_path = options.pop("include_path", ()) or ()
    for p in include_path:
        if not Path(p).expanduser().is_dir():
            raise UserError(f"--include-path {p}: not a folder (give a folder of lm-eval task YAMLs)")
    suites = resolve_tasks(tasks, include_path, runs[0])
    check_options(suites, options.get("limit"), options.get("num_fewshot"))

    log = options.pop("log", None) or _printer(console())
    taskset = new_taskset(suites, runs[0], options.pop("data_dir", None), include_path)
    frames = []
    for i, run_dir in enumerate(runs, 1):
        if len(runs) > 1:
            log(f"eval: run {i}/{len(runs)}")
        frames.append(evaluate_run(run_dir, suites, log=log, taskset=taskset, **options))
    for t in targets:
        if not is_run_dir(t):
            combined = [pd.read_parquet(r / EVALS_NAME) for r in sorted(p for p in t.iterdir() if (p / EVALS_NAME).is_file())]
            write_if_changed(t / EVALS_NAME, pd.concat(combined, ignore_index=True))
        log(f"evals: {t / EVALS_NAME}")
    return pd.concat(frames, ignore_index=True)
