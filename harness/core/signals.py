"""Instability signals of one run, read from its own tables: what "training was unstable" means here.

The mHC paper's evidence for HC's instability is a loss surge with a gradient-norm spike and a
composite residual gain in the thousands. Each is defined once here, computed from the run's
metrics and diagnostics (so runs trained before a definition changed get it too), written by
training to `signals.parquet` in the run folder, and gathered by `grid collect` and `report`.

Per step (one row per training step, signals.parquet):
    loss_spike       the step starts a loss spike: after warm-up, the training loss rose above
                     LOSS_SPIKE_FACTOR x its running minimum (consecutive steps above it are one
                     spike). The factor is set above the step-to-step noise of small batches: on
                     the depth grid's 60 runs (tiny preset, batch 8 x 64 tokens) no run without a
                     visible surge exceeded 1.33x, while the surges reached 2-3x.
    grad_spike       the step starts a gradient-norm spike: the global norm (before clipping) above
                     GRAD_SPIKE_FACTOR x the median of the previous GRAD_WINDOW steps. Gradient
                     norms are heavier-tailed than losses early in training (20x the median was seen
                     without a loss surge), hence the larger factor.
    amax_fwd_max, amax_fwd_mean, amax_bwd_max, amax_bwd_mean
                     composite Amax gain of the whole depth, Π H_res over every sub-layer (forward =
                     max |row sum|, backward = max |column sum|), worst token and token mean, at the
                     steps with diagnostics (NaN elsewhere).

Per run (a summary, the `signals.*` columns of runs.parquet):
    loss_spikes, grad_spikes         number of spikes; first_loss_spike_step
    diverged_step                    the step whose loss was not finite (training stops there)
    diverged                         non-finite loss; or a final validation loss no better than the
                                     step-0 one or than a uniform guess over the model's vocabulary,
                                     ln(vocab_size) - UNIFORM_MARGIN (the run learned nothing, or
                                     collapsed back to nothing); or one above
                                     LOSS_SPIKE_FACTOR x the best loss it reached, validation or
                                     the training loss's mean over BEST_WINDOW steps (it learned,
                                     then blew up: at lr 0.1-0.3 HC at 16 blocks ends as a uniform
                                     predictor, loss ln(320), after training losses of ~3.1,
                                     which a collapse before the first evaluation hides from the
                                     validation curve). What the learning-rate stress curve marks
    amax_{fwd,bwd}_{final,peak}      token-mean composite gain at the last diagnostics step and its
                                     maximum over training; *_final_max the worst token at the end
"""

from __future__ import annotations

import math

from harness.core.atomic import write_parquet

UNIFORM_MARGIN = 0.01  # nats: a final loss this close to ln(vocab_size) is a uniform guess
BEST_WINDOW = 20  # training steps averaged for the best loss a run reached (the blow-up rule)
LOSS_SPIKE_FACTOR = 1.5
GRAD_SPIKE_FACTOR = 10.0
GRAD_WINDOW = 50
SIGNALS_NAME = "signals.parquet"
AMAX_COLUMNS = {("amax_fwd", "token_max"): "amax_fwd_max", ("amax_fwd", "token_mean"): "amax_fwd_mean",
                ("amax_bwd", "token_max"): "amax_bwd_max", ("amax_bwd", "token_mean"): "amax_bwd_mean"}


def _starts(flags):
    """True where a run of consecutive True values begins (one event per run)."""
    return flags & ~flags.shift(1, fill_value=False)


def composite_amax(diagnostics):
    """Per diagnostics step, the whole-depth composite gains (AMAX_COLUMNS), or an empty frame."""
    import pandas as pd

    if diagnostics is None or diagnostics.empty:
        return pd.DataFrame(columns=["step", *AMAX_COLUMNS.values()])
    spans = diagnostics[diagnostics["scope"] == "span"]
    whole = spans[(spans["start"] == 0) & (spans["end"] == spans["end"].max())]
    whole = whole[whole["metric"].isin(["amax_fwd", "amax_bwd"]) & whole["stat"].isin(["token_max", "token_mean"])]
    wide = whole.pivot_table(index="step", columns=["metric", "stat"], values="value", aggfunc="last")
    wide.columns = [AMAX_COLUMNS[c] for c in wide.columns]
    return wide.reset_index()


def per_step(metrics, diagnostics, warmup_steps: int):
    """The per-step signals table (module doc) from a run's metrics and diagnostics frames."""
    import pandas as pd

    train = metrics[metrics["split"] == "train"].sort_values("step") if metrics is not None and len(metrics) else None
    if train is None or train.empty:
        out = pd.DataFrame({"step": pd.Series(dtype="int64")})
    else:
        loss, norm = train["loss"].astype(float), train["grad_norm"].astype(float)
        running_min = loss.cummin()
        median = norm.rolling(GRAD_WINDOW, min_periods=min(10, GRAD_WINDOW)).median().shift(1)
        after_warmup = train["step"] > warmup_steps
        out = pd.DataFrame({
            "step": train["step"].astype("int64").to_numpy(),
            "loss": loss.to_numpy(),
            "loss_running_min": running_min.to_numpy(),
            "loss_spike": _starts(after_warmup & (loss > LOSS_SPIKE_FACTOR * running_min)).to_numpy(),
            "grad_norm": norm.to_numpy(),
            "grad_norm_median": median.to_numpy(),
            "grad_spike": _starts(after_warmup & (norm > GRAD_SPIKE_FACTOR * median)).to_numpy(),
        })
    amax = composite_amax(diagnostics)
    out = out.merge(amax, on="step", how="outer").sort_values("step", kind="stable").reset_index(drop=True)
    for flag in ("loss_spike", "grad_spike"):
        if flag in out:
            out[flag] = out[flag].astype("boolean").fillna(False).astype(bool)
    return out


def summary(signals, metrics, status: dict | None, vocab_size: int | None = None) -> dict:
    """The per-run summary (module doc) from its per-step table, metrics and status.json
    (and the model's output vocabulary, env.json's vocab_size, when known)."""
    s = {}
    for flag, name in (("loss_spike", "loss_spikes"), ("grad_spike", "grad_spikes")):
        s[name] = int(signals[flag].sum()) if flag in signals else 0
    spikes = signals.loc[signals["loss_spike"], "step"] if "loss_spike" in signals else []
    s["first_loss_spike_step"] = int(spikes.iloc[0]) if len(spikes) else math.nan
    status = status or {}
    s["diverged_step"] = int(status["step"]) if status.get("status") == "diverged" and "step" in status else math.nan
    val = metrics[metrics["split"] == "val"].sort_values("step") if metrics is not None and len(metrics) else None
    learned_nothing = blew_up = False
    if val is not None and len(val) >= 2 and status.get("status") == "done":
        final, first, best = float(val["loss"].iloc[-1]), float(val["loss"].iloc[0]), float(val["loss"].min())
        uniform = math.log(vocab_size) - UNIFORM_MARGIN if vocab_size else math.inf
        learned_nothing = not final < min(first, uniform)
        train = metrics[metrics["split"] == "train"].sort_values("step")["loss"]
        if len(train) >= BEST_WINDOW:  # a window's mean, not one lucky batch
            best = min(best, float(train.rolling(BEST_WINDOW).mean().min()))
        blew_up = final > LOSS_SPIKE_FACTOR * best
    s["diverged"] = bool(status.get("status") == "diverged" or learned_nothing or blew_up)
    for side in ("fwd", "bwd"):
        col = signals[f"amax_{side}_mean"].dropna() if f"amax_{side}_mean" in signals else []
        worst = signals[f"amax_{side}_max"].dropna() if f"amax_{side}_max" in signals else []
        s[f"amax_{side}_final"] = float(col.iloc[-1]) if len(col) else math.nan
        s[f"amax_{side}_peak"] = float(col.max()) if len(col) else math.nan
        s[f"amax_{side}_final_max"] = float(worst.iloc[-1]) if len(worst) else math.nan
    return s


def of_run(run):
    """(per-step table, summary) of a RunDir, computed from its tables now."""
    metrics, diagnostics = run.read_table("metrics"), run.read_table("diagnostics")
    warmup = run.read_config().get("optim", {}).get("warmup_steps", 0)
    table = per_step(metrics, diagnostics, warmup)
    return table, summary(table, metrics, run.read_status(), run.read_env().get("vocab_size"))


def write(run) -> None:
    """Write the run's signals.parquet (atomically) from the tables it has written so far."""
    if run.writer and (run.path / "metrics.parquet").is_file():
        write_parquet(run.path / SIGNALS_NAME, of_run(run)[0])
