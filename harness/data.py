"""Corpus reading, train/val split, cached token shards, and deterministic batches.

`prepare(cfg)` turns a text corpus into two flat token files (`train.bin`, `val.bin`) plus a
`meta.json`, cached under a name hashed from everything that changes the tokens, so a grid
of runs tokenizes once. `Batches` draws sequences at offsets that depend only on
(seed, step, micro-batch): a resumed run sees exactly the batches it would have seen, and
every run is validated on the same tokens whatever its variant or seed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from harness.atomic import make_dirs, remove_empty_dirs
from harness.errors import UserError
from harness.tokenizer import BPETokenizer, ByteTokenizer, load_tokenizer

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FORMAT = 1  # bump when the shard layout or reading rules change: old caches are then ignored
VAL_SEED = 0x7A11DA7E  # validation offsets: fixed, so every run is scored on the same tokens
_DOC = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.S)
_DOC_START = re.compile(r"^<doc\b", re.M)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------- locating the corpus
def data_root(cfg) -> Path:
    """The shared data folder: data.data_root, else $MHC_BENCH_DATA, else ../shared/data."""
    root = cfg.data.data_root or os.environ.get("MHC_BENCH_DATA") or PROJECT_ROOT.parent / "shared" / "data"
    return Path(root).expanduser().resolve()


def corpus_path(cfg) -> Path:
    """data.corpus as a path (absolute or relative to cwd), else a name under <data_root>/corpus."""
    name = cfg.data.corpus
    if not name:
        raise UserError("data.corpus is empty; point to your text with --data-dir PATH (or --set data.corpus=PATH)")
    candidates = [Path(name).expanduser().resolve(), data_root(cfg) / "corpus" / name]
    for path in candidates:
        if path.exists():
            return path.resolve()
    where = " and ".join(dict.fromkeys(str(p) for p in candidates))
    raise UserError(
        f"corpus not found: looked for {name!r} at {where}; point to your text with --data-dir PATH "
        "(or --set data.corpus=PATH), or set data.data_root / $MHC_BENCH_DATA"
    )


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _format(path: Path) -> str | None:
    """'txt', 'jsonl' or 'json' from the name (a .gz is looked through), else None.

    Extensionless files count as text only when they start with a <doc> tag: WikiExtractor
    names its output wiki_00, while a README beside the corpus must not become training text.
    """
    inner = path.name[:-3] if path.name.endswith(".gz") else path.name
    suffix = Path(inner).suffix
    if suffix in (".txt", ".jsonl", ".json"):
        return suffix[1:]
    if suffix == "":
        try:
            with _open_text(path) as f:
                return "txt" if f.read(64).lstrip().startswith("<doc") else None
        except (OSError, EOFError, UnicodeDecodeError):
            return None
    return None


def corpus_files(corpus: Path) -> list[tuple[str, Path]]:
    """(name, path) of the corpus's text files in sorted order; name is relative to the folder."""
    if corpus.is_file():
        return [(corpus.name, corpus)]
    files = sorted(
        (p.relative_to(corpus).as_posix(), p)
        for p in corpus.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(corpus).parts) and _format(p)
    )
    if not files:
        raise UserError(f"no .txt/.jsonl/.json files (optionally .gz) in {corpus}; point data.corpus at a folder or file of text")
    return files


def read_documents(path: Path) -> list[str]:
    """The non-empty documents of one file: one per <doc> (WikiExtractor), per file (plain
    text), per line (.jsonl, key "text"), or per item (.json: a list, or one {"text": ...})."""
    fmt = _format(path) or "txt"
    try:
        with _open_text(path) as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it or remove it from the corpus") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}; fix or remove the file") from None
    if fmt == "jsonl":
        docs = [_jsonl_text(line, path, n) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    elif fmt == "json":
        docs = _json_texts(text, path)
    elif _DOC_START.search(text):
        docs = [m.group(1).strip("\n") for m in _DOC.finditer(text)]
    else:
        docs = [text]
    return [d for d in docs if d.strip()]


def _jsonl_text(line: str, path: Path, n: int) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {n}: not valid JSON ({e.msg}); each line must be an object with a \"text\" string") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise UserError(f"{path} line {n}: no \"text\" string; each line must be an object with a \"text\" string")
    return obj["text"]


def _json_texts(text: str, path: Path) -> list[str]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix it or remove it from the corpus") from None
    items = obj if isinstance(obj, list) else [obj]
    docs = [x if isinstance(x, str) else x.get("text") if isinstance(x, dict) else None for x in items]
    if any(not isinstance(d, str) for d in docs):
        raise UserError(f"{path}: expected a list of strings or of {{\"text\": ...}} objects, or one such object")
    return docs


# ---------------------------------------------------------------------- the split
@dataclass
class _Split:
    train: list[str]
    val: list[str]
    labels: dict[str, str]  # file name -> "train", "val" or "train+val"
    train_bytes: int
    truncated: bool


def _val_names(cfg) -> list[str]:
    return sorted({v.strip() for v in cfg.data.val_files.split(",") if v.strip()})


def _cap(docs: Iterable[str], max_bytes: int) -> tuple[list[str], int, bool]:
    """Documents until `max_bytes` UTF-8 bytes (0 = all); the last one is cut to fit.

    Taking a lazy iterator means files past the cap are never even opened."""
    out, total = [], 0
    for doc in docs:
        size = len(doc.encode("utf-8"))
        if max_bytes and total + size > max_bytes:
            cut = doc.encode("utf-8")[: max_bytes - total].decode("utf-8", errors="ignore")  # drop a split character
            if cut.strip():
                out.append(cut)
                total += len(cut.encode("utf-8"))
            return out, total, True
        out.append(doc)
        total += size
    return out, total, False


def _docs_of(paths: list[Path]) -> Iterator[str]:
    for p in paths:
        yield from read_documents(p)


def split_documents(cfg, corpus: Path, files: list[tuple[str, Path]]) -> _Split:
    """Training and validation documents: data.val_files by name, else the last val_fraction."""
    names = [name for name, _ in files]
    val_names = _val_names(cfg)
    if val_names:
        missing = [v for v in val_names if v not in names]
        if missing:
            shown = ", ".join(names[:10]) + (f", ... ({len(names)} files)" if len(names) > 10 else "")
            raise UserError(
                f"validation file(s) {', '.join(missing)} not in {corpus} (it has: {shown}); set data.val_files "
                "to some of those, or data.val_files='' to hold out the last data.val_fraction of documents"
            )
        train_files = [(n, p) for n, p in files if n not in val_names]
        if not train_files:
            raise UserError(f"every file of {corpus} is in data.val_files; leave at least one for training")
        val = list(_docs_of([p for n, p in files if n in val_names]))
        train, nbytes, truncated = _cap(_docs_of([p for _, p in train_files]), cfg.data.max_bytes)
        labels = {n: "val" if n in val_names else "train" for n in names}
        return _Split(train, val, labels, nbytes, truncated)
    per_file = [(n, read_documents(p)) for n, p in files]
    docs = [d for _, ds in per_file for d in ds]
    if len(docs) == 1 and len(docs[0]) > 1:
        # one plain-text file (a book, tinyshakespeare): hold out its tail, cut at a line break
        text = docs[0]
        cut = round(len(text) * (1 - cfg.data.val_fraction))
        cut = text.rfind("\n", 1, cut) + 1 or cut
        docs = [text[:cut], text[cut:]]
        per_file = [(per_file[0][0], docs)]
    if len(docs) < 2:
        raise UserError(
            f"{corpus} holds {len(docs)} document(s), too few to hold out data.val_fraction of them; "
            "add documents (one per .txt file, <doc> or .jsonl line) or name a validation file in data.val_files"
        )
    n_val = min(max(1, round(len(docs) * cfg.data.val_fraction)), len(docs) - 1)
    first_val, labels, end = len(docs) - n_val, {}, 0
    for n, ds in per_file:
        start, end = end, end + len(ds)
        labels[n] = "val" if start >= first_val else "train" if end <= first_val else "train+val"
    train, nbytes, truncated = _cap(docs[:first_val], cfg.data.max_bytes)
    return _Split(train, docs[first_val:], labels, nbytes, truncated)


# ---------------------------------------------------------------------- the cache
@dataclass
class PreparedData:
    """Opened shards: token arrays are memory-mapped, so many runs share one page cache."""

    dir: Path
    tokenizer: ByteTokenizer | BPETokenizer
    train: np.memmap
    val: np.memmap
    meta: dict


def _cache_key(cfg, corpus: Path, files: list[tuple[str, Path]]) -> dict:
    """Everything that changes the tokens, and nothing else (so equal settings share shards)."""
    d = cfg.data
    return {
        "format": FORMAT,
        "corpus": str(corpus),
        "files": [[name, p.stat().st_size] for name, p in files],
        "val_files": _val_names(cfg),
        "val_fraction": None if _val_names(cfg) else d.val_fraction,
        "tokenizer": d.tokenizer,
        "vocab_size": d.vocab_size if d.tokenizer == "bpe" else None,
        "max_bytes": d.max_bytes,
    }


def shard_dir(cfg, corpus: Path | None = None, files=None) -> Path:
    """Where `prepare(cfg)` keeps (or will keep) the shards for this config."""
    corpus = corpus or corpus_path(cfg)
    files = files if files is not None else corpus_files(corpus)
    key = _cache_key(cfg, corpus, files)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    vocab = f"-{cfg.data.vocab_size}" if cfg.data.tokenizer == "bpe" else ""
    root = Path(cfg.data.cache_dir or Path(cfg.run.runs_dir) / "data").expanduser().resolve()
    return root / f"{corpus.name.split('.')[0] or 'corpus'}-{cfg.data.tokenizer}{vocab}-{digest}"


def open_shards(path) -> PreparedData:
    """Open a finished shard folder read-only (memory-mapped, so nothing is loaded up front)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    arrays = {}
    for split in ("train", "val"):
        arr = np.memmap(path / f"{split}.bin", dtype=meta["dtype"], mode="r")
        if len(arr) != meta[f"{split}_tokens"]:
            raise UserError(f"{path / (split + '.bin')} has {len(arr)} tokens but meta.json says "
                            f"{meta[split + '_tokens']}; delete {path} to rebuild it")
        arrays[split] = arr
    return PreparedData(path, load_tokenizer(path), arrays["train"], arrays["val"], meta)


@contextmanager
def _exclusive(lock_path: Path, log: Callable[[str], None]):
    """Hold an exclusive flock: a job array preparing the same shards builds them once.

    The lock file is deleted by its holder when done, so a refused build leaves nothing behind;
    a process that was waiting on the deleted file finds it gone and locks the new one."""
    while True:
        f = open(lock_path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"data: waiting for another process to finish {lock_path.parent / lock_path.name[1:-5]}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            a, b = os.stat(lock_path), os.fstat(f.fileno())
            current = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
        except FileNotFoundError:
            current = False
        if current:
            break
        f.close()  # we waited on a file its holder has deleted: lock the one there now
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still holding it
        f.close()  # closing the file releases the lock


def prepare(cfg, log: Callable[[str], None] = _stderr) -> PreparedData:
    """Tokenize the corpus into cached shards (or reuse them) and open them.

    The shards are built in a hidden temporary folder and renamed into place, so a folder
    with the final name is always complete; a crash leaves only a temporary folder that the
    next build of the same name deletes.
    """
    corpus = corpus_path(cfg)
    files = corpus_files(corpus)
    final = shard_dir(cfg, corpus, files)
    if (final / "meta.json").exists():
        return open_shards(final)
    parent = final.parent
    made = make_dirs(parent)
    try:
        with _exclusive(parent / f".{final.name}.lock", log):
            if (final / "meta.json").exists():  # another process built it while we waited
                return open_shards(final)
            for stale in parent.glob(f".{final.name}.tmp-*"):  # left by a killed build; we hold the lock
                shutil.rmtree(stale, ignore_errors=True)
            if final.exists():
                shutil.rmtree(final)  # no meta.json: not a finished build
            tmp = parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()  # not mkdtemp: its 0700 mode would hide a shared cache from the group
            try:
                meta = _build(cfg, corpus, files, tmp, log)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except BaseException:
        remove_empty_dirs(made)  # a refused corpus (not UTF-8, too few documents) leaves no folder
        raise
    log(f"data: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens in {meta['build_seconds']:.0f} s -> {final}")
    return open_shards(final)


def _build(cfg, corpus: Path, files: list[tuple[str, Path]], out: Path, log: Callable[[str], None]) -> dict:
    """Write train.bin, val.bin, meta.json (and tokenizer.json for BPE) into `out`; returns the meta."""
    t0 = time.perf_counter()
    split = split_documents(cfg, corpus, files)
    mb = split.train_bytes / 1e6
    if cfg.data.tokenizer == "bpe":
        log(f"data: training a {cfg.data.vocab_size}-token BPE on {mb:.1f} MB of {corpus.name} (training split only)")
        tok = BPETokenizer.train(split.train, cfg.data.vocab_size, length=len(split.train))
        tok.save(out / "tokenizer.json")
    else:
        tok = ByteTokenizer()
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    log(f"data: tokenizing {len(split.train) + len(split.val):,} documents of {corpus.name} with the {tok.kind} tokenizer")
    train_tokens = _write_tokens(out / "train.bin", tok, split.train, dtype)
    val_tokens = _write_tokens(out / "val.bin", tok, split.val, dtype)
    val_bytes = sum(len(d.encode("utf-8")) for d in split.val)
    meta = {
        "format": FORMAT,
        "dtype": np.dtype(dtype).name,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "train_docs": len(split.train),
        "val_docs": len(split.val),
        "train_bytes": split.train_bytes,
        "val_bytes": val_bytes,
        "train_tokens_per_byte": train_tokens / max(split.train_bytes, 1),  # eot tokens included
        "val_tokens_per_byte": val_tokens / max(val_bytes, 1),
        "truncated_by_max_bytes": split.truncated,
        "corpus": str(corpus),
        "sources": [{"name": n, "bytes": p.stat().st_size, "split": split.labels[n]} for n, p in files],
        "settings": dataclasses.asdict(cfg.data),
        "key": _cache_key(cfg, corpus, files),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # the folder rename is the atomic step
    return meta


def _write_tokens(path: Path, tok, docs: list[str], dtype, chunk: int = 256) -> int:
    """Write the documents' tokens, an end-of-text before each, to a flat file; returns the count."""
    count = 0
    with open(path, "wb") as f:
        for start in range(0, len(docs), chunk):
            batch = docs[start : start + chunk]
            if isinstance(tok, ByteTokenizer):
                pieces = [tok.encode_array(d) for d in batch]
            else:
                pieces = tok.encode_batch(batch)
            arr = np.empty(sum(len(p) for p in pieces) + len(pieces), dtype=dtype)
            i = 0
            for p in pieces:
                arr[i] = tok.eot_id
                arr[i + 1 : i + 1 + len(p)] = p
                i += 1 + len(p)
            f.write(arr.tobytes())
            count += len(arr)
        f.flush()
        os.fsync(f.fileno())
    return count


# ---------------------------------------------------------------------- batches
class Batches:
    """Random windows of a split, drawn from a generator seeded by (seed, step, micro) alone.

    There is no iterator state to checkpoint: resuming at step k reproduces the batches of an
    uninterrupted run exactly, and validation uses a fixed seed shared by all runs.
    """

    def __init__(self, prepared: PreparedData, seq_len: int, batch_size: int, seed: int):
        for name in ("train", "val"):
            n = len(getattr(prepared, name))
            if n < seq_len + 1:
                raise UserError(
                    f"the {name} split of {prepared.dir} has {n} tokens, fewer than model.seq_len+1={seq_len + 1}; "
                    "lower model.seq_len or give it more text (data.max_bytes, data.val_files, data.val_fraction)"
                )
        self.train, self.val = prepared.train, prepared.val
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self._window = np.arange(seq_len + 1)

    def _draw(self, data: np.ndarray, entropy: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([e % 2**64 for e in entropy])  # SeedSequence wants non-negative ints
        starts = rng.integers(0, len(data) - self.seq_len, size=self.batch_size)
        rows = torch.from_numpy(data[starts[:, None] + self._window].astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()

    def train_batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 of shape (batch_size, seq_len); y is x shifted left by one token."""
        return self._draw(self.train, [self.seed, step, micro])

    def val_batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The i-th validation batch; the same for every run with this seq_len and batch_size."""
        return self._draw(self.val, [VAL_SEED, i])
