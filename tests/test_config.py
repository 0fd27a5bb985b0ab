"""Config: presets, typed overrides, did-you-mean errors, validation, hashing, round-trip."""

import pytest

from harness.core.config import Config, all_keys, apply_overrides, describe, from_dict
from harness.core.errors import UserError
from harness.core.presets import PRESETS, get_preset


def test_presets_validate_and_gpu_sizes_match_mhc_lite_paper():
    for name in PRESETS:
        get_preset(name).validate()
    sizes = {n: (get_preset(n).model.n_layer, get_preset(n).model.d_model, get_preset(n).model.n_head) for n in ("gpt-s", "gpt-m", "gpt-l")}
    assert sizes == {"gpt-s": (6, 512, 8), "gpt-m": (12, 768, 12), "gpt-l": (24, 1024, 16)}


def test_overrides_are_typed():
    cfg = apply_overrides(get_preset("tiny"), ["model.d_model=128", "optim.lr=1e-3", "train.compile=true", "variant.name=identity"])
    assert cfg.model.d_model == 128 and isinstance(cfg.model.d_model, int)
    assert cfg.optim.lr == 1e-3 and cfg.train.compile is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.d_modle=128", "did you mean 'model.d_model'"),
        ("modle.d_model=128", "did you mean 'model.d_model'"),
        ("model.d_model=12.5", "expects an integer"),
        ("train.compile=maybe", "expects a boolean"),
        ("optim.lr=fast", "expects a number"),
        ("model=3", "is a section"),
        ("model.d_model", "key=value"),
    ],
)
def test_bad_overrides_give_one_clear_error(override, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(get_preset("tiny"), [override])


def test_unknown_preset_suggests():
    with pytest.raises(UserError, match="did you mean 'tiny'"):
        get_preset("tinny")


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_head=3", "not divisible"),
        ("train.dtype=fp8", "one of auto, fp32, bf16, fp16"),
        ("optim.schedule=linear", "one of step, cosine, constant"),
        ("optim.step_factors=0.3", "equally long"),
        ("train.steps=0", "train.steps must be positive"),
    ],
)
def test_validation_names_the_field(override, message):
    cfg = apply_overrides(get_preset("tiny"), [override])
    with pytest.raises(UserError, match=message):
        cfg.validate()


def test_hash_ignores_run_section_but_not_numbers():
    a, b = get_preset("tiny"), get_preset("tiny")
    b.run.runs_dir, b.run.progress, b.train.stop_after = "elsewhere", "off", 5
    assert a.config_hash() == b.config_hash()
    b.optim.lr *= 2
    assert a.config_hash() != b.config_hash()


def test_round_trip_and_strict_load():
    cfg = apply_overrides(get_preset("small"), ["model.d_model=96", "model.n_head=3"])
    assert from_dict(cfg.to_dict()) == cfg
    bad = cfg.to_dict()
    bad["model"]["widht"] = 3
    with pytest.raises(UserError, match="widht"):
        from_dict(bad)


def test_every_field_documented():
    text = describe(Config())
    for key in all_keys(Config()):
        line = next(l for l in text.splitlines() if l.startswith(key + " = "))
        assert len(line.split("# ", 1)[1]) > 10, key


# Run ids of shipped configs (runs/<preset>-<variant>-<id>), pinned: an option added with a
# default, or a field that changes how a run executes rather than what it computes, must leave
# them alone. LEGACY_IDS are the ids these runs had before run ids hashed only the differences
# from pinned defaults (harness/core/run_id.py); published results were migrated from them.
RUN_IDS = {
    ("tiny", "identity"): "b13ee7b446",
    ("tiny", "mhc"): "d08bca64b2",
    ("small", "identity"): "35587ff8f0",
    ("small", "mhc"): "f6e92fb7bd",
    ("small", "hc"): "bb7d4e6595",
    ("small", "mhc-lite"): "1280c41a10",
}
LEGACY_IDS = {
    ("tiny", "identity"): "abffc6c9a1",
    ("tiny", "mhc"): "495c342fd3",
    ("small", "identity"): "ebde96242c",
    ("small", "mhc"): "416ca92cbe",
}


@pytest.mark.parametrize("preset, variant", sorted(RUN_IDS))
def test_run_ids_of_shipped_configs_are_pinned(preset, variant):
    cfg = apply_overrides(get_preset(preset), [f"variant.name={variant}"])
    assert cfg.config_hash() == RUN_IDS[preset, variant]


@pytest.mark.parametrize("preset, variant", sorted(LEGACY_IDS))
def test_legacy_ids_are_reproduced_for_migration(preset, variant):
    from harness.core.run_id import legacy_hash

    assert legacy_hash(apply_overrides(get_preset(preset), [f"variant.name={variant}"])) == LEGACY_IDS[preset, variant]


def test_execution_only_fields_leave_the_hash_alone():
    a, b = get_preset("small"), get_preset("small")
    b.train.log_every, b.train.recompute, b.train.recompute_block = 1, True, 3
    b.train.cpu_kernels = "off"  # the same maths to round-off (tests/test_cpu_kernels.py)
    assert a.config_hash() == b.config_hash()


@pytest.mark.parametrize("override, message", [("train.log_every=0", "train.log_every must be >= 1, got 0"),
                                               ("train.log_every=-3", "train.log_every must be >= 1, got -3"),
                                               ("train.recompute_block=-1", "train.recompute_block must be >= 0, got -1")])
def test_bad_execution_fields_name_the_field(override, message):
    cfg = apply_overrides(get_preset("tiny"), [override])
    with pytest.raises(UserError, match=message):
        cfg.validate()


def test_a_later_field_enters_the_hash_only_away_from_its_default():
    """variant.precision came after published runs: at its default the ids stand (pinned above);
    another precision computes other numbers, so it is another run."""
    base = apply_overrides(get_preset("small"), ["variant.name=mhc", "variant.backend=triton"])
    assert apply_overrides(get_preset("small"), ["variant.name=mhc", "variant.backend=triton",
                                                 "variant.precision=tf32"]).config_hash() == base.config_hash()
    assert apply_overrides(get_preset("small"), ["variant.name=mhc", "variant.backend=triton",
                                                 "variant.precision=ieee"]).config_hash() != base.config_hash()
