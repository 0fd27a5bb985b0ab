"""Dispatch a grid's runs through submitit: one job per run, one job array per submission.

submitit does the scheduling, the pickling, the array, the polling (`sacct`), the requeue on
time-out or pre-emption and the torch.distributed environment. What is ours:

* `RunJob`, the checkpointable callable. It calls `train(cfg, resume=True)`, which continues
  from the run's checkpoint, or reuses a finished run, and holds the run's lock (two jobs
  never train one run at once: the second reports `locked`). On SLURM's warning signal
  (USR2, `--signal=USR2@90`, sent before the time limit and on pre-emption) or a SIGTERM
  (`scontrol requeue`, node drain) it asks the loop to checkpoint and stop at the next step
  boundary, then hands over to submitit, which calls `checkpoint()` and requeues the job; the
  requeued job resumes at exactly that step, so no optimiser step is lost or repeated.
  submitit requeues a job after at most `max_requeues` time-outs; at the next one the run is
  marked failed with the reason (`RunJob._give_up`) rather than left "stopped" by a job that
  ended FAILED without a word.
* Before anything is queued, `check_request` refuses resources the runs could not use (world
  size vs grad_accum, tasks vs GPUs, memory, a time limit inside the signal's lead).
* What is submitted: runs already done or diverged are skipped, as are runs a live job of an
  earlier submission still owns (pending or running per the scheduler, or holding the lock).
* The code a job runs is frozen at submit time (slurm/snapshot.py).
* `local` runs jobs as subprocesses of this command, `parallelism` at a time (submitit's
  local executor starts everything at once, which on a laptop means all runs fighting for
  the cores); `debug` runs them in this process, one after the other (pdb on an exception).

A failed or diverged run is recorded in its status.json (with the error) and the other jobs of
the array go on: each run is its own array task.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import submitit

import harness
from harness import PROJECT_ROOT
from harness.core.config import check_world, from_dict
from harness.core.errors import UserError
from harness.core.rundir import RunDir, RunLockedError
from harness.train.loop import request_stop, train
from harness.train.model import mlp_hidden
from slurm.experiment import ACTIVE_JOB_STATES, Experiment, is_locked, scheduler_states
from slurm.grid import Run
from slurm.pruning import PruningHook
from slurm.snapshot import freeze

CLUSTERS = ("local", "slurm", "debug")
# How long before its time limit a job gets the warning signal (USR2) and checkpoints: `--signal=USR2@90`
# on SLURM; submitit's local controller sends it 30 s early. A time limit within it would requeue at once.
SIGNAL_LEAD_S = {"slurm": 90, "local": 30}
MAX_REQUEUES = 10  # default of --max-requeues / [slurm] max_requeues
LOCAL_MAX_REQUEUES = 5  # submitit's local controller starts a job at most 6 times, whatever it is told
LOCK_RETRIES = 5  # a `grid status` probe holds a run's lock for microseconds: retry before giving up


# ---------------------------------------------------------------------- the job
class _Preemption:
    """Turn the job's stop signals into a clean stop at the next step boundary.

    submitit installs its own USR2 handler (checkpoint + requeue + exit) when the job starts;
    run from inside a signal handler it would exit in the middle of a step. We keep it, take
    the signal ourselves, let the training loop stop cleanly, then call submitit's handler.
    """

    def __init__(self, env):
        self.env, self.signum, self.previous = env, None, {}

    def __enter__(self):
        if self.env.cluster == "debug" or threading.current_thread() is not threading.main_thread():
            return self  # debug runs in the user's own process: leave its signals alone
        for sig in {self.env._usr_sig(), signal.SIGTERM}:
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum != self.env._usr_sig():  # USR2 (requeue me) wins over a SIGTERM that follows it
            self.signum = signum
        request_stop()

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def hand_over(self) -> None:
        """After the clean stop: submitit checkpoints (RunJob.checkpoint) and requeues; or exit."""
        handler = self.previous.get(self.signum)
        if self.signum == self.env._usr_sig() and callable(handler):
            handler(self.signum, None)  # rank 0: checkpoint() -> scontrol requeue -> sys.exit
        # SIGTERM (scontrol requeue, scancel, drain) or rank > 0: leave without a result, so
        # nobody mistakes this attempt's "stopped" for the run's outcome; SLURM decides what next.
        raise SystemExit(128 + self.signum if self.env.global_rank == 0 else 0)


# Linux hands out outgoing connections' local ports from 32768-60999 (ip_local_port_range); a
# rendezvous port in that range can already be taken by one of them, and init_process_group then
# fails with "address already in use". submitit draws from 20000-60000: we stay below 32768.
MASTER_PORTS = (20000, 32768)


def master_port(job_id: str) -> int:
    """The job's torch.distributed rendezvous port: the same in every task (a hash of the job id,
    nothing random), different for concurrent jobs, outside the kernel's ephemeral range."""
    lo, hi = MASTER_PORTS
    return lo + zlib.crc32(str(job_id).encode()) % (hi - lo)


def _record_refusal(run: RunDir, e: UserError) -> None:
    """Say in the run's status why its job failed, unless train() already has.

    train() records the faults it meets itself (a full disk mid-run: status failed with the step
    and the intact checkpoint's step); overwriting that would lose them. A finished run (done or
    diverged) keeps its outcome: a job that could not reopen it (say, older code meeting a config
    saved by newer code) changes nothing about how it trained. A status that cannot be written (a
    read-only disk) is left as it is: the job's exception still carries the reason."""
    status = run.read_status() or {}
    if (status.get("status") == "failed" and status.get("error")) or status.get("status") in ("done", "diverged"):
        return
    try:
        run.write_status("failed", error=f"UserError: {e}")
    except OSError:
        pass


class RunJob(submitit.helpers.Checkpointable):
    """Train one grid run; requeued by submitit on time-out or pre-emption, resumed exactly."""

    def __init__(self, spec: dict):
        self.spec = spec  # plain data (id, name, folder, config): small to pickle, no code in it

    def __call__(self) -> dict:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # one process per GPU (or CPU task): torch.distributed from SLURM's variables
            os.environ.setdefault("MASTER_PORT", str(master_port(env.job_id)))  # a port the user set wins
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        cfg = from_dict(self.spec["config"])
        if not cfg.train.threads:  # torch would use every core of the node, not the job's share
            cpus = os.environ.get("SLURM_CPUS_PER_TASK") or self.spec.get("threads")
            if cpus:
                cfg.train.threads = int(cpus)  # not part of the run's identity: resume checks still pass
        hook = None
        if self.spec.get("sweep") and env.global_rank == 0:  # an Optuna trial's run: report val loss, maybe prune

            hook = PruningHook(self.spec["sweep"])
        with _Preemption(env) as stop:
            for attempt in range(LOCK_RETRIES):
                try:
                    result = train(cfg, resume=True, on_validation=hook)
                    break
                except RunLockedError as e:
                    if attempt == LOCK_RETRIES - 1:
                        return self._outcome(env, "locked", error=str(e))
                    time.sleep(1.0)
                except UserError as e:  # e.g. the corpus is missing on this node: record it, fail the job
                    if env.global_rank == 0:
                        _record_refusal(RunDir(Path(cfg.run.runs_dir) / cfg.run.name), e)
                    raise
            # any other exception: train() has recorded status "failed" with the error; the job fails
            if result.status == "stopped" and stop.signum is not None:
                try:
                    stop.hand_over()
                except submitit.core.utils.UncompletedJobError as e:  # submitit will not requeue it again
                    if env.global_rank == 0:
                        self._give_up(cfg, result, e)
                    raise
        status = "pruned" if result.status == "stopped" and hook is not None and hook.pruned else result.status
        return self._outcome(env, status, step=result.step, train_loss=result.train_loss, val_loss=result.val_loss)

    def _give_up(self, cfg, result, e: Exception) -> None:
        """The run stopped cleanly but will not be requeued (its time-outs used up its requeues):
        say so in its status, which `grid status`, `grid collect` and a sweep read, instead of
        leaving a "stopped" run that nothing will ever continue."""
        why = str(e).removeprefix("Job not requeued because: ").rstrip(".")
        limit = self.spec.get("max_requeues", MAX_REQUEUES)
        error = (f"not requeued: {why} (max_requeues = {limit}); stopped at step {result.step}/{cfg.train.steps} with a "
                 "checkpoint: `grid submit` again resumes it; a longer --time or a higher --max-requeues lets it finish")
        RunDir(Path(cfg.run.runs_dir) / cfg.run.name).write_status(
            "failed", step=result.step, steps=cfg.train.steps, train_loss=result.train_loss, error=error)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """Requeue this same job: the state to resume from is the run's checkpoint on disk."""
        return submitit.helpers.DelayedSubmission(RunJob(self.spec), *args, **kwargs)

    def _outcome(self, env, status: str, **fields) -> dict:
        return {"run_id": self.spec["id"], "name": self.spec["name"], "status": status, "job_id": env.job_id,
                "rank": env.global_rank, "world_size": env.num_tasks, "code": str(Path(harness.__file__).parent.parent),
                **fields}

    def __repr__(self) -> str:
        return f"RunJob({self.spec['name']}-{self.spec['id']})"


# ---------------------------------------------------------------------- resources
@dataclass
class Resources:
    """What each job asks for. From the grid's [slurm] table, then the command line."""

    time: int | None = None  # minutes
    partition: str | None = None
    nodes: int = 1
    tasks_per_node: int | None = None  # default: one per GPU, else 1
    gpus_per_node: int | None = None
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None  # slurm: array tasks at once; local: jobs at once (default 1)
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    sbatch: dict = field(default_factory=dict)  # extra #SBATCH --key=value
    setup: list = field(default_factory=list)  # shell lines before srun (module load, ...)
    max_requeues: int = MAX_REQUEUES  # time-outs a run's job may requeue itself after; one more fails the run

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or self.gpus_per_node or 1

    @property
    def world(self) -> int:
        return self.nodes * self.tasks

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, {}, [])}


def parse_time(value) -> int:
    """Minutes from 90, "90", "1:30:00", "2-00:00:00" (D-HH:MM:SS) or "30:00" (MM:SS)."""
    if isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    else:
        text = str(value).strip()
        m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
        if not m:
            raise UserError(f"time {value!r} must be minutes or [D-]HH:MM:SS")
        d, a, b, c = m.groups()
        if b is None:  # "90" or "1-12" (days-hours)
            minutes = int(d or 0) * 1440 + (int(a) * 60 if d else int(a))
        elif c is None:  # MM:SS, or D-HH:MM
            minutes = int(d) * 1440 + int(a) * 60 + int(b) if d else int(a) + (1 if int(b) else 0)
        else:
            minutes = int(d or 0) * 1440 + int(a) * 60 + int(b) + (1 if int(c) else 0)
    if minutes <= 0:
        raise UserError(f"time {value!r} must be positive")
    return minutes


def resources(grid_slurm: dict, cli: dict) -> Resources:
    merged = {**grid_slurm, **{k: v for k, v in cli.items() if v not in (None, [], {})}}
    if "time" in merged:
        merged["time"] = parse_time(merged["time"])
    for key in ("nodes", "tasks_per_node", "gpus_per_node", "gpus_per_task", "cpus_per_task", "array_parallelism"):
        if merged.get(key) is not None and merged[key] < 1:
            raise UserError(f"{key.replace('_', '-')} must be at least 1, got {merged[key]}")
    if merged.get("max_requeues") is not None and merged["max_requeues"] < 0:
        raise UserError(f"max-requeues must be 0 or more, got {merged['max_requeues']}")
    return Resources(**merged)


def check_request(runs: list[Run], res: Resources, cluster: str) -> None:
    """Refuse, before anything is queued, resources the jobs could not use; one line naming the run and the fix.

    What a job would find out only after waiting in the queue: its world size against the run's
    micro-batches (`harness.core.config.check_world`, the very check the job makes), processes per
    node against GPUs per node (each process drives one GPU), a time limit inside the warning
    signal's lead (the job would checkpoint and requeue before training a step), and host
    memory below what the model's matrices alone need (SLURM kills a job over --mem-gb).
    """
    if cluster == "local" and res.nodes > 1:
        raise UserError(f"--nodes {res.nodes}: the local cluster is this one machine; use --cluster slurm or --nodes 1")
    lead = SIGNAL_LEAD_S.get(cluster)
    if res.time and lead and res.time * 60 <= lead:
        raise UserError(f"time limit {res.time} min (--time or [slurm] time) is not longer than the {lead} s before it at which "
                        f"a job checkpoints and requeues itself: every job would stop before training; ask for at least {lead // 60 + 1} min")
    gpus = node_gpus(res)
    if gpus and gpus != res.tasks:
        fix = f"--tasks-per-node {gpus}" if res.tasks < gpus else f"--gpus-per-node {res.tasks}"
        raise UserError(f"{res.tasks} process(es) per node with {gpus} GPU(s) per node: each process drives one GPU, so "
                        + (f"{gpus - res.tasks} GPU(s) would sit idle" if res.tasks < gpus else "processes would share a GPU")
                        + f"; ask for {fix}")
    for run in runs:
        try:
            check_world(run.cfg, res.world)
            if gpus and run.cfg.train.device == "cpu":
                raise UserError(f"train.device=cpu but the job asks for {gpus} GPU(s) per node: drop the GPUs or set train.device=auto")
            if cluster == "slurm" and res.mem_gb is not None:
                need = res.tasks * host_gb(run.cfg, on_gpu=bool(gpus) or run.cfg.train.device.startswith("cuda"))
                if res.mem_gb < need:
                    raise UserError(f"--mem-gb {res.mem_gb:g} is below the {need:.2f} GB its {res.tasks} process(es) per node need for "
                                    "the model's matrices alone (fp32 weights; on a CPU also gradients and AdamW state); ask for more")
        except UserError as e:
            raise UserError(f"run {run.name}: {e}") from None


def node_gpus(res: Resources) -> int:
    """GPUs each node of a job gets (0: none asked for)."""
    return res.gpus_per_node or (res.gpus_per_task or 0) * res.tasks


def host_gb(cfg, on_gpu: bool) -> float:
    """A lower bound on one process's host memory, in GB: every process builds the whole model on
    the host in fp32 (harness/train/loop.py, harness/train/fsdp.py); on a CPU it also keeps the gradients and
    AdamW's two moments there. Only the blocks' attention and MLP matrices are counted (the
    embedding's size depends on the tokenizer trained later), so a refusal is never wrong."""
    m = cfg.model
    params = m.n_layer * (4 * m.d_model ** 2 + 3 * m.d_model * mlp_hidden(m))
    return params * 4 * (1 if on_gpu else 4) / 1e9


def requeue_limit(cluster: str, res: Resources) -> int:
    """How many time-outs a job may requeue itself after (submitit's max_num_timeout); the next fails its run."""
    return min(res.max_requeues, LOCAL_MAX_REQUEUES) if cluster == "local" else res.max_requeues


def make_executor(cluster: str, folder: Path, res: Resources):
    """A submitit AutoExecutor for `cluster` with the resources translated to its options."""
    if cluster not in CLUSTERS:
        raise UserError(f"unknown cluster {cluster!r}; choose from {', '.join(CLUSTERS)}")
    if cluster == "slurm" and submitit.SlurmExecutor.affinity() < 0:
        raise UserError("--cluster slurm but there is no `srun` on PATH: run on a SLURM login node, "
                        "start the test cluster (bash slurm/cluster.sh up; export SLURM_CONF=...), or use --cluster local")
    limit = requeue_limit(cluster, res)
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=limit, local_max_num_timeout=limit)
    params = {"name": "mhc-bench", "nodes": res.nodes, "tasks_per_node": res.tasks}
    if res.time:
        params["timeout_min"] = res.time
    elif cluster == "local":
        params["timeout_min"] = 7 * 24 * 60  # submitit's local default is 2 minutes: no limit unless asked
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if getattr(res, key) is not None:
            params[key] = getattr(res, key)
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = SIGNAL_LEAD_S["slurm"]
        for key in ("partition", "gpus_per_task", "account", "qos", "constraint", "exclude", "array_parallelism"):
            if getattr(res, key) is not None:
                params[f"slurm_{key}"] = getattr(res, key)
        if res.sbatch:
            params["slurm_additional_parameters"] = {k.replace("_", "-"): v for k, v in res.sbatch.items()}
        if res.setup:
            params["slurm_setup"] = list(res.setup)
    ex.update_parameters(**params)
    return ex


# ---------------------------------------------------------------------- submitting
@dataclass
class Handle:
    """One submitted run: its job (None while a local run waits for a free slot)."""

    run: Run
    job: object = None
    extra: dict = field(default_factory=dict)  # added to the job's spec (an Optuna trial's study and number)

    def done(self) -> bool:
        return self.job is not None and self.job.done()

    def outcome(self) -> dict:
        """The job's result, or what the run folder says when the job failed or vanished."""
        try:
            out = self.job.results()[0]  # one result per task; rank 0 speaks for the run
            return out if isinstance(out, dict) else {"status": str(out)}
        except Exception as e:  # the job raised: the run's status.json holds the error
            status = RunDir(self.run.path).read_status() or {}
            return {"run_id": self.run.id, "name": self.run.name, "status": status.get("status", "failed"),
                    "step": status.get("step"), "error": status.get("error") or job_error(e)}


def job_error(e: Exception) -> str:
    """The line that says why a job failed, from submitit's message about it.

    Used when the run folder has no error of its own (the job died before training started,
    e.g. joining the process group). submitit wraps the task's traceback, or the tail of its
    error stream, between dashed lines and ends with the log paths: the last line of that
    block is the exception; the log paths say nothing.
    """
    lines = str(e).splitlines()
    cuts = [i for i, line in enumerate(lines) if len(line.strip()) >= 10 and set(line.strip()) == {"-"}]
    block = lines[cuts[0] + 1: cuts[1]] if len(cuts) >= 2 else lines[cuts[0] + 1:] if cuts else lines
    said = [line.strip() for line in block if line.strip()]
    if not said:
        return type(e).__name__
    return said[-1] if cuts else said[0]


@contextlib.contextmanager
def _cwd(path: Path | None):
    """Jobs inherit the working directory they are submitted from: the frozen code."""
    if path is None:
        yield
        return
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class Dispatcher:
    """Submits runs of one experiment to one cluster and follows their jobs."""

    def __init__(self, exp: Experiment, cluster: str, res: Resources, code_dir: Path | None = None):
        self.exp, self.cluster, self.res = exp, cluster, res
        self.code_dir = code_dir
        self.executor = make_executor(cluster, exp.path / "logs" / "%j", res)
        self.parallelism = res.array_parallelism or 1
        self._queue: list[Handle] = []
        self._started: list[Handle] = []

    def submit(self, runs: list[Run], note: dict | None = None, extra: dict | None = None) -> list[Handle]:
        """SLURM: one job array now. local: queued, started by poll(). debug: run when waited on.

        `extra`: run id -> fields added to that run's job spec."""
        handles = [Handle(r, extra=(extra or {}).get(r.id, {})) for r in runs]
        if not handles:
            return handles
        if self.cluster == "local":
            self._queue.extend(handles)
            self.poll()
            return handles
        with _cwd(self.code_dir), self.executor.batch():
            for h in handles:
                h.job = self.executor.submit(RunJob(self._spec(h)))
        self._record(handles, note)
        return handles

    def poll(self) -> None:
        """Start queued local runs while fewer than `parallelism` are running."""
        running = sum(1 for h in self._started if not h.job.done())
        batch = []
        while self._queue and running + len(batch) < self.parallelism:
            batch.append(self._queue.pop(0))
        if batch:
            with _cwd(self.code_dir):
                for h in batch:
                    h.job = self.executor.submit(RunJob(self._spec(h)))
            self._started.extend(batch)
            self._record(batch, None)

    def _spec(self, h: Handle) -> dict:
        """The job's data; local runs sharing this machine split its cores between them."""
        spec = {**h.run.spec(), **h.extra, "max_requeues": requeue_limit(self.cluster, self.res)}
        if self.res.cpus_per_task:
            spec["threads"] = self.res.cpus_per_task
        elif self.cluster == "local" and self.parallelism > 1:
            spec["threads"] = max(1, (os.cpu_count() or 1) // (self.parallelism * self.res.tasks))
        return spec

    def _record(self, handles: list[Handle], note: dict | None) -> None:
        self.exp.record_submission({
            "cluster": self.cluster, "code": str(self.code_dir) if self.code_dir else None,
            "resources": self.res.as_dict(), **(note or {}),
            "jobs": {h.run.id: str(h.job.job_id) for h in handles},
        })

    def wait(self, handles: list[Handle], on_done=None, poll_s: float | None = None, on_tick=None) -> list[dict]:
        """Block until every handle's job ended; `on_done(handle, outcome)` as each finishes,
        `on_tick(finished)` after each poll (the number of handles that have ended)."""
        poll_s = poll_s if poll_s is not None else (0.5 if self.cluster != "slurm" else 5.0)
        pending, outcomes = list(handles), {}
        while pending:
            self.poll()
            for h in list(pending):
                if h.done():
                    outcomes[id(h)] = out = h.outcome()
                    pending.remove(h)
                    if on_done:
                        on_done(h, out)
            if on_tick:
                on_tick(len(handles) - len(pending))
            if pending:
                time.sleep(poll_s)
        return [outcomes[id(h)] for h in handles]


def plan_submission(exp: Experiment, runs: list[Run], force: bool = False) -> tuple[list[Run], list[tuple[Run, str]]]:
    """Split runs into (to submit, [(skipped, why)]): never queue a run that is done or owned."""
    jobs = exp.last_jobs() if exp.exists() else {}
    sched = scheduler_states(exp.path, jobs) if jobs else {}
    todo, skipped = [], []
    for run in runs:
        status = RunDir(run.path).read_status() or {}
        state = status.get("status")
        cluster, job_id = jobs.get(run.id, ("", ""))
        job_state = sched.get(job_id, "").split(" ")[0]
        if state == "done":
            skipped.append((run, f"done at step {status.get('step')}"))
        elif state == "diverged":
            skipped.append((run, f"diverged at step {status.get('step')} (deterministic: resubmitting would diverge again)"))
        elif is_locked(run.path):
            skipped.append((run, "being trained right now (its lock is held)"))
        elif job_state in ACTIVE_JOB_STATES and not force:
            skipped.append((run, f"queued in job {job_id} ({job_state}); --force submits it anyway (its lock still prevents double training)"))
        else:
            todo.append(run)
    return todo, skipped


def freeze_code(exp: Experiment) -> Path:
    return freeze(PROJECT_ROOT, exp.path / "code")


def progress_line(handles: list[Handle], finished: int) -> str:
    """'progress: 2/7 runs, 1300/2800 steps': jobs ended, and steps trained by the submitted runs
    as their status.json files say (written at each checkpoint and every few seconds)."""
    trained = total = 0
    for h in handles:
        status = RunDir(h.run.path).read_status() or {}
        steps = status.get("steps") or h.run.cfg.train.steps
        trained += min(status.get("step") or 0, steps)
        total += steps
    return f"progress: {finished}/{len(handles)} runs, {trained}/{total} steps"


class ProgressLine:
    """One overall progress line while a local grid runs: rewritten in place on a terminal
    (every `tty_s`), else printed as a new line when it changed, at most every `log_s`, so a
    redirected log gets a few lines, not thousands. `text()` is called only when due."""

    def __init__(self, file=None, tty_s: float = 1.0, log_s: float = 30.0):
        import sys

        self.file = file or sys.stdout
        self.tty = self.file.isatty()
        self.every = tty_s if self.tty else log_s
        self.last, self.at, self.shown = "", float("-inf"), False

    def tick(self, text, final: bool = False) -> None:
        if not final and time.monotonic() - self.at < self.every:
            return
        self.at = time.monotonic()
        line = text()
        if self.tty:
            print(f"\r{line}\x1b[K", end="\n" if final else "", file=self.file, flush=True)
            self.shown = not final
        elif line != self.last or final:
            print(line, file=self.file, flush=True)
        self.last = line

    def clear(self) -> None:
        """Before another line is printed: the in-place line goes, and comes back at the next tick."""
        if self.shown:
            print("\r\x1b[K", end="", file=self.file, flush=True)
            self.shown, self.at = False, float("-inf")


def print_outcome(h: Handle, out: dict, file=None) -> None:
    bits = [f"{out.get('status', '?'):9s}", h.run.name]
    if out.get("step") is not None:
        bits.append(f"step {out['step']}")
    if out.get("val_loss") is not None:
        bits.append(f"val {out['val_loss']:.4f}")
    if out.get("error"):
        bits.append(f"error: {out['error']}")
    print("  " + "  ".join(bits), file=file, flush=True)
