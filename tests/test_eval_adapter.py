"""The lm-eval adapter and decoding: KV cache, token boundaries, truncation, stops (no datasets)."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness.core.presets import get_preset
from harness.train.model import KVCache, build_model
from harness.train.tokenizer import ByteTokenizer

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from harness.eval.adapter import MhcBenchLM  # noqa: E402
from harness.eval.decode import greedy_generate  # noqa: E402

TOK = ByteTokenizer()


def tiny(variant="identity", seq_len=64, seed=0):
    cfg = get_preset("tiny")
    cfg.variant.name, cfg.model.seq_len = variant, seq_len
    torch.manual_seed(seed)
    model = build_model(cfg, TOK.vocab_size)
    with torch.no_grad():  # move off the init so mixing coefficients are not trivial
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def lm(model, **kw):
    return MhcBenchLM(model=model, tokenizer=TOK, progress=False, **kw)


def ll_instance(context, continuation, task="t", idx=0):
    return Instance("loglikelihood", {}, (context, continuation), idx, (task, 0, 1))


@torch.no_grad()
def manual_logprob(model, ids: list[int], n_cont: int) -> float:
    """log P of the last n_cont ids given the others, from one plain forward (last window)."""
    ids = ids[-(model.cfg.seq_len + 1):]
    logits, _ = model(torch.tensor([ids[:-1]]))
    lp = F.log_softmax(logits[0, :, :TOK.vocab_size].float(), -1)
    return sum(lp[t, ids[t + 1]].item() for t in range(len(ids) - 1 - n_cont, len(ids) - 1))


# ---------------------------------------------------------------------- the KV cache
@pytest.mark.parametrize("variant", ["identity", "hc", "mhc"])
def test_kv_cache_with_left_padding_matches_plain_forward(variant):
    model = tiny(variant)
    x = torch.randint(0, 257, (3, 40))
    lens, L = [40, 29, 7], 40
    idx, real = torch.zeros(3, L, dtype=torch.long), torch.zeros(3, L, dtype=torch.bool)
    for i, n in enumerate(lens):
        idx[i, L - n:], real[i, L - n:] = x[i, :n], True
    cache = model.new_cache()
    with torch.no_grad():
        outs = [model(idx[:, :25], cache=cache, pad_mask=real[:, :25])[0]]
        outs += [model(idx[:, t:t + 1], cache=cache, pad_mask=real[:, t:t + 1])[0] for t in range(25, L)]
        got = torch.cat(outs, 1)
        for i, n in enumerate(lens):
            ref, _ = model(x[i:i + 1, :n])
            torch.testing.assert_close(got[i, L - n:], ref[0], rtol=1e-4, atol=1e-4)
    assert cache.length == L and not torch.isnan(got).any()


def test_greedy_generate_matches_step_by_step_full_forward():
    model = tiny("hc")
    prompts = [list(b"The cat sat on"), list(b"Hi")]
    got = greedy_generate(model, prompts, 12, eot_id=TOK.eot_id, vocab_size=TOK.vocab_size)
    for prompt, out in zip(prompts, got):
        seq, ref = list(prompt), []
        with torch.no_grad():
            for _ in range(12):
                nxt = int(model(torch.tensor([seq]))[0][0, -1, :TOK.vocab_size].argmax())
                if nxt == TOK.eot_id:
                    break
                ref.append(nxt)
                seq.append(nxt)
        assert out == ref


def test_generation_past_the_window_is_batch_invariant():
    model = tiny(seq_len=32)
    prompts = [list(b"x" * 100), list(b"short"), list(b"a medium prompt here")]
    batched = greedy_generate(model, prompts, 70, eot_id=TOK.eot_id, vocab_size=TOK.vocab_size)
    alone = [greedy_generate(model, [p], 70, eot_id=TOK.eot_id, vocab_size=TOK.vocab_size)[0] for p in prompts]
    assert batched == alone
    assert all(len(o) <= 70 for o in batched)


class Counting(nn.Module):
    """A stand-in model whose greedy next byte is the last byte + 1, and end-of-text after 'z'.
    It checks the decoder never overfills its window."""

    def __init__(self, window=16):
        super().__init__()
        self.cfg = SimpleNamespace(seq_len=window)
        self.lm_head = nn.Linear(1, 320, bias=False)
        self.calls = 0

    def new_cache(self):
        return KVCache(0)

    def forward(self, idx, targets=None, cache=None, pad_mask=None):
        self.calls += 1
        if cache is not None:
            real = torch.ones_like(idx, dtype=torch.bool) if pad_mask is None else pad_mask
            cache.key_mask = real if cache.key_mask is None else torch.cat([cache.key_mask, real], 1)
            cache.next_pos = torch.zeros(idx.shape[0], dtype=torch.long)
            assert cache.length <= self.cfg.seq_len
        nxt = torch.where(idx == ord("z"), torch.full_like(idx, TOK.eot_id), (idx + 1) % 256)
        return 10.0 * F.one_hot(nxt, 320).float(), None


def gen_instance(context, **kwargs):
    return Instance("generate_until", {}, (context, {"until": [], "do_sample": False, **kwargs}), 0, ("gen", 0, 1))


def test_generate_until_stop_strings_budget_and_end_of_text():
    adapter = lm(Counting())
    out = adapter.generate_until([
        gen_instance("abc", until=["fg"]),  # stop string: cut before it
        gen_instance("abc", max_gen_toks=3),  # token budget
        gen_instance("w"),  # end-of-text after z
        gen_instance("A", max_gen_toks=40),  # 40 tokens through a 16-token window
    ])
    assert out[0] == "de"
    assert out[1] == "def"
    assert out[2] == "xyz"
    assert out[3] == bytes(range(ord("B"), ord("B") + 40)).decode()


def test_generate_cap_and_truncation_are_counted():
    adapter = lm(Counting(), gen_cap=2)
    out = adapter.generate_until([gen_instance("q" * 30), gen_instance("abc")])
    assert out == ["rs", "de"]
    assert adapter.stats["gen"] == {"requests": 2, "truncated": 1}  # 1 + 30 tokens > window - 1


# ---------------------------------------------------------------------- log-likelihoods
def test_loglikelihood_boundaries_and_batching():
    model = tiny("hc")
    reqs = [
        ll_instance("Question: 2+2=", " 4"),
        ll_instance("The answer is ", "yes"),  # trailing space moves into the continuation
        ll_instance("", "hello"),  # empty context: end-of-text is the whole context
        ll_instance("x" * 200, " tail"),  # longer than the window: left-truncated
    ] + [ll_instance("Pick one:\nAnswer:", f" {c}", idx=i) for i, c in enumerate("ABCD")]
    got = lm(model, batch_size=3).loglikelihood(reqs)
    one_by_one = lm(model, batch_size=1).loglikelihood(reqs)
    assert [g for _, g in got] == [g for _, g in one_by_one]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in one_by_one], abs=1e-4)
    eot = TOK.eot_id
    expect = [
        manual_logprob(model, [eot] + TOK.encode("Question: 2+2= 4"), 2),
        manual_logprob(model, [eot] + TOK.encode("The answer is yes"), 4),
        manual_logprob(model, [eot] + TOK.encode("hello"), 5),
        manual_logprob(model, [eot] + TOK.encode("x" * 200 + " tail"), 5),
    ] + [manual_logprob(model, [eot] + TOK.encode(f"Pick one:\nAnswer: {c}"), 2) for c in "ABCD"]
    for (value, greedy), ref in zip(got, expect):
        assert value == pytest.approx(ref, abs=1e-4)
        assert isinstance(greedy, bool)
    adapter = lm(model)
    adapter.loglikelihood(reqs)
    assert adapter.stats["t"] == {"requests": 8, "truncated": 1}


def test_loglikelihood_rolling_uses_disjoint_windows():
    model = tiny(seq_len=16)
    text = "Rolling windows score each token exactly once..."  # 48 bytes = 3 windows of 16
    assert len(text) == 48
    (got,) = lm(model).loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0, ("r", 0, 1))])
    ids, eot = TOK.encode(text), TOK.eot_id
    # window 1 after end-of-text; windows 2, 3 see only the previous window's last token
    expect = manual_logprob(model, [eot] + ids[:16], 16)
    expect += manual_logprob(model, ids[15:32], 16) + manual_logprob(model, ids[31:48], 16)
    assert got == pytest.approx(expect, abs=1e-3)
