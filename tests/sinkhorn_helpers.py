"""Sinkhorn inputs at extreme logit ranges, and the textbook linear-domain recursion to check against.

In fp32, exp(L - max L) is 0 for every logit ~87 or more below the matrix's max, so a whole
column or row of M⁰ vanishes once the range within one matrix grows past that (what a too
large learning rate does to mHC's H_res logits). These cases are where a linear-domain
Sinkhorn breaks: its forward floors a 0 sum, its backward divides by it.
"""

import torch

EXTREME_CASES = ("range 100", "range 300", "range 1000", "row and column -200")


def extreme_logits(case: str, shape=(64, 4, 4), seed=0) -> torch.Tensor:
    """fp32 logits: 'range R' spans exactly R (max - min) within every matrix, uniformly;
    'row and column -200' is N(0, 1) with every entry of row 0 and of column 0 200 lower."""
    g = torch.Generator().manual_seed(seed)
    if case == "row and column -200":
        l = torch.randn(shape, generator=g)
        outcast = torch.zeros(shape[-2:], dtype=torch.bool)
        outcast[0, :] = outcast[:, 0] = True
        return l - 200.0 * outcast
    width = float(case.removeprefix("range "))
    l = torch.rand(shape, generator=g)
    lo, hi = l.amin((-2, -1), keepdim=True), l.amax((-2, -1), keepdim=True)
    return torch.where(hi > lo, (l - lo) / (hi - lo), 0.0) * width  # a 1×1 matrix has no range


def linear_paper(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """M⁰ = exp(L - max L), then iters × [columns, rows] as plain divisions: mHC Eq. 19 written
    out, with no floor. In float64 it is exact enough up to a range of ~700 (exp underflows
    below e^-745), an independent check of the log-domain code and of its gradient."""
    m = torch.exp(logits - logits.amax((-2, -1), keepdim=True).detach())
    for _ in range(iters):
        m = m / m.sum(-2, keepdim=True)
        m = m / m.sum(-1, keepdim=True)
    return m


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol=1e-4, atol=1e-5) -> None:
    """|a - e| <= rtol |e| + atol max(1, max|e|) elementwise (the kernel tests' fp32 coefficient
    tolerance); NaN/inf fail; the message names the first mismatch."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert torch.isfinite(e).all(), f"{what}: the reference is not finite"
    assert torch.isfinite(a).all(), f"{what}: {int((~torch.isfinite(a)).sum())} non-finite values, the first at {tuple(int(i) for i in (~torch.isfinite(a)).nonzero()[0])}"
    over = (a - e).abs() > rtol * e.abs() + atol * e.abs().max().clamp_min(1.0)
    if over.any():
        idx = tuple(int(i) for i in over.nonzero()[0])
        raise AssertionError(f"{what}: first mismatch at {idx}: got {a[idx].item():.8g}, expected {e[idx].item():.8g}; "
                             f"{int(over.sum())} of {a.numel()} off, max |error| {(a - e).abs().max().item():.3g}")
