"""The held-out task's documents (harness/eval/heldout.py) are the run's validation split,
whatever the corpus: WikiExtractor articles, Parquet rows, the last JSONL lines, or token
shards decoded with the run's tokenizer; written once, never half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.eval.heldout import heldout_file
from harness.train.data import corpus_path, prepare, read_documents
from harness.train.tokenizer import FileTokenizer
from tests.test_data import doc_text, make_cfg
from tests.test_data_sources import modded_shard, tokenizer_file, write_parquet


def pages(path) -> list[str]:
    return [json.loads(line)["page"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_default_corpus_scores_wiki_48_and_49_article_by_article(tmp_path, data_cache):
    cfg = get_preset("tiny")
    cfg.data.cache_dir = str(data_cache)
    corpus = corpus_path(cfg)
    expected = read_documents(corpus / "wiki_48.gz") + read_documents(corpus / "wiki_49.gz")
    path = heldout_file(cfg, tmp_path / "run", tmp_path / "shared", None)
    assert pages(path) == expected
    limited = heldout_file(cfg, tmp_path / "run", tmp_path / "shared", 5)
    assert limited != path and pages(limited) == expected[:5]
    stamp = limited.stat().st_mtime_ns
    assert heldout_file(cfg, tmp_path / "run", tmp_path / "shared", 5).stat().st_mtime_ns == stamp  # written once


def test_parquet_validation_file_and_a_held_out_fraction(tmp_path):
    corpus = tmp_path / "fineweb-edu"
    corpus.mkdir()
    docs = [doc_text(i) for i in range(12)]
    write_parquet(corpus / "000_00000.parquet", docs[:4])
    write_parquet(corpus / "001_00000.parquet", docs[4:])
    cfg = make_cfg(tmp_path, corpus, tokenizer="byte", val_files="000_00000.parquet")
    assert pages(heldout_file(cfg, tmp_path / "run", tmp_path / "shared", None)) == docs[:4]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": d}) + "\n" for d in docs))
    cfg = make_cfg(tmp_path, jsonl, tokenizer="byte", val_fraction=0.25, text_field="body")
    assert pages(heldout_file(cfg, tmp_path / "run", tmp_path / "shared", None)) == docs[-3:]


def test_token_shards_are_decoded_with_the_run_s_tokenizer_one_document_per_end_of_text(tmp_path):
    tok_path = tokenizer_file(tmp_path)
    tok = FileTokenizer.load(tok_path)
    docs = [doc_text(i) for i in range(9)]

    def tokens(ds):  # modded-nanogpt's layout: an end-of-text before every document
        return [t for d in ds for t in [tok.eot_id, *tok.encode(d)]]

    corpus = tmp_path / "fineweb10B"
    corpus.mkdir()
    modded_shard(corpus / "fineweb_val_000000.bin", tokens(docs[:3]))
    modded_shard(corpus / "fineweb_train_000001.bin", tokens(docs[3:]))
    cfg = make_cfg(tmp_path, corpus, tokenizer=str(tok_path), val_files="fineweb_val_000000.bin")
    prepare(cfg, log=lambda _: None)
    got = pages(heldout_file(cfg, tmp_path / "run", tmp_path / "shared", None))
    assert got == [tok.decode(tok.encode(d)) for d in docs[:3]] and got[0].startswith("Title 0")


def test_shards_without_a_tokenizer_cannot_be_scored_on_text_and_nothing_is_written(tmp_path):
    corpus = tmp_path / "openwebtext"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 900).astype(np.uint16).tofile(corpus / "train.bin")
    rng.integers(0, 50257, 300).astype(np.uint16).tofile(corpus / "val.bin")
    cfg = make_cfg(tmp_path, corpus, shard_format="nanogpt", val_files="val.bin", shard_vocab_size=50257)
    with pytest.raises(UserError, match="used without a tokenizer file; set data.tokenizer"):
        heldout_file(cfg, tmp_path / "run", tmp_path / "shared", None)
    assert not list((tmp_path / "shared").rglob("*.jsonl*"))
