"""Training-step throughput and overhead of each residual variant, measured side by side.

"What does mHC cost?" is a ratio, so every configuration (variant x backend x preset x width x
streams) is built in ONE process and timed in interleaved rounds: round r times k steps of
every configuration before round r + 1 starts, so drift (thermal, other jobs, a noisy CPU
neighbour) hits all of them alike. A step is the full training step (forward, backward,
AdamW) on random tokens, synchronised before and after. We report medians and quantiles over
rounds, tokens/s, MFU against the matmul ceiling measured in the same run, peak memory, and
overhead = time(variant) / time(identity) - 1 for the same preset, width and backend.

Beside each measured overhead stands the prediction of the mHC paper's I/O analysis (§3.2):
the residual connection of one sub-layer moves, per token and in the forward pass,
3C elements for the plain residual (read x and F's output, write x') and
(n C + C) + ((n + 1) C + n C) + n C = (4n + 2) C for an n-stream connection (pre-mix,
post + residual merge, and reading x again for the coefficients), plus the coefficient GEMM
(2 nC (n^2 + 2n) flops). With backward about twice the forward, the predicted extra time per
step is 3 x (extra bytes / copy bandwidth + extra flops / matmul rate); divided by the measured
identity step it gives the predicted overhead. It is a floor for fused kernels; unfused
PyTorch reads and writes intermediate tensors many more times.

Peers (`--peers`, default all known: variants/peers.py) are extra cases: lucidrains'
`hyper-connections` HC and mHC inside the same GPT, matched to our hc/mhc config (n streams,
Sinkhorn rounds), timed in the same interleaved rounds under the same backend label (torch =
eager, compile = torch.compile; they have no Triton path), so their overhead is against the
same identity step as ours. A case that cannot run (package missing, the peer's API drifted, an
option it lacks, out of memory) gets one row with metric 'skipped' and the reason in `note`,
as in harness/bench/kernels.py, so the table says what was not measured instead of failing.

Activation memory (`act_*` metrics) is not timed but counted exactly: the bytes autograd saves
for the backward per token (harness/bench/activation_memory.py), without and with `train.recompute`,
and as a ratio to identity's (same preset, width, backend). The HC paper reports +26% for HC
(`act_ratio_published`, 1.26 on hc rows, for reference). It is measured at a short sequence
(bytes per token do not depend on it) on a fresh model of the case's shape, in the step's dtype;
backend=triton on a CPU in a subprocess under Triton's interpreter. torch.compile chooses its
own saved set (its partitioner recomputes cheap ops), so compile rows carry no act_* metrics.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.bench.activation_memory import (
    bytes_per_token,
    measure,
    measure_in_subprocess,
)
from harness.core.atomic import write_parquet, write_text
from harness.core.config import Config, apply_overrides
from harness.core.device import autocast_context, resolve_device
from harness.core.errors import UserError, did_you_mean
from harness.core.presets import get_preset
from harness.core.rundir import environment, now
from harness.train.flops import flops_per_token, tokenizer_vocab
from harness.train.model import GPT, build_model, padded_vocab
from harness.train.optim import make_optimizer
from kernels import cpu_build
from kernels.backend import set_cpu_kernels, triton_unavailable_reason
from variants.options import option_fields
from variants.peers import (
    DEFAULT_N_STREAMS,
    PACKAGE,
    PEERS,
    PeerUnavailable,
    build_peer,
    package_version,
)
from variants.registry import get_variant_class, options_class, variant_names


def default_variants() -> list[str]:
    """`bench model`'s variants when none are named: every registered variant with `in_bench`."""
    return [n for n in variant_names() if get_variant_class(n).in_bench]


if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Case:
    """One configuration to time."""

    preset: str
    variant: str
    backend: str
    d_model: int
    n_streams: int
    cfg: Config
    skip: str = ""  # known before building: why this case cannot run

    @property
    def is_peer(self) -> bool:
        return self.variant in PEERS


# ---------------------------------------------------------------------- ceilings
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, reps: int = 10) -> float:
    """Median seconds of fn() over reps, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_ceilings(device: torch.device, dtype: torch.dtype) -> dict:
    """Copy bandwidth (bytes read + written per second) and dense matmul rate, measured here, now.

    run_bench measures them before every round, interleaved with the cases, and keeps the best of
    each: a ceiling taken once, at a moment the machine was busier than during the cases, would
    be too low and give an MFU above 100%."""
    n_bytes = (1 << 28) if device.type == "cuda" else (1 << 26)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy_s = _time(lambda: dst.copy_(src), device)
    size = 8192 if device.type == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    mm_s = _time(lambda: a @ b, device)
    return {"copy_bytes_per_s": 2 * n_bytes / copy_s, "matmul_flops_per_s": 2 * size**3 / mm_s}


# ---------------------------------------------------------------------- analytic model
def predicted_overhead(cfg: Config, n: int, identity_step_s: float, ceilings: dict, elem_bytes: int) -> float:
    """The I/O model's overhead of an n-stream connection over the plain residual (module doc)."""
    if n <= 1 and cfg.variant.name == "identity":
        return 0.0
    C, subl = cfg.model.d_model, 2 * cfg.model.n_layer
    tokens = cfg.train.batch_size * cfg.model.seq_len
    extra_bytes = ((4 * n + 2) - 3) * C * elem_bytes * tokens * subl
    extra_flops = 2 * n * C * (n * n + 2 * n) * tokens * subl
    extra_s = 3 * (extra_bytes / ceilings["copy_bytes_per_s"] + extra_flops / ceilings["matmul_flops_per_s"])
    return extra_s / identity_step_s


# ---------------------------------------------------------------------- cases
def case_config(preset: str, variant: str, n: int, backend: str, d_model: int | None, overrides) -> Config:
    """The preset with the overrides, then this case's variant, streams, backend and width. A
    variant option among the overrides (`--set variant.sk_iters=5`) applies to the variants that
    have it; the others are benchmarked at their own settings."""
    cfg = get_preset(preset)
    own = option_fields(options_class(variant))
    apply_overrides(cfg, [o for o in overrides or () if not _foreign_option(o, own)])
    if cfg.variant.name != variant:
        cfg.variant.name, cfg.variant.options = variant, {k: v for k, v in cfg.variant.options.items() if k in own}
    cfg.variant.n_streams = n if variant != "identity" else 0
    cfg.variant.backend = "torch" if backend == "compile" else backend
    cfg.train.compile = backend == "compile"
    if d_model:
        cfg.model.d_model = d_model
    cfg.validate()
    return cfg


def _foreign_option(override: str, own) -> bool:
    key = override.split("=", 1)[0].strip()
    return key.startswith("variant.") and key.removeprefix("variant.") not in (*own, "name", "n_streams", "backend")


def build_cases(presets, variants, backends, widths, streams, overrides, peers=()) -> list[Case]:
    """Our variants, then each peer (configured as its counterpart: hc or mhc), per preset and width."""
    cases = []
    for preset in presets:
        for d_model in widths or [None]:
            for variant in variants:
                for n in (streams or [0]) if variant != "identity" else [1]:
                    for backend in backends:
                        cfg = case_config(preset, variant, n, backend, d_model, overrides)
                        cases.append(Case(preset, variant, backend, cfg.model.d_model, n, cfg))
            for peer in peers:
                for n in streams or [0]:
                    for backend in backends:
                        triton = backend == "triton"
                        cfg = case_config(preset, PEERS[peer].counterpart, n, "torch" if triton else backend, d_model, overrides)
                        skip = "no Triton path in the peer package: it is timed under torch and compile" if triton else ""
                        cases.append(Case(preset, peer, backend, cfg.model.d_model, n, cfg, skip))
    return cases


def parse_peers(text: str) -> list[str]:
    """--peers: all (every known peer), none, or comma-separated names from PEERS."""
    text = text.strip()
    if text == "all":
        return list(PEERS)
    if text in ("none", ""):
        return []
    names = [x.strip() for x in text.split(",") if x.strip()]
    for name in names:
        if name not in PEERS:
            raise UserError(f"unknown peer {name!r} in --peers{did_you_mean(name, PEERS)}; "
                            f"choose all, none or from {', '.join(PEERS)}")
    return names


class Stepper:
    """A model + optimiser for one case, and a function that runs one full training step."""

    def __init__(self, case: Case, device: torch.device, vocab: int):
        cfg = case.cfg
        torch.manual_seed(0)
        if case.is_peer:
            variant = build_peer(case.variant, cfg.variant, cfg.model.d_model, 2 * cfg.model.n_layer)
            self.model, self.note = GPT(cfg.model, variant, padded_vocab(cfg, vocab)).to(device), variant.note()
        else:
            self.model, self.note = build_model(cfg, vocab).to(device), ""
        self.n_streams = self.model.variant.n_streams
        self.n_params = sum(p.numel() for p in self.model.parameters())
        # the embedding lookup costs no flops, but a tied embedding is also the output head, which does
        self.n_params_body = self.n_params - (0 if cfg.model.tie_embeddings else self.model.wte.weight.numel())
        self.opt = make_optimizer(self.model, cfg)
        self.fwd = torch.compile(self.model) if cfg.train.compile else self.model
        self.autocast = autocast_context(device, cfg.train.dtype)
        g = torch.Generator().manual_seed(0)
        shape = (cfg.train.batch_size, cfg.model.seq_len)
        self.x = torch.randint(0, vocab, shape, generator=g).to(device)
        self.y = torch.randint(0, vocab, shape, generator=g).to(device)
        self.tokens = shape[0] * shape[1]

    def step(self) -> None:
        with self.autocast():
            _, loss = self.fwd(self.x, self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def allow_compiled_cases(cases: list[Case]) -> None:
    """Let every compiled case keep its own compiled graph.

    All cases run the same GPT.forward, and torch.compile caches its graphs per code object: each
    compiled model adds one, and past torch._dynamo.config.recompile_limit (8) the next model's
    forward silently runs eager, so a ninth `compile` row would time eager code under the label
    compile. The limit is raised to leave every compiled case room for a few recompiles."""
    import torch._dynamo

    compiled = sum(c.backend == "compile" for c in cases)
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * compiled)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 16 * compiled)


def profile_step(stepper: "Stepper", device: torch.device, top: int) -> str:
    """torch.profiler's operator table of one training step (after the timed rounds, so warm):
    the operators that took the most self time (CPU, or the GPU's on CUDA), with call counts.
    Where the time of a variant's step goes is what a faster implementation has to change."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        stepper.step()
        _sync(device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=top, max_name_column_width=60)


def skip_reason(case: Case, e: Exception) -> str | None:
    """Why a case failed, if that failure is one to record rather than raise; None = a real error.

    Our variants raise UserError for options they cannot run; any case may run out of memory;
    a peer may fail in any way (a missing package, API drift, a torch.compile failure), and
    a third party's failure must not cost the rest of the table.
    """
    if isinstance(e, (UserError, PeerUnavailable)):
        return str(e)
    if isinstance(e, torch.cuda.OutOfMemoryError) or case.is_peer:
        first = str(e).splitlines()[0][:300] if str(e) else ""
        return f"failed: {type(e).__name__}: {first}"
    return None


def run_bench(cases: list[Case], device: torch.device, rounds: int, steps_per_round: int, warmup: int,
              vocab: int | None = None, log=print, profile_top: int = 0, profile_out=None) -> "pd.DataFrame":
    """Time every case in interleaved rounds; return the long-format table. profile_top > 0: then
    profile one more step of each case and write its top operators to `profile_out` (profile_step).

    `vocab`: the tokenizer vocabulary of the models; None (the default) = each preset's own
    (harness/train/flops.py tokenizer_vocab: 257 bytes for tiny, data.vocab_size for a BPE), so a case
    has the output layer its preset trains with. (Until 2026-12-07 every case had 8192 entries:
    tiny's steps then timed an output layer 25x its real one.)"""
    import pandas as pd

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    allow_compiled_cases(cases)
    bench = _Timing(cases, device, log)
    ceilings = measure_ceilings(device, dtype)
    bench.warm_up(warmup, vocab)
    for r in range(rounds):
        now = measure_ceilings(device, dtype)  # interleaved with the cases: the best of all rounds is the ceiling
        ceilings = {k: max(v, now[k]) for k, v in ceilings.items()}
        bench.time_round(steps_per_round)
        log(f"round {r + 1}/{rounds} done")
    if profile_top > 0:
        for case, s in zip(cases, bench.steppers):
            if s is not None:
                profile_out(f"\n== {case.preset} d={case.d_model} n={s.n_streams} {case.variant} / {case.backend}: "
                            f"one training step, top {profile_top} operators by self time\n"
                            + profile_step(s, device, profile_top))
    log(f"ceilings on {device} (best of {rounds + 1} measurements between the rounds): copy "
        f"{ceilings['copy_bytes_per_s'] / 1e9:.1f} GB/s, matmul {ceilings['matmul_flops_per_s'] / 1e12:.2f} TFLOP/s "
        f"({str(dtype).split('.')[-1]})")
    rows = bench.rows(ceilings, dtype, rounds, steps_per_round)
    rows += activation_rows(cases, bench.steppers, bench.skipped, device, vocab, rows, log)
    df = pd.DataFrame(rows)
    return add_activation_ratios(add_overheads(df, cases, ceilings, dtype))


class _Timing:
    """The cases' steppers, warmed up once, then timed round by round; a case that cannot run
    (out of memory, a backend refused) is dropped with its reason instead of ending the bench."""

    def __init__(self, cases: list[Case], device: torch.device, log):
        self.cases, self.device, self.log = cases, device, log
        self.steppers: list = [None] * len(cases)
        self.peaks: list = [None] * len(cases)
        self.times: list[list[float]] = [[] for _ in cases]
        self.skipped: dict[int, str] = {}

    def drop(self, i: int, reason: str) -> None:
        self.skipped[i], self.steppers[i] = reason, None
        self.log(f"skipping {self.cases[i].variant}/{self.cases[i].backend}: {reason}")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self, warmup: int, vocab: int | None) -> None:
        device = self.device
        for i, case in enumerate(self.cases):
            if case.skip:
                self.drop(i, case.skip)
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            try:
                self.steppers[i] = Stepper(case, device, vocab or tokenizer_vocab(case.cfg))
                for _ in range(warmup):  # includes torch.compile's first compilation
                    self.steppers[i].step()
                _sync(device)
            except Exception as e:
                if (reason := skip_reason(case, e)) is None:
                    raise
                self.drop(i, reason)
                continue
            self.peaks[i] = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    def time_round(self, steps_per_round: int) -> None:
        for i, s in enumerate(self.steppers):
            if s is None:
                continue
            try:
                _sync(self.device)
                t0 = time.perf_counter()
                for _ in range(steps_per_round):
                    s.step()
                _sync(self.device)
            except Exception as e:
                if (reason := skip_reason(self.cases[i], e)) is None:
                    raise
                self.drop(i, reason)
                continue
            self.times[i].append((time.perf_counter() - t0) / steps_per_round)

    def rows(self, ceilings: dict, dtype, rounds: int, steps_per_round: int) -> list[dict]:
        """Long-format rows: a case's description once per metric (median and p10/p90 step time,
        throughput, MFU, the ceilings, peak memory), or one "skipped" row with its reason."""
        env = environment(self.device)
        peer_version = package_version() or ""
        rows = []
        for i, (case, s, ts, peak) in enumerate(zip(self.cases, self.steppers, self.times, self.peaks)):
            base = dict(case=i, preset=case.preset, variant=case.variant, backend=case.backend, d_model=case.d_model,
                        n_streams=s.n_streams if s else declared_streams(case), n_layer=case.cfg.model.n_layer,
                        seq_len=case.cfg.model.seq_len, batch_size=case.cfg.train.batch_size,
                        vocab=s.model.vocab_size if s else -1,
                        n_params=s.n_params if s else -1, dtype=str(dtype).split(".")[-1],
                        device=env["device_name"], torch=env["torch"], triton=env["triton"], git_commit=env["git_commit"],
                        threads=torch.get_num_threads(), cpu_kernels=env["cpu_kernels"], peer=PACKAGE if case.is_peer else "",
                        peer_version=peer_version if case.is_peer else "",
                        rounds=rounds, steps_per_round=steps_per_round, note=s.note if s else self.skipped[i])
            if s is None:
                rows.append(dict(base, metric="skipped", value=float("nan")))
                continue
            q = statistics.quantiles(ts, n=10) if len(ts) >= 2 else [ts[0]] * 9
            med = statistics.median(ts)
            mfu = flops_per_token(case.cfg, s.n_params_body) * s.tokens / med / ceilings["matmul_flops_per_s"]
            values = {"step_time_s": med, "step_time_p10_s": q[0], "step_time_p90_s": q[-1], "tokens_per_s": s.tokens / med,
                      "mfu" if mfu <= 1 else "mfu_invalid": mfu,  # above 100%: the ceiling or the flop count is wrong
                      "copy_bytes_per_s": ceilings["copy_bytes_per_s"], "matmul_flops_per_s": ceilings["matmul_flops_per_s"]}
            if peak is not None:
                values["peak_mem_bytes"] = peak
            rows += [dict(base, metric=k, value=float(v)) for k, v in values.items()]
        return rows


# ---------------------------------------------------------------------- activation memory
HC_PUBLISHED_ACT_RATIO = 1.26  # HC paper: activation memory +26% over the plain residual (SCIENCE.md)


def activation_rows(cases, steppers, skipped, device, vocab, rows, log) -> list[dict]:
    """act_bytes_per_token (without / with train.recompute) per case; see the module doc."""

    base_of = {r["case"]: {k: v for k, v in r.items() if k not in ("metric", "value")} for r in rows}
    out = []
    for i, case in enumerate(cases):
        if case.backend == "compile" or case.skip or (case.is_peer and steppers[i] is None):
            continue
        base = base_of[i]
        interpreted = case.backend == "triton" and triton_unavailable_reason(device) is not None
        try:
            if case.is_peer:  # no recompute: the peer's connection runs whole
                m = {"off": bytes_per_token(steppers[i].model, autocast=steppers[i].autocast), "on": None, "recompute_block": None}
            elif interpreted:
                log(f"activation memory of {case.variant}/triton under Triton's interpreter (subprocess)")
                m = measure_in_subprocess(case.cfg, vocab or tokenizer_vocab(case.cfg), env={"TRITON_INTERPRET": "1"})
                base = dict(base, note="activation memory under Triton's interpreter (subprocess)"
                            + (f"; step time not measured: {skipped[i]}" if i in skipped else ""))
            else:
                m = measure(case.cfg, vocab or tokenizer_vocab(case.cfg), device,
                            autocast=autocast_context(device, case.cfg.train.dtype))
        except Exception as e:
            reason = skip_reason(case, e) or (f"failed: {type(e).__name__}: {str(e)[:300]}" if interpreted else None)
            if reason is None:
                raise
            log(f"activation memory of {case.variant}/{case.backend} not measured: {reason}")
            out.append(dict(base, metric="skipped", value=float("nan"), note=f"activation memory not measured: {reason}"))
            continue
        values = {"act_bytes_per_token": m["off"]}
        if not case.is_peer:  # a variant with nothing to recompute (identity) stores the same with it on
            values["act_bytes_per_token_recompute"] = m["off"] if m["on"] is None else m["on"]
            if m["recompute_block"]:
                values["recompute_block"] = m["recompute_block"]
        if case.variant == "hc":
            values["act_ratio_published"] = HC_PUBLISHED_ACT_RATIO
        out += [dict(base, metric=k, value=float(v)) for k, v in values.items()]
    return out


def add_activation_ratios(df):
    """act_ratio (and act_ratio_recompute): saved bytes per token / identity's, same preset, width, backend."""
    import pandas as pd

    if df.empty or "act_bytes_per_token" not in set(df.metric):
        return df
    key = ["preset", "d_model", "backend"]
    act = df[df.metric == "act_bytes_per_token"]
    ident = act[act.variant == "identity"].set_index(key)["value"]
    extra = []
    for metric, ratio in (("act_bytes_per_token", "act_ratio"), ("act_bytes_per_token_recompute", "act_ratio_recompute")):
        for _, row in df[df.metric == metric].iterrows():
            k = (row.preset, row.d_model, row.backend)
            if k in ident.index:
                extra.append(dict(row.drop(["metric", "value"]).to_dict(), metric=ratio, value=row.value / ident[k]))
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True)


def declared_streams(case: Case) -> int:
    """n of a case that never built: as asked, else the variant's default (for skipped rows)."""
    if case.variant == "identity":
        return 1
    if case.n_streams:
        return case.n_streams
    if case.is_peer:
        return DEFAULT_N_STREAMS

    return get_variant_class(case.variant).default_n_streams


def add_overheads(df, cases, ceilings, dtype):
    """Append measured and predicted overhead rows vs identity (same preset, width, backend)."""
    import pandas as pd

    if df.empty:
        return df
    times = df[df.metric == "step_time_s"]
    key = ["preset", "d_model", "backend"]
    ident = times[times.variant == "identity"].set_index(key)["value"]
    elem = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    extra = []
    for _, row in times.iterrows():
        k = (row.preset, row.d_model, row.backend)
        if k not in ident.index:
            continue
        base = row.drop(["metric", "value"]).to_dict()
        predicted = predicted_overhead(cases[row.case].cfg, int(row.n_streams), ident[k], ceilings, elem)
        extra.append(dict(base, metric="overhead", value=row.value / ident[k] - 1))
        extra.append(dict(base, metric="overhead_predicted_io", value=predicted))
    return pd.concat([df, pd.DataFrame(extra)], ignore_index=True)


def summary(df) -> str:
    """A small text table: one line per configuration; then skipped cases and peer notes."""
    if df.empty:
        return "(no results)"
    return "\n".join(timing_lines(df[df.metric != "skipped"]) + summary_notes(df))


def summary_notes(df) -> list[str]:
    """What the timing table needs beside it: the act_* legend, skipped cases, each peer's differences."""
    lines = []
    if "mfu_invalid" in set(df.metric):
        lines.append("mfu 'error': the step's flops over its time exceeded the best matmul rate measured between the "
                     "rounds, so the flop count or the ceiling is wrong for it (value kept as mfu_invalid)")
    if "act_bytes_per_token" in set(df.metric):
        lines.append("act_*: bytes saved for backward per token, counted exactly (harness/bench/activation_memory.py), without "
                     "and with train.recompute, and as a ratio to identity's; act_ratio_published: the HC paper's +26% for HC")
    if "note" in df:
        counted = set(df[df.metric == "act_bytes_per_token"].case)  # e.g. triton on a CPU: counted, not timed
        for _, r in df[df.metric == "skipped"].drop_duplicates("case").iterrows():
            label = "not timed (activation memory above)" if r.case in counted else "skipped"
            lines.append(f"{label}: {r.preset} d={r.d_model} n={r.n_streams} {r.variant} / {r.backend}: {r.note}")
        peers = df[(df.metric != "skipped") & df.variant.isin(list(PEERS))].drop_duplicates(["variant", "n_streams"])
        for _, r in peers.iterrows():
            lines.append(f"{r.variant} n={r.n_streams}: {r.note}")
    return lines


def timing_table(df) -> tuple[list[str], list[list[str]]]:
    """(header, rows): one row per configuration timed, the metrics formatted for reading."""
    wide = df.pivot_table(index=["preset", "d_model", "n_streams", "variant", "backend"], columns="metric", values="value")
    if "mfu_invalid" in wide:  # printed as a measurement error, never as a number above 100%
        wide["mfu"] = wide["mfu"] if "mfu" in wide else float("nan")
        wide["mfu"] = wide["mfu"].astype(object).where(wide["mfu_invalid"].isna(), "error")
    cols = [c for c in ("step_time_s", "tokens_per_s", "mfu", "peak_mem_bytes", "overhead", "overhead_predicted_io",
                        "act_bytes_per_token", "act_ratio", "act_bytes_per_token_recompute", "act_ratio_recompute",
                        "act_ratio_published") if c in wide]
    fmt = {"step_time_s": "{:.4f}", "tokens_per_s": "{:,.0f}", "mfu": "{:.1%}", "peak_mem_bytes": "{:,.0f}",
           "overhead": "{:+.1%}", "overhead_predicted_io": "{:+.1%}", "act_bytes_per_token": "{:,.0f}",
           "act_ratio": "{:.2f}x", "act_bytes_per_token_recompute": "{:,.0f}", "act_ratio_recompute": "{:.2f}x",
           "act_ratio_published": "{:.2f}x"}
    rows = [[str(i) for i in idx] + [r[c] if isinstance(r[c], str) else fmt[c].format(r[c]) if r[c] == r[c] else "-"
                                     for c in cols] for idx, r in wide[cols].iterrows()]
    return ["preset", "d", "n", "variant", "backend"] + cols, rows


def timing_lines(df) -> list[str]:
    if df.empty:
        return ["(no timings)"]
    header, rows = timing_table(df)
    return ["  ".join(line) for line in [header, *rows]]


def main_bench_model(args) -> int:
    """`mhc-bench bench model`: parse the lists, run, print and save the table."""
    split = lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else []
    backends = split(args.backends)
    for b in backends:
        if b not in ("torch", "triton", "compile"):
            raise UserError(f"unknown backend {b!r} in --backends; choose from torch, triton, compile")
    try:
        widths = [int(w) for w in split(args.widths)]
        streams = [int(n) for n in split(args.streams)]
    except ValueError:
        raise UserError(f"--widths/--streams take comma-separated integers, got {args.widths!r} / {args.streams!r}") from None
    peers = parse_peers(args.peers)
    cases = build_cases(split(args.preset), split(args.variants), backends, widths, streams, args.overrides, peers)
    device = resolve_device(args.device)
    if args.profile < 0:
        raise UserError(f"--profile takes a number of operators (0 = no profile), got {args.profile}")
    use_threads(cases)
    use_cpu_kernels(cases)
    profiles: list[str] = []
    df = run_bench(cases, device, args.rounds, args.steps, args.warmup, log=lambda m: print(m, file=sys.stderr),
                   profile_top=args.profile, profile_out=profiles.append)
    if profiles:
        print("\n".join(profiles).lstrip("\n") + "\n")
    print(summary(df))
    path = save_table(df, args.out, args.runs_dir, "model")
    if profiles:
        write_text(path.with_suffix(".profile.txt"), "\n".join(profiles).lstrip("\n") + "\n")
        print(f"profiles: {path.with_suffix('.profile.txt')}")
    return 0


def use_threads(cases: list[Case]) -> int:
    """Run every case on `train.threads` CPU threads, as `mhc-bench train` does (0 = torch's default).

    The cases share one process, so they share one thread count: `--set train.threads=1` sets it,
    a case-specific value cannot exist (overrides apply to every case). Returns the count in use.
    """
    wanted = {c.cfg.train.threads for c in cases} - {0}
    if len(wanted) > 1:
        raise UserError(f"bench model: the cases ask for different train.threads ({sorted(wanted)}); they share one process")
    if wanted:
        torch.set_num_threads(wanted.pop())
    return torch.get_num_threads()


def use_cpu_kernels(cases: list[Case]) -> str:
    """Set train.cpu_kernels for the process (one value for all cases, as threads); returns what
    runs: 'on' or 'off' (auto resolved by whether the CPU kernels build here)."""
    modes = {c.cfg.train.cpu_kernels for c in cases}
    if len(modes) > 1:
        raise UserError(f"bench model: the cases ask for different train.cpu_kernels ({sorted(modes)}); they share one process")
    mode = modes.pop() if modes else "auto"
    set_cpu_kernels(mode)
    return "off" if mode == "off" or cpu_build.unavailable_reason() else "on"


def save_table(df, out: str | None, runs_dir: str, kind: str) -> Path:
    """A benchmark's long table, atomically, at --out or <runs_dir>/bench/<kind>-<time>.parquet."""
    path = Path(out) if out else Path(runs_dir) / "bench" / f"{kind}-{now().replace(':', '')}.parquet"
    write_parquet(path, df)
    print(f"table: {path}")
    return path


def register(sub) -> None:
    """Add `bench model` to the `bench` sub-command group."""
    p = sub.add_parser("model", help="training-step time, tokens/s, MFU, memory and overhead per variant x backend x preset")
    p.add_argument("--preset", default="tiny", help="comma-separated presets (default tiny)")
    p.add_argument("--variants", default=",".join(default_variants()),
                   help="comma-separated variants (default: every registered variant with in_bench: %(default)s)")
    p.add_argument("--backends", default="torch", help="comma-separated: torch, triton, compile (torch.compile of the torch path)")
    p.add_argument("--peers", default="all",
                   help=f"public implementations timed as extra rows in the same model: all (default), none, or "
                        f"comma-separated from {', '.join(PEERS)} (a missing package gives 'skipped' rows)")
    p.add_argument("--widths", default="", help="comma-separated d_model values to sweep (default: the preset's)")
    p.add_argument("--streams", default="", help="comma-separated n to sweep for multi-stream variants (default: each variant's)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    p.add_argument("--steps", type=int, default=3, help="training steps per configuration per round (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration first (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile one step of each case and print its top N operators by self time "
                        "(torch.profiler), also saved beside the table as .profile.txt (default 0: no profile)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every case")
    p.add_argument("--runs-dir", default="runs", help="the table goes to RUNS_DIR/bench/ (default runs)")
    p.add_argument("--out", default="", help="explicit output Parquet path")
    p.set_defaults(func=main_bench_model)
