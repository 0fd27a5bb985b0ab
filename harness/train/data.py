"""Corpus reading, train/val split, cached token shards, and deterministic batches.

`prepare(cfg)` streams a text corpus (.txt, .jsonl, .json, optionally gzipped, or .parquet read
one row group at a time) into two flat token files (`train.bin`, `val.bin`) plus a
`meta.json`, cached under a name hashed from everything that changes the tokens, so a grid
of runs tokenizes once. A corpus of pre-tokenized .bin shards (nanoGPT, modded-nanogpt) is
not copied: it is checked once (header, length, every id below the vocabulary), the check is
cached as a `meta.json` naming the shards, and runs memory-map the shards themselves.
`Batches` draws sequences at offsets that depend only on (seed, step, micro-batch): a resumed
run sees exactly the batches it would have seen, and every run is validated on the same tokens
whatever its variant or seed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gzip
import hashlib
import itertools
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

from harness import PROJECT_ROOT
from harness.core.atomic import make_dirs, remove_empty_dirs
from harness.core.errors import UserError
from harness.train.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    FileTokenizer,
    NoTokenizer,
    is_tokenizer_file,
    load_tokenizer,
)

FORMAT = 1  # bump when the shard layout or reading rules change: old caches are then ignored
VAL_SEED = 0x7A11DA7E  # validation offsets: fixed, so every run is scored on the same tokens
_DOC = re.compile(r"<doc\b[^>]*>(.*?)</doc>", re.S)
_DOC_START = re.compile(r"^<doc\b", re.M)
MODDED_MAGIC, MODDED_VERSION, MODDED_HEADER_INTS = 20240520, 1, 256  # modded-nanogpt's .bin header


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
    """'txt', 'jsonl', 'json' (a .gz is looked through), 'parquet' or 'bin' from the name, else None.

    Extensionless files count as text only when they start with a <doc> tag: WikiExtractor
    names its output wiki_00, while a README beside the corpus must not become training text.
    """
    if path.suffix in (".parquet", ".bin"):
        return path.suffix[1:]
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
    """(name, path) of the corpus's files in sorted order; name is relative to the folder.

    A folder holding .bin shards is a pre-tokenized corpus: only the shards are its files."""
    if corpus.is_file():
        return [(corpus.name, corpus)]
    files = sorted(
        (p.relative_to(corpus).as_posix(), p)
        for p in corpus.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(corpus).parts) and _format(p)
    )
    if not files:
        raise UserError(f"no .txt/.jsonl/.json (optionally .gz), .parquet or .bin files in {corpus}; "
                        "point data.corpus at a folder or file of text, Parquet or token shards")
    shards = [(n, p) for n, p in files if _format(p) == "bin"]
    # a folder of shards is read as one: nanoGPT keeps input.txt and a meta.json/.pkl beside them
    return shards or files


def read_documents(path: Path, text_field: str = "text") -> list[str]:
    """The non-empty documents of one file (see `iter_documents`)."""
    return list(iter_documents(path, text_field))


def iter_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The non-empty documents of one file, read as they are needed: one per <doc>
    (WikiExtractor), per file (plain text), per line (.jsonl, key `text_field`), per item
    (.json: a list, or one {text_field: ...}), or per row (.parquet, column `text_field`,
    one row group at a time)."""
    fmt = _format(path) or "txt"
    if fmt == "parquet":
        yield from _parquet_texts(path, text_field)
        return
    if fmt == "bin":
        raise UserError(f"{path} is a pre-tokenized shard, not text; a corpus is either text files or .bin shards")
    try:
        with _open_text(path) as f:
            if fmt == "jsonl":  # line by line: a large (gzipped) JSONL file is never held whole
                for n, line in enumerate(f, 1):
                    if line.strip():
                        doc = _jsonl_text(line, path, n, text_field)
                        if doc.strip():
                            yield doc
                return
            text = f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); convert it or remove it from the corpus") from None
    except (OSError, EOFError) as e:
        raise UserError(f"cannot read {path}: {e}; fix or remove the file") from None
    if fmt == "json":
        docs = _json_texts(text, path, text_field)
    elif _DOC_START.search(text):
        docs = [m.group(1).strip("\n") for m in _DOC.finditer(text)]
    else:
        docs = [text]
    yield from (d for d in docs if d.strip())


def _parquet_texts(path: Path, text_field: str) -> Iterator[str]:
    """The column `text_field` of a Parquet file, one row group in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if text_field not in columns:
            shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
            raise UserError(f"{path} has no column {text_field!r} (it has: {shown}); set data.text_field to the text column")
        kind = pf.schema_arrow.field(text_field).type
        is_view = getattr(pa.types, "is_string_view", lambda _: False)  # pyarrow >= 16
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_view(kind)):
            raise UserError(f"{path}: column {text_field!r} holds {kind}, not text; set data.text_field to the text column")
        for group in range(pf.num_row_groups):
            for doc in pf.read_row_group(group, columns=[text_field]).column(0).to_pylist():
                if doc and doc.strip():
                    yield doc
    except (OSError, pa.ArrowException) as e:  # pyarrow raises ArrowInvalid (an OSError too) on a corrupt file
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable Parquet file ({first}); fix or remove it from the corpus") from None


def _jsonl_text(line: str, path: Path, n: int, field: str = "text") -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {n}: not valid JSON ({e.msg}); each line must be an object with a \"{field}\" string") from None
    if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
        raise UserError(f"{path} line {n}: no \"{field}\" string; each line must be an object with a \"{field}\" string "
                        "(data.text_field names the key)")
    return obj[field]


def _json_texts(text: str, path: Path, field: str = "text") -> list[str]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix it or remove it from the corpus") from None
    items = obj if isinstance(obj, list) else [obj]
    docs = [x if isinstance(x, str) else x.get(field) if isinstance(x, dict) else None for x in items]
    if any(not isinstance(d, str) for d in docs):
        raise UserError(f"{path}: expected a list of strings or of {{\"{field}\": ...}} objects, or one such object "
                        "(data.text_field names the key)")
    return docs


# ---------------------------------------------------------------------- the split
@dataclass
class _Split:
    train: list[str] | _Stream  # a list only for a one-document corpus; otherwise read from the files on each pass
    val: list[str] | _Stream
    labels: dict[str, str]  # file name -> "train", "val" or "train+val"
    train_bytes: int | None  # None for a stream until it has been read
    truncated: bool | None


def _val_names(cfg) -> list[str]:
    return sorted({v.strip() for v in cfg.data.val_files.split(",") if v.strip()})


def _check_val_names(corpus: Path, names: list[str], val_names: list[str], example: str, unit: str) -> None:
    """data.val_files must name files of the corpus and leave one for training: one line if not."""
    missing = [v for v in val_names if v not in names]
    if missing:
        shown = ", ".join(names[:10]) + (f", ... ({len(names)} files)" if len(names) > 10 else "")
        raise UserError(f"validation file(s) {', '.join(missing)} not in {corpus} (it has: {shown}); set data.val_files "
                        f"to some of those{example}, or data.val_files='' to hold out the last data.val_fraction of {unit}")
    if all(n in val_names for n in names):
        raise UserError(f"every file of {corpus} is in data.val_files; leave at least one for training")


def _capped(docs: Iterable[str], max_bytes: int, stats: dict) -> Iterator[str]:
    """Documents until `max_bytes` UTF-8 bytes (0 = all); the last one is cut to fit. `stats`
    counts what was given ("docs", "bytes") and whether the cap cut ("truncated").

    Taking a lazy iterator means files past the cap are never even opened."""
    stats.update(docs=0, bytes=0, truncated=False)
    for doc in docs:
        size = len(doc.encode("utf-8"))
        if max_bytes and stats["bytes"] + size > max_bytes:
            cut = doc.encode("utf-8")[: max_bytes - stats["bytes"]].decode("utf-8", errors="ignore")  # drop a split character
            stats["truncated"] = True
            if cut.strip():
                stats["docs"] += 1
                stats["bytes"] += len(cut.encode("utf-8"))
                yield cut
            return
        stats["docs"] += 1
        stats["bytes"] += size
        yield doc


def _cap(docs: Iterable[str], max_bytes: int) -> tuple[list[str], int, bool]:
    """`_capped` as a list, with its byte count and whether it was cut."""
    stats: dict = {}
    out = list(_capped(docs, max_bytes, stats))
    return out, stats["bytes"], stats["truncated"]


class _Stream:
    """Documents read from their files again on each pass (BPE training, then tokenizing) and
    never held in memory. `parts` are (path, first, stop): the documents of `path` numbered
    first..stop-1 within it (stop None: to its end). data.max_bytes cuts every pass alike;
    `stats` is that of the last complete pass."""

    def __init__(self, parts: list[tuple[Path, int, int | None]], text_field: str, max_bytes: int = 0):
        self.parts, self.text_field, self.max_bytes = parts, text_field, max_bytes
        self.stats: dict = {}

    def __iter__(self) -> Iterator[str]:
        stats: dict = {}
        yield from _capped(self._documents(), self.max_bytes, stats)
        self.stats = stats

    def _documents(self) -> Iterator[str]:
        for path, first, stop in self.parts:
            yield from itertools.islice(iter_documents(path, self.text_field), first, stop)


def _whole(paths: list[Path]) -> list[tuple[Path, int, None]]:
    return [(p, 0, None) for p in paths]


def split_documents(cfg, corpus: Path, files: list[tuple[str, Path]]) -> _Split:
    """Training and validation documents: data.val_files by name, else the last val_fraction.

    Both splits are streams read from the files as they are needed. Holding out a fraction
    first counts each file's documents (one reading pass that keeps none of them), so a corpus
    larger than memory splits like a small one."""
    names = [name for name, _ in files]
    field = cfg.data.text_field
    val_names = _val_names(cfg)
    if val_names:
        _check_val_names(corpus, names, val_names, "", "documents")
        val = _Stream(_whole([p for n, p in files if n in val_names]), field)
        train = _Stream(_whole([p for n, p in files if n not in val_names]), field, cfg.data.max_bytes)
        labels = {n: "val" if n in val_names else "train" for n in names}
        return _Split(train, val, labels, None, None)
    counts = [sum(1 for _ in iter_documents(p, field)) for _, p in files]
    total = sum(counts)
    if total == 1 and len(text := next(iter(_Stream(_whole([p for _, p in files]), field)))) > 1:
        # one plain-text document (a book, tinyshakespeare): hold out its tail, cut at a line break
        cut = round(len(text) * (1 - cfg.data.val_fraction))
        cut = text.rfind("\n", 1, cut) + 1 or cut
        labels = {n: "train+val" if c else "train" for (n, _), c in zip(files, counts)}
        train, nbytes, truncated = _cap([text[:cut]], cfg.data.max_bytes)
        return _Split(train, [text[cut:]], labels, nbytes, truncated)
    if total < 2:
        raise UserError(
            f"{corpus} holds {total} document(s), too few to hold out data.val_fraction of them; "
            "add documents (one per .txt file, <doc> or .jsonl line) or name a validation file in data.val_files"
        )
    n_val = min(max(1, round(total * cfg.data.val_fraction)), total - 1)
    first_val = total - n_val
    labels, train_parts, val_parts, end = {}, [], [], 0
    for (n, p), c in zip(files, counts):
        start, end = end, end + c
        labels[n] = "val" if start >= first_val else "train" if end <= first_val else "train+val"
        if start < first_val:
            train_parts.append((p, 0, min(c, first_val - start)))
        if end > first_val:
            val_parts.append((p, max(0, first_val - start), None))
    return _Split(_Stream(train_parts, field, cfg.data.max_bytes), _Stream(val_parts, field), labels, None, None)


# ---------------------------------------------------------------------- the cache
@dataclass
class PreparedData:
    """Opened shards: token arrays are memory-mapped, so many runs share one page cache."""

    dir: Path
    tokenizer: ByteTokenizer | BPETokenizer | FileTokenizer | NoTokenizer
    train: np.memmap | TokenStream
    val: np.memmap | TokenStream
    meta: dict


def is_pretokenized(files: list[tuple[str, Path]]) -> bool:
    return _format(files[0][1]) == "bin"


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _tokenizer_file(cfg) -> Path:
    """data.tokenizer as a path (absolute or relative to cwd); missing is one clear error."""
    path = Path(cfg.data.tokenizer).expanduser().resolve()
    if not path.is_file():
        raise UserError(f"tokenizer file {path} not found; set data.tokenizer to a tokenizer.json "
                        "(Hugging Face `tokenizers` format), or to bpe / byte")
    return path


def _cache_key(cfg, corpus: Path, files: list[tuple[str, Path]]) -> dict:
    """Everything that changes the tokens, and nothing else (so equal settings share shards).

    Settings added later enter the key only away from their defaults, so caches built before
    keep their names (and evaluation still finds their tokenizer)."""
    d = cfg.data
    key = {
        "format": FORMAT,
        "corpus": str(corpus),
        "files": [[name, p.stat().st_size] for name, p in files],
        "val_files": _val_names(cfg),
        "val_fraction": None if _val_names(cfg) else d.val_fraction,
        "tokenizer": d.tokenizer,
        "vocab_size": d.vocab_size if d.tokenizer == "bpe" else None,
        "max_bytes": d.max_bytes,
    }
    if is_tokenizer_file(d.tokenizer):
        key["tokenizer_sha256"] = _file_digest(_tokenizer_file(cfg))
    if d.text_field != "text":
        key["text_field"] = d.text_field
    if files and is_pretokenized(files):
        key.update(shard_format=d.shard_format, shard_vocab_size=d.shard_vocab_size)
        key["files"] = [[name, p.stat().st_size, p.stat().st_mtime_ns] for name, p in files]  # checked ids: any rewrite re-checks
    return key


def shard_dir(cfg, corpus: Path | None = None, files=None) -> Path:
    """Where `prepare(cfg)` keeps (or will keep) the shards for this config."""
    corpus = corpus or corpus_path(cfg)
    files = files if files is not None else corpus_files(corpus)
    key = _cache_key(cfg, corpus, files)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    vocab = f"-{cfg.data.vocab_size}" if cfg.data.tokenizer == "bpe" else ""
    label = "file" if is_tokenizer_file(cfg.data.tokenizer) else cfg.data.tokenizer
    if files and is_pretokenized(files):
        label, vocab = "tokens", ""
    root = Path(cfg.data.cache_dir or Path(cfg.run.runs_dir) / "data").expanduser().resolve()
    return root / f"{corpus.name.split('.')[0] or 'corpus'}-{label}{vocab}-{digest}"


def open_shards(path) -> PreparedData:
    """Open a finished shard folder read-only (memory-mapped, so nothing is loaded up front)."""
    path = Path(path)
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("source") == "pretokenized":
        return _open_pretokenized(path, meta)
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
                build = _build_pretokenized if is_pretokenized(files) else _build
                meta = build(cfg, corpus, files, tmp, log)
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
    streamed = isinstance(split.train, _Stream)
    if cfg.data.tokenizer == "bpe":
        size = f"the training files of {corpus.name}" if streamed else f"{split.train_bytes / 1e6:.1f} MB of {corpus.name}"
        log(f"data: training a {cfg.data.vocab_size}-token BPE on {size} (training split only)")
        tok = BPETokenizer.train(split.train, cfg.data.vocab_size, length=None if streamed else len(split.train))
        tok.save(out / "tokenizer.json")
    elif is_tokenizer_file(cfg.data.tokenizer):
        tok = _copy_tokenizer(cfg, out)
    else:
        tok = ByteTokenizer()
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    log(f"data: tokenizing the documents of {corpus.name} with the {tok.kind} tokenizer")
    train, val = {}, {}  # what each pass read: docs, bytes
    train_tokens = _write_tokens(out / "train.bin", tok, _capped(split.train, 0, train), dtype)
    val_tokens = _write_tokens(out / "val.bin", tok, _capped(split.val, 0, val), dtype)
    truncated = split.train.stats["truncated"] if streamed else split.truncated
    meta = {
        "format": FORMAT,
        "dtype": np.dtype(dtype).name,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "train_docs": train["docs"],
        "val_docs": val["docs"],
        "train_bytes": train["bytes"],
        "val_bytes": val["bytes"],
        "train_tokens_per_byte": train_tokens / max(train["bytes"], 1),  # eot tokens included
        "val_tokens_per_byte": val_tokens / max(val["bytes"], 1),
        "truncated_by_max_bytes": truncated,
        "corpus": str(corpus),
        "sources": [{"name": n, "bytes": p.stat().st_size, "split": split.labels[n]} for n, p in files],
        "settings": dataclasses.asdict(cfg.data),
        "key": _cache_key(cfg, corpus, files),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # the folder rename is the atomic step
    return meta


def _copy_tokenizer(cfg, out: Path) -> FileTokenizer:
    """Load data.tokenizer and keep a copy beside the shards: evaluation then finds the very
    tokenizer the run was trained with, even if the original file is later edited or moved."""
    src = _tokenizer_file(cfg)
    tok = FileTokenizer.load(src)
    shutil.copyfile(src, out / "tokenizer.json")
    return tok


# ---------------------------------------------------------------------- pre-tokenized shards
class TokenStream:
    """Several memory-mapped token arrays read as one: `len` and the integer-array indexing
    that `Batches` draws windows with (a window may straddle two shards)."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = [p for p in parts if len(p)] or [np.zeros(0, dtype=np.uint16)]
        self.bounds = np.cumsum([0] + [len(p) for p in self.parts])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def __getitem__(self, idx) -> np.ndarray:
        idx = np.asarray(idx)
        if len(self.parts) == 1:
            return self.parts[0][idx]
        flat = idx.ravel()
        which = np.searchsorted(self.bounds, flat, side="right") - 1
        out = np.empty(flat.shape, dtype=self.parts[0].dtype)
        for w in np.unique(which):
            mask = which == w
            out[mask] = self.parts[w][flat[mask] - self.bounds[w]]
        return out.reshape(idx.shape)


def open_bin(path: Path, shard_format: str) -> np.ndarray:
    """The uint16 tokens of one .bin shard, memory-mapped; a malformed file is one clear error.

    nanoGPT's shards are raw uint16; modded-nanogpt's start with 256 int32 (magic 20240520,
    version 1, token count) and must be exactly that long."""
    size = path.stat().st_size
    if shard_format == "nanogpt":
        if size % 2:
            raise UserError(f"{path} has {size} bytes, not a whole number of uint16 tokens; is it a nanoGPT .bin shard?")
        return np.memmap(path, dtype=np.uint16, mode="r") if size else np.zeros(0, dtype=np.uint16)
    header_bytes = MODDED_HEADER_INTS * 4
    if size < header_bytes:
        raise UserError(f"{path} has {size} bytes, fewer than the {header_bytes}-byte modded-nanogpt header; "
                        "for raw uint16 shards (nanoGPT) set data.shard_format=nanogpt")
    header = np.fromfile(path, dtype="<i4", count=MODDED_HEADER_INTS)
    if header[0] != MODDED_MAGIC:
        raise UserError(f"{path} starts with {header[0]}, not the modded-nanogpt magic number {MODDED_MAGIC}; "
                        "for raw uint16 shards (nanoGPT) set data.shard_format=nanogpt")
    if header[1] != MODDED_VERSION:
        raise UserError(f"{path} is modded-nanogpt shard version {header[1]}; only version {MODDED_VERSION} is read")
    n = int(header[2])
    if n < 0 or size != header_bytes + 2 * n:
        raise UserError(f"{path}: its header says {n} tokens ({header_bytes + 2 * n} bytes with the header) but the "
                        f"file has {size} bytes; it is truncated or not a modded-nanogpt shard")
    return np.memmap(path, dtype=np.uint16, mode="r", offset=header_bytes, shape=(n,)) if n else np.zeros(0, dtype=np.uint16)


def _shard_vocab(cfg, corpus: Path, tok) -> int:
    """data.shard_vocab_size, else the tokenizer file's size, else vocab_size in a meta.json
    beside the shards (the corpus folder, or the folder of a single-shard corpus)."""
    if cfg.data.shard_vocab_size:
        return cfg.data.shard_vocab_size
    if tok is not None:
        return tok.vocab_size
    sidecar = (corpus if corpus.is_dir() else corpus.parent) / "meta.json"
    if sidecar.is_file():
        try:
            vocab = json.loads(sidecar.read_text()).get("vocab_size")
        except (json.JSONDecodeError, AttributeError):
            vocab = None
        if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
            raise UserError(f"{sidecar} has no positive integer \"vocab_size\"; fix it, or set data.shard_vocab_size")
        return vocab
    raise UserError(f"the vocabulary of the token shards in {corpus} is unknown; set data.shard_vocab_size=N, or "
                    "data.tokenizer to their tokenizer.json, or write {\"vocab_size\": N} to " + str(sidecar))


def _check_ids(path: Path, tokens: np.ndarray, vocab: int, chunk: int = 1 << 24) -> None:
    """Every id below `vocab`, read a chunk at a time (the shard is never loaded whole)."""
    for start in range(0, len(tokens), chunk):
        part = tokens[start : start + chunk]
        top = int(part.max())
        if top >= vocab:
            at = start + int(np.argmax(part >= vocab))
            raise UserError(f"{path}: token id {top} (first bad id at token {at:,}) is >= the vocabulary size {vocab}; "
                            "set data.shard_vocab_size or data.tokenizer to the vocabulary the shards were made with")


def _split_tokens(cfg, corpus: Path, files: list[tuple[str, Path]], lengths: dict[str, int]) -> dict:
    """{"train"/"val": [[name, start, stop], ...]}: data.val_files by name, else the last
    val_fraction of all tokens (cut inside a shard if need be)."""
    names = [n for n, _ in files]
    val_names = _val_names(cfg)
    if val_names:
        _check_val_names(corpus, names, val_names, " (e.g. fineweb_val_000000.bin)", "tokens")
        return {split: [[n, 0, lengths[n]] for n in names if (n in val_names) == (split == "val")] for split in ("train", "val")}
    total = sum(lengths.values())
    cut = total - min(max(1, round(total * cfg.data.val_fraction)), max(total - 1, 0))
    out, pos = {"train": [], "val": []}, 0
    for n in names:
        a, b = pos, pos + lengths[n]
        if a < cut:
            out["train"].append([n, 0, min(b, cut) - a])
        if b > cut:
            out["val"].append([n, max(cut, a) - a, lengths[n]])
        pos = b
    return out


def _build_pretokenized(cfg, corpus: Path, files: list[tuple[str, Path]], out: Path, log: Callable[[str], None]) -> dict:
    """Check the shards (header, length, ids below the vocabulary) and write only a meta.json
    naming them, and the tokenizer file if one is set: the tokens stay where they are."""
    t0 = time.perf_counter()
    tok = _copy_tokenizer(cfg, out) if is_tokenizer_file(cfg.data.tokenizer) else None
    vocab = _shard_vocab(cfg, corpus, tok)
    if tok is not None and tok.vocab_size > vocab:
        raise UserError(f"data.shard_vocab_size={vocab} is smaller than the tokenizer's {tok.vocab_size} tokens; "
                        "raise it or leave it at 0 to use the tokenizer's")
    shards = {name: open_bin(path, cfg.data.shard_format) for name, path in files}  # every header before any scan
    log(f"data: checking the ids of {len(files)} {cfg.data.shard_format} shard(s) of {corpus.name} against a vocabulary of {vocab:,}")
    for name, path in files:
        _check_ids(path, shards[name], vocab)
    lengths = {name: len(tokens) for name, tokens in shards.items()}
    parts = _split_tokens(cfg, corpus, files, lengths)
    paths = {n: str(p) for n, p in files}
    meta = {
        "format": FORMAT,
        "source": "pretokenized",
        "shard_format": cfg.data.shard_format,
        "dtype": "uint16",
        "tokenizer": tok.kind if tok is not None else "none",
        "vocab_size": vocab,
        "eot_id": tok.eot_id if tok is not None else None,
        "train_tokens": sum(b - a for _, a, b in parts["train"]),
        "val_tokens": sum(b - a for _, a, b in parts["val"]),
        "train_parts": [[paths[n], a, b] for n, a, b in parts["train"]],
        "val_parts": [[paths[n], a, b] for n, a, b in parts["val"]],
        "corpus": str(corpus),
        "sources": [{"name": n, "bytes": p.stat().st_size, "tokens": lengths[n],
                     "split": "+".join(s for s in ("train", "val") if any(x[0] == n for x in parts[s]))} for n, p in files],
        "settings": dataclasses.asdict(cfg.data),
        "key": _cache_key(cfg, corpus, files),
        "build_seconds": round(time.perf_counter() - t0, 2),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")  # the folder rename is the atomic step
    return meta


def _open_pretokenized(path: Path, meta: dict) -> PreparedData:
    arrays = {}
    for split in ("train", "val"):
        pieces = []
        for shard, a, b in meta[f"{split}_parts"]:
            shard = Path(shard)
            if not shard.is_file():
                raise UserError(f"token shard {shard} (listed in {path / 'meta.json'}) is gone; restore it or delete {path}")
            pieces.append(open_bin(shard, meta["shard_format"])[a:b])
        arrays[split] = TokenStream(pieces)
        if len(arrays[split]) != meta[f"{split}_tokens"]:
            raise UserError(f"the {split} shards listed in {path / 'meta.json'} changed since they were checked; delete {path} to check them again")
    tok = load_tokenizer(path) if meta["tokenizer"] != "none" else NoTokenizer(meta["vocab_size"])
    return PreparedData(path, tok, arrays["train"], arrays["val"], meta)


def _write_tokens(path: Path, tok, docs: Iterable[str], dtype, chunk: int = 256) -> int:
    """Write the documents' tokens, an end-of-text before each, to a flat file; returns the count.
    The documents are taken `chunk` at a time, so a stream of them is never held whole."""
    count = 0
    docs = iter(docs)
    with open(path, "wb") as f:
        while batch := list(itertools.islice(docs, chunk)):
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
