"""`mhc-bench eval`: score run folders with lm-eval, offline, into `evals.parquet`.

For each run: load the checkpoint, write the task YAMLs (absolute paths, datasets cache
inside the run folder), run lm-eval's `simple_evaluate` on the live model, keep lm-eval's own
results and per-sample files under `<run>/eval/lm-eval/`, and merge the tidy rows into
`<run>/evals.parquet` (rows of tasks evaluated again are replaced, others kept). For an
experiment folder, `<experiment>/evals.parquet` then gathers every run's rows.

    <run>/evals.parquet                one row per (task, subtask, metric, filter)
    <run>/eval/tasks/                  the task YAMLs this evaluation used
    <run>/eval/lm-eval/                results_<date>.json, samples_<task>_<date>.jsonl
    <run>/eval/hf-cache/               the Hugging Face datasets cache (nothing global)
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from harness.atomic import write_parquet
from harness.errors import UserError
from harness.eval.suites import SUITES, Suite, parse_tasks

EVALS_NAME = "evals.parquet"
MAX_SHOTS = {"bbh": 3, "mmlu": 5}  # the worked examples each subtask ships with


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _DropNoise(logging.Filter):
    """lm-eval warns once per task that uses `custom_dataset` (all 57 MMLU subjects) about a
    command-line option we do not use; the warning says nothing about the results."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


@contextlib.contextmanager
def offline_hf(cache_dir: Path):
    """No network and no global cache for Hugging Face libraries, restored afterwards."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(cache_dir),
           "HF_HOME": str(cache_dir), "TRANSFORMERS_OFFLINE": "1"}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    patched = []
    for module, attr in (("datasets.config", "HF_DATASETS_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("huggingface_hub.constants", "HF_HUB_OFFLINE")):
        mod = sys.modules.get(module)  # imported before us: its flags were read from the old env
        if mod is not None and hasattr(mod, attr):
            patched.append((mod, attr, getattr(mod, attr)))
            setattr(mod, attr, True)
    noise = _DropNoise()
    logging.getLogger("lm_eval.api.task").addFilter(noise)
    try:
        yield
    finally:
        logging.getLogger("lm_eval.api.task").removeFilter(noise)
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
        for s in suites:
            if s.key in MAX_SHOTS and num_fewshot > MAX_SHOTS[s.key]:
                raise UserError(f"--num-fewshot {num_fewshot} is more than the {MAX_SHOTS[s.key]} worked examples "
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


def evaluate_run(run_dir: Path, suites: list[Suite], *, data_dir=None, limit: int | None = None,
                 num_fewshot: int | None = None, batch_size: int = 16, device: str = "auto",
                 max_gen_toks: int | None = None, bootstrap_iters: int = 1000, progress: bool = False,
                 lm=None, log: Callable[[str], None] = _stderr):
    """Evaluate one run folder; returns its new rows (a DataFrame) and merges them into
    <run>/evals.parquet. `lm` replaces the run's model (tests score a fixture model)."""
    from harness.eval.loading import load_run
    from harness.eval.render import default_data_dir, render_tasks
    from harness.eval.results import frame, rows_from_results

    require_lm_eval()
    check_options(suites, limit, num_fewshot)
    run_dir = Path(run_dir).resolve()
    loaded = load_run(run_dir, device)
    if loaded.status and loaded.status != "done":
        log(f"eval: note: {run_dir.name} is '{loaded.status}' at step {loaded.step}; evaluating that checkpoint")
    eval_dir = run_dir / "eval"
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    with offline_hf(eval_dir / "hf-cache"):
        rendered = render_tasks(suites, eval_dir / "tasks", data_dir=data_dir, cache_dir=eval_dir / "hf-cache", cfg=loaded.cfg)
        from lm_eval import simple_evaluate
        from lm_eval.loggers import EvaluationTracker
        from lm_eval.tasks import TaskManager

        from harness.eval.adapter import MhcBenchLM

        if lm is None:
            lm = MhcBenchLM(model=loaded.model, tokenizer=loaded.tokenizer, batch_size=batch_size,
                            gen_cap=max_gen_toks, progress=progress)
        manager = TaskManager(include_path=str(rendered.dir), include_defaults=False)
        tracker = EvaluationTracker(output_path=str(eval_dir / "lm-eval" / "results.json"))
        log(f"eval: {run_dir.name} (step {loaded.step}, context {loaded.cfg.model.seq_len} tokens) on "
            f"{', '.join(s.key for s in suites)}" + (f", {limit} documents per subtask" if limit else ""))
        results = simple_evaluate(model=lm, tasks=[s.lm_eval_name for s in suites], num_fewshot=num_fewshot,
                                  limit=limit, task_manager=manager, log_samples=True,
                                  bootstrap_iters=bootstrap_iters, evaluation_tracker=tracker)
        samples = results.pop("samples")
        tracker.general_config_tracker.model_name = f"mhc-bench:{run_dir.name}"
        tracker.save_results_aggregated(results=results, samples=samples)
        for name in results["configs"]:
            tracker.save_results_samples(task_name=name, samples=samples[name])
    rows = frame(rows_from_results(results, samples, dict(getattr(lm, "stats", {})), run_meta(loaded, limit, lm.device)))
    merge_evals(run_dir / EVALS_NAME, rows)
    for line in summary(rows):
        log(line)
    return rows


def merge_evals(path: Path, rows) -> None:
    """Replace the rows of the tasks just evaluated, keep the others; written atomically."""
    import pandas as pd

    from harness.eval.results import SCHEMA, frame

    if path.is_file():
        old = pd.read_parquet(path)
        old = old[~old["task"].isin(set(rows["task"]))]
        rows = frame(pd.concat([old, rows], ignore_index=True).to_dict("records")) if len(old) else rows
    write_parquet(path, rows[list(SCHEMA)])


def summary(rows) -> list[str]:
    """One line per suite: the headline number and what to know about it."""
    from harness.eval.results import headline

    lines = []
    heads = headline(rows)
    for key in dict.fromkeys(rows["task"]):
        suite = SUITES[key]
        sel = heads[heads["task"] == key]
        if sel.empty:
            continue
        r = sel.iloc[0]
        err = "" if r["stderr"] != r["stderr"] else f" ± {r['stderr'] * suite.scale:.2f}"
        cut = f"; {r['context_truncated']:.0%} of contexts left-truncated to fit {r['seq_len']} tokens" if r["context_truncated"] else ""
        lines.append(f"  {suite.title:<20s} {suite.metric}/{suite.filter} = {r['value'] * suite.scale:.2f}{err} "
                     f"({r['samples']} docs, {r['num_fewshot']}-shot{cut})")
        if suite.caveat:
            lines.append(f"  {'':<20s} note: {suite.caveat}")
    return lines


def evaluate(target, tasks: str = "paper", **options):
    """`mhc-bench eval TARGET`: one run folder, or every run folder of an experiment."""
    import pandas as pd

    from harness.eval.loading import find_runs, is_run_dir

    suites = parse_tasks(tasks)
    check_options(suites, options.get("limit"), options.get("num_fewshot"))
    target = Path(target).expanduser().resolve()
    runs = find_runs(target)
    log = options.get("log", _stderr)
    frames = []
    for i, run_dir in enumerate(runs, 1):
        if len(runs) > 1:
            log(f"eval: run {i}/{len(runs)}")
        frames.append(evaluate_run(run_dir, suites, **options))
    if not is_run_dir(target):
        combined = [pd.read_parquet(r / EVALS_NAME) for r in sorted(p for p in target.iterdir() if (p / EVALS_NAME).is_file())]
        write_parquet(target / EVALS_NAME, pd.concat(combined, ignore_index=True))
        log(f"evals: {target / EVALS_NAME}")
    else:
        log(f"evals: {target / EVALS_NAME}")
    return pd.concat(frames, ignore_index=True)
