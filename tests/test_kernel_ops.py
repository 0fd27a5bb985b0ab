"""The mixing ops are registered correctly as torch.library custom ops (kernels/backend.kernel_op).

`torch.library.opcheck` runs the registration through its own checks: the schema matches what
the function does (no mutation, no aliasing of inputs by outputs), the fake implementation
gives the real outputs' shapes, dtypes and strides (what torch.compile traces with), autograd
is registered where it must be, and AOT dispatch (torch.compile's backward) works. On a CPU the
kernels run in Triton's interpreter (tests/conftest.py). Inputs are small and random; a fixed
mapping's absent coefficient is None and its absent output an empty tensor.
"""

import itertools
import math

import pytest
import torch

pytest.importorskip("triton")

from kernels import backend as kb  # noqa: E402
from kernels.coefficients import heads_backward_op, heads_op  # noqa: E402
from kernels.post_res import post_res_backward_op, post_res_op  # noqa: E402
from kernels.premix import premix_backward_op, premix_op  # noqa: E402
from kernels.project import project_backward_op, project_op  # noqa: E402
from kernels.sinkhorn import sinkhorn_backward_op, sinkhorn_op  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if kb.triton_unavailable_reason(DEVICE):
    pytestmark = pytest.mark.skip(reason=f"Triton kernels cannot run here: {kb.triton_unavailable_reason(DEVICE)}")

T, n, C = 5, 3, 40
G = torch.Generator().manual_seed(0)


def r(*shape, grad=False):
    return torch.randn(shape, generator=G).to(DEVICE).requires_grad_(grad)


def check(op, *args):
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("learned", [True, False], ids=["H_pre", "fixed"])
def test_premix_ops(single_thread, learned):
    x, w = r(T, n, C, grad=True), (r(T, n, grad=True) if learned else None)
    check(premix_op, x, w)
    check(premix_backward_op, x.detach(), None if w is None else w.detach(), r(T, C))


@pytest.mark.parametrize("post,res", list(itertools.product([True, False], repeat=2)))
def test_post_res_ops(single_thread, post, res):
    x, y = r(T, n, C, grad=True), r(T, C, grad=True)
    hp, hr = (r(T, n, grad=True) if post else None), (r(T, n, n, grad=True) if res else None)
    check(post_res_op, x, y, hp, hr)
    check(post_res_backward_op, x.detach(), y.detach(), None if hp is None else hp.detach(),
          None if hr is None else hr.detach(), r(T, n, C))


@pytest.mark.parametrize("precision", ["ieee", "tf32"])
def test_project_ops(single_thread, precision):
    K, W = n * C, n * n + 2 * n
    x, phi = r(T, K, grad=True), r(K, W, grad=True) / math.sqrt(K)
    check(project_op, x, phi.detach().requires_grad_(), 1e-6, precision)
    mix, inv_r = project_op(x.detach(), phi.detach(), 1e-6, precision)
    check(project_backward_op, x.detach(), phi.detach(), mix, inv_r, r(T, W), precision)


@pytest.mark.parametrize("mode", ["paper", "kernel"])
def test_sinkhorn_ops(single_thread, mode):
    L = r(T, n, n, grad=True)
    check(sinkhorn_op, L, 4, mode)
    check(sinkhorn_backward_op, L.detach(), r(T, n, n), 4, mode)


@pytest.mark.parametrize("kind,learned", [("sinkhorn", "pre,post,res"), ("sinkhorn", "post,res"), ("perm", "pre,res")])
def test_coefficient_heads_ops(single_thread, kind, learned):
    from kernels.coefficients import head_widths
    from variants.mhc_lite import permutation_matrices

    names = learned.split(",")
    widths = head_widths(n, names, kind)
    offsets = {m: -1 for m in ("pre", "post", "res")}
    col = 0
    for m, w in zip(names, widths):
        offsets[m], col = col, col + w
    W = sum(widths)
    mix, alpha_w, bias_w = r(T, W, grad=True), r(W, grad=True), r(W, grad=True)
    perms = permutation_matrices(n).reshape(math.factorial(n), -1).to(DEVICE) if kind == "perm" else None
    cfg = (n, offsets["pre"], offsets["post"], offsets["res"], kind, widths[-1] if "res" in names else 0, 4, "paper")
    check(heads_op, mix, alpha_w, bias_w, perms, *cfg)
    grads = [r(T, n) if offsets["pre"] >= 0 else None, r(T, n) if offsets["post"] >= 0 else None,
             r(T, n, n) if offsets["res"] >= 0 else None]
    check(heads_backward_op, mix.detach(), alpha_w.detach(), bias_w.detach(), perms, *grads, *cfg)
