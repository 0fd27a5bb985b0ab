"""torch.compile sees each variant's whole forward + loss as one graph (no graph breaks).

A graph break splits the compiled step where Python had to take over (a host read, an
untraceable call), costing a device sync or a lost fusion every step.
"""

import pytest
import torch

from harness.config import apply_overrides
from harness.model import build_model
from harness.presets import get_preset


@pytest.mark.parametrize("name", ["identity", "hc", "mhc", "mhc-lite"])
def test_forward_and_loss_compile_without_graph_breaks(name, single_thread):
    cfg = apply_overrides(get_preset("tiny"), [f"variant.name={name}", "variant.backend=torch", "variant.sk_mode=paper"])
    torch.manual_seed(0)
    model = build_model(cfg, 256)
    idx = torch.randint(0, 256, (2, 16))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(idx, idx)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
