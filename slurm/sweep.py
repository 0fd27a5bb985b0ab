"""Optuna sweeps over a grid: one study per variant arm, trials dispatched like `grid submit`.

    [tune]
    trials = 20                 # finished trials wanted per arm (--trials wins); a rerun continues
    parallel = 2                # trials in flight at once, all arms together
    metric = "val_loss"         # or train_loss: the final value in each run's status.json
    direction = "minimize"
    sampler = "tpe"             # or random
    seed = 0
    pruner = { name = "median", n_warmup_steps = 50 }   # or "none", or { name = "threshold", upper = 6.0 }
    [tune.params]
    "optim.lr" = { low = 1e-4, high = 1e-2, log = true }     # floats: suggest_float
    "model.n_layer" = { low = 2, high = 6 }                  # ints: suggest_int (step = ...)
    "variant.sk_iters" = { choices = [1, 5, 20] }            # suggest_categorical

Every arm of axes.variant (or the grid's one variant) gets its own study, `<experiment>/<arm>`,
so each variant is compared at its own tuned settings. A trial trains that arm's runs (the
grid's other axes, e.g. seeds) with the trial's parameters; its value is their mean metric.
The runs are ordinary runs of the experiment (named t<trial>-<arm>..., with their own ids),
dispatched through the same submitit path as `grid submit`: same snapshot, same requeue, same
skipping of finished runs.

Storage: a journal file in the experiment folder (optuna's JournalStorage: plain appends, safe
on a shared filesystem), or any RDB URL (--storage sqlite:///sweep.db, postgresql://...).

Pruning: each job opens its trial in the shared storage (PruningHook, passed to `train()` as
`on_validation`). The trial's first run reports every validation loss (`trial.report(loss,
step)`); every run of the trial asks the pruner (median by default, warm-up: the first quarter
of training) and stops at a pruned validation, checkpointed; the trial is told PRUNED. A trial
with a failed or diverged run is told FAIL, the error kept as its user attribute "error".
Killing `sweep` loses nothing: rerun it and trials left running are picked up (their finished
runs reused, their live jobs followed, values not yet drawn drawn now), then the studies
continue. The sampler is seeded per trial (`trial_seed`), so a continued study proposes new
points rather than replaying its seed's stream from the start.

Resources are checked as `grid submit` checks them (slurm/dispatch.py `check_request`): for the
whole sweep up front unless a tuned value bears on the check (a train.* or model.* key), and for
every trial's runs before they are submitted; a trial they cannot train is told FAIL, no job queued.

`sweep best` (also the end of every `sweep`) writes best.json and best.toml: the grid with each
arm's best parameters fixed in it (and [tune] dropped), so `grid submit best.toml` compares the
variants at their tuned settings.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
import tomllib
from pathlib import Path

from harness.core.atomic import write_json, write_text
from harness.core.config import Config, all_keys
from harness.core.errors import UserError, did_you_mean
from harness.core.rundir import RunDir
from slurm.experiment import ACTIVE_JOB_STATES, Experiment, is_locked, scheduler_states
from slurm.grid import arm_labels, load_grid
from slurm.pruning import PruningHook, make_pruner, open_storage  # noqa: F401 (jobs import them from here too)

TUNE_KEYS = ("trials", "parallel", "metric", "direction", "sampler", "seed", "pruner", "params")


def search_space(params: dict, where: str) -> dict[str, dict]:
    """Validate [tune.params]: config key -> {low, high[, log, step]} or {choices}."""
    if not isinstance(params, dict) or not params:
        raise UserError(f"{where}: [tune.params] is missing or empty; e.g. \"optim.lr\" = {{ low = 1e-4, high = 1e-2, log = true }}")
    keys = all_keys(Config())
    flat = {}
    for key, spec in params.items():
        if isinstance(spec, dict) and not ({"low", "high", "choices"} & set(spec)):
            flat.update({f"{key}.{k}": v for k, v in spec.items()})  # TOML dotted keys arrive nested
        else:
            flat[key] = spec
    for key, spec in flat.items():
        at = f"{where}: [tune.params] {key}"
        if key not in keys:
            raise UserError(f"{at}: unknown config key{did_you_mean(key, keys)}")
        if not isinstance(spec, dict):
            raise UserError(f"{at} must be a table: {{ low = .., high = .. }} or {{ choices = [..] }}")
        extra = set(spec) - {"low", "high", "log", "step", "choices"}
        if extra:
            raise UserError(f"{at}: unknown field(s) {', '.join(sorted(extra))}; use low, high, log, step or choices")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise UserError(f"{at}: choices must be a non-empty list")
        elif not ({"low", "high"} <= set(spec)) or not all(isinstance(spec[k], (int, float)) for k in ("low", "high")):
            raise UserError(f"{at} needs numeric low and high (or choices)")
        elif not spec["low"] < spec["high"]:
            raise UserError(f"{at}: low must be below high")
        elif spec.get("log") and spec["low"] <= 0:
            raise UserError(f"{at}: a log range needs low > 0")
    return flat


def suggest(trial, space: dict[str, dict]) -> dict:
    values = {}
    for key, spec in space.items():
        if "choices" in spec:
            values[key] = trial.suggest_categorical(key, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            values[key] = trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1), log=bool(spec.get("log")))
        else:
            values[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")), step=spec.get("step"))
    return values


PRUNERS = {  # name -> the optuna keyword arguments a grid may set
    "median": ("n_startup_trials", "n_warmup_steps", "interval_steps", "n_min_trials"),
    "threshold": ("lower", "upper", "n_warmup_steps", "interval_steps"),
    "none": (),
}


def pruner_spec(value, grid, where: str) -> dict:
    """Validate [tune] pruner (a name or a table with a name); plain data, so jobs can rebuild it."""
    spec = {"name": value} if isinstance(value, str) else dict(value) if isinstance(value, dict) else None
    if spec is None or not isinstance(spec.get("name"), str):
        raise UserError(f"{where}: [tune] pruner must be a name or a table like {{ name = \"median\", n_warmup_steps = 50 }}")
    name = spec.pop("name")
    if name not in PRUNERS:
        raise UserError(f"{where}: [tune] pruner {name!r}{did_you_mean(name, PRUNERS)}; choose from {', '.join(PRUNERS)}")
    for key, v in spec.items():
        if key not in PRUNERS[name]:
            allowed = ", ".join(PRUNERS[name]) or "no options"
            raise UserError(f"{where}: [tune] pruner {name}: unknown option {key!r}{did_you_mean(key, PRUNERS[name])}; allowed: {allowed}")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise UserError(f"{where}: [tune] pruner {name}: {key} = {v!r} must be a number")
    if name == "median":  # defaults: 3 finished trials before any pruning, warm-up = the first quarter of training
        spec.setdefault("n_startup_trials", 3)
        spec.setdefault("n_warmup_steps", max(r.cfg.train.steps for r in grid.runs) // 4)
    try:
        make_pruner({"name": name, **spec})
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: [tune] pruner {name}: {e}") from None
    return {"name": name, **spec}


def storage_url(storage: str | None, exp_dir: Path) -> str:
    """An RDB URL as given, else the journal file (default: <experiment>/optuna.journal)."""
    if storage and "://" in storage:
        return storage
    return str(Path(storage).expanduser().resolve() if storage else exp_dir / "optuna.journal")


def study_name(grid, arm: str) -> str:
    return f"{grid.name}/{arm}"


class _Followed:
    """A run this sweep did not submit (already finished, or owned by a live job): read its folder."""

    def __init__(self, run, job=None):
        self.run, self.job = run, job

    def done(self) -> bool:
        if self.job is not None and not self.job.done():
            return False
        return not is_locked(self.run.path)  # whoever trains it has let go

    def outcome(self) -> dict:
        status = RunDir(self.run.path).read_status() or {}
        state = status.get("status", "failed")
        return {"run_id": self.run.id, "name": self.run.name, "status": "pruned" if state == "stopped" else state,
                "step": status.get("step"), "train_loss": status.get("train_loss"), "val_loss": status.get("val_loss"),
                "error": status.get("error")}


def _settings(grid, trials: int | None, parallel: int | None) -> dict:
    """The [tune] table, validated (one UserError naming the file and key)."""
    import optuna

    where, spec = str(grid.path), grid.tune
    for key in spec:
        if key not in TUNE_KEYS:
            raise UserError(f"{where}: [tune] unknown option {key!r}{did_you_mean(key, TUNE_KEYS)}; allowed: {', '.join(TUNE_KEYS)}")
    space = search_space(spec.get("params"), where)
    swept = {k for r in grid.runs for k in r.settings}
    clash = sorted(set(space) & swept)
    if clash:
        raise UserError(f"{where}: [tune.params] {', '.join(clash)} is also an axis of the grid; tune it or sweep it, not both")
    trials = trials or spec.get("trials")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise UserError(f"{where}: how many trials? pass --trials N or set trials = N in [tune]")
    parallel = parallel or spec.get("parallel", 1)
    if not isinstance(parallel, int) or isinstance(parallel, bool) or parallel < 1:
        raise UserError(f"{where}: [tune] parallel = {parallel!r} must be a positive integer")
    metric = spec.get("metric", "val_loss")
    if metric not in ("val_loss", "train_loss"):
        raise UserError(f"{where}: [tune] metric {metric!r} must be val_loss or train_loss")
    direction = spec.get("direction", "minimize")
    if direction not in ("minimize", "maximize"):
        raise UserError(f"{where}: [tune] direction {direction!r} must be minimize or maximize")
    samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
    sampler = spec.get("sampler", "tpe")
    if sampler not in samplers:
        raise UserError(f"{where}: [tune] sampler {sampler!r}{did_you_mean(str(sampler), samplers)}; choose from {', '.join(samplers)}")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"{where}: [tune] seed = {seed!r} must be a non-negative integer")
    return {"space": space, "trials": trials, "parallel": parallel, "metric": metric, "direction": direction,
            "sampler": samplers[sampler], "seed": seed, "pruner": pruner_spec(spec.get("pruner", "median"), grid, where)}


def _study_arms(grid) -> list[str]:
    """The grid's variant arms, in order; two arms with one label would share a study."""
    arms = list(dict.fromkeys(r.arm for r in grid.runs))
    items = tomllib.loads(grid.text).get("axes", {}).get("variant")
    if items is not None:
        labels = arm_labels(items, str(grid.path))
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise UserError(f"{grid.path}: axes.variant has several arms labelled {', '.join(map(repr, dup))}; "
                            "give each its own label = \"...\" (a sweep tunes each arm separately)")
    return arms


def trial_seed(seed: int, arm: int, number: int) -> int:
    """The sampler's seed for one trial: a function of the [tune] seed, the arm and the trial's number.

    A sampler seeded once per `sweep` command would restart its random stream on every rerun
    and propose the points of the trials it already ran; seeded per trial, a study continued
    over several commands draws exactly what one uninterrupted command would have drawn
    (given the same finished trials), and never re-draws an earlier trial's point by replay.
    """
    import numpy as np

    return int(np.random.SeedSequence([seed, arm, number]).generate_state(1)[0])


def _fmt_values(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def sweep(grid_path, *, cluster: str, res, trials: int | None = None, parallel: int | None = None,
          storage: str | None = None, load_kwargs: dict | None = None, output=None, out=None,
          poll_s: float | None = None) -> dict:
    """Run (or continue) one study per arm until each has `trials` finished trials; export the best."""
    load_kwargs = dict(load_kwargs or {})
    sw = _Sweep(grid_path, cluster, res, trials, parallel, storage, load_kwargs, out)
    sw.resume_running()
    poll_s = poll_s if poll_s is not None else (0.5 if cluster != "slurm" else 5.0)
    while sw.unfinished() or sw.in_flight:
        sw.fill()
        sw.dispatcher.poll()
        sw.tell_finished()
        if sw.in_flight:
            time.sleep(poll_s)
    return export_best(grid_path, storage=storage, load_kwargs=load_kwargs, output=output, out=out)


class _Sweep:
    """One Optuna study per arm, its trials submitted as grid runs through the dispatcher; the
    loop in `sweep` keeps `parallel` trials in flight, round-robin over the arms."""

    def __init__(self, grid_path, cluster: str, res, trials, parallel, storage, load_kwargs: dict, out):
        import optuna

        from slurm.dispatch import Dispatcher, check_request, freeze_code

        self.grid_path, self.cluster, self.res, self.load_kwargs, self.out = grid_path, cluster, res, load_kwargs, out
        self.grid = grid = load_grid(grid_path, **load_kwargs)
        self.s = s = _settings(grid, trials, parallel)
        self.arms = arms = _study_arms(grid)
        if not any(k.split(".")[0] in ("train", "model") for k in s["space"]):  # else each trial's runs are checked
            check_request(grid.runs, res, cluster)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.exp = Experiment(grid.exp_dir)
        self.exp.register(grid, runs=[])
        self.url = storage_url(storage, self.exp.path)
        store = open_storage(self.url)
        self.studies = {arm: optuna.create_study(study_name=study_name(grid, arm), storage=store, direction=s["direction"],
                                                 pruner=make_pruner(s["pruner"]), load_if_exists=True)
                        for arm in arms}
        self.dispatcher = Dispatcher(self.exp, cluster, res, freeze_code(self.exp) if cluster != "debug" else None)
        self.in_flight: dict[tuple[str, int], tuple] = {}
        counts = {arm: sum(1 for r in grid.runs if r.arm == arm) for arm in arms}
        per_arm = str(counts[arms[0]]) if len(set(counts.values())) == 1 else "/".join(map(str, counts.values()))
        print(f"sweep {grid.name!r}: {len(arms)} stud{'y' if len(arms) == 1 else 'ies'} ({', '.join(arms)}) in {self.url}  "
              f"({s['metric']}, {s['direction']}; {per_arm} run(s) per trial; pruner {s['pruner']['name']})", file=out, flush=True)

    def seeded(self, arm: str, number: int):
        """The arm's study with its sampler seeded for trial `number` (see trial_seed)."""
        self.studies[arm].sampler = self.s["sampler"](seed=trial_seed(self.s["seed"], self.arms.index(arm), number))
        return self.studies[arm]

    def launch(self, arm: str, trial) -> tuple | None:
        """Submit the arm's runs with the trial's values; each job carries what it needs to prune.

        A trial left running by an interrupted sweep keeps the values it drew (any it had not yet
        drawn are drawn now). A trial whose runs the resources cannot train fails without a job."""
        from optuna.trial import TrialState

        from slurm.dispatch import check_request, plan_submission

        values = suggest(trial, self.s["space"])
        g = load_grid(self.grid_path, extra=values, prefix=f"t{trial.number}", **self.load_kwargs)
        runs = [r for r in g.runs if r.arm == arm]
        try:
            check_request(runs, self.res, self.cluster)
        except UserError as e:
            self.studies[arm]._storage.set_trial_user_attr(trial._trial_id, "error", str(e))
            self.studies[arm].tell(trial.number, state=TrialState.FAIL)
            print(f"{arm} trial {trial.number}: {_fmt_values(values)}  failed before submission: {e}", file=self.out, flush=True)
            return None
        self.exp.register(g, runs=runs)
        todo, skipped = plan_submission(self.exp, runs)
        name = study_name(self.grid, arm)
        common = {"storage": self.url, "study": name, "trial_id": trial._trial_id, "pruner": self.s["pruner"]}
        extra = {r.id: {"sweep": {**common, "report": i == 0}} for i, r in enumerate(runs)}
        handles = self.dispatcher.submit(todo, note={"study": name, "trial": trial.number}, extra=extra)
        handles += self.follow(skipped)
        print(f"{arm} trial {trial.number}: {_fmt_values(values)}  ({len(todo)} run(s) submitted, {len(skipped)} reused)",
              file=self.out, flush=True)
        return trial._trial_id, handles

    def follow(self, skipped) -> list:
        """Handles for runs an earlier submission owns: their live SLURM job, else their folder."""
        jobs = self.exp.last_jobs()
        sched = scheduler_states(self.exp.path, {r.id: jobs[r.id] for r, _ in skipped if r.id in jobs})
        handles = []
        for run, _why in skipped:
            cluster_, job_id = jobs.get(run.id, ("", ""))
            job = None
            if cluster_ == "slurm" and sched.get(job_id, "").split(" ")[0] in ACTIVE_JOB_STATES:
                import submitit

                job = submitit.SlurmJob(folder=self.exp.path / "logs" / "%j", job_id=job_id)
            handles.append(_Followed(run, job))
        return handles

    def finished(self, arm: str) -> int:
        from optuna.trial import TrialState

        return len(self.studies[arm].get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)))

    def unfinished(self) -> bool:
        return any(self.finished(arm) < self.s["trials"] for arm in self.arms)

    def wanted(self, arm: str) -> int:
        return self.s["trials"] - self.finished(arm) - sum(1 for a, _ in self.in_flight if a == arm)

    def resume_running(self) -> None:
        """Trials left running by an earlier, interrupted sweep: their finished runs are reused."""
        import optuna
        from optuna.trial import TrialState

        for arm in self.arms:
            for t in self.studies[arm].get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if (launched := self.launch(arm, optuna.trial.Trial(self.seeded(arm, t.number), t._trial_id))) is not None:
                    self.in_flight[(arm, t.number)] = launched

    def fill(self) -> None:
        """Ask new trials until `parallel` are in flight, the arm with the most left first."""
        while len(self.in_flight) < self.s["parallel"]:
            open_arms = [a for a in self.arms if self.wanted(a) > 0]
            if not open_arms:
                break
            arm = max(open_arms, key=self.wanted)  # round-robin over the arms
            trial = self.seeded(arm, len(self.studies[arm].get_trials(deepcopy=False))).ask()  # the next trial's number
            if (launched := self.launch(arm, trial)) is not None:
                self.in_flight[(arm, trial.number)] = launched

    def tell_finished(self) -> None:
        """Each trial whose runs all ended: failed, pruned, or its metric averaged over its runs."""
        for (arm, number), (trial_id, handles) in list(self.in_flight.items()):
            if all(h.done() for h in handles):
                del self.in_flight[(arm, number)]
                self.tell(arm, number, trial_id, [h.outcome() for h in handles])

    def tell(self, arm: str, number: int, trial_id, outs: list[dict]) -> None:
        from optuna.trial import TrialState

        metric, study, out = self.s["metric"], self.studies[arm], self.out
        bad = [o for o in outs if o.get("status") not in ("done", "pruned")
               or (o.get("status") == "done" and o.get(metric) is None)]
        if bad:
            why = "; ".join(f"{o.get('name')}: {o.get('status')}" + (f" ({o['error']})" if o.get("error") else "") for o in bad)
            study._storage.set_trial_user_attr(trial_id, "error", why)
            study.tell(number, state=TrialState.FAIL)
            print(f"{arm} trial {number}: failed: {why}", file=out, flush=True)
        elif any(o.get("status") == "pruned" for o in outs):
            study.tell(number, state=TrialState.PRUNED)
            at = max(o.get("step") or 0 for o in outs)
            print(f"{arm} trial {number}: pruned at step {at}", file=out, flush=True)
        else:
            value = statistics.fmean(o[metric] for o in outs)
            study.tell(number, value)
            print(f"{arm} trial {number}: {metric} {value:.4f}", file=out, flush=True)


def export_best(grid_path, *, storage: str | None = None, load_kwargs: dict | None = None, output=None, out=None) -> dict:
    """best.json and a grid file with each arm's best parameters fixed (no [tune]): compare at tuned settings."""
    import optuna
    from optuna.trial import TrialState

    load_kwargs = dict(load_kwargs or {})
    grid = load_grid(grid_path, **load_kwargs)
    arms = _study_arms(grid)
    exp_dir = Path(grid.exp_dir)
    url = storage_url(storage, exp_dir)
    if "://" not in url and not Path(url).is_file():
        raise UserError(f"{grid.path}: no sweep journal at {url}; run `mhc-bench sweep {grid.path}` first (or pass its --storage)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = open_storage(url)
    best = {}
    for arm in arms:
        name = study_name(grid, arm)
        try:
            study = optuna.load_study(study_name=name, storage=store)
        except KeyError:
            raise UserError(f"{grid.path}: no study {name!r} in {url}; run `mhc-bench sweep {grid.path}` first") from None
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            counts = {}
            for t in study.get_trials(deepcopy=False):
                counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
            raise UserError(f"study {name!r}: no trial finished successfully ({', '.join(f'{n} {k}' for k, n in counts.items()) or 'no trials'}); "
                            f"see mhc-bench grid status {exp_dir}")
        t = study.best_trial
        best[arm] = {"study": name, "trial": t.number, "value": t.value, "params": t.params,
                     "trials_finished": sum(1 for x in study.get_trials(deepcopy=False) if x.state.is_finished())}

    doc = tomllib.loads(grid.text)
    doc.pop("tune", None)
    doc["name"] = f"{grid.name}-best"
    doc["description"] = f"{grid.name} at each variant's best [tune] settings (mhc-bench sweep best {grid.path})"
    if load_kwargs.get("preset"):
        doc["preset"] = load_kwargs["preset"]
        doc.get("axes", {}).pop("preset", None)
    items = doc.get("axes", {}).get("variant")
    if items is None:  # one variant: its best settings go into [base]
        for key, value in best[arms[0]]["params"].items():
            _set_nested(doc.setdefault("base", {}), key, value)
    else:
        arms_out = []
        for item, label in zip(items, arm_labels(items, str(grid.path))):
            item = {"name": item} if isinstance(item, str) else dict(item)
            item["label"] = label  # fixed settings would otherwise rename the arm
            for key, value in best[label]["params"].items():
                _set_nested(item, key, value)
            arms_out.append(item)
        doc["axes"]["variant"] = arms_out
    path = Path(output) if output else exp_dir / "best.toml"
    write_text(path, f"# Written by `mhc-bench sweep best {grid.path}`: each arm at its best trial.\n" + to_toml(doc))
    load_grid(path, **{k: v for k, v in load_kwargs.items() if k != "preset"})  # it must be a valid grid
    doc_json = {"grid_file": str(grid.path), "storage": url, "metric": grid.tune.get("metric", "val_loss"),
                "direction": grid.tune.get("direction", "minimize"), "variants": best, "exported": str(path)}
    write_json(exp_dir / "best.json", doc_json)
    for arm, b in best.items():
        print(f"best {arm}: trial {b['trial']}, {doc_json['metric']} {b['value']:.4f} with {_fmt_values(b['params'])}", file=out)
    print(f"saved: {exp_dir / 'best.json'}", file=out)
    print(f"grid:  {path}  (compare with: mhc-bench grid submit {path})", file=out, flush=True)
    return doc_json


def _set_nested(table: dict, dotted: str, value) -> None:
    *heads, leaf = dotted.split(".")
    for h in heads:
        table = table.setdefault(h, {})
    table[leaf] = value


# ---------------------------------------------------------------------- TOML out (no writer in the standard library)
def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, int) or math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise UserError(f"cannot write {v!r} ({type(v).__name__}) to a grid file")


def _dotted(table: dict, prefix: str = "") -> list[str]:
    lines = []
    for k, v in table.items():
        if isinstance(v, dict) and v:
            lines += _dotted(v, f"{prefix}{_key(k)}.")
        elif isinstance(v, list) and any(isinstance(x, dict) for x in v):  # arms: one per line
            lines += [f"{prefix}{_key(k)} = [", *(f"  {_value(x)}," for x in v), "]"]
        else:
            lines.append(f"{prefix}{_key(k)} = {_value(v)}")
    return lines


def to_toml(doc: dict) -> str:
    """A grid document as TOML: top-level values, then one [table] each (nested keys dotted)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            lines += ["", f"[{_key(k)}]", *_dotted(v)]
    return "\n".join(lines) + "\n"
