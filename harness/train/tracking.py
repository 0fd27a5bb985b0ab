"""Live views of a run besides train.log: TensorBoard event files and W&B in offline mode.

The training loop hands its tracker the scalars it already records (metrics.parquet rows and
the diagnostics' composite Amax); nothing is computed for the tracker alone, so a run with
tracking off or on trains the same numbers. `run.tensorboard=true` writes event files under
<run>/tensorboard/ (`tensorboard --logdir runs/` shows a whole experiment); `run.wandb=offline`
writes a W&B run under <run>/wandb/ (`wandb sync` uploads it later), named by experiment,
variant and seed. Both packages are optional and imported only when asked for: a missing one is
one clear error before the run folder is made, never a crash mid-run.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from harness.core.errors import UserError

TENSORBOARD_DIR = "tensorboard"
WANDB_DIR = "wandb"

# metrics.parquet columns logged per train row, as "train/<column>"
TRAIN_COLUMNS = ("loss", "lr", "grad_norm", "step_time_s", "tokens_per_s")


def check(cfg) -> None:
    """Refuse a run whose tracking needs a package this machine lacks (one line, before any file)."""
    if cfg.run.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("run.tensorboard=true needs the tensorboard package, which is not installed: "
                        "pip install tensorboard (or pip install 'mhc-bench[tracking]')")
    if cfg.run.wandb != "off" and importlib.util.find_spec("wandb") is None:
        raise UserError(f"run.wandb={cfg.run.wandb} needs the wandb package, which is not installed: pip install wandb")


def train_scalars(row: dict) -> dict[str, float]:
    """The tracked scalars of one train row of metrics.parquet: loss, lr, gradient norms (the
    clipping norm and one per role group), step time and throughput."""
    out = {f"train/{k}": row[k] for k in TRAIN_COLUMNS if row.get(k) is not None}
    out |= {f"grad_norm/{k.removeprefix('grad_norm_')}": v for k, v in row.items() if k.startswith("grad_norm_")}
    return out


def diagnostics_scalars(rows: list[dict]) -> dict[str, float]:
    """Composite Amax gains (forward and backward) over the whole depth, token mean, as the
    report's gain-over-training plot shows them; {} for a model with no spans."""
    spans = [r for r in rows if r["scope"] == "span" and r["stat"] == "token_mean" and r["metric"].startswith("amax")]
    if not spans:
        return {}
    last = max(r["end"] for r in spans)
    return {f"composite/{r['metric']}": r["value"] for r in spans if r["start"] == 0 and r["end"] == last}


class Tracker:
    """Scalars by step to every sink asked for; a no-op until opened, and when none is asked for."""

    def __init__(self):
        self._tb = self._wandb = None

    def open(self, cfg, run_path: Path, start_step: int, log=print) -> None:
        """Start the sinks `cfg.run` asks for. A resumed run (`start_step` > 0) drops what was
        logged after its checkpoint, as metrics.parquet does, so the views show each step once
        (TensorBoard purges from the step given on: the checkpoint's own step is kept). W&B's own
        banner and run summary (some thirty lines) are silenced: `log` gets one line saying where
        the offline run is and how to upload it. A resumed run is a second offline folder with
        the same run id; `wandb sync` uploads both into one W&B run."""
        if cfg.run.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_path / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)
        if cfg.run.wandb == "offline":
            import wandb

            experiment, name = Path(cfg.run.runs_dir).name, cfg.run_name()
            self._wandb = wandb.init(mode="offline", dir=str(run_path), project="mhc-bench", group=experiment, name=name,
                                     id=re.sub(r"[^A-Za-z0-9_-]", "_", f"{experiment}-{name}")[:128], resume="allow",
                                     job_type=cfg.variant.name, tags=[cfg.variant.name, f"seed={cfg.train.seed}"],
                                     config=cfg.to_dict(), settings=wandb.Settings(silent=True))
            log(f"wandb: offline run in {self._wandb.settings.sync_dir}; "
                f"upload with `wandb sync {run_path / WANDB_DIR}/offline-run-*`")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        values = {k: float(v) for k, v in scalars.items() if v is not None}
        if not values:
            return
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, global_step=step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
