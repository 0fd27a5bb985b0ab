"""Shared fixtures: a per-session token cache so the real corpus is tokenized once.

Without a GPU the Triton kernels run in Triton's CPU interpreter, which must be switched on
before any kernel module is imported (they are imported lazily, on first use of
backend=triton): so it is set here, before any test module. With a GPU it stays off and the
kernels compile for real.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from harness.core.config import apply_overrides
from harness.core.presets import get_preset


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("data-cache")


@pytest.fixture
def tiny_cfg(tmp_path, data_cache):
    """The `tiny` preset writing runs under tmp_path and sharing one token cache."""

    def make(*overrides):
        cfg = get_preset("tiny")
        cfg.run.runs_dir = str(tmp_path / "runs")
        cfg.run.progress = "off"
        cfg.data.cache_dir = str(data_cache)
        return apply_overrides(cfg, list(overrides))

    return make


@pytest.fixture
def single_thread():
    """Tiny tensors: a thread pool costs more than it saves (and stalls on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
