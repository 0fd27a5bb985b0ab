"""Kept checkpoints (train.keep_checkpoints) and `mhc-bench export`: the newest checkpoint as
safetensors weights, config and tokenizer, rebuilt into the same model from that folder alone."""

import errno
import json
import shutil

import pytest
import torch

from harness.cli import main
from harness.core.checkpoint import kept_checkpoints, load_checkpoint, save_checkpoint
from harness.core.config import apply_overrides
from harness.core.errors import UserError
from harness.core.presets import get_preset
from harness.core.run_id import legacy_hash, run_id
from harness.eval.export import load_export
from harness.eval.loading import load_run

SHORT = ("train.steps=3", "train.eval_every=0", "train.diag_every=0", "train.checkpoint_every=0")


def steps_kept(run_dir) -> list[int]:
    return [step for step, _ in kept_checkpoints(run_dir / "checkpoint.pt")]


# ---------------------------------------------------------------------- kept checkpoints
def test_one_checkpoint_by_default_and_the_last_n_when_asked(tiny_cfg, single_thread):
    from harness.train.loop import train

    every = ("train.steps=6", "train.checkpoint_every=2", "train.eval_every=0", "train.diag_every=0")
    one = train(tiny_cfg(*every, "run.name=one"))
    assert steps_kept(one.run_dir) == [] and load_checkpoint(one.run_dir / "checkpoint.pt")["step"] == 6
    three = train(tiny_cfg(*every, "train.keep_checkpoints=3", "run.name=three"))
    assert steps_kept(three.run_dir) == [2, 4]
    assert [load_checkpoint(p)["step"] for _, p in kept_checkpoints(three.run_dir / "checkpoint.pt")] == [2, 4]
    assert load_checkpoint(three.run_dir / "checkpoint.pt")["step"] == 6


def test_resume_continues_from_the_newest_and_keeps_rotating(tiny_cfg, single_thread):
    from harness.train.loop import train

    args = ("train.steps=6", "train.checkpoint_every=2", "train.eval_every=0", "train.diag_every=0",
            "train.keep_checkpoints=3", "run.name=r")
    part = train(tiny_cfg(*args, "train.stop_after=3"))
    assert part.status == "stopped" and steps_kept(part.run_dir) == [2]
    done = train(tiny_cfg(*args), resume=True)
    assert done.status == "done"
    assert "resuming r at step 3/6" in (done.run_dir / "train.log").read_text()  # the newest, not step 2
    assert steps_kept(done.run_dir) == [3, 4]  # 2 deleted once 6 was written
    assert load_checkpoint(done.run_dir / "checkpoint.pt")["step"] == 6


def test_older_checkpoints_survive_a_failed_write(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    w = torch.ones(2)

    def save(step, previous):
        save_checkpoint(path, step=step, tokens=step, model_state={"w": w * step}, optimizer_state={}, config={},
                        keep=2, previous_step=previous)

    save(1, None)
    save(2, 1)
    assert steps_kept(tmp_path) == [1]

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save(3, 2)
    assert steps_kept(tmp_path) == [1, 2]  # nothing deleted before a new checkpoint was whole
    assert load_checkpoint(path)["step"] == 2


def test_keep_checkpoints_changes_no_run_id_and_must_be_positive():
    cfg = get_preset("small")
    kept = apply_overrides(get_preset("small"), ["train.keep_checkpoints=5"])
    assert run_id(kept) == run_id(cfg) and legacy_hash(kept) == legacy_hash(cfg)
    with pytest.raises(UserError, match="train.keep_checkpoints must be >= 1"):
        apply_overrides(get_preset("tiny"), ["train.keep_checkpoints=0"]).validate()


# ---------------------------------------------------------------------- export round trip
@pytest.mark.parametrize("variant", ["identity", "mhc", "hc"])
def test_export_rebuilds_the_same_model_without_the_run(variant, tiny_cfg, tmp_path, single_thread):
    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT, f"variant.name={variant}"))
    out = tmp_path / "export" / variant
    assert main(["export", str(result.run_dir), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "export.json", "model.safetensors"]
    x = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = load_run(result.run_dir, device="cpu").model(x)[0]
    shutil.rmtree(result.run_dir)
    got = load_export(out)
    assert got.step == 3 and got.cfg.variant.name == variant and got.tokenizer.vocab_size == 257
    with torch.no_grad():
        assert torch.equal(got.model(x)[0], want)


def test_tied_embedding_is_stored_once_and_tied_again(tiny_cfg, tmp_path, single_thread):
    from safetensors import safe_open

    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT))
    out = tmp_path / "out"
    assert main(["export", str(result.run_dir), str(out)]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert "wte.weight" in f.keys() and "lm_head.weight" not in f.keys()
        assert json.loads(f.metadata()["tied"]) == {"lm_head.weight": "wte.weight"}
    model = load_export(out).model
    assert model.lm_head.weight is model.wte.weight  # one parameter again, as training had it


def test_untied_head_is_exported_as_its_own_tensor(tiny_cfg, tmp_path, single_thread):
    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT, "model.tie_embeddings=false"))
    out = tmp_path / "out"
    assert main(["export", str(result.run_dir), str(out)]) == 0
    model = load_export(out).model
    want = load_run(result.run_dir, device="cpu").model
    assert model.lm_head.weight is not model.wte.weight
    assert torch.equal(model.lm_head.weight, want.lm_head.weight) and torch.equal(model.wte.weight, want.wte.weight)


def test_a_bpe_run_exports_its_tokenizer_and_loads_without_the_token_cache(tiny_cfg, tmp_path, single_thread):
    from harness.train.loop import train

    cache = tmp_path / "cache"
    cfg = tiny_cfg(*SHORT, "data.tokenizer=bpe", "data.vocab_size=320", "data.max_bytes=200000", f"data.cache_dir={cache}")
    result = train(cfg)
    out = tmp_path / "out"
    assert main(["export", str(result.run_dir), str(out)]) == 0
    run = load_run(result.run_dir, device="cpu")
    text = "The river flows north."
    x = torch.tensor([run.tokenizer.encode(text)])
    with torch.no_grad():
        want = run.model(x)[0]
    shutil.rmtree(cache)
    shutil.rmtree(result.run_dir)
    got = load_export(out)
    assert got.tokenizer.kind == "bpe" and got.tokenizer.encode(text) == x[0].tolist()
    with torch.no_grad():
        assert torch.equal(got.model(x)[0], want)


# ---------------------------------------------------------------------- refusals
def test_an_existing_out_is_refused_unless_forced(tiny_cfg, tmp_path, capsys, single_thread):
    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT))
    capsys.readouterr()  # training's own lines
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert main(["export", str(result.run_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mhc-bench: error:") and "already exists" in err and "--force" in err and "\n" not in err
    assert (out / "mine.txt").read_text() == "keep me"
    assert main(["export", str(result.run_dir), str(out), "--force"]) == 0
    assert not (out / "mine.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "runs"]  # no temporary folder left


def test_no_or_a_damaged_checkpoint_is_one_clear_error(tiny_cfg, tmp_path, capsys, single_thread):
    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT))
    capsys.readouterr()  # training's own lines
    ckpt = result.run_dir / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    out = tmp_path / "exports" / "out"
    assert main(["export", str(result.run_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mhc-bench: error:") and "corrupt" in err and "\n" not in err
    ckpt.unlink()
    assert main(["export", str(result.run_dir), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mhc-bench: error:") and "has no checkpoint.pt" in err and "\n" not in err
    assert not (tmp_path / "exports").exists()


def test_a_failed_write_leaves_no_out_and_no_temporary_folder(tiny_cfg, tmp_path, monkeypatch, single_thread):
    import safetensors.torch

    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT))

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "model.safetensors")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    out = tmp_path / "exports" / "out"
    assert main(["export", str(result.run_dir), str(out)]) == 2
    assert not (tmp_path / "exports").exists()


def test_a_damaged_export_is_one_clear_error(tiny_cfg, tmp_path, single_thread):
    from harness.train.loop import train

    result = train(tiny_cfg(*SHORT))
    out = tmp_path / "out"
    assert main(["export", str(result.run_dir), str(out)]) == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(UserError, match="unreadable or corrupt"):
        load_export(out)
    (out / "export.json").unlink()
    with pytest.raises(UserError, match="no export.json"):
        load_export(out)
