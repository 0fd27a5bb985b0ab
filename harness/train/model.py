"""Decoder-only GPT whose residual connections are supplied by a residual variant.

RMSNorm, RoPE, SwiGLU MLP and causal scaled-dot-product attention, as in current small-LM
practice (and the mHC-lite paper's nanoGPT baselines). The residual stream has shape
(B, T, n, C); each block's two sub-layers go through `variant.make(i)`, so this file never
mentions a variant by name.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness.core.config import ModelConfig
from harness.core.errors import UserError
from variants.base import Residual, ResidualVariant
from variants.recompute import StreamRecompute
from variants.registry import build_variant


def mlp_hidden(cfg: ModelConfig) -> int:
    """SwiGLU width: 8/3 * C keeps parameters equal to a 4C GELU MLP; rounded up to 64."""
    return cfg.mlp_hidden or 64 * math.ceil(8 * cfg.d_model / 3 / 64)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables (T, head_dim/2) for rotary position embeddings."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (first half, second half) of each head; x is (B, H, T, D).

    cos/sin are either the tables (seq_len, D/2), used from position 0, or already gathered
    per token (B, 1, T, D/2) for decoding with a KV cache (positions past 0, left padding).
    """
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    if cos.dim() == 2:
        cos, sin = cos[: x.shape[-2]], sin[: x.shape[-2]]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of the tokens seen so far, for incremental (greedy) decoding.

    Decoding one token at a time would otherwise re-run the whole prefix at every step
    (quadratic in the generated length). The cache also keeps which cached positions are
    real tokens (`key_mask`, False for left padding) and each row's next position, so a batch
    of prompts of different lengths decodes together. The residual variants need no state:
    their mixing coefficients are per token, so only attention looks at other positions.
    """

    def __init__(self, n_layer: int):
        self.k: list[Tensor | None] = [None] * n_layer
        self.v: list[Tensor | None] = [None] * n_layer
        self.key_mask: Tensor | None = None  # (B, T_cached) bool, True = real token
        self.next_pos: Tensor | None = None  # (B,) long, position of each row's next token

    @property
    def length(self) -> int:
        """Cached positions (padding included)."""
        return 0 if self.key_mask is None else self.key_mask.shape[1]

    def select(self, rows: Tensor) -> None:
        """Keep only these batch rows (finished sequences leave the batch)."""
        self.k = [None if t is None else t[rows] for t in self.k]
        self.v = [None if t is None else t[rows] for t in self.v]
        if self.key_mask is not None:
            self.key_mask, self.next_pos = self.key_mask[rows], self.next_pos[rows]

    def real_lengths(self) -> list[int]:
        """Real (non-padding) tokens cached per row."""
        return [] if self.key_mask is None else self.key_mask.sum(1).tolist()

    def replace_rows(self, rows: list[int], other: "KVCache") -> None:
        """Put `other`'s rows (in order) in place of these batch rows, e.g. a row whose window is
        full, re-encoded from its recent tokens, while the other rows keep their cache.

        Rows stay right-aligned (real tokens last, left padding first), and columns that are
        padding in every row are dropped, so the cache is as short as its longest row.
        """
        lens = self.real_lengths()
        new_lens = other.real_lengths()
        source = {r: (other, j, new_lens[j]) for j, r in enumerate(rows)}
        width = max([new_lens[j] for j in range(len(rows))] + [n for r, n in enumerate(lens) if r not in source])
        B, device = len(lens), self.key_mask.device

        def rebuild(tensors_of, layer: int) -> Tensor:
            ref = tensors_of(self)[layer]
            out = ref.new_zeros(B, ref.shape[1], width, ref.shape[3])
            for r in range(B):
                cache, j, n = source.get(r, (self, r, lens[r]))
                if n:
                    out[r, :, width - n:] = tensors_of(cache)[layer][j, :, -n:]
            return out

        for layer in range(len(self.k)):
            self.k[layer] = rebuild(lambda c: c.k, layer)
            self.v[layer] = rebuild(lambda c: c.v, layer)
        mask = torch.zeros(B, width, dtype=torch.bool, device=device)
        next_pos = self.next_pos.clone()
        for r in range(B):
            cache, j, n = source.get(r, (self, r, lens[r]))
            mask[r, width - n:] = n > 0
            next_pos[r] = cache.next_pos[j]
        self.key_mask, self.next_pos = mask, next_pos


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: Tensor | None = None) -> Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # append to the cache; `mask` (B, 1, T, T_cached + T) says who sees whom
            if cache.k[layer] is not None:
                k, v = torch.cat((cache.k[layer], k), dim=2), torch.cat((cache.v[layer], v), dim=2)
            cache.k[layer], cache.v[layer] = k, v
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = mlp_hidden(cfg)
        self.gate_up = nn.Linear(cfg.d_model, 2 * hidden, bias=False)
        self.proj = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)


class Block(nn.Module):
    """Two sub-layers, F(h) = Attention(RMSNorm(h)) and MLP(RMSNorm(h)), each inside a residual."""

    def __init__(self, cfg: ModelConfig, variant: ResidualVariant, index: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg)
        self.attn_res: Residual = variant.make(2 * index)
        self.mlp_res: Residual = variant.make(2 * index + 1)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None,
                layer: int = 0, mask: Tensor | None = None) -> Tensor:
        x = self.attn_res(x, lambda h: self.attn(self.attn_norm(h), cos, sin, cache, layer, mask))
        return self.mlp_res(x, lambda h: self.mlp(self.mlp_norm(h)))


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig, variant: ResidualVariant, vocab_size: int):
        super().__init__()
        self.cfg, self.variant, self.vocab_size = cfg, variant, vocab_size
        self.wte = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, variant, i) for i in range(cfg.n_layer))
        self.expander = variant.expander()  # None: the variant's plain `expand` (no parameters)
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        cos, sin = rope_tables(cfg.seq_len, cfg.d_model // cfg.n_head, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def _init_weights(self) -> None:
        """Normal(0, std) for matrices; output projections scaled by 1/sqrt(2 * n_layer) (GPT-2)."""
        std = self.cfg.init_std
        for block in self.blocks:
            for mod in (block.attn, block.mlp):
                for name, p in mod.named_parameters():
                    scale = 1 / math.sqrt(2 * self.cfg.n_layer) if name.startswith("proj") else 1.0
                    nn.init.normal_(p, 0.0, std * scale)
        nn.init.normal_(self.wte.weight, 0.0, std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.lm_head.weight, 0.0, std)

    def residuals(self) -> list[Residual]:
        """The 2 * n_layer residual connections, in depth order (attention, MLP, attention, ...)."""
        return [r for b in self.blocks for r in (b.attn_res, b.mlp_res)]

    def no_decay_parameters(self) -> set[int]:
        """ids of parameters exempt from weight decay: vectors (norms, biases), mixing parameters and
        the stream scales of variant.expand=lss (variants/expansion.py says why)."""
        ids = {id(p) for p in self.parameters() if p.ndim < 2}
        if self.expander is not None:
            ids |= {id(p) for p in self.expander.parameters()}
        for r in self.residuals():
            ids |= {id(p) for p in r.no_decay_parameters()}
        return ids

    def set_recompute(self, block: int) -> bool:
        """Recompute the stream maths of every `block` consecutive sub-layers in the backward
        instead of storing it (variants/recompute.py); 0 turns it off. Residuals of variants with
        nothing to recompute (identity) ignore it; returns whether any residual uses it."""
        shared = StreamRecompute(block) if block else None
        for r in self.residuals():
            r.recompute = shared if r.recomputable else None
        return any(r.recompute is not None for r in self.residuals())

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-group gradient norms: embed, attn, mlp, norm, mixing, head."""
        mixing = {id(p) for r in self.residuals() for p in r.parameters()}
        if self.expander is not None:
            mixing |= {id(p) for p in self.expander.parameters()}
        groups: dict[str, list[nn.Parameter]] = {}
        seen: set[int] = set()
        for name, p in self.named_parameters():
            if id(p) in seen:  # tied weights count once
                continue
            seen.add(id(p))
            if id(p) in mixing:
                group = "mixing"
            elif "norm" in name:
                group = "norm"
            else:
                group = {"wte": "embed", "lm_head": "head"}.get(name.split(".")[0]) or name.split(".")[2]
            groups.setdefault(group, []).append(p)
        return groups

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                pad_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (B, T, V) and, with targets, the mean cross-entropy.

        With a `cache` (from `new_cache()`), `idx` continues the cached tokens and the cache is
        extended; `pad_mask` (B, T) marks real tokens (False = left padding, allowed only
        before a row's first real token). Without a cache this is the plain causal forward.
        """
        T = idx.shape[1]
        if cache is None:
            if T > self.cfg.seq_len:
                raise ValueError(f"sequence of {T} tokens exceeds model.seq_len={self.cfg.seq_len}")
            cos, sin, mask = self.rope_cos, self.rope_sin, None
        else:
            cos, sin, mask = self._cache_step(cache, idx, pad_mask)
        emb = self.wte(idx)
        x = self.expander(emb) if self.expander is not None else self.variant.expand(emb)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache, i, mask)
        logits = self.lm_head(self.norm_f(self.variant.reduce(x)))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))
        return logits, loss

    def new_cache(self) -> KVCache:
        """An empty cache for `forward(..., cache=...)` (incremental decoding)."""
        return KVCache(len(self.blocks))

    def _cache_step(self, cache: KVCache, idx: Tensor, pad_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-token RoPE tables and the attention mask for `idx` appended to `cache`.

        Positions count real tokens only, so a left-padded row gets exactly the positions it
        would have alone. Padding queries attend to themselves (a fully masked row would give
        NaN, and NaN times a zero attention weight still poisons the real rows).
        """
        B, T = idx.shape
        past = cache.length
        if past + T > self.cfg.seq_len:
            raise ValueError(f"{past} cached + {T} new tokens exceed model.seq_len={self.cfg.seq_len}")
        real = torch.ones(B, T, dtype=torch.bool, device=idx.device) if pad_mask is None else pad_mask.to(idx.device, torch.bool)
        start = cache.next_pos if cache.next_pos is not None else torch.zeros(B, dtype=torch.long, device=idx.device)
        pos = (start[:, None] + real.long().cumsum(1) - 1).clamp(min=0)  # (B, T)
        cache.next_pos = pos[:, -1] + real[:, -1].long() if T else start
        keys = real if cache.key_mask is None else torch.cat((cache.key_mask, real), dim=1)  # (B, past + T)
        cache.key_mask = keys
        q_at = torch.arange(past, past + T, device=idx.device)
        k_at = torch.arange(past + T, device=idx.device)
        causal = k_at[None, :] <= q_at[:, None]  # (T, past + T)
        mask = causal[None] & keys[:, None, :]
        mask = mask | (k_at[None, None, :] == q_at[None, :, None])  # every query sees itself
        cos = self.rope_cos[pos].unsqueeze(1)  # (B, 1, T, D/2)
        sin = self.rope_sin[pos].unsqueeze(1)
        return cos, sin, mask.unsqueeze(1)


def padded_vocab(cfg, tokenizer_vocab: int) -> int:
    """model.vocab_size if set, else the tokenizer's size rounded up to 64 (faster matmuls)."""
    if cfg.model.vocab_size and cfg.model.vocab_size < tokenizer_vocab:
        raise UserError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's {tokenizer_vocab}")
    return cfg.model.vocab_size or 64 * math.ceil(tokenizer_vocab / 64)


def recompute_block(cfg, n_streams: int) -> int:
    """Sub-layers per recompute block L_r: train.recompute_block, else the mHC paper's optimum
    √(nL/(n + 2)) rounded (L = sub-layers; variants/recompute.py says why)."""
    L = 2 * cfg.model.n_layer
    return cfg.train.recompute_block or max(1, min(L, round(math.sqrt(n_streams * L / (n_streams + 2)))))


def build_model(cfg, tokenizer_vocab: int) -> GPT:
    """The GPT for a full `Config`, with the variant from the registry (and train.recompute)."""
    variant = build_variant(cfg.variant, cfg.model.d_model, 2 * cfg.model.n_layer)
    model = GPT(cfg.model, variant, padded_vocab(cfg, tokenizer_vocab))
    if cfg.train.recompute:
        model.set_recompute(recompute_block(cfg, variant.n_streams))
    return model
