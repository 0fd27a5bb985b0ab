"""Data-loader throughput: can the host feed one GPU's training steps?

Training draws every micro-batch on the host (harness/train/data.py's `Batches`: seeded random
windows of a memory-mapped token array, gathered, cast to int64, split into x and y) and then
copies it to the device through pinned memory (harness/train/loop.py's `to_device`). If that path is
slower than the GPU's step, the GPU waits. This benchmark times exactly that path, alone, for
one training step of a preset (batch_size x grad_accum micro-batches of seq_len tokens): on
CUDA up to the tensors on the device (synchronised), on a CPU up to the CPU tensors.

Sources: `byte`, the byte-tokenizer shards that `prepare` caches under <runs-dir>/data (with
the `tiny` preset's data settings, the first 3 MB of the corpus; --data-dir names another
corpus); and `modded-nanogpt`, synthetic modded-nanogpt .bin shards (256 x int32 header,
uint16 tokens below GPT-2's 50257) written to a temporary folder and read through the same
memory-mapped shard path as a real fineweb download, windows straddling shards included.

Each round times --steps loader steps of every source (interleaved, so a busy neighbour hits
all alike) after --warmup untimed ones; the table has the median and p10/p90 seconds per step,
tokens/s, and margin = tokens/s / --target. The default target, 1M tokens/s, is an ESTIMATE of
what one H200 consumes at gpt-s (no GPU step has been measured yet): gpt-s trains on
128 x 1024 = 131,072 tokens a step at 6 N + 12 L T C = 6 x 23.5M + 12 x 6 x 1024 x 512
~= 179 MFLOP a token (harness/bench/model.py's count; N includes the tied output head), and at
~18% of the H200's 989 TFLOP/s dense bf16 (a 6-layer, d 512 model keeps a big GPU far from its
peak) that is ~1.0M tokens/s, a step every ~0.13 s (40% would be ~2.2M tokens/s). `bench model --preset gpt-s` on the GPU gives the measured figure to pass as --target.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from harness.bench.model import save_table
from harness.core.config import apply_overrides
from harness.core.device import resolve_device, to_device
from harness.core.errors import UserError, did_you_mean
from harness.core.presets import get_preset, tiny
from harness.core.rundir import environment
from harness.train.data import (
    MODDED_HEADER_INTS,
    MODDED_MAGIC,
    MODDED_VERSION,
    Batches,
    prepare,
)

if TYPE_CHECKING:
    import pandas as pd

    from harness.core.config import Config

SOURCES = ("byte", "modded-nanogpt")
GPT2_VOCAB = 50257  # fineweb's modded-nanogpt shards hold GPT-2 token ids
H200_TARGET_TOKENS_PER_S = 1e6  # an estimate: see the module doc


def write_modded_shard(path: Path, tokens: np.ndarray) -> None:
    """A modded-nanogpt shard: 256 int32 (magic, version, token count, zeros), then uint16 tokens."""
    header = np.zeros(MODDED_HEADER_INTS, dtype="<i4")
    header[:3] = MODDED_MAGIC, MODDED_VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype="<u2").tobytes())


def synthetic_corpus(folder: Path, n_shards: int, shard_tokens: int, seed: int = 0) -> Path:
    """`n_shards` training shards and one validation shard of random GPT-2 ids, named as fineweb's."""
    corpus = folder / "fineweb-synthetic"
    corpus.mkdir()
    rng = np.random.default_rng(seed)
    names = [f"fineweb_train_{i + 1:06d}.bin" for i in range(n_shards)] + ["fineweb_val_000000.bin"]
    for name in names:
        write_modded_shard(corpus / name, rng.integers(0, GPT2_VOCAB, shard_tokens, dtype=np.uint16))
    return corpus


def source_config(source: str, preset: str, overrides: list[str], runs_dir: str, data_dir: str, tmp: Path,
                  n_shards: int, shard_tokens: int) -> "Config":
    """The preset's batch shape with the source's data settings (module doc)."""
    cfg = get_preset(preset)
    if source == "byte":
        cfg.data = tiny().data  # the byte shards every CPU run caches
        cfg.run.runs_dir = runs_dir
        apply_overrides(cfg, overrides)
        if data_dir:
            cfg.data.corpus, cfg.data.val_files = data_dir, ""
    else:
        cfg.data.corpus = str(synthetic_corpus(tmp, n_shards, shard_tokens))
        cfg.data.val_files, cfg.data.shard_format = "fineweb_val_000000.bin", "modded-nanogpt"
        cfg.data.tokenizer, cfg.data.shard_vocab_size, cfg.data.cache_dir = "byte", GPT2_VOCAB, str(tmp / "cache")
        apply_overrides(cfg, overrides)
    return cfg.validate()


class LoaderStep:
    """One training step's worth of batches, drawn and moved as harness/train/loop.py does."""

    def __init__(self, cfg: "Config", device: torch.device, log: Callable[[str], None]):
        self.prepared = prepare(cfg, log=log)
        self.batches = Batches(self.prepared, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed)
        self.micros = range(cfg.train.grad_accum)
        self.tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len
        self.device, self.step_index = device, 0

    def step(self) -> None:
        for micro in self.micros:
            x, y = self.batches.train_batch(self.step_index, micro)
            to_device(x, self.device), to_device(y, self.device)
        self.step_index += 1  # each step draws new offsets, as in training


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_bench(sources: list[str], preset: str, device: torch.device, rounds: int, steps: int, warmup: int,
              target: float, overrides: list[str] = (), runs_dir: str = "runs", data_dir: str = "",
              n_shards: int = 4, shard_tokens: int = 4_000_000, log: Callable[[str], None] = print) -> "pd.DataFrame":
    """Time every source in interleaved rounds; return the long-format table."""
    import pandas as pd


    with tempfile.TemporaryDirectory(prefix="mhc-bench-data-") as tmp:
        cfgs = {s: source_config(s, preset, list(overrides), runs_dir, data_dir, Path(tmp), n_shards, shard_tokens)
                for s in sources}
        loaders = {s: LoaderStep(cfgs[s], device, log) for s in sources}
        for loader in loaders.values():
            for _ in range(warmup):
                loader.step()
        _sync(device)
        times: dict[str, list[float]] = {s: [] for s in sources}
        for r in range(rounds):
            for s, loader in loaders.items():
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    loader.step()
                _sync(device)
                times[s].append((time.perf_counter() - t0) / steps)
            log(f"round {r + 1}/{rounds} done")
        env = environment(device)
        load_1m = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        rows = []
        for s, loader in loaders.items():
            cfg, ts = cfgs[s], times[s]
            med = statistics.median(ts)
            q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
            base = dict(source=s, preset=cfg.preset, batch_size=cfg.train.batch_size, grad_accum=cfg.train.grad_accum,
                        seq_len=cfg.model.seq_len, tokens_per_step=loader.tokens, train_tokens=len(loader.prepared.train),
                        shard_format=loader.prepared.meta.get("shard_format", "flat"), device=str(device),
                        device_name=env["device_name"], cpu_threads=env["cpu_threads"], load_avg_1m=load_1m,
                        torch=env["torch"], git_commit=env["git_commit"], time=env["time"],
                        rounds=rounds, steps_per_round=steps, warmup=warmup)
            values = {"step_time_s": med, "step_time_p10_s": q[0], "step_time_p90_s": q[-1],
                      "tokens_per_s": loader.tokens / med, "target_tokens_per_s": target,
                      "margin": loader.tokens / med / target}
            rows += [dict(base, metric=k, value=float(v)) for k, v in values.items()]
    return pd.DataFrame(rows)


def summary(df: "pd.DataFrame") -> str:
    """One line per source: tokens/s, time per step and the margin over the target."""
    wide = df.pivot_table(index="source", columns="metric", values="value", sort=False)
    lines = [f"{'source':<16}{'tokens/s':>14}{'ms/step':>10}{'p10-p90 ms':>16}{'margin':>9}"]
    for source, r in wide.iterrows():
        spread = f"{r.step_time_p10_s * 1e3:.1f}-{r.step_time_p90_s * 1e3:.1f}"
        lines.append(f"{source:<16}{r.tokens_per_s:>14,.0f}{r.step_time_s * 1e3:>10.1f}{spread:>16}{r.margin:>8.1f}x")
    lines.append(f"(margin = tokens/s over {wide.target_tokens_per_s.iloc[0]:,.0f} tokens/s; "
                 f"{int(df.tokens_per_step.iloc[0]):,} tokens a step)")
    return "\n".join(lines)


def main_bench_data(args) -> int:
    """`mhc-bench bench data`: check the arguments, run, print and save the table."""
    sources = [s.strip() for s in args.sources.split(",") if s.strip()]
    for s in sources:
        if s not in SOURCES:
            raise UserError(f"unknown source {s!r} in --sources{did_you_mean(s, SOURCES)}; choose from {', '.join(SOURCES)}")
    if not sources:
        raise UserError(f"--sources is empty; choose from {', '.join(SOURCES)}")
    for name in ("rounds", "steps", "shards", "shard_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {args.warmup}")
    if not args.target > 0:
        raise UserError(f"--target must be a positive number of tokens/s, got {args.target}")
    device = resolve_device(args.device)
    df = run_bench(sources, args.preset, device, args.rounds, args.steps, args.warmup, args.target, args.overrides,
                   args.runs_dir, args.data_dir or "", args.shards, args.shard_tokens,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    print(summary(df))
    save_table(df, args.out, args.runs_dir, "data")
    return 0


def register(sub) -> None:
    """Add `bench data` to the `bench` sub-command group."""
    p = sub.add_parser("data", help="data-loader tokens/s for one training step of a preset, against what a GPU consumes")
    p.add_argument("--preset", default="gpt-s", help="the batch shape: batch_size x grad_accum x seq_len (default gpt-s)")
    p.add_argument("--sources", default=",".join(SOURCES), help="comma-separated: byte, modded-nanogpt (default both)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--steps", type=int, default=3, help="loader steps per source per round (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed loader steps per source first (default 2)")
    p.add_argument("--target", type=float, default=H200_TARGET_TOKENS_PER_S,
                   help="tokens/s the GPU consumes, for the margin (default 1e6: gpt-s on one H200, an estimate)")
    p.add_argument("--shards", type=int, default=4, help="synthetic modded-nanogpt training shards (default 4)")
    p.add_argument("--shard-tokens", type=int, default=4_000_000, help="tokens per synthetic shard (default 4,000,000)")
    p.add_argument("--data-dir", help="corpus for the byte source (default: the tiny preset's, first 3 MB of the wiki dump)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ... (on CUDA the pinned-memory copy is timed too)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every source")
    p.add_argument("--runs-dir", default="runs", help="byte shards are cached under RUNS_DIR/data, the table goes to RUNS_DIR/bench/")
    p.add_argument("--out", default="", help="explicit output Parquet path")
    p.set_defaults(func=main_bench_data)
