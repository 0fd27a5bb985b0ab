"""torch.compile sees each variant's whole forward + loss as one graph (no graph breaks).

A graph break splits the compiled step where Python had to take over (a host read, an
untraceable call), costing a device sync or a lost fusion every step. With backend=triton the
mixing ops are torch.library custom ops (kernels/backend.kernel_op): one opaque node each, so
the compiled graph calls the Triton kernels and stays whole (on a CPU the kernels run in
Triton's interpreter, which tests/conftest.py switches on).
"""

import pytest
import torch

from harness.core.config import apply_overrides
from harness.core.presets import get_preset
from harness.train.model import build_model


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name", ["identity", "hc", "mhc", "mhc-lite"])
def test_forward_and_loss_compile_without_graph_breaks(name, backend, single_thread):
    if backend == "triton":
        pytest.importorskip("triton")
    cfg = apply_overrides(get_preset("tiny"), [f"variant.name={name}", f"variant.backend={backend}"])  # mhc: sk_mode paper
    torch.manual_seed(0)
    model = build_model(cfg, 256)
    idx = torch.randint(0, 256, (2, 16))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(idx, idx)
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1
