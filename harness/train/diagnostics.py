"""Stability diagnostics of the residual mixing: what the mHC paper plots (Fig. 3, 7) and more.

With x_{l+1} = H_res,l · x_l + (branch terms), the signal carried from sub-layer a to the
input of sub-layer b + 1 is the composite

    H_{a→b} = H_res,b · H_res,b-1 ⋯ H_res,a        (later layers multiply on the LEFT)

Its Amax gain magnitudes (paper Fig. 3/7):
    forward  gain = max absolute row sum    = ‖H‖_∞ : worst growth of x ↦ H x
    backward gain = max absolute column sum = ‖H‖_1 : worst growth of g ↦ Hᵀ g (gradients)
Both are 1 for any permutation or doubly stochastic matrix; HC's unconstrained products reach
~3000 in the paper, mHC's ~1.6 (its column sums are inexact at finite Sinkhorn k).

Spans ("paper", the default): every single layer [l, l] (Fig. 3a), every prefix [0, l] (input
to depth l, the forward view) and every suffix [l, L-1] (layer l to the output, the paper's
Eq. 4 composite Π_{i=1}^{L-l} H_res,L-i, whose backward gain is what gradients reaching layer
l see). "all" gives every [a, b] (L(L+1)/2 spans). L counts sub-layers (attention and MLP).

Aggregation over tokens, all three reported in the `stat` column:
    token_mean   the metric per token, then the mean over the tokens given. This is our
                 reading of "the paper averages over the tokens of one sequence" (pass one
                 sequence to match it exactly); it is the one to compare with the paper.
    token_max    the worst token (what a single badly scaled input does).
    mean_matrix  the metric of the composite of token-averaged H_res. Averaging matrices first
                 lets entries of opposite sign cancel, so for HC it can hide gain that every
                 single token sees; it is a smooth summary, not the paper's number.

Also per span: max |log column sum| (0 when every column sums to 1; the mHC-lite paper's
"column sums off by up to 220%") and the distance from the uniform matrix J/n, relative to a
permutation's (1 = streams kept apart like I, 0 = fully homogenised; 0 for n = 1).
Per layer: mean/min/max/std of H_pre, H_post, H_res (the min of H_res is its most negative
entry where entries may be negative, sHC); the doubly-stochastic gaps max |row sum - 1|,
max |col sum - 1|; the spectral norm of H_res (1 for sHC by construction, ≤ 1 for doubly
stochastic matrices); and log(1/ν) = max - min of the H_res logits (mHC only).
Stream collapse (arXiv 2606.03483), per layer and averaged over the layers (scope 'model'): the
largest stream's share of the sub-layer input's energy (`stream_share`, 1/n balanced, 1 one
stream carries all) and ‖H_res - I‖_F (`res_identity_distance`, 0 = the streams are not mixed).
With `variant.sk_mode=converged`, also the Sinkhorn rounds each H_res took (`sk_rounds`) and
the fraction of tokens whose H_res stopped at `sk_max_iters` short of `sk_tol` (`sk_capped`):
a reference that did not converge must say so (training logs a warning when it is > 0).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from harness.core.atomic import write_parquet
from harness.core.checkpoint import CHECKPOINT_NAME, load_checkpoint
from harness.core.config import from_dict
from harness.train.data import Batches, prepare
from harness.train.model import build_model
from kernels.sinkhorn_reference import capped, sinkhorn_converged, stochasticity_gaps
from variants.base import Mixing

SPAN_SETS = ("paper", "all")
STATS = ("token_mean", "token_max", "mean_matrix")


# =============================================================================================
# Pure functions on matrices (..., n, n)
# =============================================================================================
def amax_forward(m: Tensor) -> Tensor:
    """Max absolute row sum (‖M‖_∞): the forward gain of x ↦ M x."""
    return m.abs().sum(dim=-1).amax(dim=-1)


def amax_backward(m: Tensor) -> Tensor:
    """Max absolute column sum (‖M‖_1): the backward gain of g ↦ Mᵀ g."""
    return m.abs().sum(dim=-2).amax(dim=-1)


def max_abs_log_colsum(m: Tensor) -> Tensor:
    """max_j |log |Σ_i M_ij||: 0 iff every column sums to ±1 (HC's sums may be ≤ 0: |·|, floored)."""
    colsum = m.sum(dim=-2).abs().clamp_min(torch.finfo(m.dtype).tiny)
    return colsum.log().abs().amax(dim=-1)


def uniform_distance(m: Tensor) -> Tensor:
    """‖M - J/n‖_F / ‖I - J/n‖_F: 1 for a permutation, 0 for the uniform (homogenised) matrix."""
    n = m.shape[-1]
    if n == 1:
        return torch.zeros(m.shape[:-2], dtype=m.dtype, device=m.device)
    return (m - 1.0 / n).flatten(-2).norm(dim=-1) / ((n - 1) ** 0.5)


def log_inv_nu(logits: Tensor) -> Tensor:
    """log(1/ν) = max - min of the H_res logits per matrix: how badly scaled Sinkhorn's input is."""
    return logits.amax(dim=(-2, -1)) - logits.amin(dim=(-2, -1))


def composite(mats: list[Tensor]) -> Tensor:
    """H_b ⋯ H_a for mats = [H_a, ..., H_b] (depth order)."""
    out = mats[0]
    for m in mats[1:]:
        out = m @ out
    return out


def span_list(n_layers: int, which: str = "paper") -> list[tuple[int, int]]:
    """Inclusive (start, end) sub-layer spans, sorted; see the module doc."""
    if which == "all":
        return [(a, b) for a in range(n_layers) for b in range(a, n_layers)]
    if which == "paper":
        last = n_layers - 1
        spans = {(l, l) for l in range(n_layers)} | {(0, l) for l in range(n_layers)} | {(l, last) for l in range(n_layers)}
        return sorted(spans)
    raise ValueError(f"unknown span set {which!r}; choose from {', '.join(SPAN_SETS)}")


def span_products(mats: list[Tensor], spans: list[tuple[int, int]]) -> dict[tuple[int, int], Tensor]:
    """Composites for many spans, sharing the running product of each start."""
    ends: dict[int, set[int]] = {}
    for a, b in spans:
        ends.setdefault(a, set()).add(b)
    out = {}
    for a, wanted in ends.items():
        prod = mats[a]
        for b in range(a, max(wanted) + 1):
            if b > a:
                prod = mats[b] @ prod
            if b in wanted:
                out[(a, b)] = prod
    return out


SPAN_METRICS = {
    "amax_fwd": amax_forward,
    "amax_bwd": amax_backward,
    "max_abs_log_colsum": max_abs_log_colsum,
    "uniform_distance": uniform_distance,
}


# =============================================================================================
# Collecting the coefficients a model actually used
# =============================================================================================
@torch.no_grad()
def collect_mixing(model, x: Tensor, shares: list | None = None) -> list[Mixing]:
    """One no-grad forward on token ids x (B, T) with `recording` on; one Mixing per sub-layer
    (and, into `shares` if given, each sub-layer input's largest-stream share, (B, T))."""
    residuals = model.residuals()
    was_training, was_recording = model.training, [r.recording for r in residuals]
    device = next(model.parameters()).device
    model.eval()
    try:
        for r in residuals:
            r.recording, r.last, r.last_share = True, None, None
        model(x.to(device))
        if shares is not None:
            shares[:] = [r.last_share for r in residuals]
        return [r.last for r in residuals]
    finally:
        for r, rec in zip(residuals, was_recording):
            r.recording = rec
        model.train(was_training)


def _stats(values: Tensor) -> dict[str, float]:
    v = values.flatten()
    return {"mean": v.mean().item(), "min": v.min().item(), "max": v.max().item(),
            "std": v.std(unbiased=False).item()}


def collapse_rows(mixings: list[Mixing], shares: list[Tensor | None], n: int, like: Tensor) -> list[dict]:
    """Stream-collapse rows (module doc): per layer (scope 'layer') and their mean over the layers
    (scope 'model', start 0, end L - 1), token_mean and token_max."""
    per_layer = {"stream_share": [s.detach().double().cpu() if s is not None else None for s in shares],
                 "res_identity_distance": [(mix.dense(n, like)[2].detach().double().cpu() - torch.eye(n, dtype=torch.float64))
                                           .square().sum(dim=(-2, -1)).sqrt() for mix in mixings]}
    rows = []
    for metric, values in per_layer.items():
        values = [v for v in values if v is not None]
        for l, v in enumerate(values):
            rows += [dict(scope="layer", start=l, end=l, metric=metric, stat="token_mean", value=v.mean().item()),
                     dict(scope="layer", start=l, end=l, metric=metric, stat="token_max", value=v.max().item())]
        if values:
            stacked = torch.stack([v.flatten() for v in values])  # (L, tokens)
            rows += [dict(scope="model", start=0, end=len(values) - 1, metric=metric, stat="token_mean",
                          value=stacked.mean().item()),
                     dict(scope="model", start=0, end=len(values) - 1, metric=metric, stat="token_max",
                          value=stacked.mean(dim=0).max().item())]
    return rows


def layer_rows(mixings: list[Mixing], n: int, like: Tensor, sinkhorn: dict | None = None) -> list[dict]:
    """Per-sub-layer rows (scope 'layer'); fixed mappings report their defaults.

    `sinkhorn` (the variant's Sinkhorn settings): in converged mode the rounds are recomputed
    from the logits (each matrix's count depends on its own logits only, so this is what the
    forward did) and the matrices that hit the cap are counted.
    """
    rows = []
    for l, mix in enumerate(mixings):
        pre, post, res = (t.detach().double().cpu() for t in mix.dense(n, like))
        row_gap, col_gap = stochasticity_gaps(res)
        per_token = {"h_pre": pre, "h_post": post, "h_res": res}
        for metric, t in per_token.items():
            rows += [dict(scope="layer", start=l, end=l, metric=metric, stat=a, value=v) for a, v in _stats(t).items()]
        gaps = {"res_row_gap": row_gap, "res_col_gap": col_gap, "res_spectral_norm": torch.linalg.matrix_norm(res, ord=2)}
        if mix.res_logits is not None:
            gaps["log_inv_nu"] = log_inv_nu(mix.res_logits.detach().double().cpu())
            if sinkhorn and sinkhorn.get("sk_mode") == "converged":
                tol = sinkhorn["sk_tol"]
                m, rounds = sinkhorn_converged(mix.res_logits.detach(), tol, sinkhorn["sk_max_iters"])
                gaps["sk_rounds"], gaps["sk_capped"] = rounds.double().cpu(), capped(m, tol).double().cpu()
        for metric, t in gaps.items():
            rows.append(dict(scope="layer", start=l, end=l, metric=metric, stat="token_mean", value=t.mean().item()))
            rows.append(dict(scope="layer", start=l, end=l, metric=metric, stat="token_max", value=t.max().item()))
    return rows


def span_rows(mixings: list[Mixing], n: int, like: Tensor, spans: str = "paper") -> list[dict]:
    """Composite-gain rows (scope 'span') for the span set `spans`, with all three aggregations."""
    per_token = [mix.dense(n, like)[2].detach().double().cpu().flatten(0, 1) for mix in mixings]  # (N, n, n)
    averaged = [m.mean(dim=0) for m in per_token]
    wanted = span_list(len(mixings), spans)
    tok, avg = span_products(per_token, wanted), span_products(averaged, wanted)
    rows = []
    for a, b in wanted:
        for metric, fn in SPAN_METRICS.items():
            v = fn(tok[(a, b)])
            for stat, value in (("token_mean", v.mean()), ("token_max", v.max()), ("mean_matrix", fn(avg[(a, b)]))):
                rows.append(dict(scope="span", start=a, end=b, metric=metric, stat=stat, value=value.item()))
    return rows


def capped_summary(rows: list[dict]) -> str | None:
    """One line when some H_res stopped at sk_max_iters short of sk_tol (converged mode), else None."""
    hit = [r for r in rows if r["metric"] == "sk_capped" and r["stat"] == "token_mean" and not r["value"] == 0]
    if not hit:
        return None
    worst = max(hit, key=lambda r: r["value"])
    return (f"Sinkhorn did not converge to variant.sk_tol within variant.sk_max_iters in {len(hit)} sub-layers "
            f"(worst: {worst['value']:.1%} of tokens at sub-layer {worst['start']}); these H_res are not the exact "
            f"projection: raise variant.sk_max_iters")


def diagnostics_rows(model, x: Tensor, step: int, spans: str = "paper") -> list[dict]:
    """Long-format rows {step, scope, start, end, metric, stat, value} for one batch of token ids.

    scope 'layer': sub-layer `start` (= end); stat is mean/min/max/std over all tokens and
    entries for h_pre/h_post/h_res, token_mean/token_max for the gaps and log_inv_nu.
    scope 'span': the composite over sub-layers start..end inclusive; stat is token_mean,
    token_max or mean_matrix (module doc). Identity (n = 1) gives gains of exactly 1.
    """
    shares: list = []
    mixings = collect_mixing(model, x, shares)
    n = model.variant.n_streams
    residual = model.residuals()[0]
    sinkhorn = residual.sinkhorn_options() if hasattr(residual, "sinkhorn_options") else None
    rows = layer_rows(mixings, n, x, sinkhorn) + span_rows(mixings, n, x, spans) + collapse_rows(mixings, shares, n, x)
    return [{"step": int(step), **r} for r in rows]


# =============================================================================================
# A saved run -> diagnostics.parquet
# =============================================================================================
DIAGNOSTICS_NAME = "diagnostics.parquet"


def diagnose_run(run_dir, batch_index: int = 0, spans: str = "paper", device: str = "cpu"):
    """Diagnose a run's checkpoint on validation batch `batch_index`; merge into diagnostics.parquet.

    Rows of the checkpoint's step already in the file (e.g. recorded during training) are
    replaced, every other step is kept, and the file is rewritten atomically. Returns the rows
    of this call as a DataFrame.
    """
    import pandas as pd


    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
    cfg = from_dict(state["config"])
    prepared = prepare(cfg)
    model = build_model(cfg, prepared.tokenizer.vocab_size).to(device)
    model.load_state_dict(state["model"])
    x, _ = Batches(prepared, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed).val_batch(batch_index)
    df = pd.DataFrame(diagnostics_rows(model, x, state["step"], spans))
    path = run_dir / DIAGNOSTICS_NAME
    merged = df
    if path.exists():
        old = pd.read_parquet(path)
        merged = pd.concat([old[old["step"] != state["step"]], df], ignore_index=True)
    write_parquet(path, merged.sort_values(["step", "scope", "start", "end", "metric", "stat"], kind="stable"))
    return df
