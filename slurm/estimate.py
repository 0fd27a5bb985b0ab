"""Know the bill before you submit: tokens, FLOPs, wall time and device-hours of a grid's runs.

Per run: tokens = steps x batch_size x grad_accum x seq_len, and training FLOPs by harness/train/flops.py
(6·N·tokens + 12·L·T·C·tokens). The time is FLOPs over a rate, and the rate comes, first found:

    calibrated  --calibrate-from EXPERIMENT: the tokens/s its finished runs trained at (tokens over
                the sum of their logged step times), as training FLOP/s per device for each variant
                (a variant it lacks: the median over its runs)
    measured    a `bench model` table for this device (--bench PATH, else the newest under
                <runs>/bench/ and the experiment's bench/): its tokens/s where the shapes match, else
                its achieved FLOP/s (MFU x the matmul ceiling it measured) for the variant and backend
    assumed     peak dense bf16 FLOP/s of the GPU named with --gpu (A100, H100, H200, B200), or this
                CPU's matmul rate measured now at the run's thread count, times --mfu (default 0.2 on
                GPUs, 0.1 on a CPU: what small models reach here, results/bench-cpu)

and the printout says which. A run spans `world` devices (GPUs: nodes x tasks; CPU runs: one each)
and the estimate assumes linear scaling over them. The step time only: evaluation, checkpoints
and start-up come on top (a few percent at the shipped settings).

Against the time limit: a job checkpoints and requeues itself SIGNAL_LEAD_S before it, so a run
predicted past the limit needs ceil(time / (limit - lead)) - 1 requeues; `grid plan` flags them
with the --time that avoids them, and a run past the requeue cap is refused before anything is
queued. `grid submit` saves the estimate (estimate.json); `grid status` and the report then show
predicted against actual, and the next plan can calibrate from this experiment.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.core.atomic import write_json
from harness.core.config import from_dict
from harness.core.errors import UserError, did_you_mean
from harness.core.rundir import RunDir
from harness.train.flops import (
    FORMULA,
    flops_per_token,
    model_params,
    tokenizer_vocab,
    tokens_per_step,
)
from harness.train.model import padded_vocab

GPU_PEAK_BF16 = {"A100": 312e12, "H100": 989e12, "H200": 989e12, "B200": 2250e12}  # dense, FLOP/s per GPU
DEFAULT_MFU = 0.2  # small models keep a big GPU far from its peak (results/data-loader: ~18% assumed at gpt-s)
ESTIMATE_NAME = "estimate.json"


@dataclass
class RunEstimate:
    """One run's predicted bill."""

    run_id: str
    name: str
    config: str  # the configuration's label (arm and settings but the seed)
    tokens: int
    flops: float
    devices: int
    seconds: float  # predicted training time (the steps)
    source: str  # calibrated | measured | assumed

    @property
    def device_hours(self) -> float:
        return self.seconds * self.devices / 3600


def check_options(gpu: str | None, mfu: float) -> None:
    """--gpu and --mfu, refused in one line when wrong."""
    if gpu is not None and gpu not in GPU_PEAK_BF16:
        raise UserError(f"unknown GPU {gpu!r} for --gpu{did_you_mean(gpu, GPU_PEAK_BF16)}; known: {', '.join(GPU_PEAK_BF16)}")
    if not (mfu > 0 and mfu <= 1):
        raise UserError(f"--mfu is the fraction of the peak rate a run reaches, in (0, 1]; got {mfu}")


def _backend(cfg) -> str:
    return "compile" if cfg.train.compile else cfg.variant.backend


# ---------------------------------------------------------------------- rates
def cpu_matmul_rate(threads: int) -> float:
    """This CPU's fp32 matmul FLOP/s now, at `threads` threads (the best of a few 1024³ products)."""
    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        a @ b
        best = math.inf
        for _ in range(5):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        return 2 * 1024**3 / best
    finally:
        torch.set_num_threads(old)


class Rates:
    """Training FLOP/s per device for a run, from the first source that has one (module doc)."""

    def __init__(self, device: str, gpu: str | None, mfu: float, bench=None, bench_path: str = "", calibrated=None,
                 calibrated_from: str = ""):
        self.device, self.gpu, self.mfu = device, gpu, mfu
        self.bench, self.bench_path = bench, bench_path  # a bench model table (long format) for this device, or None
        self.calibrated, self.calibrated_from = calibrated or {}, calibrated_from  # {variant: [FLOP/s of its runs]}
        self._cpu: dict[int, float] = {}

    def of(self, cfg, fpt: float) -> tuple[float, str]:
        """(training FLOP/s per device, source) for a run with `fpt` FLOPs per token."""
        if self.calibrated:
            rates = self.calibrated.get(cfg.variant.name) or [r for v in self.calibrated.values() for r in v]
            return statistics.median(rates), "calibrated"
        if self.bench is not None:
            rate = self._from_bench(cfg, fpt)
            if rate is not None:
                return rate, "measured"
        if self.device == "cpu":
            threads = cfg.train.threads
            if threads not in self._cpu:
                self._cpu[threads] = cpu_matmul_rate(threads)
            return self._cpu[threads] * self.mfu, "assumed"
        return GPU_PEAK_BF16[self.gpu] * self.mfu, "assumed"

    def _from_bench(self, cfg, fpt: float) -> float | None:
        df = self.bench
        rows = df[(df.variant == cfg.variant.name) & (df.backend == _backend(cfg))]
        if rows.empty:
            return None
        m = cfg.model
        exact = rows[(rows.preset == cfg.preset) & (rows.n_layer == m.n_layer) & (rows.d_model == m.d_model)
                     & (rows.seq_len == m.seq_len) & (rows.batch_size == cfg.train.batch_size)]
        if "vocab" in exact:  # tables since 2026-12-07 say their output layer's size; older ones had 8192 entries

            exact = exact[exact.vocab == padded_vocab(cfg, tokenizer_vocab(cfg))]
        tps = exact[exact.metric == "tokens_per_s"]["value"]
        if len(tps):
            return float(tps.median()) * fpt
        wide = rows.pivot_table(index="case", columns="metric", values="value")
        if not {"mfu", "matmul_flops_per_s"} <= set(wide):
            return None
        achieved = (wide["mfu"] * wide["matmul_flops_per_s"]).dropna()
        return float(achieved.median()) if len(achieved) else None

    def describe(self) -> str:
        if self.calibrated:
            return f"calibrated from {self.calibrated_from} (the tokens/s its finished runs trained at)"
        what = (f"assumed: {self.gpu} at {GPU_PEAK_BF16[self.gpu] / 1e12:.0f} TFLOP/s dense bf16 x MFU {self.mfu:g}"
                if self.device != "cpu" else f"assumed: this CPU's matmul rate measured now x MFU {self.mfu:g}")
        if self.bench is not None:
            return f"measured by bench model ({self.bench_path}) where it timed the variant, else {what}"
        return what


def newest_bench(paths: list[Path], device: str, gpu: str | None):
    """(table, path) of the newest `bench model` table among `paths` (files or folders) timed on this
    kind of device (cpu, or a GPU whose name contains --gpu), or (None, "")."""
    import pandas as pd

    files = []
    for p in paths:
        p = Path(p)
        files += sorted(p.glob("model*.parquet")) if p.is_dir() else [p] if p.is_file() else []
    for f in sorted(files, key=lambda f: f.stat().st_mtime, reverse=True):
        df = pd.read_parquet(f)
        if "device" not in df or "metric" not in df:
            continue
        names = df.device.astype(str)
        ok = names.str.lower().str.contains("cpu") | (names == "") if device == "cpu" else \
            names.str.contains(gpu or "\0", case=False)
        if ok.all() and len(df):
            return df, str(f)
    return None, ""


def calibration(experiment: Path) -> dict[str, list[float]]:
    """{variant: training FLOP/s of each finished run} of an experiment (module doc)."""
    import pandas as pd


    out: dict[str, list[float]] = {}
    folders = [p for p in sorted(Path(experiment).iterdir()) if RunDir.is_run(p)] if Path(experiment).is_dir() else []
    for p in folders:
        rd = RunDir(p, writer=False)
        status, metrics = rd.read_status() or {}, rd.read_table("metrics")
        if status.get("status") != "done" or metrics is None:
            continue
        cfg = from_dict(rd.read_config())
        train = metrics[metrics.split == "train"]
        seconds = float(pd.to_numeric(train["step_time_s"], errors="coerce").sum())
        if seconds > 0:
            fpt = flops_per_token(cfg, model_params(cfg)[1])
            out.setdefault(cfg.variant.name, []).append(len(train) * tokens_per_step(cfg) * fpt / seconds)
    if not out:
        raise UserError(f"--calibrate-from {experiment}: no finished run with logged step times there")
    return out


# ---------------------------------------------------------------------- the estimate
def config_label(run) -> str:
    return ", ".join(f"{k}={v}" for k, v in run.settings.items() if k != "train.seed") or run.cfg.variant.name


def estimate(runs, rates: Rates, devices: int) -> list[RunEstimate]:
    out = []
    for r in runs:
        cfg = r.cfg
        fpt = flops_per_token(cfg, model_params(cfg)[1])
        tokens = cfg.train.steps * tokens_per_step(cfg)
        rate, source = rates.of(cfg, fpt)
        out.append(RunEstimate(r.id, r.name, config_label(r), tokens, tokens * fpt, devices,
                               tokens * fpt / (rate * devices), source))
    return out


def requeues(seconds: float, limit_min: int | None, lead_s: int) -> int:
    """Requeues a run predicted at `seconds` needs under a `limit_min` limit (0 without a limit)."""
    if not limit_min:
        return 0
    usable = limit_min * 60 - lead_s
    return max(0, math.ceil(seconds / usable) - 1)


def time_for(seconds: float, lead_s: int) -> str:
    """A --time (H:MM:SS) that fits `seconds` of training, the requeue lead and a 25% margin."""
    total = math.ceil((seconds * 1.25 + lead_s) / 60) * 60
    return f"{total // 3600}:{total % 3600 // 60:02d}:00"


def summary(ests: list[RunEstimate], parallel: int | None) -> tuple[list[list], list[str]]:
    """(rows per configuration, total lines) for the printout."""
    by: dict[str, list[RunEstimate]] = {}
    for e in ests:
        by.setdefault(e.config, []).append(e)
    rows = []
    for label, es in by.items():
        rows.append([label, len(es), _count(es[0].tokens), f"{es[0].flops:.3g}", duration(statistics.median(e.seconds for e in es)),
                     f"{sum(e.device_hours for e in es):.2f}", ", ".join(sorted({e.source for e in es}))])
    total_s = sum(e.seconds for e in ests)
    lines = [f"total: {len(ests)} runs, {_count(sum(e.tokens for e in ests))} tokens, {sum(e.flops for e in ests):.3g} FLOPs, "
             f"{sum(e.device_hours for e in ests):.2f} device-hours of training steps"]
    if parallel:
        lines.append(f"on {parallel} job(s) at a time: about {duration(total_s / parallel)} of wall time")
    return rows, lines


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def duration(s: float) -> str:
    """Seconds as s, min or h."""
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def save(exp_dir: Path, ests: list[RunEstimate], description: str) -> None:
    """<experiment>/estimate.json: what was predicted for each run at submission (merged over submissions)."""
    path = Path(exp_dir) / ESTIMATE_NAME
    old = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    old["source"] = description
    old["formula"] = FORMULA
    old["runs"].update({e.run_id: asdict(e) for e in ests})
    write_json(path, old)


def load(exp_dir: Path) -> dict:
    path = Path(exp_dir) / ESTIMATE_NAME
    return json.loads(path.read_text())["runs"] if path.is_file() else {}


def actual_seconds(run_dir: Path) -> float | None:
    """The training time a run logged: the sum of its step times (None before its first step)."""
    import pandas as pd


    metrics = RunDir(run_dir, writer=False).read_table("metrics")
    if metrics is None or metrics.empty:
        return None
    train = metrics[metrics.split == "train"]
    return float(pd.to_numeric(train["step_time_s"], errors="coerce").sum()) or None
