"""A `tiny` mHC model trained with backend=triton follows backend=torch step for step.

20 optimiser steps on the real corpus (shrunk: d_model 32, seq_len 32, batch 2, so that the
Triton interpreter on a CPU finishes in well under a minute). Tolerances, and why:
  - every train loss and both val losses within 1e-4 absolute (losses ~4-6 nats);
  - every weight of the final checkpoint within 1e-4 absolute.
The two paths differ only in the order of fp32 sums: measured on a CPU, losses agree to 5e-7
and weights to 3e-6 after 20 steps. The losses alone are a weak check at this size (dropping
the whole H_res gradient moves them by only ~1e-6 in 20 steps), but the weights are not: with
the H_res gradient dropped, the res bias, α_res and φ end 1e-2 to 3e-2 away.
"""

import pandas as pd
import pytest
import torch

pytest.importorskip("triton")

from harness.train.loop import train  # noqa: E402

ATOL = 1e-4
SHRINK = ["variant.name=mhc", "train.steps=20", "model.d_model=32", "model.seq_len=32", "train.batch_size=2",
          "train.eval_batches=1", "train.diag_every=0", "train.checkpoint_every=0"]


def losses(result):
    m = pd.read_parquet(result.run_dir / "metrics.parquet")
    return m[m.split == "train"].set_index("step")["loss"], m[m.split == "val"].set_index("step")["loss"]


def weights(result) -> dict[str, torch.Tensor]:
    return torch.load(result.run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_tiny_mhc_trains_the_same_with_triton_and_torch(tiny_cfg):
    ref = train(tiny_cfg(*SHRINK, "variant.backend=torch"))
    ker = train(tiny_cfg(*SHRINK, "variant.backend=triton"))
    assert ref.status == ker.status == "done"
    (tr_ref, val_ref), (tr_ker, val_ker) = losses(ref), losses(ker)
    assert list(tr_ref.index) == list(tr_ker.index) == list(range(1, 21))
    gap = (tr_ref - tr_ker).abs()
    assert gap.max() <= ATOL, f"train loss differs by {gap.max():.3g} at step {gap.idxmax()}"
    assert (val_ref - val_ker).abs().max() <= ATOL, (val_ref.to_dict(), val_ker.to_dict())
    assert tr_ref.iloc[-1] < tr_ref.iloc[0] - 0.5  # it really trained
    w_ref, w_ker = weights(ref), weights(ker)
    assert w_ref.keys() == w_ker.keys() and any(k.endswith("bias_res") for k in w_ref)
    diffs = {k: (w_ref[k] - w_ker[k]).abs().max().item() for k in w_ref if w_ref[k].is_floating_point()}
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= ATOL, f"after 20 steps {worst} differs by {diffs[worst]:.3g}"
