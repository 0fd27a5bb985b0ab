"""The lm-eval model `mhc-bench`: a trained run scored through lm-evaluation-harness.

lm-eval owns prompts, filters and metrics; this class only turns text into numbers:

- `loglikelihood`: log P(continuation | context), with the context/continuation boundary
  taken from tokenizing the whole string (lm-eval's `_encode_pair`: trailing spaces move to
  the continuation), batched, with the shared-context trick for multiple choice (MMLU's four
  one-token answers cost one forward pass).
- `loglikelihood_rolling`: whole-document log-likelihood in disjoint windows of
  `model.seq_len` tokens (lm-eval's `get_rolling_token_windows`), for perplexity and
  bits-per-byte.
- `generate_until`: greedy decoding with the KV cache (`decode.py`), stop strings,
  `max_gen_toks`.

Every context starts with the end-of-text token, as every training document did (it plays the
part of a BOS token). Contexts longer than the model's window keep their last tokens (left
truncation; the continuation is always kept whole); how often that happened is counted per
task in `self.stats`, so the results can say so.

In lm-eval's own CLI: `lm_eval --model mhc-bench --model_args run=RUN_DIR --include_path
RUN_DIR/eval/tasks --tasks mhc_gsm8k ...` (the model is found through `lm_eval_plugin.py`).
`mhc-bench eval` instead hands it a shared `progress_bar`, one per run, that every request
type advances, in place of a bar per call.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, handle_stop_sequences, normalize_gen_kwargs
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from harness.core.device import autocast_context
from harness.core.errors import UserError
from harness.eval.decode import greedy_generate
from harness.eval.loading import load_run

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF default, used when a task does not say


def _positive_int(name: str, value) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be a positive integer, got {value!r}") from None
    if out <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return out


class _SharedBar:
    """A call's view of the run's bar: advances it, leaves closing it to its owner."""

    def __init__(self, bar):
        self.bar = bar

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        pass


@register_model("mhc-bench")
class MhcBenchLM(TemplateLM):
    """`run_dir` (a trained run folder), or an already built `model` + `tokenizer` (tests)."""

    backend = "causal"

    def __init__(self, run_dir: str | None = None, *, run: str | None = None, model=None, tokenizer=None, batch_size=16,
                 device: str | None = "auto", dtype: str = "auto", max_gen_toks=None,
                 gen_cap=None, progress: bool = True, progress_bar=None, **unused):
        super().__init__()

        run_dir = run_dir or run
        if model is None:
            if run_dir is None:
                raise UserError("the mhc-bench lm-eval model needs run=<run folder> (--model_args run=RUN_DIR)")

            loaded = load_run(Path(run_dir), device or "auto")
            model, tokenizer, self._device = loaded.model, loaded.tokenizer, loaded.device
        else:
            self._device = next(model.parameters()).device
        self.model, self.tokenizer = model.eval(), tokenizer
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            batch_size = 16  # lm-eval's "auto": no search here, our default
        self.batch_size = _positive_int("batch_size", batch_size or 16)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks) if max_gen_toks else DEFAULT_MAX_GEN_TOKS
        self.gen_cap = _positive_int("gen_cap", gen_cap) if gen_cap else None
        self.autocast = autocast_context(self._device, dtype)
        self.progress = progress
        self.progress_bar = progress_bar
        self.stats: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "truncated": 0})

    # ------------------------------------------------------------------ lm-eval's interface
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.model.cfg.seq_len

    @property
    def device(self):
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return f"mhc-bench-{getattr(self.tokenizer, 'kind', 'tokenizer')}-{self.tokenizer.vocab_size}"

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
        return list(self.tokenizer.encode(string))

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split of the jointly tokenized string, after the end-of-text "BOS"."""
        ctx, cont = super()._encode_pair(context, continuation)
        return [self.eot_token_id] + ctx, cont

    def _count(self, task: str | None, truncated: bool) -> None:
        s = self.stats[task or "?"]
        s["requests"] += 1
        s["truncated"] += int(truncated)

    def _bar(self, total: int, desc: str, disable_tqdm: bool):
        """The shared per-run bar, grown by `total`, or a bar of this call's own."""
        if self.progress_bar is None:
            return tqdm(total=total, desc=desc, disable=disable_tqdm or not self.progress)
        self.progress_bar.total = (self.progress_bar.total or 0) + total
        self.progress_bar.refresh()
        return _SharedBar(self.progress_bar)

    # ------------------------------------------------------------------ scoring
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        new = []
        for req in requests:
            context, continuation = req.args
            if context == "":  # lm-eval's rule: the prefix token is the whole context
                cont = self.tok_encode(continuation)
                ctx, cont = ([self.prefix_token_id], cont) if cont[:1] != [self.prefix_token_id] else (cont[:1], cont[1:])
            else:
                ctx, cont = self._encode_pair(context, continuation)
            if len(cont) > self.max_length:
                raise UserError(f"a continuation of {len(cont)} tokens does not fit the model's context of "
                                f"{self.max_length} (task {req.task_name})")
            self._count(req.task_name, len(ctx) + len(cont) - 1 > self.max_length)
            new.append(((context, continuation), ctx, cont))
        return self._loglikelihood_tokens(new, disable_tqdm=disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for n, req in enumerate(requests):
            (string,) = req.args
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append(((None, None), ctx, cont))
                owner.append(n)
            self._count(req.task_name, False)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, desc="Rolling windows")
        totals = [0.0] * len(requests)
        for n, (logprob, _) in zip(owner, scores):
            totals[n] += logprob
        return totals

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, desc: str = "Scoring continuations"):
        """(sum of log-probabilities, is greedy) of each continuation; requests are
        (strings, context tokens, continuation tokens)."""
        W, vocab = self.max_length, self.tokenizer.vocab_size
        order = Collator(requests, sort_fn=lambda r: (-len(r[1]) - len(r[2]), tuple(r[1] + r[2])),
                         group_by="contexts", group_fn=lambda r: r[-2] + r[-1][:-1])
        bar = self._bar(len(requests), desc, disable_tqdm)
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            inputs = [(ctx + cont)[-(W + 1):][:-1] for _, ctx, cont in chunk]
            width = max(len(x) for x in inputs)
            batch = torch.zeros(len(inputs), width, dtype=torch.long)
            for i, x in enumerate(inputs):
                batch[i, : len(x)] = torch.tensor(x, dtype=torch.long)  # right padding: unseen by causality
            with self.autocast():
                logits, _ = self.model(batch.to(self.device))
            for (strings, ctx, cont), x, row in zip(chunk, inputs, logits):
                # the positions that predict the continuation; padded vocabulary rows dropped
                lp = F.log_softmax(row[len(x) - len(cont): len(x), :vocab].float(), dim=-1).cpu().unsqueeze(0)
                for key, cont_toks, lp_one in order.get_cache(req_str=strings, cxt_toks=ctx, cont_toks=cont, logits=lp):
                    target = torch.tensor(cont_toks, dtype=torch.long).unsqueeze(0)
                    lp_one = lp_one[:, -target.shape[1]:]
                    greedy = bool((lp_one.argmax(dim=-1) == target).all())
                    total = float(lp_one.gather(2, target.unsqueeze(-1)).sum())
                    results.append((total, greedy))
                    bar.update(1)
        bar.close()
        return order.get_original(results)

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        W = self.max_length
        eos = self.tok_decode([self.eot_token_id])
        order = Collator([(r.args[0], r.args[1], i) for i, r in enumerate(requests)],
                         sort_fn=lambda a: (-len(self.tok_encode(a[0])), a[0]),
                         group_by="gen_kwargs", group_fn=lambda a: a[1])
        bar = self._bar(len(requests), "Generating", disable_tqdm)
        results = []
        for chunk in order.get_batched(n=self.batch_size):
            contexts, all_kwargs, ids = zip(*chunk)
            kwargs = normalize_gen_kwargs(all_kwargs[0], self.max_gen_toks)
            if kwargs.get("do_sample"):
                raise UserError("the mhc-bench model decodes greedily only; a task asked for sampling (do_sample=true)")
            until = [u for u in handle_stop_sequences(kwargs.get("until"), eos=eos) if u]
            budget = kwargs["max_gen_toks"] if self.gen_cap is None else min(kwargs["max_gen_toks"], self.gen_cap)
            prompts = []
            for text, i in zip(contexts, ids):
                toks = [self.eot_token_id] + self.tok_encode(text)
                self._count(requests[i].task_name, len(toks) > W - 1)
                prompts.append(toks)
            tail = max((len(u) for u in until), default=0) + 2  # tokens that can hold a stop string

            def should_stop(row: int, generated: list[int]) -> bool:
                text = self.tok_decode(generated[-tail:])
                return any(u in text for u in until)

            outs = greedy_generate(self.model, prompts, budget, eot_id=self.eot_token_id,
                                   vocab_size=self.tokenizer.vocab_size, should_stop=should_stop,
                                   autocast=self.autocast)
            for toks in outs:
                text = self.tok_decode(toks)
                for u in until:
                    text = text.split(u)[0]
                results.append(text)
                bar.update(1)
        bar.close()
        return order.get_original(results)
