"""Sinkhorn-Knopp: H_res logits (..., n, n) -> an (approximately) doubly stochastic matrix.

mHC projects its residual mixing matrix onto the Birkhoff polytope (mHC Eq. 19, t_max = 20)
so that products of H_res over depth can neither blow up nor vanish. At a finite number of
iterations the result is only approximately doubly stochastic, and *which* sums are exact
depends on the order of the normalisations, so three conventions are kept apart here:

    paper      M⁰ = exp(logits); then k rounds of [normalise columns, normalise rows].
               Row sums are exact after every round k >= 1 (the forward side, x -> H x);
               the leftover error sits in the column sums (the backward side).
               k = 0: exp(logits) itself, with no normalisation at all (an ablation of
               the projection; it is also what k -> 0 of the paper's recursion means).
    kernel     DeepSeek's public kernels (TileKernels `sinkhorn_normalize_ref`): a row
               softmax + eps, a column normalisation, then k - 1 rounds of [row, column],
               each sum offset by eps. Here k counts column normalisations (= the kernel's
               `repeat`), and the softmax is the first row normalisation; column sums are
               exact up to eps, row sums carry the error. k = 0: the row softmax alone
               (the kernel itself would still do one column normalisation at repeat = 0).
    converged  paper-order rounds until max |row sum - 1| and max |col sum - 1| are both
               <= tol (or max_iters rounds), each matrix stopping on its own: the exact
               projection, a reference to measure the finite-k modes against.

The paper and converged modes run in the log domain: they keep log M, starting from the logits
themselves, and normalise a column (row) by subtracting its logsumexp, exponentiating once at
the end. That is the same finite-k map as the linear recursion above, but nothing underflows
on the way: in the linear domain a matrix whose logit range exceeds ~87 (fp32) has a whole
column or row of exp(logits) at 0, whose sum is 0 and whose backward divides by 0, while the
projection itself is perfectly defined (entries exp(L_ij + u_i + v_j)). In the log domain the
largest entry of each column and row is exp(0) = 1 before it is normalised, so every sum is
>= 1 and the forward and backward are finite at any logit range. (The kernel mode needs no
such care: every entry is >= eps.)

All functions are pure functions of the logits and differentiable through the iterations
(autograd unrolls them). They compute in float32 whatever the input dtype (never bf16: a
bf16 Sinkhorn is one of the public-implementation traps), or in float64 if given float64 so
that `torch.autograd.gradcheck` can check them.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

SK_MODES = ("paper", "kernel", "converged")
KERNEL_EPS = 1e-6  # TileKernels' default sinkhorn_eps


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64 (gradcheck); everything else is promoted to float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _log_normalise(x: Tensor, dim: int) -> Tensor:
    """x - logsumexp(x) along dim, as (x - max) - log Σ exp(x - max).

    The max is subtracted first: the entries near it, which carry the mass, come out exact or
    nearly so, one far below it is rounded at its own distance from it (a relative error of
    the same size on a tiny entry), and only the small log Σ (in [0, log n]) is rounded
    against the result; a plain x - logsumexp(x) would round every entry at the magnitude of
    the logits. The max is detached: the result does not depend on it, so its gradient
    through the max is zero anyway, and what is left is the exact dx = dy - softmax(x) Σ dy.
    The sum is >= 1 (its largest term is exp(0)), so neither the log nor its derivative can
    meet a 0.
    """
    z = x - x.amax(dim=dim, keepdim=True).detach()
    return z - torch.exp(z).sum(dim=dim, keepdim=True).log()


def _log_round(x: Tensor) -> Tensor:
    """One paper-order round on log M: columns (sums over dim -2), then rows (dim -1)."""
    return _log_normalise(_log_normalise(x, -2), -1)


# ---------------------------------------------------------------------------------------------
# mHC Eq. 19, paper ordering: M^t = T_r(T_c(M^{t-1})), M^0 = exp(logits), in the log domain
# ---------------------------------------------------------------------------------------------
def sinkhorn_paper(logits: Tensor, iters: int) -> Tensor:
    x = logits.to(compute_dtype(logits))
    if iters == 0:
        return torch.exp(x)  # no normalisation: exp(logits) itself
    for _ in range(iters):
        x = _log_round(x)
    return torch.exp(x)


# ---------------------------------------------------------------------------------------------
# DeepSeek public-kernel ordering: softmax_row + eps, T_c, then (k - 1) x [T_r, T_c], all + eps
# ---------------------------------------------------------------------------------------------
def sinkhorn_kernel(logits: Tensor, iters: int, eps: float = KERNEL_EPS) -> Tensor:
    m = torch.softmax(logits.to(compute_dtype(logits)), dim=-1) + eps
    if iters == 0:
        return m
    m = m / (m.sum(dim=-2, keepdim=True) + eps)
    for _ in range(iters - 1):
        m = m / (m.sum(dim=-1, keepdim=True) + eps)
        m = m / (m.sum(dim=-2, keepdim=True) + eps)
    return m


# ---------------------------------------------------------------------------------------------
# Converged reference: paper-order rounds until both marginals are within tol
# ---------------------------------------------------------------------------------------------
def sinkhorn_converged(logits: Tensor, tol: float, max_iters: int) -> tuple[Tensor, Tensor]:
    """(matrices, rounds each used): paper-order rounds, every matrix stopping on its own.

    A matrix stops after the first round that brings both its marginals within tol, and is
    left untouched after that, so its result depends on its own logits only: never on which
    other tokens share the batch (a batch-wide stopping rule would let a later token change
    an earlier token's H_res, i.e. leak across time). A matrix still outside tol after
    max_iters rounds has rounds == max_iters and gaps above tol: `capped` says which.
    """
    x = logits.to(compute_dtype(logits))  # log M, as in sinkhorn_paper
    rounds = torch.zeros(x.shape[:-2], dtype=torch.int64, device=x.device)
    active = torch.ones(x.shape[:-2], dtype=torch.bool, device=x.device)
    for _ in range(max_iters):
        x = torch.where(active[..., None, None], _log_round(x), x)
        rounds = rounds + active
        with torch.no_grad():
            row_gap, col_gap = stochasticity_gaps(torch.exp(x))
            active = active & ~(torch.maximum(row_gap, col_gap) <= tol)  # NaN never counts as converged; a new tensor: where() saved the old one
            if not active.any():
                break
    return torch.exp(x), rounds


def capped(m: Tensor, tol: float) -> Tensor:
    """Per matrix: True where sinkhorn_converged stopped at its cap, not at tol (or is NaN)."""
    row_gap, col_gap = stochasticity_gaps(m)
    return ~(torch.maximum(row_gap, col_gap) <= tol)


def sinkhorn(logits: Tensor, iters: int = 20, mode: str = "paper", tol: float = 1e-6, max_iters: int = 2000) -> Tensor:
    """H_res = SK(logits) over the last two dims, in the named convention (see module doc)."""
    if mode == "paper":
        return sinkhorn_paper(logits, iters)
    if mode == "kernel":
        return sinkhorn_kernel(logits, iters)
    if mode == "converged":
        return sinkhorn_converged(logits, tol, max_iters)[0]
    raise ValueError(f"unknown Sinkhorn mode {mode!r}; choose from {', '.join(SK_MODES)}")


def stochasticity_gaps(m: Tensor) -> tuple[Tensor, Tensor]:
    """Per matrix (max |row sum - 1|, max |column sum - 1|): 0 for a doubly stochastic matrix."""
    row_gap = (m.sum(dim=-1) - 1).abs().amax(dim=-1)
    col_gap = (m.sum(dim=-2) - 1).abs().amax(dim=-1)
    return row_gap, col_gap


# ---------------------------------------------------------------------------------------------
# mHC-lite: H_res as a convex mix of permutation matrices (exactly doubly stochastic, no rounds)
# ---------------------------------------------------------------------------------------------
def permutation_matrices(n: int) -> Tensor:
    """(n!, n, n) with P_k[i, σ_k(i)] = 1; index 0 is the identity (itertools order)."""
    perms = torch.tensor(list(itertools.permutations(range(n))), dtype=torch.long)  # (n!, n)
    return torch.nn.functional.one_hot(perms, n).float()


def permutation_mixture(logits: Tensor, perms: Tensor) -> Tensor:
    """H_res = Σ_k softmax(logits)_k P_k: (..., n!) -> (..., n, n), exactly doubly stochastic."""
    weights = torch.softmax(logits, dim=-1)
    return (weights @ perms.to(weights.dtype).flatten(1)).unflatten(-1, perms.shape[1:])
