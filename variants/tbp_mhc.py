"""`tbp-mhc` (arXiv 2605.21724, code alyubinin/tbp-mHC hyper_conn/tbp_mhc.py, rtbpHC.py): H_res from a
chart of the transportation polytope: exactly doubly stochastic, (n - 1)² logits, no iterations.

A doubly stochastic matrix has (n - 1)² degrees of freedom; a chart picks them one at a time,
each entry (or block mass) a sigmoid of its logit placed inside the interval that keeps the rest
fillable, so every logit vector maps to a valid matrix and the last row and column take what
remains (row and column sums exact to rounding):

  sequential  row by row, i, j < n - 1: L = max(0, r_i - Σ_{j'>j} c_j', c_j - Σ_{i'>i} r_i'),
              U = min(r_i, c_j), X_ij = L + max(U - L, 1e-7) σ(t_ij); r_i -= X_ij, c_j -= X_ij
              (r, c: the row and column mass still to place, 1 at the start).
  recursive   (RTBP, depth O(log n); the default) n = 2: x_11 in its interval; even n: the mass of
              the top-left quadrant in [max(0, R_top - C_right, C_left - R_bottom), min(R_top, C_left)],
              the four half-margins split sequentially, then the four (n/2)² problems; odd n: the
              last row (its corner last), then the last column, then the (n-1)² rest.

init (SCIENCE-FRONTIER's trap): `paper` is t = 0, where the recursive chart gives exactly J/n at
even n (uniform averaging of the streams; the odd-n peel is not symmetric) and the sequential
chart a lopsided matrix: either starts far from the identity that mHC, mHC-lite and KromHC start
at. `identity` saturates the logits at ±8, each sign chosen (coordinate by coordinate, from all
+8) so that the chart gives ≈ I (max |H - I| ≈ 1e-3 at n = 4); there σ' ≈ 3e-4, so H_res leaves
the identity slowly, as the paper's near-identity arm must. The projection has exactly the
(n - 1)² res columns the chart reads (the code's other n² - (n - 1)² are dead weights, left out).
Logits = α_res · (x⃗'φ)_res + b_res; H_pre = σ, H_post = 2σ (variants/manifold.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from kernels.errors import UserError
from variants.ablation import MixingOptions, check_common
from variants.base import ResidualVariant
from variants.manifold import ManifoldResidual, check_projection_width
from variants.mhc import PrePostInit
from variants.options import doc

CHARTS = ("recursive", "sequential")
INITS = ("paper", "identity")
MIN_WIDTH = 1e-7  # the code's floor on an interval's width
SATURATED = 8.0


@dataclass
class TBPMHCOptions(MixingOptions, PrePostInit):
    chart: str = doc("chart of the transportation polytope: recursive (RTBP, the default) or sequential", "recursive",
                     choices=CHARTS)
    init: str = doc("initial H_res: paper (logits 0: J/n with the recursive chart) or identity (logits saturated at "
                    "±8 so that H_res ≈ I)", "paper", choices=INITS)


def _pick(lo: Tensor, hi: Tensor, t: Tensor) -> Tensor:
    return lo + torch.clamp(hi - lo, min=MIN_WIDTH) * torch.sigmoid(t)


def _zero(like: Tensor) -> Tensor:
    return torch.zeros_like(like)


def _split(total: Tensor, caps: list[Tensor], ts: Iterator[Tensor]) -> list[Tensor]:
    """`total` as len(caps) parts, part k in [0, caps[k]], one logit per part but the last (the remainder)."""
    parts, rest = [], total
    for k in range(len(caps) - 1):
        room = sum(caps[k + 1:])
        x = _pick(torch.clamp(rest - room, min=0.0), torch.minimum(caps[k], rest), next(ts))
        parts.append(x)
        rest = rest - x
    return parts + [rest]


def _sequential(rows: list[Tensor], cols: list[Tensor], ts: Iterator[Tensor]) -> list[list[Tensor]]:
    n = len(rows)
    r, c = list(rows), list(cols)
    x = [[None] * n for _ in range(n)]
    for i in range(n - 1):
        for j in range(n - 1):
            lo = torch.clamp(torch.maximum(r[i] - sum(c[j + 1:]), c[j] - sum(r[i + 1:])), min=0.0)
            x[i][j] = _pick(lo, torch.minimum(r[i], c[j]), next(ts))
            r[i], c[j] = r[i] - x[i][j], c[j] - x[i][j]
        x[i][n - 1] = r[i]
        c[n - 1] = c[n - 1] - r[i]
    for j in range(n):
        x[n - 1][j] = c[j]
    return x


def _recursive(rows: list[Tensor], cols: list[Tensor], ts: Iterator[Tensor]) -> list[list[Tensor]]:
    n = len(rows)
    if n == 1:
        return [[rows[0]]]
    if n == 2:
        lo = torch.clamp(torch.maximum(rows[0] - cols[1], cols[0] - rows[1]), min=0.0)
        x = _pick(lo, torch.minimum(rows[0], cols[0]), next(ts))
        return [[x, rows[0] - x], [cols[0] - x, rows[1] - cols[0] + x]]
    if n % 2:  # peel the last row (its corner takes the remainder), then the last column
        last_row = _split(rows[-1], cols, ts)
        last_col = _split(cols[-1] - last_row[-1], rows[:-1], ts)
        inner = _recursive([r - c for r, c in zip(rows[:-1], last_col)], [c - x for c, x in zip(cols[:-1], last_row[:-1])], ts)
        return [inner[i] + [last_col[i]] for i in range(n - 1)] + [last_row]
    h = n // 2
    top, bottom, left, right = rows[:h], rows[h:], cols[:h], cols[h:]
    s_top, s_bottom, s_left, s_right = sum(top), sum(bottom), sum(left), sum(right)
    lo = torch.clamp(torch.maximum(s_top - s_right, s_left - s_bottom), min=0.0)
    q = _pick(lo, torch.minimum(s_top, s_left), next(ts))  # the top-left quadrant's mass
    a = _split(q, top, ts)  # top rows' mass on the left
    b = _split(q, left, ts)  # left columns' mass on top
    d = _split(s_top - q, right, ts)  # right columns' mass on top
    e = _split(s_left - q, bottom, ts)  # bottom rows' mass on the left
    tl = _recursive(a, b, ts)
    tr = _recursive([t - x for t, x in zip(top, a)], d, ts)
    bl = _recursive(e, [c - x for c, x in zip(left, b)], ts)
    br = _recursive([t - x for t, x in zip(bottom, e)], [c - x for c, x in zip(right, d)], ts)
    return [tl[i] + tr[i] for i in range(h)] + [bl[i] + br[i] for i in range(h)]


def transport(logits: Tensor, n: int, chart: str) -> Tensor:
    """(..., (n-1)²) logits -> (..., n, n) doubly stochastic H_res by the named chart."""
    one = logits.new_ones(logits.shape[:-1])
    ts = iter(logits.unbind(-1))
    fill = _recursive if chart == "recursive" else _sequential
    x = fill([one] * n, [one] * n, ts)
    return torch.stack([torch.stack(row, dim=-1) for row in x], dim=-2)


@functools.lru_cache(maxsize=None)
def identity_logits(n: int, chart: str) -> tuple[float, ...]:
    """±8 per logit such that the chart gives ≈ I: from all +8, each sign flipped where that brings
    the matrix closer to I, until no flip does (module doc)."""
    eye = torch.eye(n, dtype=torch.float64)
    t = torch.full(((n - 1) ** 2,), SATURATED, dtype=torch.float64)
    err = lambda v: float((transport(v, n, chart) - eye).abs().max())  # noqa: E731
    best, changed = err(t), True
    while changed:
        changed = False
        for k in range(t.numel()):
            t[k] = -t[k]
            if (e := err(t)) < best - 1e-12:
                best, changed = e, True
            else:
                t[k] = -t[k]
    if best > 1e-2:
        raise RuntimeError(f"the {chart} chart at n = {n} has no saturated logits within 1e-2 of I (best {best:.3g})")
    return tuple(t.tolist())


class TBPMHCResidual(ManifoldResidual):
    @property
    def widths(self) -> dict[str, int]:
        return {"pre": self.n, "post": self.n, "res": max(1, (self.n - 1) ** 2)}  # n = 1: one unused logit

    def res_bias(self) -> Tensor:
        if self.n == 1 or self.opts.init == "paper":
            return torch.zeros(max(1, (self.n - 1) ** 2))
        return torch.tensor(identity_logits(self.n, self.opts.chart), dtype=torch.float32)

    def res_map(self, logits: Tensor) -> Tensor:
        if self.n == 1:
            return logits.new_ones(*logits.shape[:-1], 1, 1)
        return transport(logits, self.n, self.opts.chart)


class TBPMHC(ResidualVariant):
    label = "TBP-mHC"
    colour = "#7f7f7f"
    default_n_streams = 4
    residual_cls = TBPMHCResidual
    options_cls = TBPMHCOptions
    description = "TBP-mHC: H_res from a chart of the transportation polytope, (n-1)² logits, exactly doubly stochastic"
    paper = "TBP-mHC, transportation-polytope charts (arXiv 2605.21724)"
    n_range = (1, 16)
    backends = ("torch", "triton")  # projection, pre-mix and merge kernels; the chart in PyTorch
    contract_options = ({}, {"chart": "sequential"}, {"init": "identity"}, {"mode": "static"}, {"fixed": "pre,post"})

    def check(self) -> None:
        check_common(self.cfg, self.n_streams)
        o = self.opts
        if o.chart not in CHARTS:  # (choices are checked when the options are read; this names the option's job)
            raise UserError(f"variant.chart={o.chart!r} is not one of {', '.join(CHARTS)}")
        if o.init not in INITS:
            raise UserError(f"variant.init={o.init!r} is not one of {', '.join(INITS)}")
        check_projection_width(self)
