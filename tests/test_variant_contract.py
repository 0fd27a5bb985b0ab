"""Every registered variant meets the contract of tests/variant_contract.py, for each option set
it lists in `contract_options`; a variant added later is covered without editing this file,
as the throwaway variant at the end shows (it also leaves every existing run id alone)."""

import sys

import pytest

from tests.variant_contract import CHECKS
from variants.registry import REGISTRY, get_variant_class, variant_names

pytestmark = pytest.mark.usefixtures("single_thread")

CASES = [(name, options) for name in variant_names() for options in get_variant_class(name).contract_options]


def case_id(name: str, options: dict) -> str:
    return name + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name,options", CASES, ids=[case_id(*c) for c in CASES])
def test_variant_contract(name, options, check):
    CHECKS[check](name, options)


THROWAWAY = '''
"""A variant that exists only for a test: x + g F(x) with a learned scalar gate."""
from dataclasses import dataclass

import torch
from torch import nn

from variants.base import Mixing, Residual, ResidualVariant
from variants.options import doc


@dataclass
class GateOptions:
    gate_init: float = doc("initial gate on the branch output", 1.0)


class GateResidual(Residual):
    def __init__(self, cfg, d_model, n_streams, index, n_sublayers):
        super().__init__(cfg, d_model, n_streams, index, n_sublayers)
        self.gate = nn.Parameter(torch.full((1,), float(self.opts.gate_init)))

    def prepare(self, x):
        return x[:, :, 0, :], Mixing()

    def merge(self, x, y, mix):
        return x + (self.gate * y).unsqueeze(2)


class Gate(ResidualVariant):
    residual_cls = GateResidual
    options_cls = GateOptions
    description = "x + g F(x), a learned scalar gate (test only)"
    label = "Gated residual"
    colour = "#123456"
'''


@pytest.fixture
def throwaway_variant(tmp_path, monkeypatch):
    (tmp_path / "throwaway_gate.py").write_text(THROWAWAY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(REGISTRY, "throwaway-gate", "throwaway_gate:Gate")
    yield "throwaway-gate"
    sys.modules.pop("throwaway_gate", None)


def test_a_variant_in_a_new_module_gets_the_contract_and_leaves_run_ids_alone(throwaway_variant):
    from harness.core.config import apply_overrides
    from harness.core.presets import get_preset
    from tests.test_config import RUN_IDS

    ran = []
    for check, fn in CHECKS.items():
        try:
            fn(throwaway_variant, {})
            ran.append(check)
        except pytest.skip.Exception:
            pass
    assert {"shapes", "causality", "gradients", "autocast", "diagnostics", "one_stream", "foreign_option"} <= set(ran)
    for (preset, variant), run_id in RUN_IDS.items():
        assert apply_overrides(get_preset(preset), [f"variant.name={variant}"]).config_hash() == run_id
    own = apply_overrides(get_preset("tiny"), [f"variant.name={throwaway_variant}"])
    assert own.variant.gate_init == 1.0
    tuned = apply_overrides(get_preset("tiny"), [f"variant.name={throwaway_variant}", "variant.gate_init=0.5"])
    assert tuned.config_hash() != own.config_hash()


def test_a_new_variant_is_labelled_coloured_and_benchmarked_from_its_own_file(throwaway_variant, tmp_path):
    """What a report, its figures and `bench model` say of a variant is read from the variant's
    class (label, colour, in_bench): registering it is all it takes."""
    from pathlib import Path

    from matplotlib.colors import to_rgb

    from harness.analysis import plots
    from harness.analysis.report import loss_summary
    from harness.analysis.table import Run, group_rows
    from harness.bench.model import default_variants
    from harness.core.config import apply_overrides
    from harness.core.presets import get_preset

    runs = [Run(Path(f"{v}-s{seed}"), apply_overrides(get_preset("tiny"), [f"variant.name={v}", f"train.seed={seed}"]).to_dict(),
                2.3 + 0.01 * seed, None) for v in ("identity", throwaway_variant) for seed in range(3)]
    rows = group_rows(runs)
    assert [r.label for r in rows] == ["Baseline", "Gated residual"]
    _, body, _ = loss_summary(rows)
    assert body[1][0] == "Gated residual"
    assert plots.palette([r.label for r in rows])["Gated residual"] == to_rgb("#123456")
    assert throwaway_variant in default_variants()
