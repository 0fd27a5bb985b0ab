"""Activation memory, measured exactly: bytes autograd saves for the backward, per token.

HC reports +26% activation memory over the plain residual (SCIENCE.md); the mHC paper's
recompute (§4.3) exists to cut it. This module counts it on any device, CPU included, with no
allocator statistics: during one forward (and loss) in training mode, a
`torch.autograd.graph.saved_tensors_hooks` pack hook sees every tensor an op saves for its
backward, and we add up the bytes of the distinct storages behind them.

Why distinct storages, not saved tensors: one tensor is often saved by several ops (the stream
x is saved by the coefficient projection, the pre-mix and the merge; a linear layer and the
norm after it can save the same activation) and views share their base (attention's q, k, v
are views of one qkv output). Memory holds each storage once, whatever points at it, and a
view keeps its whole base alive, so each storage is counted once, whole.

Why a difference of two batch sizes: a few saved tensors have no token dimension (weights that
matmuls save, HC's concatenated θ, the RoPE tables), and they are the same at any batch size;
bytes(2 sequences) - bytes(1 sequence) is exactly the per-sequence part, which for this model
grows linearly with the sequence (attention saves its output and log-sum-exp, not the T x T
scores), so a short sequence suffices.

Tensors kept alive outside autograd (the logits a caller holds on to, optimiser state) are not
counted: this is the activation memory a variant adds, as the papers report it.

With `variant.backend=triton` on a CPU the kernels run only under Triton's interpreter, which
must be switched on before they are imported; `bench model` then measures in a subprocess
(`python -m harness.bench.activation_memory`, JSON config on stdin).
"""

from __future__ import annotations

import json
import math
import sys
from contextlib import contextmanager

import torch

from harness import PROJECT_ROOT
from harness.core.config import from_dict
from harness.train.model import build_model, recompute_block

SEQ_LEN = 16  # tokens per sequence measured: per-token bytes do not depend on it (module doc)


@contextmanager
def count_saved_bytes():
    """Within this block, count the distinct storages saved for backward; yields a dict whose
    "bytes" is filled on exit (and "tensors", the number of save calls)."""
    storages: dict[tuple, torch.UntypedStorage] = {}
    result = {"bytes": 0, "tensors": 0}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        # Holding the storage keeps its address from being reused by another one mid-count.
        storages.setdefault((s.device, s.data_ptr(), s.nbytes()), s)
        result["tensors"] += 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["bytes"] = sum(s.nbytes() for s in storages.values())


def saved_bytes(model, tokens: torch.Tensor, autocast=None) -> int:
    """Bytes saved for backward by one training-mode forward + loss of `model` on `tokens` (B, T)."""
    model.train()
    ctx = autocast() if autocast is not None else torch.autocast(tokens.device.type, enabled=False)
    with count_saved_bytes() as counted, ctx:
        _, loss = model(tokens, tokens)
    del loss  # the graph (and the saved tensors) go here
    return counted["bytes"]


def bytes_per_token(model, seq_len: int = SEQ_LEN, autocast=None) -> float:
    """Saved bytes per token: the difference between 2 sequences and 1 (module doc), / seq_len."""
    device = next(model.parameters()).device
    seq_len = min(seq_len, model.cfg.seq_len)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.vocab_size, (2, seq_len), generator=g).to(device)
    one, two = saved_bytes(model, tokens[:1], autocast), saved_bytes(model, tokens, autocast)
    return (two - one) / seq_len


def measure(cfg, vocab: int, device: torch.device | str = "cpu", seq_len: int = SEQ_LEN, autocast=None) -> dict:
    """{"off": bytes/token without recompute, "on": with train.recompute} for the model of `cfg`.

    "on" is None for a variant with nothing to recompute (identity stores no stream maths).
    """
    torch.manual_seed(0)
    model = build_model(cfg, vocab).to(device)
    out = {"off": bytes_per_token(model, seq_len, autocast), "on": None, "recompute_block": None}
    block = recompute_block(cfg, model.variant.n_streams)
    if model.set_recompute(block):
        out["on"], out["recompute_block"] = bytes_per_token(model, seq_len, autocast), block
    return out


def measure_in_subprocess(cfg, vocab: int, seq_len: int = SEQ_LEN, env: dict | None = None, timeout: float = 1800) -> dict:
    """`measure` in a fresh interpreter (e.g. with TRITON_INTERPRET=1, which must be set before
    the kernels are imported); RuntimeError with the child's last words if it fails."""
    import os
    import subprocess

    request = json.dumps({"config": cfg.to_dict(), "vocab": vocab, "seq_len": seq_len})
    proc = subprocess.run([sys.executable, "-m", "harness.bench.activation_memory"], input=request, capture_output=True,
                          text=True, cwd=PROJECT_ROOT, env=os.environ | (env or {}), timeout=timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"activation measurement failed in its subprocess: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    """Read {"config", "vocab", "seq_len"} as JSON on stdin, print `measure`'s dict as JSON."""
    request = json.loads(sys.stdin.read())
    cfg = from_dict(request["config"])
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    out = measure(cfg, request["vocab"], "cpu", request["seq_len"])
    print(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
