"""The training loop shared by every variant: read top to bottom to know what a step does.

One call, `train(cfg)`, prepares the data, builds the model with the configured residual
variant, and runs AdamW with warm-up and the mHC paper's step decay. Each step appends a
metrics row; validation rows every `eval_every` steps; a checkpoint every `checkpoint_every`
steps (metrics are flushed with it). `resume=True` continues from the checkpoint with exactly
the same batches, learning rates and optimiser state, so an interrupted run reproduces an
uninterrupted one bit for bit on CPU. A NaN/inf loss ends the run as `diverged`, not a crash.
Ctrl-C or SIGTERM checkpoint at the next step boundary and end it as `stopped`; a full, read-only
or forbidden disk ends it as `failed` with the reason, its last checkpoint whole (every file is
written atomically); a run refused before its first step (too little text, a bad option) leaves
no folder behind.

A step never waits for the device: losses and gradient norms stay device tensors and are read
to the host once every `log_every` steps (and before any validation, diagnostics, checkpoint or
stop, which need the host anyway). The metrics still get a row per step; their step_time_s and
tokens_per_s are the interval's mean per step. A non-finite loss is found at that read, by its
exact step, before anything is checkpointed after it.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core import signals
from harness.core.atomic import write_json
from harness.core.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from harness.core.config import Config, check_world, from_dict
from harness.core.device import autocast_context, resolve_device, to_device
from harness.core.errors import UserError, filesystem_fault, filesystem_fix
from harness.core.run_id import migrate_run_folder
from harness.core.rundir import MetricsLog, RunDir, environment
from harness.train import distributed
from harness.train.diagnostics import DIAGNOSTICS_NAME, capped_summary, diagnostics_rows
from harness.train.fsdp import full
from harness.train.optim import lr_at, make_optimizer
from harness.train.tracking import Tracker, check, diagnostics_scalars, train_scalars
from kernels.backend import set_cpu_kernels


@dataclass
class RunResult:
    status: str  # done | diverged | stopped
    run_dir: Path
    step: int
    train_loss: float | None
    val_loss: float | None
    checkpoint_step: int | None = None  # the step the run's checkpoint holds; None: it has none
    stopped_by: int | None = None  # the signal (SIGINT, SIGTERM) that stopped it, when train() took it itself


# A running run's status.json (step, last train loss) is rewritten at each checkpoint and, between
# them, at most this often (at a host read), so `grid status` and a local grid's progress line follow
# it for one small file write.
STATUS_EVERY_S = 10.0

# Set by a pre-emption / time-limit signal handler (slurm/dispatch.py), or by Ctrl-C / SIGTERM
# (_stop_on_signals): the loop checkpoints and returns "stopped" at the next step boundary, so a
# requeued job or a --resume continues with no step lost.
_STOP = threading.Event()
_stopped_by: int | None = None  # the signal _stop_on_signals took; None when someone else asked


def request_stop() -> None:
    """Ask the running `train()` to checkpoint and stop after its current step (signal-safe)."""
    _STOP.set()


@contextlib.contextmanager
def _stop_on_signals():
    """Ctrl-C (SIGINT) and SIGTERM stop the run cleanly: checkpoint at the next step boundary,
    status "stopped", resumable; rather than dying mid-step with the status left "running". A
    second Ctrl-C interrupts at once (the steps since the last checkpoint are then lost).

    Only signals nobody has claimed are taken: a grid job's (slurm/dispatch.py) own SIGTERM and
    USR2 handlers stop the loop the same way and then requeue, and stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handle(signum, frame):
        global _stopped_by
        if signum == signal.SIGINT and _STOP.is_set():
            raise KeyboardInterrupt
        _stopped_by = _stopped_by or signum
        _STOP.set()
        os.write(2, f"\n{signal.Signals(signum).name}: checkpointing and stopping at the next step boundary"
                    f"{' (Ctrl-C again to stop at once)' if signum == signal.SIGINT else ''}\n".encode())

    previous = {}
    for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is default:
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@dataclass
class _Position:
    """How far a run got, for the status a failure or an interruption leaves behind."""

    step: int = 0
    checkpoint_step: int | None = None
    started: bool = False  # status "running" was written: the run is more than a refused attempt


# ---------------------------------------------------------------------- set-up helpers
def check_same_config(saved: dict, cfg: Config, where: Path) -> None:
    """Refuse to resume a run with a config that would change its numbers."""
    old = from_dict(saved)
    if old.config_hash() != cfg.config_hash():
        a, b = old.to_dict(), cfg.to_dict()
        diffs = [f"{s}.{k}: {a[s][k]!r} -> {b[s][k]!r}" for s in b if isinstance(b[s], dict) for k in b[s] if a[s].get(k) != b[s][k] and s != "run"]
        raise UserError(f"cannot resume {where}: config differs from the saved run ({'; '.join(diffs[:5])})")


@torch.no_grad()
def evaluate(model, batches, cfg: Config, device, autocast) -> float:
    model.eval()
    losses = []
    for i in range(cfg.train.eval_batches):
        x, y = batches.val_batch(i)
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train()
    return sum(losses) / len(losses)


# ---------------------------------------------------------------------- the loop
def train(cfg: Config, resume: bool = False, on_validation=None) -> RunResult:
    """Train the run `cfg` describes (in runs_dir/run_name); with `resume`, continue or reuse it.

    `on_validation(step, val_loss)`, if given, is called after each validation inside the loop;
    returning True checkpoints and stops the run there ("stopped", as train.stop_after does).
    """
    global _stopped_by
    from variants.registry import build_variant

    cfg.validate()
    check(cfg)  # run.tensorboard / run.wandb without their package: refused before any file is written
    build_variant(cfg.variant, cfg.model.d_model, 2 * cfg.model.n_layer)  # option errors before any file is written
    set_cpu_kernels(cfg.train.cpu_kernels)  # =on where they cannot build: refused here, in one line
    dist = distributed.setup(resolve_device(cfg.train.device), cfg.train.parallel)  # a no-op unless WORLD_SIZE > 1
    try:
        check_world(cfg, dist.world)  # what `grid plan`/`grid submit` checked for the resources asked
        return _train_run(cfg, resume, dist, on_validation)
    except OSError as e:  # the data cache or the run folder could not be written at all
        if (fault := filesystem_fault(e)) is None:
            raise
        raise UserError(f"{fault}; {filesystem_fix(e)} (run.runs_dir, data.cache_dir)") from None
    finally:
        dist.close()
        _STOP.clear()
        _stopped_by = None


def _train_run(cfg: Config, resume: bool, dist: distributed.Dist, on_validation=None) -> RunResult:
    from harness.train.data import Batches, prepare

    dist.on_main(lambda: migrate_run_folder(cfg))  # a folder named by the run's legacy id (harness/core/run_id.py)
    run = RunDir(Path(cfg.run.runs_dir) / cfg.run_name(), writer=dist.is_main)
    status = run.read_status()
    if status and not resume:
        raise UserError(f"run {run.path} already exists ({status['status']} at step {status.get('step')}); "
                        "pass --resume to continue or reuse it, or set run.name")
    if status and status["status"] == "done":
        print(f"run {run.path} is already done; nothing to train", file=sys.stderr)
        return _done(run, status, cfg)
    data = prepare(cfg)  # a missing or unreadable corpus fails here, before the run folder exists
    batches = Batches(data, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed)  # so does too little text
    dist.on_main(run.acquire)  # rank 0 holds the lock; the other ranks share its answer
    where = _Position()
    tracker = Tracker()  # TensorBoard / W&B, opened by _train once it knows the starting step
    try:
        status = run.read_status()
        if status and status["status"] == "done":  # finished by another process while we waited
            return _done(run, status, cfg)
        with _stop_on_signals():
            return _train(cfg, run, data, batches, resume and run.checkpoint.exists(), dist, where, tracker, on_validation)
    except KeyboardInterrupt:  # a second Ctrl-C, or one _stop_on_signals could not take
        if not where.started and run.discard():
            raise
        if where.started:  # whatever the step was doing is lost; the checkpoint is whole
            c = where.checkpoint_step
            _record(run, "stopped", step=c or 0, steps=cfg.train.steps,
                    reason=f"interrupted after step {where.step}; --resume continues from "
                           + (f"the checkpoint at step {c}" if c is not None else "the start (no checkpoint yet)"))
        raise
    except Exception as e:
        fault = filesystem_fault(e)
        if not where.started and (fault or isinstance(e, UserError)) and run.discard():
            # refused before its first step, in a folder this call made: nothing is left behind
            if fault:
                raise UserError(f"cannot start run {run.path}: {fault}; {filesystem_fix(e)} (run.runs_dir)") from None
            raise
        if isinstance(e, UserError) and not where.started:
            raise  # e.g. a resume refused for a changed config: the run stays as it was
        unrecorded = _record(run, "failed", step=where.step, steps=cfg.train.steps, checkpoint_step=where.checkpoint_step,
                             error=f"{type(e).__name__}: {fault or e}")
        if fault:
            raise UserError(_fault_message(run, where, e, fault, unrecorded)) from None
        raise  # a bug: its traceback, and no second one from recording it
    finally:
        tracker.close()
        run.release()


def _done(run: RunDir, status: dict, cfg: Config) -> RunResult:
    step = status.get("step", cfg.train.steps)
    return RunResult("done", run.path, step, status.get("train_loss"), status.get("val_loss"),
                     checkpoint_step=step if run.checkpoint.exists() else None)


def _record(run: RunDir, status: str, **fields) -> str | None:
    """Write the run's status, never raising (the disk that failed the run may refuse this too):
    None once written, else why it could not be."""
    try:
        run.write_status(status, **fields)
    except OSError as e:
        return f"{os.strerror(e.errno)} ({errno.errorcode[e.errno]})" if filesystem_fault(e) else f"{type(e).__name__}: {e}"
    return None


def _fault_message(run: RunDir, where: _Position, e: OSError, fault: str, unrecorded: str | None) -> str:
    """The one line a run stopped by its storage ends with: what failed, what is intact, what to do."""
    kept = (f"its checkpoint at step {where.checkpoint_step} is intact" if where.checkpoint_step is not None
            else "it has no checkpoint yet")
    if unrecorded is None:
        status = "status.json says failed"
    else:
        try:
            left = (run.read_status() or {}).get("status")
        except OSError:
            left = None
        status = (f"status.json could not be updated either ({unrecorded})"
                  + (f" and still says {left!r}" + (", which grid status shows as interrupted once this process has exited"
                                                    if left == "running" else "") if left else ""))
    return f"run {run.path} failed after step {where.step}: {fault}; {kept}; {filesystem_fix(e)}, then continue with --resume; {status}"


def _train(cfg: Config, run: RunDir, data, batches, resume: bool, dist: distributed.Dist, where: _Position,
           tracker: Tracker, on_validation=None) -> RunResult:
    from harness.train.model import build_model

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    device = dist.device
    autocast = autocast_context(device, t.dtype)
    torch.manual_seed(t.seed)

    model = dist.place(build_model(cfg, data.tokenizer.vocab_size))  # on the device, or sharded over the ranks (FSDP)
    optimizer = make_optimizer(model, cfg)  # after sharding: it must hold the sharded parameters
    role_groups = model.parameter_groups()
    step, tokens = 0, 0
    if resume:
        state = load_checkpoint(run.checkpoint, map_location="cpu" if dist.sharded else device)
        check_same_config(state["config"], cfg, run.path)
        dist.load_state(model, optimizer, state["model"], state["optimizer"])
        restore_rng(state)
        step, tokens = state["step"], state["tokens"]
        where.step = where.checkpoint_step = step
    if dist.is_main:
        write_json(run.path / "config.json", cfg.to_dict())
        write_json(run.path / "env.json", environment(device) | {"vocab_size": model.vocab_size, "world_size": dist.world,
                                                                 "parallel": dist.parallel if dist.enabled else "none",
                                                                 "n_params": sum(p.numel() for p in model.parameters())})
    metrics = MetricsLog(run.metrics_path, keep_until_step=step if resume else None)
    diagnostics = MetricsLog(run.path / DIAGNOSTICS_NAME, keep_until_step=step if resume else None)
    diag_batch, _ = batches.val_batch(0)  # a fixed batch, so diagnostics are comparable across steps and runs
    step_model = torch.compile(model) if t.compile else model
    train_model = dist.wrap(step_model)  # DDP across the job's processes; step_model itself in one process
    micros = dist.micro_batches(t.grad_accum)  # this rank's share of every step's micro-batches
    run.log(f"{'resuming' if resume else 'training'} {run.path.name} at step {step}/{t.steps}: {cfg.variant.name} "
            f"n={model.variant.n_streams}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, {device}"
            + (f" x {dist.world} processes ({dist.parallel})" if dist.enabled else ""))
    run.write_status("running", step=step, steps=t.steps)
    where.started = True
    if dist.is_main:
        tracker.open(cfg, run.path, step, log=run.log)

    def checkpoint():
        model_state, optim_state = dist.full_state(model, optimizer)  # gathers the shards under FSDP
        if dist.is_main:
            metrics.flush()  # tables first: rows past the checkpoint step are dropped on resume
            diagnostics.flush()
            signals.write(run)
            save_checkpoint(run.checkpoint, step=step, tokens=tokens, model_state=model_state,
                            optimizer_state=optim_state, config=cfg.to_dict(),
                            keep=t.keep_checkpoints, previous_step=where.checkpoint_step)
        where.checkpoint_step = step

    def validate():
        val = evaluate(step_model, batches, cfg, device, autocast)
        metrics.append(step=step, tokens=tokens, split="val", loss=val)
        tracker.log(step, {"val/loss": val})
        return val

    def diagnose():
        with torch.no_grad(), autocast():
            rows = diagnostics_rows(model, diag_batch.to(device), step)
        diagnostics.rows.extend(rows)
        tracker.log(step, diagnostics_scalars(rows))
        if (warning := capped_summary(rows)) is not None:
            run.log(f"warning: step {step}: {warning}")

    if step == 0:
        validate()
        diagnose()
    progress = _progress(cfg, step)
    train_loss, tokens_per_step = None, t.batch_size * t.grad_accum * cfg.model.seq_len
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    pending: list[_Pending] = []  # steps since the last host read; their losses and norms are still on the device

    def read_interval() -> tuple[int, float] | None:
        """The interval's one host read: a metrics row per pending step; (step, loss) of the first
        non-finite loss, if any (the steps after it are not recorded)."""
        nonlocal train_loss
        losses = dist.sum(torch.stack([p.loss for p in pending])) / t.grad_accum  # every rank's micro-batches
        values = torch.cat([losses] + [p.norms for p in pending]).tolist()  # the host sync
        dt = (time.perf_counter() - t0) / len(pending)  # the read waited for the device, so this is its time
        rest = iter(values[len(pending):])
        for p, loss in zip(pending, values[:len(pending)]):
            grad_norm, *group_norms = [next(rest) for _ in range(1 + len(p.norm_names))]
            if not math.isfinite(loss):
                metrics.append(step=p.step, tokens=p.tokens, split="train", loss=loss, lr=p.lr)
                tracker.log(p.step, {"train/loss": loss})
                return p.step, loss
            train_loss = loss
            row = dict(loss=loss, lr=p.lr, grad_norm=grad_norm, step_time_s=dt, tokens_per_s=tokens_per_step / dt,
                       peak_mem_bytes=p.peak_mem_bytes, **{f"grad_norm_{k}": v for k, v in zip(p.norm_names, group_norms)})
            metrics.append(step=p.step, tokens=p.tokens, split="train", **row)
            tracker.log(p.step, train_scalars(row))
        if progress is not None:
            progress.update(len(pending))
            progress.set_postfix(loss=f"{train_loss:.3f}", lr=f"{pending[-1].lr:.2e}")
        pending.clear()
        return None

    def due(every: int) -> bool:
        return bool(every) and step % every == 0

    t0, status_at = time.perf_counter(), time.monotonic()
    while step < t.steps:
        # ---- the step: nothing in here waits for the device
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # float64, as the host sum it replaces
        for micro in micros:
            x, y = batches.train_batch(step, micro)
            with dist.no_sync(train_model, last=micro == micros[-1]):
                with autocast():
                    loss = train_model(to_device(x, device), to_device(y, device))[1]  # the logits are not kept
                (loss / len(micros)).backward()
            loss_sum += loss.detach()
        norm_names, group_norms = dist.grad_norms(role_groups)  # before clipping
        grad_norm = full(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step, tokens = step + 1, tokens + tokens_per_step
        where.step = step
        pending.append(_Pending(step, tokens, lr, loss_sum, torch.cat([grad_norm.reshape(1), group_norms]).double(),
                                norm_names, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_bytes()))

        # ---- host work only at interval boundaries, each starting with the interval's read. Every
        # rank reaches the same boundaries; a single process may also stop at any step when asked.
        stop_now = (t.stop_after and step >= t.stop_after) or (_STOP.is_set() and not dist.enabled)
        if not (due(t.log_every) or due(t.eval_every) or due(t.diag_every) or due(t.checkpoint_every)
                or stop_now or step == t.steps):
            continue
        bad = read_interval()
        if bad is not None:  # found before any checkpoint after it is written: the last good one is kept
            bad_step, bad_loss = bad
            if dist.is_main:
                metrics.flush()
                diagnostics.flush()
                signals.write(run)
            run.write_status("diverged", step=bad_step, steps=t.steps, error=f"loss became {bad_loss} at step {bad_step}",
                             checkpoint_step=where.checkpoint_step)
            kept = where.checkpoint_step
            run.log(f"diverged: loss became {bad_loss} at step {bad_step}; "
                    + (f"the last good checkpoint (step {kept}) is kept" if kept is not None else "no checkpoint was written before it"))
            return RunResult("diverged", run.path, bad_step, bad_loss, None, checkpoint_step=kept)
        halt = False
        if due(t.eval_every) or step == t.steps:
            val = validate()
            run.log(f"step {step}/{t.steps}  train {train_loss:.4f}  val {val:.4f}", echo=progress is None)
            halt = on_validation is not None and bool(on_validation(step, val))
        if due(t.diag_every) or step == t.steps:
            diagnose()
        checkpointing = due(t.checkpoint_every) or step == t.steps
        if checkpointing:
            checkpoint()
        if checkpointing or time.monotonic() - status_at >= STATUS_EVERY_S:
            run.write_status("running", step=step, steps=t.steps, train_loss=train_loss)  # what `grid status` shows
            status_at = time.monotonic()
        preempted = dist.any(_STOP.is_set() or halt)  # all ranks stop at the same step
        if ((t.stop_after and step >= t.stop_after) or preempted) and step < t.steps:
            checkpoint()
            signame = signal.Signals(_stopped_by).name if preempted and _stopped_by and not halt else None
            if halt:
                why = "on_validation"
            elif preempted:
                why = signame or "pre-emption signal"  # a signal train() took itself, or a grid job's
            else:
                why = "train.stop_after"
            run.write_status("stopped", step=step, steps=t.steps, reason=why)
            run.log(f"stopped after step {step} ({why}); continue with --resume")
            return RunResult("stopped", run.path, step, train_loss, None, checkpoint_step=step,
                             stopped_by=_stopped_by if signame else None)
        t0 = time.perf_counter()  # the next interval's clock starts after validation and checkpoints
    if progress is not None:
        progress.close()
    val_loss = metrics.frame().query("split == 'val'")["loss"].iloc[-1]
    run.write_status("done", step=step, steps=t.steps, train_loss=train_loss, val_loss=float(val_loss))
    run.log(f"done: {run.path}  (train {train_loss:.4f}, val {val_loss:.4f})")
    return RunResult("done", run.path, step, train_loss, float(val_loss), checkpoint_step=where.checkpoint_step)


@dataclass
class _Pending:
    """A trained step whose numbers have not been read to the host yet."""

    step: int
    tokens: int
    lr: float
    loss: torch.Tensor  # this rank's sum of micro-batch losses (float64, on the device)
    norms: torch.Tensor  # the clipping norm, then one norm per parameter group (float64, on the device)
    norm_names: list[str]
    peak_mem_bytes: int  # allocator statistics are host-side: reading them does not wait for the device


def _progress(cfg: Config, start: int):
    show = cfg.run.progress == "on" or (cfg.run.progress == "auto" and sys.stderr.isatty())
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.train.steps, initial=start, desc=cfg.run_name(), unit="step", dynamic_ncols=True)


def _rss_bytes() -> int:
    """Peak resident memory of this process (CPU runs have no allocator statistics)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
