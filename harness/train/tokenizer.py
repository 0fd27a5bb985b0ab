"""Tokenizers: raw UTF-8 bytes, a byte-level BPE trained offline on the training split, or
any Hugging Face `tokenizers` file the researcher already has (GPT-2's tokenizer.json, ...).

Both share one small interface (`vocab_size`, `eot_id`, `encode`, `encode_batch`, `decode`)
so the data pipeline, training and evaluation never care which one a run used. The BPE is
trained on training documents only, so validation text never shapes the vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from harness.core.errors import UserError

EOT = "<|endoftext|>"


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; id 256 is end-of-text. Needs no training and no file."""

    kind = "byte"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """The ids as a uint8 array without a Python loop (the fast path for sharding)."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes back to text; end-of-text shows as <|endoftext|>, broken UTF-8 as U+FFFD
        (a model's samples can stop mid-character)."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if i == self.eot_id:
                out += EOT.encode()
            else:
                out.append(i)  # ValueError for ids outside 0..255
        return out.decode("utf-8", errors="replace")


class BPETokenizer:
    """Byte-level BPE (GPT-2 style pre-splitting) from HF `tokenizers`, with <|endoftext|>."""

    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok
        # Document text that happens to contain "<|endoftext|>" stays text, as with bytes.
        tok.encode_special_tokens = True
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise UserError(f"tokenizer has no {EOT} token; delete its cache folder to rebuild it")
        self.eot_id = eot

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, length: int | None = None) -> "BPETokenizer":
        """Learn merges from `texts` until the vocabulary (bytes, merges, <|endoftext|>) has
        `vocab_size` entries, or the text runs out of pairs to merge."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer, length=length)
        return cls(tok)

    def save(self, path) -> None:
        self._tok.save(str(path))

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode in parallel (Rust threads); the `_fast` variant skips character offsets."""
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class NoTokenizer:
    """The vocabulary of pre-tokenized shards used without a tokenizer file: enough to train
    on them (the model needs only the size); encoding text is refused with the fix."""

    kind = "none"
    eot_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def _refuse(self, *_):
        raise UserError("these token shards were used without a tokenizer file, so no text can be encoded or decoded; "
                        "set data.tokenizer to the tokenizer.json they were made with")

    encode = encode_batch = decode = _refuse


EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>")


def is_tokenizer_file(setting: str) -> bool:
    """Whether data.tokenizer names a tokenizer file rather than "bpe" or "byte"."""
    return setting not in ("bpe", "byte")


class FileTokenizer(BPETokenizer):
    """A Hugging Face `tokenizers` file used as it is (nothing trained, nothing downloaded).

    Its end-of-text id is the first of EOT_CANDIDATES it knows: documents are separated by it
    in the shards, as with the other tokenizers."""

    kind = "file"

    def __init__(self, tok, path):
        self._tok = tok
        tok.encode_special_tokens = True
        ids = [tok.token_to_id(t) for t in EOT_CANDIDATES]
        found = [i for i in ids if i is not None]
        if not found:
            raise UserError(f"tokenizer {path} has none of the end-of-text tokens {', '.join(EOT_CANDIDATES)}; "
                            "documents need one to be separated")
        self.eot_id = found[0]

    @classmethod
    def load(cls, path) -> "FileTokenizer":
        """The tokenizer in `path`; a missing or unreadable file is one clear error."""
        from tokenizers import Tokenizer

        path = Path(path).expanduser()
        if not path.is_file():
            raise UserError(f"tokenizer file {path} not found; set data.tokenizer to a tokenizer.json "
                            "(Hugging Face `tokenizers` format), or to bpe / byte")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            raise UserError(f"tokenizer file {path} is not a Hugging Face tokenizer.json ({first})") from None
        return cls(tok, path)


def load_tokenizer(shard_dir) -> ByteTokenizer | BPETokenizer:
    """The tokenizer a prepared shard folder was made with (from its meta.json)."""
    shard_dir = Path(shard_dir)
    try:
        meta = json.loads((shard_dir / "meta.json").read_text())
    except FileNotFoundError:
        raise UserError(f"no meta.json in {shard_dir}; run `mhc-bench prepare` to build the shards") from None
    kind = meta.get("tokenizer")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        return BPETokenizer.load(shard_dir / "tokenizer.json")
    if kind == "file":
        return FileTokenizer.load(shard_dir / "tokenizer.json")
    if kind == "none":
        raise UserError(f"the token shards of {meta.get('corpus', shard_dir)} were used without a tokenizer file, so no "
                        "text can be encoded; set data.tokenizer to the tokenizer.json they were made with")
    raise UserError(f"unknown tokenizer {kind!r} in {shard_dir / 'meta.json'}; delete the folder to rebuild it")
