"""Run ids (harness/core/run_id.py): what they hash, that the pinned defaults are the code's, and that
runs named before this scheme are found again (folders, manifests, published tables)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from harness.core.config import Config, apply_overrides
from harness.core.presets import get_preset
from harness.core.run_id import (
    code_defaults,
    identifying,
    legacy_hash,
    pinned,
    run_id,
)
from harness.core.run_migration import migrate_tables
from variants.registry import variant_names

ROOT = Path(__file__).resolve().parents[1]


def test_the_pinned_defaults_are_the_codes():
    """A default changed in the code changes what every id means: pin a new version instead.
    A field or variant added since is appended to the file (its default changes no id)."""
    version, defaults = pinned()
    current = dict(identifying(Config()))
    for name in variant_names():
        current.update({k: v for k, v in code_defaults(Config, name).items() if ":" in k})
    changed = {k: (defaults[k], v) for k, v in current.items() if k in defaults and defaults[k] != v}
    assert not changed, (f"defaults changed since run-id version {version} (pinned, now): {changed}; add version "
                         f"{version + 1} to {Path('harness/core/run_id_defaults.json')} rather than renaming every run")
    missing = sorted(set(current) - set(defaults))
    assert not missing, f"append to harness/core/run_id_defaults.json (same version, ids unchanged): {missing}"


def test_the_id_hashes_only_differences_and_execution_fields_not_at_all():
    base = apply_overrides(get_preset("small"), ["variant.name=mhc"])
    assert run_id(base) == run_id(apply_overrides(get_preset("small"), ["variant.name=mhc", "variant.sk_iters=20"]))
    assert run_id(base) != run_id(apply_overrides(get_preset("small"), ["variant.name=mhc", "variant.sk_iters=5"]))
    assert run_id(base) == run_id(apply_overrides(get_preset("small"), ["variant.name=mhc", "train.threads=3",
                                                                         "train.recompute=true", "run.name=x"]))


def test_a_field_added_with_its_default_changes_no_id(monkeypatch):
    import harness.core.run_id as rid

    cfg = apply_overrides(get_preset("small"), ["variant.name=mhc"])
    before = run_id(cfg)
    real_identifying, real_defaults = rid.identifying, rid.code_defaults
    monkeypatch.setattr(rid, "identifying", lambda c: {**real_identifying(c), "model.new_field": 7, "variant.new_opt": "x"})
    monkeypatch.setattr(rid, "code_defaults",
                        lambda cls, v: {**real_defaults(cls, v), "model.new_field": 7, f"{v}:new_opt": "x"})
    assert run_id(cfg) == before
    monkeypatch.setattr(rid, "identifying", lambda c: {**real_identifying(c), "model.new_field": 8})
    assert run_id(cfg) != before


def test_a_plain_run_folder_named_by_its_legacy_id_is_found_and_renamed(tiny_cfg):
    from harness.train.loop import train

    first = train(tiny_cfg("train.steps=2", "train.eval_every=0", "train.diag_every=0"))
    cfg = tiny_cfg("train.steps=2", "train.eval_every=0", "train.diag_every=0")
    legacy = first.run_dir.parent / f"{cfg.preset}-{cfg.variant.name}-{legacy_hash(cfg)}"
    first.run_dir.rename(legacy)  # as a run trained before the new ids exists on disk
    again = train(cfg, resume=True)
    assert again.status == "done" and again.run_dir == first.run_dir and not legacy.exists()


def test_a_legacy_manifest_is_rekeyed_once_and_runs_keep_their_folders(tmp_path):
    from slurm.experiment import Experiment
    from tests.grid_helpers import registered, write

    path = write(tmp_path, """
        name = "m"
        preset = "tiny"
        [axes]
        variant = ["identity", { name = "mhc", sk_iters = [1, 20] }]
        """)
    grid, exp = registered(path, tmp_path / "runs")
    man = json.loads(exp.manifest_path.read_text())
    legacy = {legacy_hash(r.cfg): r.id for r in grid.runs}
    man["runs"] = {legacy_hash(r.cfg): man["runs"][r.id] for r in grid.runs}
    man["submissions"] = [{"cluster": "local", "jobs": {k: "7" for k in man["runs"]}}]
    del man["run_ids"]
    exp.manifest_path.write_text(json.dumps(man))
    rekeyed = Experiment(exp.path).manifest()
    assert set(rekeyed["runs"]) == {r.id for r in grid.runs} and set(legacy.values()) == set(rekeyed["runs"])
    assert {v["folder"] for v in rekeyed["runs"].values()} == {r.folder for r in grid.runs}
    assert set(rekeyed["submissions"][0]["jobs"]) == set(rekeyed["runs"])
    assert json.loads(exp.manifest_path.read_text()) == rekeyed  # written back: migrated once


@pytest.mark.parametrize("experiment", ["archive/main", "archive/table1", "archive/k_sweep", "demo", "headline", "lr_stress_frontier"])
def test_published_tables_carry_current_ids(experiment, tmp_path):
    """results/ were migrated: every run id in them is the id of the config beside it, and
    migrating again changes nothing."""
    folder = tmp_path / experiment
    shutil.copytree(ROOT / "results" / experiment, folder)
    mapping = migrate_tables(folder)
    assert mapping and all(old == new for old, new in mapping.items())
    runs = pd.read_parquet(folder / "runs.parquet")
    for table in folder.glob("*.parquet"):
        df = pd.read_parquet(table)
        if "run_id" in df.columns:
            assert set(df.run_id) <= set(runs.run_id), table.name
