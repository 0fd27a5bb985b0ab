"""Grid files: a TOML base config plus axes, expanded into runs with deterministic ids.

A grid is what a researcher hands the cluster, so it is checked completely before anything
is written or submitted: an unknown key (with the config's did-you-mean), an unknown or
empty axis, a bad value or bad TOML is one UserError naming the file and the problem.

    name = "main"                      # experiment name: the folder <runs>/<name>/
    description = "identity vs HC vs mHC vs mHC-lite"
    preset = "small"                   # tiny | small | gpt-s | gpt-m | gpt-l

    [base]                             # overrides of the preset, by dotted config key
    train.steps = 300
    optim.warmup_steps = 30

    [axes]                             # every combination becomes a run
    variant = [                        # arms: a variant name, or a table of its settings
      "identity",
      "hc",
      { name = "mhc", sk_iters = [1, 20] },               # a list inside an arm: a sub-axis of it
      { name = "mhc", fixed = "res", label = "mhc-prepost" },
    ]
    mhc-lite.n_streams = [2, 4]        # <variant>.<key>: a sub-axis for that variant's arms only
    seed = [0, 1, 2]                   # shorthands: seed, lr, steps, preset; else any config key
    "optim.lr" = [1e-3, 3e-3]

    [slurm]                            # default resources; command-line options win
    time = 60                          # minutes (or "HH:MM:SS"); a job checkpoints and requeues 90 s before it
    gpus_per_node = 1
    max_requeues = 10                  # time-outs a run's job may requeue itself after; one more fails the run

    [tune]                             # `mhc-bench sweep` (Optuna, a study per arm); see slurm/sweep.py
    trials = 20
    params."optim.lr" = { low = 1e-4, high = 1e-2, log = true }

Inside an arm (and after `<variant>.`) a key without a dot is a `variant.*` field
(`sk_iters` = `variant.sk_iters`, `n` = `n_streams`); a dotted key is any config key.

Run id = `config_hash()` of the run's resolved config (its run section and machine-local
paths excluded), so a run is the same run on any machine and across resubmissions; its folder
is `<readable name>-<id>` inside the experiment folder.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import Config, all_keys, flatten, set_value
from harness.core.errors import UserError, did_you_mean
from harness.core.presets import PRESETS, get_preset
from harness.train.data import data_root
from slurm.experiment import MANIFEST, Experiment
from variants.registry import (
    VariantConfig,
    build_variant,
    variant_names,
    variants_with_option,
)

TOP_LEVEL = ("name", "description", "preset", "base", "axes", "slurm", "tune")
SHORTHANDS = {"seed": "train.seed", "lr": "optim.lr", "steps": "train.steps"}
ARM_SHORTHANDS = {"n": "n_streams", "k": "sk_iters"}
SLURM_KEYS = {
    "partition": str, "time": (int, str), "nodes": int, "tasks_per_node": int, "gpus_per_node": int,
    "gpus_per_task": int, "cpus_per_task": int, "mem_gb": (int, float), "array_parallelism": int,
    "account": str, "qos": str, "constraint": str, "exclude": str, "sbatch": dict, "setup": list, "max_requeues": int,
}


@dataclass
class Run:
    """One run of a grid: a complete config, ready for `train(cfg, resume=True)`."""

    id: str  # config hash: the same config is the same run, wherever and whenever it is expanded
    name: str  # readable: arm and swept values, e.g. "mhc-sk_iters=20-seed=1"
    cfg: Config  # run.runs_dir = the experiment folder, run.name = the folder name
    settings: dict[str, Any]  # the dotted keys the grid set for this run (arm and axes), for tables
    arm: str = ""  # its variant arm: the arm's label (the variant's name in a grid without axes.variant)

    @property
    def folder(self) -> str:
        return self.cfg.run.name

    @property
    def path(self) -> Path:
        return Path(self.cfg.run.runs_dir) / self.cfg.run.name

    def spec(self) -> dict:
        """What a job needs (plain data, so it pickles small and survives code edits)."""
        return {"id": self.id, "name": self.name, "folder": self.folder, "config": self.cfg.to_dict()}


@dataclass
class Grid:
    path: Path
    text: str
    name: str  # experiment name
    description: str
    preset: str
    exp_dir: Path
    runs: list[Run]
    slurm: dict = field(default_factory=dict)
    tune: dict = field(default_factory=dict)
    options: list = field(default_factory=list)  # --preset/--set given with the file: part of its version

    @property
    def sha(self) -> str:
        """Hash of the file's text (the copy kept in <experiment>/grids/)."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:12]

    @property
    def key(self) -> str:
        """This version of the grid: the file and the command-line options that reshape it."""
        return hashlib.sha256((self.text + "\0" + repr(self.options)).encode()).hexdigest()[:12]


def select_runs(runs: list[Run], patterns) -> tuple[list[Run], list[Run]]:
    """(runs whose name matches one of the shell patterns, the others); all runs without patterns.

    `grid submit --only 'mhc-lite-*'` trains part of a grid now (the cheap arms first, say)
    while the experiment keeps the whole grid: status, collect and report still see every run.
    A pattern that matches no run is a one-line error naming the runs there are.
    """
    import fnmatch

    if not patterns:
        return list(runs), []
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(r.name, pat) for r in runs):
            names = ", ".join(r.name for r in runs[:8]) + (", ..." if len(runs) > 8 else "")
            raise UserError(f"--only {pat!r} matches no run of the grid (runs: {names})")
    chosen = [r for r in runs if any(fnmatch.fnmatchcase(r.name, pat) for pat in patterns)]
    return chosen, [r for r in runs if r not in chosen]


@dataclass
class _Arm:
    label: str
    fixed: dict[str, Any]  # dotted key -> value
    axes: list[tuple[str, list]]  # dotted key -> values, crossed within the arm
    variant: str | None


# ---------------------------------------------------------------------- reading
def _read(path: Path) -> tuple[str, dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"grid file {path} not found (the shipped grids are in slurm/grids/)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read grid file {path}: {e}") from None
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None


def _set(cfg: Config, key: str, value, where: str) -> None:
    if isinstance(value, (list, dict)):
        raise UserError(f"{where}: {key} = {value!r} is not a single value")
    try:
        set_value(cfg, key, value)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def _check_key(key: str, where: str, variant: str | None = None) -> None:
    """Fail on a dotted key the config does not have, with the config's did-you-mean. A variant
    option is checked against `variant` when known; otherwise any variant's option passes here
    and each run's config, once its variant is set, refuses it where it does not belong."""
    probe = Config()
    if variant is not None:
        probe.variant = VariantConfig(variant)
    keys = all_keys(probe)
    if key in keys:
        return
    if key.startswith("variant."):
        if variant is not None:
            try:
                probe.variant.option_type(key.removeprefix("variant."))
            except UserError as e:  # one line naming the variants that have it
                raise UserError(f"{where}: {e}") from None
        elif variants_with_option(key.removeprefix("variant.")):
            return
    raise UserError(f"{where}: unknown config key {key!r}" + did_you_mean(key, keys))


def _any_variant_option(key: str) -> bool:
    return bool(variants_with_option(key.removeprefix("variant.")))


def _variant_key(key: str) -> str:
    """Inside an arm: 'sk_iters' -> 'variant.sk_iters', 'n' -> 'variant.n_streams', 'optim.lr' as is."""
    if "." in key:
        return key
    return f"variant.{ARM_SHORTHANDS.get(key, key)}"


def _values(key: str, values, where: str) -> list:
    if not isinstance(values, list):
        raise UserError(f"{where}: axis {key} = {values!r} must be a list of values (a fixed value goes in [base])")
    if not values:
        raise UserError(f"{where}: axis {key} is empty, so the grid would have no runs")
    if len({repr(v) for v in values}) != len(values):
        raise UserError(f"{where}: axis {key} = {values!r} repeats a value")
    return values


def _arms(items, where: str, variant_names) -> list[_Arm]:
    arms = []
    for i, item in enumerate(_values("variant", items, where)):
        at = f"{where}: axes.variant[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            raise UserError(f"{at} must be a variant name or a table like {{ name = \"mhc\", sk_iters = [1, 20] }}, got {item!r}")
        item = dict(item)
        name = item.pop("name", None)
        if not isinstance(name, str):
            raise UserError(f"{at} needs a name = \"<variant>\" (one of {', '.join(variant_names)})")
        if name not in variant_names:
            raise UserError(f"{at}: unknown variant {name!r}{did_you_mean(name, variant_names)}; choose from {', '.join(variant_names)}")
        label = item.pop("label", None)
        if label is not None and not isinstance(label, str):
            raise UserError(f"{at}: label must be a string, got {label!r}")
        fixed, axes = {"variant.name": name}, []
        for key, value in flatten(item).items():
            dotted = _variant_key(key)
            _check_key(dotted, at, name)
            if isinstance(value, list):
                axes.append((dotted, _values(dotted, value, at)))
            else:
                fixed[dotted] = value
        if label is None:  # fixed settings name the arm, so two mhc arms stay apart
            label = "-".join([name] + [f"{_leaf(k)}={_fmt(v)}" for k, v in fixed.items() if k != "variant.name"])
        arms.append(_Arm(label, fixed, axes, name))
    return arms


def arm_labels(items, where: str) -> list[str]:
    """The labels of axes.variant's arms, in order (as run names and `Run.arm` have them)."""
    return [a.label for a in _arms(items, where, variant_names())]


def _leaf(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _fmt(v) -> str:
    if v == "":
        return "none"
    text = f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)
    return text.replace(",", "+").replace("/", "_").replace(" ", "")


# ---------------------------------------------------------------------- expansion
def load_grid(path, preset: str | None = None, overrides=(), experiment: str | None = None,
              runs_dir: str | os.PathLike | None = None, extra: dict | None = None, prefix: str = "") -> Grid:
    """Parse, validate and expand a grid file; writes nothing.

    `preset` replaces the grid's preset (GPU users: --preset gpt-s), `overrides` are `key=value`
    strings applied after [base], `experiment` renames the experiment folder, `runs_dir` is
    where experiments live (default: the preset's run.runs_dir, `runs/`). `extra` are typed
    settings applied last and `prefix` starts every run name (an Optuna trial's parameters).
    """
    path = Path(path)
    text, doc = _read(path)
    where = str(path)
    _check_top_level(doc, where)
    axes_doc = dict(doc.get("axes", {}))
    presets = _presets(preset, axes_doc.pop("preset", None), doc, where)
    names = variant_names()
    arms = _arms(axes_doc.pop("variant"), where, names) if "variant" in axes_doc else [_Arm("", {}, [], None)]
    per_variant, global_axes = _other_axes(axes_doc, arms, names, where)
    swept = {k for a in arms for k, _ in a.axes} | {k for ax in per_variant.values() for k, _ in ax} | {k for k, _ in global_axes}
    cli = _cli_overrides(overrides, swept, path)
    exp_name = _experiment_name(experiment, preset, doc, path)
    root = Path(runs_dir) if runs_dir is not None else Path(get_preset(presets[0]).run.runs_dir)
    root = root.expanduser().resolve()
    exp_dir = root / exp_name
    expansion = _Expansion(where, flatten(doc.get("base", {})), cli, extra or {}, prefix, len(presets) > 1, root, exp_dir)
    runs = expansion.runs(presets, arms, per_variant, global_axes)
    _adopt_folders(exp_dir, runs)
    slurm = _slurm_table(doc, where)
    return Grid(path.resolve(), text, exp_name, doc.get("description", ""), presets[0], exp_dir, runs, slurm,
                doc.get("tune", {}), [preset, *sorted(cli.items())])


def _check_top_level(doc: dict, where: str) -> None:
    for key in doc:
        if key not in TOP_LEVEL:
            raise UserError(f"{where}: unknown top-level key {key!r}{did_you_mean(key, TOP_LEVEL)}; allowed: {', '.join(TOP_LEVEL)}")
    for key, typ in (("name", str), ("description", str), ("preset", str), ("base", dict), ("axes", dict), ("slurm", dict), ("tune", dict)):
        if key in doc and not isinstance(doc[key], typ):
            raise UserError(f"{where}: {key} must be a {'table' if typ is dict else 'string'}, got {doc[key]!r}")


def _presets(preset: str | None, preset_axis, doc: dict, where: str) -> list[str]:
    """The command line's preset, else the grid's preset axis, else its preset (an axis of its own when listed)."""
    if preset:
        presets = [preset]
    elif preset_axis is not None:
        presets = _values("preset", preset_axis, where)
    else:
        presets = [doc.get("preset", "tiny")]
    for p in presets:
        if p not in PRESETS:
            raise UserError(f"{where}: unknown preset {p!r}{did_you_mean(str(p), PRESETS)}; choose from {', '.join(PRESETS)}")
    return presets


def _other_axes(axes_doc: dict, arms: list, names, where: str) -> tuple[dict[str, list[tuple[str, list]]], list[tuple[str, list]]]:
    """Per-variant sub-axes ({variant: [(key, values)]}, e.g. mhc.sk_iters) and global axes ([(key, values)])."""
    per_variant: dict[str, list[tuple[str, list]]] = {}
    global_axes: list[tuple[str, list]] = []
    for key, values in flatten(axes_doc).items():
        head, _, rest = key.partition(".")
        at = f"{where}: axes.{key}"
        if head in names and rest:
            if not any(a.variant == head for a in arms):
                raise UserError(f"{at}: no {head!r} arm in axes.variant to sweep it for")
            dotted = _variant_key(rest)
            _check_key(dotted, at, head)
            per_variant.setdefault(head, []).append((dotted, _values(dotted, values, where)))
            continue
        dotted = SHORTHANDS.get(key, key)
        if dotted not in all_keys(Config()) and not (dotted.startswith("variant.") and _any_variant_option(dotted)):
            choices = ["variant", "preset", *SHORTHANDS, *all_keys(Config()), *(f"{n}.<key>" for n in names)]
            raise UserError(f"{at}: unknown axis {key!r}{did_you_mean(key, choices)}; an axis is variant, preset, "
                            f"{', '.join(SHORTHANDS)}, a config key, or <variant>.<key>")
        if dotted.startswith("variant.name"):
            raise UserError(f"{at}: sweep variants with axes.variant = [...]")
        global_axes.append((dotted, _values(dotted, values, where)))
    return per_variant, global_axes


def _cli_overrides(overrides, swept: set[str], path: Path) -> dict[str, str]:
    """--set key=value pairs; a swept key is refused (edit the axis instead)."""
    cli = {}
    for item in overrides or ():
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value, e.g. train.steps=100")
        key, value = (s.strip() for s in item.split("=", 1))
        _check_key(key, "--set")
        cli[key] = value
    for key in cli:
        if key in swept:
            raise UserError(f"--set {key}: {path} sweeps {key} as an axis; edit the axis instead")
    return cli


def _experiment_name(experiment: str | None, preset: str | None, doc: dict, path: Path) -> str:
    exp_name = experiment or doc.get("name") or path.stem
    if preset and not experiment:
        exp_name = f"{exp_name}-{preset}"  # another preset is another experiment
    if not exp_name or "/" in exp_name or exp_name.startswith("."):
        raise UserError(f"{path}: experiment name {exp_name!r} must be a plain folder name")
    return exp_name


@dataclass
class _Expansion:
    """Turns presets x arms x axes into runs: each a validated config, a readable name and its id."""

    where: str
    base: dict
    cli: dict
    extra: dict  # typed settings applied last (a trial's parameters)
    prefix: str
    several_presets: bool
    root: Path
    exp_dir: Path

    def runs(self, presets: list[str], arms: list, per_variant: dict, global_axes: list) -> list[Run]:
        runs, seen = [], {}
        for p in presets:
            for arm in arms:
                arm_axes = arm.axes + per_variant.get(arm.variant, [])
                all_axes = arm_axes + global_axes
                for combo in itertools.product(*(vals for _, vals in all_axes)):
                    run = self.run(p, arm, arm_axes, all_axes, combo)
                    if run.id in seen:
                        raise UserError(f"{self.where}: runs {seen[run.id]!r} and {run.name!r} have the same config "
                                        f"(id {run.id}); remove the duplicate arm or axis value")
                    seen[run.id] = run.name
                    runs.append(run)
        return runs

    def run(self, p: str, arm, arm_axes: list, all_axes: list, combo: tuple) -> Run:
        where = self.where
        cfg = get_preset(p)
        for key, value in self.base.items():
            _set(cfg, key, value, f"{where}: [base]")
        for key, value in self.cli.items():
            _set(cfg, key, value, "--set")
        settings = dict(arm.fixed)
        settings.update({k: v for (k, _), v in zip(all_axes, combo)})
        for key, value in settings.items():
            _set(cfg, key, value, f"{where}: [axes]")
        for key, value in self.extra.items():
            _set(cfg, key, value, f"{where}: [tune]")
        settings.update(self.extra)
        parts = ([self.prefix] if self.prefix else []) + ([p] if self.several_presets else []) + ([arm.label] if arm.label else [])
        parts += [f"{_leaf(k)}={_fmt(v)}" for (k, vals), v in zip(all_axes, combo) if (k, vals) in arm_axes or len(vals) > 1]
        name = "-".join(parts) or p
        try:
            cfg.validate()
            build_variant(cfg.variant, cfg.model.d_model, 2 * cfg.model.n_layer)
        except UserError as e:
            raise UserError(f"{where}: run {name}: {e}") from None
        run_id = cfg.config_hash()
        _localise(cfg, self.root, self.exp_dir, f"{name}-{run_id}")
        return Run(run_id, name, cfg, {"preset": p, **settings}, arm.label or cfg.variant.name)


def _slurm_table(doc: dict, where: str) -> dict:
    slurm = dict(doc.get("slurm", {}))
    for key, value in slurm.items():
        if key not in SLURM_KEYS:
            raise UserError(f"{where}: [slurm] unknown option {key!r}{did_you_mean(key, SLURM_KEYS)}; allowed: {', '.join(SLURM_KEYS)}")
        if not isinstance(value, SLURM_KEYS[key]) or isinstance(value, bool):
            raise UserError(f"{where}: [slurm] {key} = {value!r} has the wrong type")
    return slurm


def _adopt_folders(exp_dir: Path, runs: list[Run]) -> None:
    """A run keeps the folder it was first given in this experiment (read-only).

    Its readable name can change when the grid does (a seed axis that grew from one value to
    three adds "-seed=0"); its id does not. Without this, the same run would get a second
    folder and be trained twice.
    """
    experiment = Experiment(exp_dir)
    if not experiment.exists():
        return
    try:
        known = experiment.manifest().get("runs", {})
    except UserError:
        return  # reported by the commands that need the manifest
    for run in runs:
        if run.id in known and known[run.id].get("folder"):
            run.cfg.run.name = known[run.id]["folder"]
            run.name = known[run.id].get("name", run.name)


def _localise(cfg: Config, root: Path, exp_dir: Path, folder: str) -> None:
    """Fill in this machine's paths (after the id, so the id is machine-independent).

    Jobs run inside a frozen copy of the code (slurm/snapshot.py), where the data folder
    beside the checkout and relative paths would point elsewhere: resolve them now. Token
    shards are shared with plain `mhc-bench train` runs (<runs>/data) so a grid tokenizes once.
    """
    cfg.run.runs_dir = str(exp_dir)
    cfg.run.name = folder
    if cfg.run.progress == "auto":
        cfg.run.progress = "off"  # job logs are files: no progress bars
    if not cfg.data.data_root:
        cfg.data.data_root = str(data_root(cfg))
    if not cfg.data.cache_dir:
        cfg.data.cache_dir = str(root / "data")
    corpus = Path(cfg.data.corpus).expanduser()
    if not corpus.is_absolute() and corpus.exists():
        cfg.data.corpus = str(corpus.resolve())


# ---------------------------------------------------------------------- finding an experiment
def find_experiment(arg: str, runs_dir: str | None = None):
    """An experiment from a folder, a grid file (its experiment folder) or a name under runs_dir."""
    p = Path(arg).expanduser()
    if p.is_dir() and (p / MANIFEST).is_file():
        return Experiment(p.resolve())
    if p.suffix == ".toml" and p.is_file():
        return Experiment(load_grid(p, runs_dir=runs_dir).exp_dir)
    root = Path(runs_dir or "runs").expanduser().resolve()
    if (root / arg / MANIFEST).is_file():
        return Experiment(root / arg)
    known = sorted(d.name for d in root.glob("*") if (d / MANIFEST).is_file()) if root.is_dir() else []
    raise UserError(f"no experiment {arg!r} (looked for {p}/{MANIFEST} and {root / arg}/{MANIFEST})"
                    + did_you_mean(arg, known) + (f"; experiments under {root}: {', '.join(known)}" if known else ""))
