"""Triton helpers shared by the stream kernels: the tile a program owns, and the per-token
coefficient of a mapping that may be held fixed (ablations).

`@triton.jit` helpers are inlined into their callers, so factoring them out costs nothing
at run time and keeps the masking rules in one place.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def token_block(T, N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """(int64 token offsets, token mask, stream index, (token, stream) mask) of this program."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.arange(0, N_PAD)
    tm = t < T
    return t.to(tl.int64), tm, i, tm[:, None] & (i < N)[None, :]


@triton.jit
def stream_tile(T, C, N: tl.constexpr, N_PAD: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr):
    """The (BLOCK_T tokens, N_PAD streams, BLOCK_C channels) tile of program (axis 0, axis 1):
    (t64, c, i, (t, i) mask, (t, c) mask, (t, i, c) mask, element offsets into a (T, N, C) tensor)."""
    t64, tm, i, m2 = token_block(T, N, N_PAD, BLOCK_T)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mtc = tm[:, None] & (c < C)[None, :]
    m3 = m2[:, :, None] & (c < C)[None, None, :]
    offs3 = t64[:, None, None] * (N * C) + i[None, :, None] * C + c[None, None, :]
    return t64, c, i, m2, mtc, m3, offs3


@triton.jit
def coefficient(ptr, t64, i, s_t, s_i, m2, LEARNED: tl.constexpr, FIXED: tl.constexpr):
    """A (BLOCK_T, N_PAD) per-token coefficient in fp32; FIXED everywhere when not LEARNED."""
    if LEARNED:
        v = tl.load(ptr + t64[:, None] * s_t + i[None, :] * s_i, mask=m2, other=0.0).to(tl.float32)
    else:
        v = tl.where(m2, FIXED, 0.0)
    return v
