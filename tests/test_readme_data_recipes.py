"""The README's own-data recipes, run as a user would: its exact `mhc-bench` lines for FineWeb-Edu
Parquet, modded-nanogpt shards and nanoGPT shards, pointed at files in those real formats made
here (nothing is downloaded), then evaluation on the held-out text and a report.

The stand-ins keep each format's layout and names: FineWeb-Edu's `sample/10BT/NNN_00000.parquet`
with its ten columns; modded-nanogpt's `fineweb_{val,train}_NNNNNN.bin` with the 256 x int32
header (magic 20240520, version 1, token count) and an end-of-text before every document, as
its data/fineweb.py writes them; nanoGPT's headerless uint16 `train.bin` / `val.bin`; and a
GPT-2-shaped `tokenizer.json` (byte-level BPE, GPT-2's pre-tokenizer, `<|endoftext|>` the last
id). Only the scale differs: `--preset tiny`, a few steps, a few hundred documents."""

from __future__ import annotations

import contextlib
import io
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from harness.train.data import iter_documents
from tests.test_data import WIKI
from tests.test_readme import commands

FAST = ["--set", "train.steps=3", "--set", "train.eval_every=0", "--set", "train.diag_every=0", "--set", "run.progress=off"]


def cli(*argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


@pytest.fixture(scope="module")
def user_data(tmp_path_factory) -> Path:
    """/data as the README's recipes expect it, in real formats."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    root = tmp_path_factory.mktemp("data")
    docs = [d for name in ("wiki_00.gz", "wiki_01.gz") for d in iter_documents(WIKI / name)][:240]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex and byte mapping
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(vocab_size=1023, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                      show_progress=False))
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])  # GPT-2's 50256: the last id
    (root / "gpt2").mkdir()
    tok.save(str(root / "gpt2" / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    assert eot == tok.get_vocab_size() - 1
    parts = [docs[i::3] for i in range(3)]

    sample = root / "fineweb-edu" / "sample" / "10BT"
    sample.mkdir(parents=True)
    for k, part in enumerate(parts):
        n = len(part)
        pq.write_table(pa.table({
            "text": part, "id": [f"<urn:uuid:{k}-{i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.org/{k}/{i}" for i in range(n)], "file_path": ["s3://commoncrawl/crawl-data/x.warc.gz"] * n,
            "language": ["en"] * n, "language_score": [0.95] * n, "token_count": pa.array([len(d) // 4 for d in part], pa.int64()),
            "score": [3.2] * n, "int_score": pa.array([3] * n, pa.int64()),
        }), sample / f"{k:03d}_00000.parquet", row_group_size=32)

    def tokens(ds):
        return np.array([t for d in ds for t in [eot, *tok.encode(d, add_special_tokens=False).ids]], dtype=np.uint16)

    def modded(path, toks):
        header = np.zeros(256, dtype="<i4")
        header[:3] = 20240520, 1, len(toks)
        path.write_bytes(header.tobytes() + toks.tobytes())

    shards = root / "fineweb10B"
    shards.mkdir()
    modded(shards / "fineweb_val_000000.bin", tokens(parts[0]))
    modded(shards / "fineweb_train_000001.bin", tokens(parts[1]))
    modded(shards / "fineweb_train_000002.bin", tokens(parts[2]))
    nano = root / "openwebtext"
    nano.mkdir()
    tokens(parts[1] + parts[2]).tofile(nano / "train.bin")
    tokens(parts[0]).tofile(nano / "val.bin")
    return root


def recipes(data: Path) -> dict[str, list[str]]:
    """The README's commands that read /data, keyed by their --data-dir, pointed at `data`."""
    found = {}
    for argv in commands("README.md"):
        line = shlex.join(argv)
        if "/data/" in line:
            argv = [a.replace("/data/", f"{data}/") for a in argv]
            found[Path(argv[argv.index("--data-dir") + 1]).name] = argv
    assert set(found) == {"10BT", "fineweb10B", "openwebtext"}, sorted(found)
    return found


def only_run(experiment: Path) -> Path:
    [run] = [p for p in experiment.iterdir() if (p / "status.json").is_file()]
    return run


def test_the_readme_recipes_train_evaluate_and_report(user_data, tmp_path):
    steps = recipes(user_data)
    runs = tmp_path / "runs"
    common = ["--runs-dir", runs / "{name}", "--set", f"data.cache_dir={tmp_path / 'cache'}", *FAST]

    def run(argv, name):
        argv = [a if a != "small" else "tiny" for a in argv]  # CI's scale: the tiny preset
        return cli(*argv, *[str(c).format(name=name) for c in common])

    # FineWeb-Edu Parquet: the README prepares; training takes the very same flags
    fineweb = steps["10BT"]
    assert fineweb[0] == "prepare"
    code, err = run(fineweb, "fineweb-edu")
    assert code == 0, err
    assert "10BT-file-" in err and "train" in err
    code, err = run(["train", *fineweb[1:]], "fineweb-edu")
    assert code == 0, err
    code, err = run(steps["fineweb10B"], "modded")
    assert code == 0, err
    code, err = run(steps["openwebtext"], "nanogpt")
    assert code == 0, err

    for name in ("fineweb-edu", "modded"):
        run_dir = only_run(runs / name)
        code, err = cli("eval", run_dir, "--tasks", "heldout", "--limit", "2")
        assert code == 0, err
        assert "Held-out text" in err and "bits_per_byte" in err and "(2 docs" in err, err
        code, err = cli("report", runs / name)
        assert code == 0, err
        assert (runs / name / "report" / "report.html").is_file()
    # nanoGPT shards without a tokenizer file train, but have no text to score: one line says why
    code, err = cli("eval", only_run(runs / "nanogpt"), "--tasks", "heldout", "--limit", "2")
    assert code == 2 and err.strip().count("\n") == 0 and "without a tokenizer" in err, err
