"""A trained run -> a self-contained folder in standard formats, and the way back to a model.

    OUT/model.safetensors   the weights (safetensors: no pickled code, readable by any framework)
    OUT/config.json         the run's config (Config.to_dict(), as training saved it)
    OUT/tokenizer.json      the BPE tokenizer (HF `tokenizers` format); absent for the byte tokenizer
    OUT/export.json         what the folder is: format, step, run name, tokenizer kind, vocabulary

`load_export(OUT)` rebuilds the model and tokenizer from these files alone: no run folder, no
token cache. safetensors refuses tensors that share memory, and the token embedding and the
output head are one tensor when `model.tie_embeddings` is on: the head is stored once (as the
embedding) and its name listed under `tied` in the file's metadata, so loading ties it again.

OUT is written as a hidden temporary folder beside it and renamed into place when complete, so
an interrupted export leaves nothing that looks like an export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.core.atomic import make_dirs, remove_empty_dirs
from harness.core.checkpoint import CHECKPOINT_NAME
from harness.core.config import Config, from_dict
from harness.core.errors import UserError
from harness.core.rundir import RunDir
from harness.eval.loading import rebuild
from harness.train.model import build_model
from harness.train.tokenizer import BPETokenizer, ByteTokenizer

EXPORT_FORMAT = 1
WEIGHTS_NAME, CONFIG_NAME, TOKENIZER_NAME, META_NAME = "model.safetensors", "config.json", "tokenizer.json", "export.json"


@dataclass
class Exported:
    cfg: Config
    model: object  # harness.train.model.GPT, in eval mode
    tokenizer: object  # ByteTokenizer | BPETokenizer
    step: int  # optimiser step of the checkpoint it was exported from


def export_run(run_dir, out, force: bool = False) -> Path:
    """Write the run's newest checkpoint to the folder `out`; returns `out`."""
    run_dir, out = Path(run_dir).resolve(), Path(out).resolve()
    if not RunDir.is_run(run_dir):
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass a folder under runs/")
    if not (run_dir / CHECKPOINT_NAME).is_file():
        raise UserError(f"run folder {run_dir} has no {CHECKPOINT_NAME}; train it first (mhc-bench train ... --resume)")
    _check_free(out, force)
    state, cfg, model, tokenizer = rebuild(run_dir)
    tensors, tied = _unshared(model.state_dict())
    meta = {"format": EXPORT_FORMAT, "step": int(state["step"]), "tokens": int(state["tokens"]), "run_name": run_dir.name,
            "run_id": cfg.config_hash(), "tokenizer": tokenizer.kind, "model_vocab_size": model.vocab_size,
            "tokenizer_vocab_size": tokenizer.vocab_size}
    with _atomic_folder(out, force) as tmp:
        from safetensors.torch import save_file

        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "tied": json.dumps(tied)})
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
        if tokenizer.kind == "bpe":
            tokenizer.save(tmp / TOKENIZER_NAME)
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def load_export(folder, device: str = "cpu") -> Exported:
    """Model (eval mode, on `device`), tokenizer and config from an export folder alone."""
    folder = Path(folder)
    meta = _read_json(folder / META_NAME, "export description")
    if meta.get("format") != EXPORT_FORMAT:
        raise UserError(f"{folder / META_NAME} has export format {meta.get('format')!r}, this version reads {EXPORT_FORMAT}")
    cfg = from_dict(_read_json(folder / CONFIG_NAME, "config"))
    if meta.get("tokenizer") == "byte":
        tokenizer = ByteTokenizer()
    elif meta.get("tokenizer") == "bpe":
        if not (folder / TOKENIZER_NAME).is_file():
            raise UserError(f"export {folder} has no {TOKENIZER_NAME}; export the run again")
        tokenizer = BPETokenizer.load(folder / TOKENIZER_NAME)
    else:
        raise UserError(f"unknown tokenizer {meta.get('tokenizer')!r} in {folder / META_NAME}")
    model = build_model(cfg, tokenizer.vocab_size)
    try:
        model.load_state_dict(_read_weights(folder / WEIGHTS_NAME))
    except RuntimeError as e:
        raise UserError(f"{folder / WEIGHTS_NAME} does not fit the model {CONFIG_NAME} describes "
                        f"({str(e).splitlines()[0][:160]})") from None
    return Exported(cfg, model.to(device).eval(), tokenizer, int(meta.get("step", 0)))


def _unshared(state: dict) -> tuple[dict, dict[str, str]]:
    """The state dict with each tensor once (contiguous, as safetensors wants) and {dropped name:
    the name it is stored under} for the names that shared a tensor with an earlier one."""
    tensors, tied, first = {}, {}, {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        tensors[name] = t.detach().contiguous()
    return tensors, tied


def _read_weights(path: Path) -> dict:
    """The state dict back from model.safetensors, tied names pointing at their tensor again."""
    from safetensors import safe_open

    if not path.is_file():
        raise UserError(f"no {path.name} in {path.parent}; is it an mhc-bench export folder?")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            tied = json.loads((f.metadata() or {}).get("tied", "{}"))
    except Exception as e:  # a truncated or foreign file: safetensors' own error types vary
        raise UserError(f"{path} is unreadable or corrupt ({type(e).__name__}: {str(e)[:120]})") from None
    for name, source in tied.items():
        tensors[name] = tensors[source]
    return tensors


def _read_json(path: Path, what: str) -> dict:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no {path.name} in {path.parent}; is it an mhc-bench export folder?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{what} {path} is not a JSON object")
    return d


def _check_free(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; remove it or export elsewhere")


class _atomic_folder:
    """A temporary folder beside `out`, renamed onto `out` when the block succeeds (a previous
    `out`, with force, is moved aside first and deleted only after), deleted when it fails."""

    def __init__(self, out: Path, force: bool):
        self.out, self.force = out, force

    def __enter__(self) -> Path:
        self.made = make_dirs(self.out.parent)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent))
        return self.tmp

    def __exit__(self, kind, value, tb) -> bool:
        if kind is None:
            try:
                self._commit()
                return False
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        shutil.rmtree(self.tmp, ignore_errors=True)
        remove_empty_dirs(self.made)
        return False

    def _commit(self) -> None:
        for p in self.tmp.iterdir():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; an export is for others to read
        _check_free(self.out, self.force)  # another process may have made it meanwhile
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".old", dir=self.out.parent))
            os.replace(self.out, old)  # an empty folder is replaced by a folder rename
        try:
            os.replace(self.tmp, self.out)
        except BaseException:
            if old is not None:
                os.replace(old, self.out)  # the previous export stays as it was
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
