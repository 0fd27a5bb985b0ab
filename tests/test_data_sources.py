"""Corpora researchers already have: Parquet, JSONL with another key, pre-tokenized .bin shards
(nanoGPT, modded-nanogpt) and a Hugging Face tokenizer.json. Every bad file is one clear error
naming it, and a refused build leaves no cache folder behind."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from harness.core.config import apply_overrides
from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.core.run_id import legacy_hash, run_id
from harness.train.data import (
    MODDED_MAGIC,
    Batches,
    TokenStream,
    corpus_files,
    prepare,
    read_documents,
)
from harness.train.tokenizer import EOT, BPETokenizer, FileTokenizer
from tests.test_data import doc_text, joined, make_cfg


def files_under(path: Path) -> list[Path]:
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


def cli_error(capsys, cfg, *sets) -> list[str]:
    """`mhc-bench prepare` on cfg's corpus: asserts exit 2 and returns the stderr lines."""
    argv = ["prepare", "--preset", "tiny", "--runs-dir", cfg.run.runs_dir, "--set", f"data.cache_dir={cfg.data.cache_dir}",
            "--set", f"data.corpus={cfg.data.corpus}", "--set", "data.val_files=", *[x for s in sets for x in ("--set", s)]]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    return err


# ---------------------------------------------------------------------- Parquet
def write_parquet(path: Path, texts: list[str | None], column="text", row_group_size=2) -> None:
    table = pa.table({column: texts, "id": list(range(len(texts)))})
    pq.write_table(table, path, row_group_size=row_group_size)


def test_parquet_folder_is_read_by_row_group_with_its_text_column(tmp_path, monkeypatch):
    corpus = tmp_path / "fineweb"
    (corpus / "sample").mkdir(parents=True)
    docs = [doc_text(i) for i in range(9)]
    write_parquet(corpus / "sample" / "000_00000.parquet", docs[:5] + [""], column="content")
    write_parquet(corpus / "sample" / "001_00000.parquet", docs[5:], column="content")
    # never the whole file at once: only row groups may be read
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("a whole Parquet file was read"))
    assert read_documents(corpus / "sample" / "000_00000.parquet", "content") == docs[:5]  # the empty row skipped
    cfg = make_cfg(tmp_path, corpus, tokenizer="byte", text_field="content")
    prepared = prepare(cfg, log=lambda _: None)
    tokens = np.concatenate([prepared.train, prepared.val])
    assert bytes(tokens[tokens != 256].astype(np.uint8)).decode() == "".join(docs)
    assert prepared.meta["train_docs"] + prepared.meta["val_docs"] == 9
    assert [s["name"] for s in prepared.meta["sources"]] == ["sample/000_00000.parquet", "sample/001_00000.parquet"]


def test_parquet_without_the_column_or_corrupt_is_one_error_naming_it(tmp_path, capsys):
    corpus = tmp_path / "pq"
    corpus.mkdir()
    write_parquet(corpus / "a.parquet", [doc_text(i) for i in range(4)], column="body")
    cfg = make_cfg(tmp_path, corpus, tokenizer="byte")
    err = cli_error(capsys, cfg)
    assert len(err) == 1 and err[0].startswith("mhc-bench: error: ")
    assert str(corpus / "a.parquet") in err[0] and "no column 'text'" in err[0] and "body, id" in err[0], err
    err = cli_error(capsys, cfg, "data.text_field=id")
    assert len(err) == 1 and "column 'id' holds int64, not text" in err[0], err
    (corpus / "a.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
    err = cli_error(capsys, cfg, "data.text_field=body")
    assert len(err) == 1 and "a.parquet is not a readable Parquet file" in err[0], err
    assert "UTF-8" not in err[0]
    assert files_under(tmp_path / "cache") == []  # nothing half-written


# ---------------------------------------------------------------------- JSONL
def test_jsonl_gz_with_another_text_field(tmp_path):
    path = tmp_path / "c4.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i in range(3):
            f.write(json.dumps({"content": doc_text(i), "url": f"u{i}"}) + "\n")
    assert read_documents(path, "content") == [doc_text(i) for i in range(3)]
    with pytest.raises(UserError, match=r'c4\.jsonl\.gz line 1: no "text" string.*data\.text_field'):
        read_documents(path)
    cfg = make_cfg(tmp_path, path, tokenizer="byte", text_field="content")
    prepared = prepare(cfg, log=lambda _: None)
    assert prepared.meta["train_docs"] + prepared.meta["val_docs"] == 3
    assert prepared.meta["key"]["text_field"] == "content"


# ---------------------------------------------------------------------- pre-tokenized shards
def modded_shard(path: Path, tokens, magic=MODDED_MAGIC, version=1, count=None) -> np.ndarray:
    tokens = np.asarray(tokens, dtype=np.uint16)
    header = np.zeros(256, dtype="<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + tokens.tobytes())
    return tokens


def test_modded_nanogpt_shards_are_memory_mapped_not_copied(tmp_path):
    corpus = tmp_path / "fineweb10B"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    train = [modded_shard(corpus / f"fineweb_train_{i:06d}.bin", rng.integers(0, 50257, 700 + i)) for i in (1, 2)]
    val = modded_shard(corpus / "fineweb_val_000000.bin", rng.integers(0, 50257, 300))
    cfg = make_cfg(tmp_path, corpus, val_files="fineweb_val_000000.bin", shard_vocab_size=50257)
    prepared = prepare(cfg, log=lambda _: None)
    whole = np.concatenate(train)
    assert len(prepared.train) == len(whole) and len(prepared.val) == len(val)
    assert np.array_equal(prepared.val[np.arange(len(val))], val)
    assert prepared.tokenizer.vocab_size == 50257
    assert sorted(p.name for p in prepared.dir.iterdir()) == ["meta.json"]  # the tokens stay in the shards
    batches = Batches(prepared, seq_len=64, batch_size=32, seed=3)
    x, y = batches.train_batch(0)
    for row_x, row_y in zip(x.numpy(), y.numpy()):  # windows straddling the two shards included
        start = next(s for s in range(len(whole) - 64) if np.array_equal(whole[s : s + 64], row_x))
        assert np.array_equal(whole[start + 1 : start + 65], row_y)
    assert prepare(cfg, log=lambda _: pytest.fail("checked twice")).dir == prepared.dir  # the check is cached


def test_token_stream_indexes_like_the_concatenation():
    rng = np.random.default_rng(1)
    parts = [rng.integers(0, 1000, n).astype(np.uint16) for n in (5, 1, 0, 17, 9)]
    stream, whole = TokenStream(parts), np.concatenate(parts)
    idx = rng.integers(0, len(whole), size=(7, 6))
    assert len(stream) == len(whole) and np.array_equal(stream[idx], whole[idx])


def test_nanogpt_raw_shards_with_a_sidecar_vocab_and_a_fractional_split(tmp_path):
    corpus = tmp_path / "shakespeare"
    corpus.mkdir()
    tokens = np.arange(1000, dtype=np.uint16) % 65
    tokens.tofile(corpus / "train.bin")
    cfg = make_cfg(tmp_path, corpus, shard_format="nanogpt", val_fraction=0.1)
    with pytest.raises(UserError, match=r"vocabulary of the token shards .* is unknown; set data\.shard_vocab_size"):
        prepare(cfg, log=lambda _: None)
    (corpus / "meta.json").write_text(json.dumps({"vocab_size": 65}))
    prepared = prepare(cfg, log=lambda _: None)
    assert prepared.tokenizer.vocab_size == 65 and len(prepared.train) == 900 and len(prepared.val) == 100
    assert np.array_equal(prepared.val[np.arange(100)], tokens[900:])
    with pytest.raises(UserError, match="no text can be encoded"):
        prepared.tokenizer.encode("hi")


@pytest.mark.parametrize("fault, message", [
    (dict(magic=1234), "starts with 1234, not the modded-nanogpt magic number 20240520"),
    (dict(version=7), "modded-nanogpt shard version 7; only version 1"),
    (dict(count=999), "header says 999 tokens"),
    (dict(tokens=[5, 70_000 % 65536, 50257]), "token id 50257 (first bad id at token 2) is >= the vocabulary size 50257"),
])
def test_a_bad_shard_is_one_error_naming_it_and_nothing_is_written(tmp_path, capsys, fault, message):
    corpus = tmp_path / "shards"
    corpus.mkdir()
    modded_shard(corpus / "fineweb_train_000001.bin", np.arange(500) % 100)
    tokens = fault.pop("tokens", np.arange(300) % 100)
    modded_shard(corpus / "fineweb_val_000000.bin", tokens, **fault)
    cfg = make_cfg(tmp_path, corpus)
    err = cli_error(capsys, cfg, "data.val_files=fineweb_val_000000.bin", "data.shard_vocab_size=50257")
    errors = [line for line in err if line.startswith("mhc-bench: error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err  # progress lines may come first
    assert str(corpus / "fineweb_val_000000.bin") in err[-1] and message in err[-1], err
    assert files_under(tmp_path / "cache") == []


def test_a_folder_with_shards_is_read_as_shards_only(tmp_path):
    """nanoGPT's data folders keep input.txt and meta files beside train.bin and val.bin."""
    (tmp_path / "c").mkdir()
    modded_shard(tmp_path / "c" / "a.bin", [1, 2, 3])
    (tmp_path / "c" / "input.txt").write_text("text")
    (tmp_path / "c" / "meta.json").write_text('{"vocab_size": 9}')
    assert [n for n, _ in corpus_files(tmp_path / "c")] == ["a.bin"]


# ---------------------------------------------------------------------- tokenizer.json
def tokenizer_file(tmp_path) -> Path:
    """A GPT-2-style tokenizer.json made here (nothing is downloaded)."""
    path = tmp_path / "tok" / "tokenizer.json"
    path.parent.mkdir()
    BPETokenizer.train([doc_text(i) for i in range(40)], 400).save(path)
    return path


def test_a_tokenizer_file_tokenizes_the_corpus_and_evaluation_uses_it(tmp_path):
    from harness.eval.loading import load_run_tokenizer

    tok_path = tokenizer_file(tmp_path)
    corpus = tmp_path / "docs.jsonl"
    docs = [doc_text(i) for i in range(6)]
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    cfg = make_cfg(tmp_path, corpus, tokenizer=str(tok_path))
    prepared = prepare(cfg, log=lambda _: None)
    tok = FileTokenizer.load(tok_path)
    assert prepared.tokenizer.kind == "file" and prepared.tokenizer.vocab_size == tok.vocab_size
    assert tok.decode(np.concatenate([prepared.train, prepared.val])) == joined(docs)
    assert (prepared.dir / "tokenizer.json").read_bytes() == tok_path.read_bytes()
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    loaded = load_run_tokenizer(cfg, run_dir)
    assert loaded.kind == "file" and loaded.encode(docs[0]) == tok.encode(docs[0])
    for p in prepared.dir.iterdir():  # the cache is gone: the configured file is used
        p.unlink()
    assert load_run_tokenizer(cfg, run_dir).encode(docs[1]) == tok.encode(docs[1])


def test_shards_take_their_vocabulary_from_the_tokenizer_file(tmp_path):
    tok_path = tokenizer_file(tmp_path)
    vocab = FileTokenizer.load(tok_path).vocab_size
    corpus = tmp_path / "shards"
    corpus.mkdir()
    modded_shard(corpus / "train_1.bin", np.arange(600) % vocab)
    cfg = make_cfg(tmp_path, corpus, tokenizer=str(tok_path))
    prepared = prepare(cfg, log=lambda _: None)
    assert prepared.tokenizer.kind == "file" and prepared.tokenizer.vocab_size == vocab
    assert len(prepared.train) + len(prepared.val) == 600


def test_a_missing_or_invalid_tokenizer_file_is_one_error(tmp_path, capsys):
    corpus = tmp_path / "a.txt"
    corpus.write_text("some text\nmore text\n" * 50)
    cfg = make_cfg(tmp_path, corpus)
    err = cli_error(capsys, cfg, f"data.tokenizer={tmp_path / 'nope' / 'tokenizer.json'}")
    assert len(err) == 1 and "tokenizer file" in err[0] and "nope/tokenizer.json not found" in err[0], err
    bad = tmp_path / "bad.json"
    bad.write_text('{"not": "a tokenizer"}')
    err = cli_error(capsys, cfg, f"data.tokenizer={bad}")
    assert len(err) == 1 and f"tokenizer file {bad} is not a Hugging Face tokenizer.json" in err[0], err
    no_eot = tmp_path / "noeot.json"
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(no_eot))
    err = cli_error(capsys, cfg, f"data.tokenizer={no_eot}")
    assert len(err) == 1 and "has none of the end-of-text tokens" in err[0] and EOT in err[0], err
    err = cli_error(capsys, cfg, "data.tokenizer=bpee")
    assert len(err) == 1 and "did you mean 'bpe'" in err[0], err
    assert files_under(tmp_path / "cache") == []


# ---------------------------------------------------------------------- run ids
def test_new_data_fields_change_no_existing_id():
    """Ids of the preset runs, before the data fields were added (pinned); set away from their
    defaults, the fields do change the id."""
    for preset, legacy, current in (("tiny", "495c342fd3", "d08bca64b2"), ("small", "416ca92cbe", "f6e92fb7bd")):
        cfg = apply_overrides(get_preset(preset), ["variant.name=mhc"])
        assert (legacy_hash(cfg), legacy_hash(cfg, machine_paths=False), run_id(cfg)) == (legacy, legacy, current)
        changed = apply_overrides(get_preset(preset), ["variant.name=mhc", "data.text_field=content"])
        assert run_id(changed) != current and legacy_hash(changed) != legacy


# ---------------------------------------------------------------------- streaming
def test_with_validation_files_named_the_training_text_is_streamed(tmp_path, monkeypatch):
    """Nothing is read up front; the files are read as they are tokenized, a chunk at a time,
    and data.max_bytes still cuts the training ones."""
    from harness.train import data
    corpus = tmp_path / "pq"
    corpus.mkdir()
    docs = [doc_text(i) for i in range(12)]
    for i in range(3):
        write_parquet(corpus / f"{i:03d}.parquet", docs[4 * i : 4 * i + 4])
    cfg = make_cfg(tmp_path, corpus, tokenizer="byte", val_files="002.parquet", max_bytes=sum(len(d.encode()) for d in docs[:5]) + 7)
    opened = []
    real = data.iter_documents
    monkeypatch.setattr(data, "iter_documents", lambda p, f="text": (opened.append(p.name), real(p, f))[1])
    split = data.split_documents(cfg, corpus, corpus_files(corpus))
    assert opened == [] and list(split.val) == docs[8:] and opened == ["002.parquet"]
    batches = []
    real_write = data._write_tokens
    monkeypatch.setattr(data, "_write_tokens", lambda path, tok, d, dtype: real_write(path, tok, d, dtype, chunk=2))
    monkeypatch.setattr(data, "iter_documents", lambda p, f="text": (batches.append(p.name), real(p, f))[1])
    prepared = prepare(cfg, log=lambda _: None)
    assert batches == ["000.parquet", "001.parquet", "002.parquet"]  # train as it is tokenized (cut in 001), then val
    meta = prepared.meta
    assert meta["train_bytes"] == cfg.data.max_bytes and meta["truncated_by_max_bytes"] and meta["train_docs"] == 6
    tokens = np.asarray(prepared.train)
    assert bytes(tokens[tokens != 256].astype(np.uint8)).decode() == "".join(docs[:5]) + docs[5][:7]


def test_holding_out_a_fraction_never_holds_the_corpus_in_memory(tmp_path):
    """Without data.val_files the split is still streamed: documents are counted in one pass
    that keeps none, then each split is read as it is tokenized. The peak of Python's
    allocations while preparing 8 MB of gzipped JSONL stays far below the corpus size, and the
    last file is split between training and validation at the right document."""
    import tracemalloc

    corpus = tmp_path / "web"
    corpus.mkdir()
    docs = [doc_text(i, 200) for i in range(8000)]
    for f in range(4):
        with gzip.open(corpus / f"part-{f}.jsonl.gz", "wt") as out:
            out.writelines(json.dumps({"body": d}) + "\n" for d in docs[2000 * f : 2000 * (f + 1)])
    corpus_bytes = sum(len(d.encode()) for d in docs)
    assert corpus_bytes > 8e6
    cfg = make_cfg(tmp_path, corpus, tokenizer="byte", val_fraction=0.1, text_field="body")
    tracemalloc.start()
    try:
        prepared = prepare(cfg, log=lambda _: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < corpus_bytes / 4, f"peak {peak / 1e6:.1f} MB for a {corpus_bytes / 1e6:.1f} MB corpus"
    meta = prepared.meta
    assert (meta["train_docs"], meta["val_docs"]) == (7200, 800)
    assert [s["split"] for s in meta["sources"]] == ["train", "train", "train", "train+val"]
    val = np.asarray(prepared.val)
    assert bytes(val[val != 256].astype(np.uint8)).decode() == "".join(docs[7200:])
    assert meta["train_bytes"] == corpus_bytes - meta["val_bytes"]


def test_a_run_trained_with_a_tokenizer_file_loads_for_evaluation_with_it(tmp_path):
    from harness.eval.loading import load_run
    from harness.train.loop import train

    tok_path = tokenizer_file(tmp_path)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": doc_text(i, 200)}) + "\n" for i in range(20)))
    cfg = make_cfg(tmp_path, corpus, tokenizer=str(tok_path))
    cfg = apply_overrides(cfg, ["train.steps=2", "train.eval_every=0", "train.diag_every=0", "train.device=cpu",
                                "run.progress=off"])
    result = train(cfg)
    loaded = load_run(result.run_dir, device="cpu")
    tok = FileTokenizer.load(tok_path)
    assert loaded.tokenizer.kind == "file" and loaded.tokenizer.eot_id == tok.eot_id
    assert loaded.tokenizer.encode(doc_text(99)) == tok.encode(doc_text(99))
    assert loaded.model.wte.num_embeddings == -(-tok.vocab_size // 64) * 64  # sized by the tokenizer file
