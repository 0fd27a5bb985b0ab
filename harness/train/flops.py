"""What a training run computes, counted before it runs: parameters, tokens and training FLOPs.

    FLOPs per token = 6 N + 12 L T C        (nanoGPT / PaLM's estimate, forward + backward)

N counts the parameters that take part in matmuls: every parameter but the embedding lookup
(which costs no flops; a tied embedding is also the output head, which does). The second term is
attention's score and value products, L layers at sequence length T and width C. The residual
variants' own maths (a few n x n matrices per token) is inside N through its projections and
otherwise too small to count. `bench model`'s MFU and `grid plan`'s estimates use this one formula.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from harness.core.config import ModelConfig, VariantConfig, from_dict
from harness.train.model import GPT, padded_vocab
from variants.registry import build_variant

FORMULA = "6·N·tokens + 12·L·T·C·tokens (N: parameters outside the embedding lookup)"


def flops_per_token(cfg, n_params_body: int) -> float:
    """Training flops per token (forward + backward): 6 N + 12 L T C."""
    m = cfg.model
    return 6 * n_params_body + 12 * m.n_layer * m.seq_len * m.d_model


def tokens_per_step(cfg) -> int:
    """Tokens one optimiser step trains on, over all ranks: batch_size x grad_accum x seq_len."""
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.seq_len


def tokenizer_vocab(cfg) -> int:
    """The tokenizer's vocabulary as the config names it, without preparing the data: 257 for
    bytes, data.vocab_size for a BPE trained here, the entries of a given tokenizer.json."""
    tok = cfg.data.tokenizer
    if tok == "byte":
        return 257
    if tok.endswith(".json") and Path(tok).is_file():
        try:
            vocab = json.loads(Path(tok).read_text())["model"]["vocab"]
            return len(vocab)
        except (KeyError, TypeError, ValueError):
            pass
    return cfg.data.vocab_size


def model_params(cfg) -> tuple[int, int]:
    """(all parameters, those outside the embedding lookup) of the run's model, counted without
    building it: the plain-residual GPT on the meta device (no memory, no initialisation), plus
    the residual variant's own parameters, built on the CPU (a few small tensors per sub-layer;
    some variants' inits read values, which meta tensors do not have)."""
    key = json.dumps({"model": cfg.to_dict()["model"], "variant": cfg.to_dict()["variant"], "vocab": tokenizer_vocab(cfg)},
                     sort_keys=True, default=str)
    return _model_params(key)


@functools.lru_cache(maxsize=256)
def _model_params(key: str) -> tuple[int, int]:
    d = json.loads(key)
    model_cfg = ModelConfig(**d["model"])

    class _Cfg:  # what padded_vocab reads
        model = model_cfg

    plain = build_variant(VariantConfig("identity"), model_cfg.d_model, 2 * model_cfg.n_layer)  # no mixing parameters
    with torch.device("meta"):
        gpt = GPT(model_cfg, plain, padded_vocab(_Cfg, d["vocab"]))
    n = sum(p.numel() for p in gpt.parameters())
    variant = build_variant(from_dict(d["variant"], VariantConfig), model_cfg.d_model, 2 * model_cfg.n_layer)
    n += sum(p.numel() for i in range(2 * model_cfg.n_layer) for p in variant.make(i).parameters())
    expander = variant.expander()
    n += sum(p.numel() for p in expander.parameters()) if expander is not None else 0
    return n, n - (0 if model_cfg.tie_embeddings else gpt.wte.weight.numel())


def run_flops(cfg) -> tuple[int, float]:
    """(tokens, training FLOPs) of a whole run."""
    tokens = cfg.train.steps * tokens_per_step(cfg)
    return tokens, tokens * flops_per_token(cfg, model_params(cfg)[1])
