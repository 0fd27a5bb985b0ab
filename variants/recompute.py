"""Selective recompute of the residual-stream maths (mHC paper §4.3), for any prepare/merge variant.

An n-stream residual stores, per sub-layer and token, its input stream (n·C), the branch input
and output, and every intermediate of its coefficients (with the PyTorch reference, each
Sinkhorn round). The paper discards all of that after the forward and recomputes it in the
backward, without running the sub-layer functions F again; for a block of L_r consecutive
sub-layers only the block's input stream is kept:

    sub-layer k of a block:   h_k = Pre_k(x_k)      y_k = F_k(h_k)      x_{k+1} = Merge_k(x_k, y_k)
    kept for the backward:    x_0, the block's input; y_k, each F's output; F's own activations
    recomputed:               x_1 .. x_{K-1}, the coefficients, the pre-mix and merge intermediates

Pre_k and Merge_k are autograd Functions whose forward runs the variant's own `prepare`/`merge`
without a graph. The first of the block's nodes to run backward (the last Merge) rebuilds the
block's stream maths from x_0 and the stored y_k with grad on: one small graph per sub-layer,
F replaced by its stored output. Merge_k's backward then returns dy_k at once (F's backward
needs it) and leaves dx_k and the coefficient parameters' gradients to Pre_k, which
differentiates its sub-layer's rebuilt graph for both outputs (h_k and x_{k+1}) in one go. That
is the same graph, in the same order, as without recompute, so the gradients are bitwise the
same (tests/test_recompute.py). The one assumption: every F uses its input (attention and MLP do).

What the backward needs is saved with `ctx.save_for_backward` (x_0 by Pre_0, y_k by Merge_k),
so it is freed with the graph and counted like any other activation (harness/bench/activation_memory.py);
the block reaches it through weak references to those nodes.

L_r. Per token the paper's model is nC·⌈L/L_r⌉ resident (block inputs) plus (n + 2)C·L_r
transient (one block's recomputed streams, branch inputs and outputs while its backward runs),
minimal at L_r* = √(nL/(n + 2)) (L = sub-layers): `train.recompute_block = 0` takes that, rounded.
What the forward leaves stored only falls as L_r grows; a larger block holds more at once during
the backward (with the PyTorch reference, every Sinkhorn round of the block's sub-layers).

Under torch.compile the recompute runs eagerly (`torch.compiler.disable`, not recursive: F's
own frames still compile).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass
class _Rebuilt:
    """Sub-layer k's stream maths, recomputed with grad in the backward."""

    x: Tensor  # x_k, a leaf of this small graph
    y: Tensor  # F_k's stored output, a leaf too
    h: Tensor  # Pre_k's output
    out: Tensor  # Merge_k's output, x_{k+1}
    grad_out: Tensor | None = None  # dL/dx_{k+1}, handed from Merge_k's backward to Pre_k's


class _Block:
    """One block of consecutive sub-layers under recompute: its forward hand-offs and its rebuild."""

    def __init__(self):
        self.residuals: list = []
        self.params: list[tuple[Tensor, ...]] = []  # each sub-layer's trainable coefficient parameters
        self.first_pre = None  # weakref to Pre_0's node, which saved x_0
        self.merges: list = []  # weakrefs to the Merge nodes, each of which saved its y_k
        self.mix = None  # forward only: the coefficients Pre_k computed, for Merge_k
        self.last_out = None  # forward only: weakref to the newest output stream
        self.autocast = None  # the forward's autocast state, restored for the rebuild
        self.rebuilt: list[_Rebuilt] | None = None

    def continues(self, residual, x: Tensor, size: int) -> bool:
        """Is `residual` applied to this block's newest output, as its next sub-layer?"""
        return (len(self.residuals) < size and self.last_out is not None and self.last_out() is x
                and residual.index == self.residuals[-1].index + 1)

    def rebuild(self) -> list[_Rebuilt]:
        """The block's stream maths, recomputed from x_0 and the stored y_k (F is not run)."""
        if self.rebuilt is None:
            x = self.first_pre().saved_tensors[0].detach()
            ys = [node().saved_tensors[0] for node in self.merges]
            self.rebuilt = []
            device_type, enabled, dtype = self.autocast
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                for residual, y in zip(self.residuals, ys):
                    x, y = x.detach().requires_grad_(), y.detach().requires_grad_()
                    h, mix = residual.prepare(x)
                    out = residual.merge(x, y, mix)
                    self.rebuilt.append(_Rebuilt(x, y, h, out))
                    x = out
            self.first_pre = None
            self.merges = []
        return self.rebuilt

    def sublayer(self, k: int) -> _Rebuilt:
        sub = self.rebuild()[k]
        if sub is None:
            raise RuntimeError("train.recompute: this block's stream maths was already differentiated; "
                               "a second backward through the same graph (retain_graph) is not supported")
        return sub


class _Pre(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: _Block, residual, x: Tensor, *params: Tensor) -> Tensor:
        h, mix = residual.prepare(x)
        if residual.recording:
            residual.last = mix.detach()
        ctx.block, ctx.k = block, len(block.residuals)
        if ctx.k == 0:
            ctx.save_for_backward(x)
            block.first_pre = weakref.ref(ctx)
            device_type = x.device.type
            block.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        block.residuals.append(residual)
        block.params.append(params)
        block.mix = mix
        return h

    @staticmethod
    def backward(ctx, dh: Tensor):
        block, k = ctx.block, ctx.k
        sub = block.sublayer(k)
        params = block.params[k]
        outs, grads = (sub.h, sub.out), (dh, sub.grad_out)
        if sub.grad_out is None:  # x_{k+1} got no gradient (Merge_k's backward did not run)
            outs, grads = (sub.h,), (dh,)
        dx, *dparams = torch.autograd.grad(outs, (sub.x, *params), grads, allow_unused=True)
        block.rebuilt[k] = None  # this sub-layer's rebuilt graph is done with
        return (None, None, dx, *dparams)


class _Merge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, block: _Block, x: Tensor, y: Tensor) -> Tensor:
        residual, mix = block.residuals[-1], block.mix
        block.mix = None
        ctx.block, ctx.k = block, len(block.residuals) - 1
        ctx.save_for_backward(y)
        block.merges.append(weakref.ref(ctx))
        return residual.merge(x, y, mix)

    @staticmethod
    def backward(ctx, dout: Tensor):
        sub = ctx.block.sublayer(ctx.k)
        sub.grad_out = dout
        (dy,) = torch.autograd.grad(sub.out, sub.y, dout, retain_graph=True)
        return None, None, dy  # dx_k and the parameters' gradients: Pre_k's backward (module doc)


class StreamRecompute:
    """Shared by a model's residual connections: groups consecutive sub-layers into blocks of
    `block_size` and runs each through Pre/Merge (module doc). Only used with grad enabled."""

    def __init__(self, block_size: int):
        if block_size < 1:
            raise ValueError(f"recompute block size must be >= 1, got {block_size}")
        self.block_size = block_size
        self._open: weakref.ref[_Block] | None = None  # the block the current forward is filling

    @torch.compiler.disable(recursive=False)
    def __call__(self, residual, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        block = self._open() if self._open is not None else None
        if block is None or not block.continues(residual, x, self.block_size):
            block = _Block()
            self._open = weakref.ref(block)
        params = tuple(p for p in residual.parameters() if p.requires_grad)
        h = _Pre.apply(block, residual, x, *params)
        out = _Merge.apply(block, x, sublayer(h))
        block.last_out = weakref.ref(out)
        return out
