"""Tests of tokenizers, corpus reading, splits, the shard cache and deterministic batches."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.train import data
from harness.train.data import Batches, corpus_files, prepare, read_documents
from harness.train.tokenizer import EOT, ByteTokenizer, load_tokenizer

WIKI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus" / "wikipedia_en_2015"
WORDS = "the quick brown fox jumps over lazy dogs while naïve Zürich cafés serve 東京 tea".split()


def make_cfg(tmp_path, corpus, **data_fields):
    cfg = get_preset("tiny")
    cfg.run.runs_dir = str(tmp_path / "runs")
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.corpus = str(corpus)
    cfg.data.val_files, cfg.data.max_bytes = "", 0
    for key, value in data_fields.items():
        setattr(cfg.data, key, value)
    return cfg


def doc_text(i: int, n_words: int = 60) -> str:
    rng = np.random.default_rng(i)
    return f"Title {i}\n\n" + " ".join(WORDS[j] for j in rng.integers(0, len(WORDS), n_words)) + "."


def wiki_corpus(tmp_path, n_files=3, docs_per_file=4) -> tuple[Path, dict[str, list[str]]]:
    """A folder of gzipped WikiExtractor files like the real corpus; returns it and its docs."""
    root = tmp_path / "corpus"
    root.mkdir()
    docs = {}
    for f in range(n_files):
        name = f"wiki_{f:02d}.gz"
        docs[name] = [doc_text(f * 100 + d) for d in range(docs_per_file)]
        body = "".join(f'<doc id="{f}{d}" url="http://x?curid={d}" title="Title">\n{t}\n</doc>\n' for d, t in enumerate(docs[name]))
        with gzip.open(root / name, "wt", encoding="utf-8") as fh:
            fh.write(body)
    return root, docs


def joined(docs: list[str]) -> str:
    return "".join(EOT + d for d in docs)


# ---------------------------------------------------------------------- tokenizers
def test_byte_tokenizer_round_trips_non_ascii():
    tok = ByteTokenizer()
    text = "Grüße aus 東京 🚀 — naïve\n"
    ids = tok.encode(text)
    assert len(ids) == len(text.encode("utf-8")) > len(text)
    assert max(ids) < 256 and tok.vocab_size == 257 and tok.eot_id == 256
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "a"]) == [ids, [97]]
    assert tok.decode([tok.eot_id] + ids[:4]) == EOT + "Grü"
    assert tok.decode(ids[:3]) == "Gr\ufffd"  # a sample cut mid-character still decodes


def test_bpe_has_requested_vocab_round_trips_and_reloads(tmp_path):
    corpus, docs = wiki_corpus(tmp_path)
    prepared = prepare(make_cfg(tmp_path, corpus, tokenizer="bpe", vocab_size=300), log=lambda m: None)
    tok = prepared.tokenizer
    assert tok.vocab_size == prepared.meta["vocab_size"] == 300
    text = "the lazy dogs — Grüße 🚀 unseen ✓ characters\n\tand <|endoftext|> as plain text"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and tok.eot_id not in ids
    assert len(ids) < len(text.encode("utf-8"))  # merges were learned
    assert tok.encode_batch([text, "fox"]) == [ids, tok.encode("fox")]
    again = load_tokenizer(prepared.dir)
    assert again.encode(text) == ids and again.eot_id == tok.eot_id
    # the val shard is the held-out documents, each preceded by end-of-text
    assert prepared.val.dtype == np.uint16
    assert tok.decode(prepared.val.tolist()) == joined(docs["wiki_02.gz"][-1:])


# ---------------------------------------------------------------------- reading
def test_wikiextractor_docs_are_split_and_untagged(tmp_path):
    (tmp_path / "wiki_00").write_text(
        '<doc id="1" url="u1" title="Alpha">\nAlpha\n\nFirst body.\n</doc>\n'
        '<doc id="2" url="u2" title="Beta">\nBeta\n\nSecond <b>body</b>.\n</doc>\n'
    )
    (tmp_path / "README").write_text("not a corpus file\n")
    (tmp_path / "notes.txt").write_text("plain text\nno tags\n")
    assert read_documents(tmp_path / "wiki_00") == ["Alpha\n\nFirst body.", "Beta\n\nSecond <b>body</b>."]
    assert read_documents(tmp_path / "notes.txt") == ["plain text\nno tags\n"]
    assert [n for n, _ in corpus_files(tmp_path)] == ["notes.txt", "wiki_00"]  # README skipped


def test_jsonl_documents_and_errors(tmp_path):
    good = tmp_path / "good.jsonl.gz"
    with gzip.open(good, "wt") as f:
        f.write(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two", "id": 2}) + "\n")
    assert read_documents(good) == ["one", "two"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(UserError, match=r"bad\.jsonl line 2: not valid JSON"):
        read_documents(bad)
    bad.write_text('{"text": "ok"}\n{"body": "x"}\n')
    with pytest.raises(UserError, match=r'bad\.jsonl line 2: no "text"'):
        read_documents(bad)


# ---------------------------------------------------------------------- splits
def test_split_by_val_files_and_missing_val_file(tmp_path):
    corpus, docs = wiki_corpus(tmp_path)
    cfg = make_cfg(tmp_path, corpus, val_files="wiki_01.gz")
    split = data.split_documents(cfg, corpus, corpus_files(corpus))
    assert list(split.val) == docs["wiki_01.gz"]
    assert list(split.train) == docs["wiki_00.gz"] + docs["wiki_02.gz"]  # streamed from the files
    cfg.data.val_files = "wiki_01.gz, wiki_77.gz"
    with pytest.raises(UserError, match=r"wiki_77\.gz not in .*it has: wiki_00\.gz, wiki_01\.gz, wiki_02\.gz"):
        prepare(cfg)


def test_split_by_val_fraction_and_max_bytes(tmp_path):
    corpus, docs = wiki_corpus(tmp_path, n_files=2, docs_per_file=5)
    all_docs = docs["wiki_00.gz"] + docs["wiki_01.gz"]
    cfg = make_cfg(tmp_path, corpus, val_fraction=0.2)
    split = data.split_documents(cfg, corpus, corpus_files(corpus))
    assert list(split.val) == all_docs[-2:] and list(split.train) == all_docs[:-2]
    assert split.labels == {"wiki_00.gz": "train", "wiki_01.gz": "train+val"}
    cfg.data.max_bytes = len(all_docs[0].encode()) + 10  # caps training text only
    split = data.split_documents(cfg, corpus, corpus_files(corpus))
    assert list(split.train) == [all_docs[0], all_docs[1].encode()[:10].decode()]
    assert split.train.stats == {"docs": 2, "bytes": cfg.data.max_bytes, "truncated": True}
    assert list(split.val) == all_docs[-2:]
    single = tmp_path / "one.txt"  # one plain-text document: its tail is held out at a line break
    single.write_text("".join(f"line {i}\n" for i in range(100)))
    split = data.split_documents(make_cfg(tmp_path, single), single, corpus_files(single))
    assert split.val[0].startswith("line ") and split.train[0].endswith("\n")
    assert split.train[0] + split.val[0] == single.read_text() and 1 <= split.val[0].count("\n") <= 10
    tiny = tmp_path / "x.txt"
    tiny.write_text("x")
    with pytest.raises(UserError, match="1 document"):
        prepare(make_cfg(tmp_path, tiny))


def test_missing_corpus_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MHC_BENCH_DATA", str(tmp_path / "shared"))
    cfg = make_cfg(tmp_path, "no_such_corpus")
    with pytest.raises(UserError) as err:
        prepare(cfg)
    msg = str(err.value)
    assert "corpus not found" in msg and "--data-dir" in msg
    assert str(tmp_path / "no_such_corpus") in msg and str(tmp_path / "shared" / "corpus" / "no_such_corpus") in msg
    (tmp_path / "shared" / "corpus" / "no_such_corpus").mkdir(parents=True)  # now found via $MHC_BENCH_DATA
    assert data.corpus_path(cfg) == tmp_path / "shared" / "corpus" / "no_such_corpus"


# ---------------------------------------------------------------------- cache
def counting_build(monkeypatch) -> list:
    calls = []
    real = data._build

    def build(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "_build", build)
    return calls


def test_cache_is_reused_not_rebuilt(tmp_path, monkeypatch):
    corpus, _ = wiki_corpus(tmp_path)
    cfg = make_cfg(tmp_path, corpus)
    calls = counting_build(monkeypatch)
    first = prepare(cfg, log=lambda m: None)
    mtime = (first.dir / "train.bin").stat().st_mtime_ns
    second = prepare(cfg, log=lambda m: pytest.fail(f"reuse printed {m!r}"))
    assert calls == [1] and second.dir == first.dir
    assert (second.dir / "train.bin").stat().st_mtime_ns == mtime
    assert np.array_equal(first.train, second.train)
    cfg.data.max_bytes = 500  # a setting that changes the tokens gets its own folder
    assert prepare(cfg, log=lambda m: None).dir != first.dir and calls == [1, 1]


def test_interrupted_build_leaves_nothing_reusable(tmp_path, monkeypatch):
    corpus, _ = wiki_corpus(tmp_path)
    cfg = make_cfg(tmp_path, corpus)
    real = data._write_tokens

    def write_then_die(path, *args, **kwargs):
        if path.name == "val.bin":
            raise KeyboardInterrupt  # as if Ctrl-C hit between the two shards
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data, "_write_tokens", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg, log=lambda m: None)
    target = data.shard_dir(cfg)
    assert not target.exists()
    assert not target.parent.exists()  # the cache folder the build made goes too, with its lock
    monkeypatch.setattr(data, "_write_tokens", real)
    calls = counting_build(monkeypatch)
    assert prepare(cfg, log=lambda m: None).dir == target and calls == [1]


def test_concurrent_prepare_builds_once(tmp_path, monkeypatch):
    corpus, _ = wiki_corpus(tmp_path)
    cfg = make_cfg(tmp_path, corpus)
    calls = counting_build(monkeypatch)
    results = []
    threads = [threading.Thread(target=lambda: results.append(prepare(cfg, log=lambda m: None).dir)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(set(results)) == 1 and len(results) == 3


# ---------------------------------------------------------------------- batches
def test_batches_are_deterministic_shifted_and_seed_dependent(tmp_path):
    corpus, _ = wiki_corpus(tmp_path)
    prepared = prepare(make_cfg(tmp_path, corpus), log=lambda m: None)
    a, b = Batches(prepared, 32, 4, seed=1), Batches(prepared, 32, 4, seed=1)
    x, y = a.train_batch(7)
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64
    for _ in range(3):
        b.train_batch(0)  # no hidden state: earlier calls change nothing
    assert all(torch.equal(p, q) for p, q in zip(b.train_batch(7), (x, y)))
    assert torch.equal(x[:, 1:], y[:, :-1])
    train = torch.from_numpy(prepared.train.astype(np.int64))
    for row_x, row_y in zip(x, y):  # every row is a real window of the shard
        start = next(i for i in range(len(train) - 32) if torch.equal(train[i : i + 32], row_x))
        assert torch.equal(train[start + 1 : start + 33], row_y)
    assert not torch.equal(a.train_batch(8)[0], x)
    assert not torch.equal(a.train_batch(7, micro=1)[0], x)
    other = Batches(prepared, 32, 4, seed=2)
    assert not torch.equal(other.train_batch(7)[0], x)
    assert torch.equal(other.val_batch(3)[0], a.val_batch(3)[0])  # validation ignores the seed
    assert not torch.equal(a.val_batch(3)[0], a.val_batch(4)[0])
    with pytest.raises(UserError, match=r"val split .* fewer than model.seq_len\+1"):
        Batches(prepared, len(prepared.val), 4, seed=1)


# ---------------------------------------------------------------------- the real corpus
@pytest.mark.skipif(not WIKI.is_dir(), reason="shared Wikipedia corpus not present")
def test_real_wikipedia_tiny_holds_out_wiki_48_49(tmp_path):
    cfg = get_preset("tiny")
    cfg.run.runs_dir, cfg.data.cache_dir = str(tmp_path / "runs"), str(tmp_path / "cache")
    prepared = prepare(cfg, log=lambda m: None)
    meta = prepared.meta
    assert [s["name"] for s in meta["sources"] if s["split"] == "val"] == ["wiki_48.gz", "wiki_49.gz"]
    assert meta["train_bytes"] == 3_000_000 and meta["truncated_by_max_bytes"]
    assert meta["train_tokens"] == 3_000_000 + meta["train_docs"] == len(prepared.train)
    with gzip.open(WIKI / "wiki_48.gz", "rt", encoding="utf-8") as f:
        f.readline()  # <doc ...>
        title = f.readline()
    assert prepared.tokenizer.decode(prepared.val[: 1 + len(title.encode())].tolist()) == EOT + title
    with gzip.open(WIKI / "wiki_00.gz", "rt", encoding="utf-8") as f:
        f.readline()
        head = f.read(300)
    assert prepared.tokenizer.decode(prepared.train[: 1 + len(head.encode())].tolist()) == EOT + head
    x, y = Batches(prepared, cfg.model.seq_len, cfg.train.batch_size, cfg.train.seed).val_batch(0)
    assert x.shape == (cfg.train.batch_size, cfg.model.seq_len) and int(x.max()) <= 256
