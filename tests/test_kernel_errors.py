"""A machine where Triton cannot build or launch a kernel gets one line naming the kernel and why.

Simulated without a GPU: the kernels imported for real (no interpreter), meta tensors accepted
(kernels.backend.compile_only), but no Triton driver installed, so the launch fails inside
Triton exactly as on a machine without a usable GPU driver or compiler.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = """
import torch
from harness.core.errors import UserError
from kernels.backend import compile_only
from kernels.premix import premix
with compile_only(132):
    try:
        premix(torch.empty(4, 2, 8, device="meta"), torch.empty(4, 2, device="meta"), "triton")
    except UserError as e:
        print(e)
"""


def test_a_kernel_triton_cannot_build_is_one_user_error_naming_it():
    import torch

    if torch.cuda.is_available():
        pytest.skip("with a GPU Triton has a driver here")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", SCRIPT], cwd=Path(__file__).resolve().parents[1], env=env,
                       capture_output=True, text=True, timeout=300)
    line = r.stdout.strip()
    assert r.returncode == 0 and line.count("\n") == 0, r.stdout + r.stderr
    assert line.startswith("backend=triton: the forward kernel of kernels/premix_triton.py cannot be built or launched")
    assert "0 active drivers" in line and "variant.backend=torch" in line
