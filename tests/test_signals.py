"""Instability signals (harness/core/signals.py) on hand-made tables: each definition can fail."""

import math

import pandas as pd

from harness.core import signals


def metrics(losses, norms, val=(5.0, 3.0)):
    train = pd.DataFrame({"step": range(1, len(losses) + 1), "split": "train", "loss": losses, "grad_norm": norms})
    steps = [round(i * len(losses) / (len(val) - 1)) for i in range(len(val))]  # step 0 ... the last step
    v = pd.DataFrame({"step": steps, "split": "val", "loss": list(val), "grad_norm": math.nan})
    return pd.concat([v, train], ignore_index=True)


def diagnostics(steps_gains, L=4):
    rows = []
    for step, gain in steps_gains:
        for metric in ("amax_fwd", "amax_bwd"):
            for stat, factor in (("token_mean", 1.0), ("token_max", 2.0)):
                rows.append(dict(step=step, scope="span", start=0, end=L - 1, metric=metric, stat=stat, value=gain * factor))
                rows.append(dict(step=step, scope="span", start=1, end=L - 1, metric=metric, stat=stat, value=-1.0))
        rows.append(dict(step=step, scope="layer", start=0, end=0, metric="h_res", stat="mean", value=0.25))
    return pd.DataFrame(rows)


def test_a_loss_spike_is_one_event_above_the_running_minimum_after_warmup():
    losses = [9.0, 8.0, 4.0, 3.0, 3.3, 2.9, 5.0, 6.0, 2.8, 2.7, 4.1, 2.6]  # step 1 is in warm-up and is the max
    table = signals.per_step(metrics(losses, [1.0] * 12), None, warmup_steps=1)
    assert table.loc[table.loss_spike, "step"].tolist() == [7, 11]  # 5.0 and 6.0: one spike; 3.3 < 1.5 x 3.0
    s = signals.summary(table, metrics(losses, [1.0] * 12), {"status": "done", "step": 12})
    assert s["loss_spikes"] == 2 and s["first_loss_spike_step"] == 7 and not s["diverged"]


def test_a_grad_norm_spike_is_measured_against_the_median_before_it():
    norms = [1.0 + 0.1 * (i % 3) for i in range(60)]
    norms[40] = 50.0
    norms[41] = 30.0
    norms[55] = 9.0  # under 10x the median
    table = signals.per_step(metrics([3.0] * 60, norms), None, warmup_steps=5)
    assert table.loc[table.grad_spike, "step"].tolist() == [41]
    assert signals.summary(table, metrics([3.0] * 60, norms), None)["grad_spikes"] == 1


def test_divergence_and_a_run_that_learned_nothing_are_both_marked():
    m = metrics([3.0] * 5, [1.0] * 5)
    table = signals.per_step(m, None, 0)
    s = signals.summary(table, m, {"status": "diverged", "step": 6})
    assert s["diverged"] and s["diverged_step"] == 6
    flat = metrics([3.0] * 5, [1.0] * 5, val=(5.0, 5.2))
    s = signals.summary(signals.per_step(flat, None, 0), flat, {"status": "done", "step": 5})
    assert s["diverged"] and math.isnan(s["diverged_step"])


def test_a_run_that_learned_then_blew_up_to_a_uniform_predictor_is_marked_diverged():
    # HC at lr 0.3, 16 blocks: 5.78 at step 0, 3.4 at best, then ln(320) = 5.768: finite, below step 0
    collapsed = metrics([3.0] * 8, [1.0] * 8, val=(5.7824, 13.7, 3.405, 5.7683))
    assert signals.summary(signals.per_step(collapsed, None, 0), collapsed, {"status": "done"})["diverged"]
    # collapsed before the first evaluation: its validation curve never shows the ~3.1 it trained at
    hidden = metrics([5.7] * 10 + [3.1] * 30 + [5.77] * 60, [1.0] * 100, val=(5.785, 5.768, 5.768, 5.768, 5.768))
    assert signals.summary(signals.per_step(hidden, None, 0), hidden, {"status": "done"})["diverged"]
    # blew up at step 3 and never trained; ends as a uniform guess over 320 logits, just under its init loss
    uniform = metrics([18.0] * 50 + [5.77] * 50, [1.0] * 100, val=(5.785, 5.768, 5.768, 5.768, 5.768321))
    assert not signals.summary(signals.per_step(uniform, None, 0), uniform, {"status": "done"})["diverged"]  # vocab unknown
    assert signals.summary(signals.per_step(uniform, None, 0), uniform, {"status": "done"}, vocab_size=320)["diverged"]
    lucky = metrics([3.0] * 99 + [1.5], [1.0] * 100, val=(5.78, 3.2, 3.1, 3.05, 3.0))  # one easy batch is not "its best"
    assert not signals.summary(signals.per_step(lucky, None, 0), lucky, {"status": "done"})["diverged"]
    noisy = metrics([3.0] * 8, [1.0] * 8, val=(5.7824, 2.93, 3.11, 3.02))  # HC at lr 0.03: worse than its best, not blown up
    assert not signals.summary(signals.per_step(noisy, None, 0), noisy, {"status": "done"})["diverged"]


def test_composite_amax_is_the_whole_depth_span_over_training():
    d = diagnostics([(0, 1.0), (2, 40.0), (4, 25.0)])
    table = signals.per_step(metrics([3.0] * 5, [1.0] * 5), d, 0)
    amax = table.dropna(subset=["amax_fwd_mean"])
    assert amax.step.tolist() == [0, 2, 4] and amax.amax_fwd_mean.tolist() == [1.0, 40.0, 25.0]
    assert amax.amax_bwd_max.tolist() == [2.0, 80.0, 50.0]  # the span 1..3 (-1) is not the whole depth
    s = signals.summary(table, metrics([3.0] * 5, [1.0] * 5), {"status": "done"})
    assert s["amax_fwd_final"] == 25.0 and s["amax_fwd_peak"] == 40.0 and s["amax_fwd_final_max"] == 50.0


def test_a_run_without_diagnostics_or_metrics_gives_empty_signals_not_an_error():
    table = signals.per_step(None, None, 0)
    assert table.empty
    s = signals.summary(table, None, None)
    assert s["loss_spikes"] == 0 and math.isnan(s["amax_fwd_final"]) and not s["diverged"]
