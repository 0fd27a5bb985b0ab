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
from dataclasses import dataclass, field
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
from harness.train.data import Batches, prepare
from harness.train.diagnostics import DIAGNOSTICS_NAME, capped_summary, diagnostics_rows
from harness.train.fsdp import full
from harness.train.model import build_model
from harness.train.optim import lr_at, make_optimizer
from harness.train.tracking import Tracker, check, diagnostics_scalars, train_scalars
from kernels.backend import set_cpu_kernels
from variants.registry import build_variant


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

class _StopRequests:
    """The one way a run ends before train.steps. Whoever asks names a reason: train.stop_after at
    its step, an `on_validation` hook that returns True, Ctrl-C or SIGTERM (_stop_on_signals), a
    grid job's pre-emption or time-limit handler (request_stop, slurm/dispatch.py). The loop then
    checkpoints at the next step boundary and ends "stopped" with that reason, so a requeued job or
    a --resume continues with no step lost. Signal handlers may ask at any moment (signal-safe:
    an Event and a dict insert)."""

    def __init__(self):
        self._event = threading.Event()
        self._asked: dict[str, int | None] = {}  # reason -> the signal number train() took, if one

    def ask(self, reason: str, signum: int | None = None) -> None:
        self._asked.setdefault(reason, signum)
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def asked(self, reason: str) -> bool:
        return reason in self._asked

    def reason(self) -> str | None:
        """The hook's decision first, then a signal or pre-emption, then train.stop_after."""
        others = [r for r in self._asked if r not in ("on_validation", "train.stop_after")]
        for reason in ("on_validation", *others, "train.stop_after"):
            if reason in self._asked:
                return reason
        return None

    def signal_taken(self, reason: str) -> int | None:
        """The signal train() itself took to stop for `reason` (its exit status is 128 + it)."""
        return self._asked.get(reason)

    def clear(self) -> None:
        self._asked.clear()
        self._event.clear()


_STOP = _StopRequests()


def request_stop() -> None:
    """Ask the running `train()` to checkpoint and stop after its current step (signal-safe)."""
    _STOP.ask("pre-emption signal")


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
        if signum == signal.SIGINT and _STOP.is_set():
            raise KeyboardInterrupt
        _STOP.ask(signal.Signals(signum).name, signum)
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


def _train_run(cfg: Config, resume: bool, dist: distributed.Dist, on_validation=None) -> RunResult:
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
    """The loop, top to bottom: a step on the device; at an interval boundary one host read, then
    validation, diagnostics, a checkpoint and the status; the run ends done, diverged or stopped."""
    t = cfg.train
    s = _Session.open(cfg, run, data, batches, resume, dist, where, tracker)
    if s.step == 0:
        s.validate()
        s.diagnose()
    while s.step < t.steps:
        s.train_step()
        if not s.at_boundary():
            continue  # host work only at interval boundaries; nothing above waits for the device
        if (bad := s.read_interval()) is not None:
            return s.diverged(*bad)  # found before any checkpoint after it: the last good one is kept
        last = s.step == t.steps
        if s.due(t.eval_every) or last:
            val = s.validate()
            run.log(f"step {s.step}/{t.steps}  train {s.train_loss:.4f}  val {val:.4f}", echo=s.progress is None)
            if on_validation is not None and on_validation(s.step, val):
                _STOP.ask("on_validation")
        if s.due(t.diag_every) or last:
            s.diagnose()
        s.checkpoint_and_status(s.due(t.checkpoint_every) or last)
        if (why := s.stop_reason()) is not None and not last:
            return s.stopped(why)
        s.restart_clock()  # the next interval's clock starts after validation and checkpoints
    return s.done()


@dataclass
class _Session:
    """A training run in progress: what its steps and boundaries share (model, optimiser, logs,
    position), built once by `open` so the loop above reads as a loop."""

    cfg: Config
    run: RunDir
    batches: object
    dist: distributed.Dist
    where: _Position
    tracker: Tracker
    model: torch.nn.Module
    step_model: torch.nn.Module  # the compiled model when train.compile, else `model`
    train_model: torch.nn.Module  # DDP across the job's processes; step_model in one process
    optimizer: torch.optim.Optimizer
    metrics: MetricsLog
    diagnostics: MetricsLog
    diag_batch: torch.Tensor  # a fixed batch, so diagnostics are comparable across steps and runs
    autocast: object
    step: int
    tokens: int
    progress: object = None
    train_loss: float | None = None
    pending: list = field(default_factory=list)  # _Pending steps since the last host read
    t0: float = field(default_factory=time.perf_counter)
    status_at: float = field(default_factory=time.monotonic)

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def tokens_per_step(self) -> int:
        t = self.cfg.train
        return t.batch_size * t.grad_accum * self.cfg.model.seq_len

    @classmethod
    def open(cls, cfg: Config, run: RunDir, data, batches, resume: bool, dist: distributed.Dist,
             where: _Position, tracker: Tracker) -> _Session:
        """Model, optimiser and logs, restored from the checkpoint when resuming; status "running"."""
        t = cfg.train
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        model = dist.place(build_model(cfg, data.tokenizer.vocab_size))  # on the device, or sharded (FSDP)
        optimizer = make_optimizer(model, cfg)  # after sharding: it must hold the sharded parameters
        step, tokens = 0, 0
        if resume:
            state = load_checkpoint(run.checkpoint, map_location="cpu" if dist.sharded else dist.device)
            check_same_config(state["config"], cfg, run.path)
            dist.load_state(model, optimizer, state["model"], state["optimizer"])
            restore_rng(state)
            step, tokens = state["step"], state["tokens"]
            where.step = where.checkpoint_step = step
        n_params = sum(p.numel() for p in model.parameters())
        if dist.is_main:
            write_json(run.path / "config.json", cfg.to_dict())
            write_json(run.path / "env.json", environment(dist.device) | {
                "vocab_size": model.vocab_size, "world_size": dist.world,
                "parallel": dist.parallel if dist.enabled else "none", "n_params": n_params})
        step_model = torch.compile(model) if t.compile else model
        s = cls(cfg=cfg, run=run, batches=batches, dist=dist, where=where, tracker=tracker, model=model,
                step_model=step_model, train_model=dist.wrap(step_model), optimizer=optimizer,
                metrics=MetricsLog(run.metrics_path, keep_until_step=step if resume else None),
                diagnostics=MetricsLog(run.path / DIAGNOSTICS_NAME, keep_until_step=step if resume else None),
                diag_batch=batches.val_batch(0)[0], autocast=autocast_context(dist.device, t.dtype),
                step=step, tokens=tokens)
        run.log(f"{'resuming' if resume else 'training'} {run.path.name} at step {step}/{t.steps}: {cfg.variant.name} "
                f"n={model.variant.n_streams}, {n_params / 1e6:.2f}M params, {dist.device}"
                + (f" x {dist.world} processes ({dist.parallel})" if dist.enabled else ""))
        run.write_status("running", step=step, steps=t.steps)
        where.started = True
        if dist.is_main:
            tracker.open(cfg, run.path, step, log=run.log)
        s.progress = _progress(cfg, step)
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)
        return s

    # ---------------------------------------------------------------- the step
    def train_step(self) -> None:
        """One optimiser step over this rank's micro-batches; nothing in here waits for the device."""
        cfg, dist, device = self.cfg, self.dist, self.device
        lr = lr_at(self.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)  # float64, as the host sum it replaces
        micros = dist.micro_batches(cfg.train.grad_accum)  # this rank's share of the step's micro-batches
        for micro in micros:
            x, y = self.batches.train_batch(self.step, micro)
            with dist.no_sync(self.train_model, last=micro == micros[-1]):
                with self.autocast():
                    loss = self.train_model(to_device(x, device), to_device(y, device))[1]  # logits not kept
                (loss / len(micros)).backward()
            loss_sum += loss.detach()
        norm_names, group_norms = dist.grad_norms(self.model.parameter_groups())  # before clipping
        grad_norm = full(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip or float("inf")))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step, self.tokens = self.step + 1, self.tokens + self.tokens_per_step
        self.where.step = self.step
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_bytes()
        self.pending.append(_Pending(self.step, self.tokens, lr, loss_sum,
                                     torch.cat([grad_norm.reshape(1), group_norms]).double(), norm_names, peak))

    def due(self, every: int) -> bool:
        return bool(every) and self.step % every == 0

    def at_boundary(self) -> bool:
        """Every rank reaches the same boundaries; a single process also stops at any step when asked."""
        t = self.cfg.train
        if t.stop_after and self.step >= t.stop_after:
            _STOP.ask("train.stop_after")
        return (self.due(t.log_every) or self.due(t.eval_every) or self.due(t.diag_every)
                or self.due(t.checkpoint_every) or self.step == t.steps
                or _STOP.asked("train.stop_after") or (_STOP.is_set() and not self.dist.enabled))

    # ---------------------------------------------------------------- at a boundary
    def read_interval(self) -> tuple[int, float] | None:
        """The interval's one host read: a metrics row per pending step; (step, loss) of the first
        non-finite loss, if any (the steps after it are not recorded)."""
        pending, t = self.pending, self.cfg.train
        losses = self.dist.sum(torch.stack([p.loss for p in pending])) / t.grad_accum  # every rank's micro-batches
        values = torch.cat([losses] + [p.norms for p in pending]).tolist()  # the host sync
        dt = (time.perf_counter() - self.t0) / len(pending)  # the read waited for the device: this is its time
        rest = iter(values[len(pending):])
        for p, loss in zip(pending, values[:len(pending)]):
            grad_norm, *group_norms = [next(rest) for _ in range(1 + len(p.norm_names))]
            if not math.isfinite(loss):
                self.metrics.append(step=p.step, tokens=p.tokens, split="train", loss=loss, lr=p.lr)
                self.tracker.log(p.step, {"train/loss": loss})
                return p.step, loss
            self.train_loss = loss
            row = dict(loss=loss, lr=p.lr, grad_norm=grad_norm, step_time_s=dt, tokens_per_s=self.tokens_per_step / dt,
                       peak_mem_bytes=p.peak_mem_bytes, **{f"grad_norm_{k}": v for k, v in zip(p.norm_names, group_norms)})
            self.metrics.append(step=p.step, tokens=p.tokens, split="train", **row)
            self.tracker.log(p.step, train_scalars(row))
        if self.progress is not None:
            self.progress.update(len(pending))
            self.progress.set_postfix(loss=f"{self.train_loss:.3f}", lr=f"{pending[-1].lr:.2e}")
        pending.clear()
        return None

    def validate(self) -> float:
        val = evaluate(self.step_model, self.batches, self.cfg, self.device, self.autocast)
        self.metrics.append(step=self.step, tokens=self.tokens, split="val", loss=val)
        self.tracker.log(self.step, {"val/loss": val})
        return val

    def diagnose(self) -> None:
        with torch.no_grad(), self.autocast():
            rows = diagnostics_rows(self.model, self.diag_batch.to(self.device), self.step)
        self.diagnostics.rows.extend(rows)
        self.tracker.log(self.step, diagnostics_scalars(rows))
        if (warning := capped_summary(rows)) is not None:
            self.run.log(f"warning: step {self.step}: {warning}")

    def flush_tables(self) -> None:
        """Metrics, diagnostics and signals to disk (tables first: rows past a checkpoint are dropped on resume)."""
        if self.dist.is_main:
            self.metrics.flush()
            self.diagnostics.flush()
            signals.write(self.run)

    def checkpoint(self) -> None:
        model_state, optim_state = self.dist.full_state(self.model, self.optimizer)  # gathers the shards under FSDP
        if self.dist.is_main:
            self.flush_tables()
            save_checkpoint(self.run.checkpoint, step=self.step, tokens=self.tokens, model_state=model_state,
                            optimizer_state=optim_state, config=self.cfg.to_dict(),
                            keep=self.cfg.train.keep_checkpoints, previous_step=self.where.checkpoint_step)
        self.where.checkpoint_step = self.step

    def checkpoint_and_status(self, checkpointing: bool) -> None:
        if checkpointing:
            self.checkpoint()
        if checkpointing or time.monotonic() - self.status_at >= STATUS_EVERY_S:  # what `grid status` shows
            self.run.write_status("running", step=self.step, steps=self.cfg.train.steps, train_loss=self.train_loss)
            self.status_at = time.monotonic()

    def stop_reason(self) -> str | None:
        """Why the run stops here, the same answer on every rank; None: it goes on."""
        if not self.dist.any(_STOP.is_set()):
            return None
        return _STOP.reason() or "pre-emption signal"  # another rank's signal: this one was asked through it

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    # ---------------------------------------------------------------- how it ends
    def diverged(self, bad_step: int, bad_loss: float) -> RunResult:
        self.flush_tables()
        kept, t = self.where.checkpoint_step, self.cfg.train
        self.run.write_status("diverged", step=bad_step, steps=t.steps, error=f"loss became {bad_loss} at step {bad_step}",
                              checkpoint_step=kept)
        self.run.log(f"diverged: loss became {bad_loss} at step {bad_step}; "
                     + (f"the last good checkpoint (step {kept}) is kept" if kept is not None
                        else "no checkpoint was written before it"))
        return RunResult("diverged", self.run.path, bad_step, bad_loss, None, checkpoint_step=kept)

    def stopped(self, why: str) -> RunResult:
        self.checkpoint()
        self.run.write_status("stopped", step=self.step, steps=self.cfg.train.steps, reason=why)
        self.run.log(f"stopped after step {self.step} ({why}); continue with --resume")
        return RunResult("stopped", self.run.path, self.step, self.train_loss, None, checkpoint_step=self.step,
                         stopped_by=_STOP.signal_taken(why))

    def done(self) -> RunResult:
        if self.progress is not None:
            self.progress.close()
        val_loss = float(self.metrics.frame().query("split == 'val'")["loss"].iloc[-1])
        self.run.write_status("done", step=self.step, steps=self.cfg.train.steps, train_loss=self.train_loss, val_loss=val_loss)
        self.run.log(f"done: {self.run.path}  (train {self.train_loss:.4f}, val {val_loss:.4f})")
        return RunResult("done", self.run.path, self.step, self.train_loss, val_loss,
                         checkpoint_step=self.where.checkpoint_step)


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
