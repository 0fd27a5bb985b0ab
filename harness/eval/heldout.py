"""The run's held-out validation documents as one JSONL file, for the `wiki` (held-out) task.

Whatever the corpus, the documents scored are the ones training never saw: those of
data.val_files, else the last data.val_fraction, read by the same code that split them for
training (`harness.train.data.split_documents`): WikiExtractor articles, Parquet rows, JSONL lines.
A corpus of token shards has no text, so its validation tokens are decoded with the run's
tokenizer and cut at each end-of-text token (shards used without a tokenizer file cannot be
scored on text: one clear error). lm-eval then reads one {"page": ...} per line.

The file is written once per data preparation and --limit into the experiment's evaluation
cache (`<experiment>/eval-cache/heldout/`), atomically, streaming: a validation split larger
than memory is never held, and --limit N writes only the N documents lm-eval would score.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.core.atomic import atomic_path
from harness.core.errors import UserError
from harness.eval.loading import tokenizer_candidates
from harness.train.data import (
    corpus_files,
    corpus_path,
    is_pretokenized,
    open_shards,
    prepare,
    shard_dir,
    split_documents,
)

HELDOUT_DIR = "heldout"
DECODE_CHUNK = 1 << 20  # tokens decoded at a time from a shard's validation tokens


def heldout_file(cfg, run_dir: Path, shared: Path, limit: int | None) -> Path:
    """<shared>/heldout/<data>-<limit>.jsonl holding the run's validation documents (made if missing)."""
    path = Path(shared) / HELDOUT_DIR / f"{shard_dir(cfg).name}-{limit or 'all'}.jsonl"
    if not path.is_file():
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            count = 0
            for count, doc in enumerate(_documents(cfg, run_dir), 1):
                f.write(json.dumps({"page": doc}, ensure_ascii=False) + "\n")
                if limit and count >= limit:
                    break
            if count == 0:
                raise UserError(f"the validation split of {cfg.data.corpus} holds no document to score; "
                                "name validation files in data.val_files")
    return path


def _documents(cfg, run_dir: Path) -> Iterator[str]:

    corpus = corpus_path(cfg)
    files = corpus_files(corpus)
    if not is_pretokenized(files):
        yield from split_documents(cfg, corpus, files).val
        return
    yield from _decoded(cfg, run_dir)


def _decoded(cfg, run_dir: Path) -> Iterator[str]:
    """The shard corpus's validation tokens as text, one document per end-of-text token."""
    opened = next((open_shards(d) for d in tokenizer_candidates(cfg, run_dir)[1:] if (d / "meta.json").is_file()), None)
    data = opened or prepare(cfg)
    tok = data.tokenizer
    if tok.kind == "none":
        raise UserError(f"the held-out task scores text, but {cfg.data.corpus}'s token shards were used without a tokenizer "
                        "file; set data.tokenizer to the tokenizer.json they were made with, or use --tasks wikitext2")
    val, eot, pending = data.val, tok.eot_id, []
    for start in range(0, len(val), DECODE_CHUNK):
        chunk = np.asarray(val[np.arange(start, min(start + DECODE_CHUNK, len(val)))])  # a TokenStream takes index arrays
        cuts = np.flatnonzero(chunk == eot)
        begin = 0
        for cut in cuts:
            pending.append(chunk[begin:cut])
            yield from _text(tok, pending)
            pending, begin = [], cut + 1
        pending.append(chunk[begin:])
    yield from _text(tok, pending)


def _text(tok, pieces: list[np.ndarray]) -> Iterator[str]:
    tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    if len(tokens):
        text = tok.decode(tokens.tolist())
        if text.strip():
            yield text
