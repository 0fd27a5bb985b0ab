"""What a sweep trial's job needs to report to Optuna and be pruned, apart from the sweep itself.

slurm/dispatch.py builds a `PruningHook` inside a job from plain data in the job spec; the
sweep (slurm/sweep.py) submits those jobs through the dispatcher. Both import this module, so
neither imports the other in a circle.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import UserError


def make_pruner(spec: dict):
    import optuna

    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return {"median": optuna.pruners.MedianPruner, "threshold": optuna.pruners.ThresholdPruner,
            "none": optuna.pruners.NopPruner}[spec["name"]](**kwargs)


def open_storage(url: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if "://" not in url:
        if not Path(url).parent.is_dir():
            raise UserError(f"--storage {url}: the folder {Path(url).parent} does not exist")
        return JournalStorage(JournalFileBackend(url))
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # a bad URL, a missing driver, an unreachable server
        raise UserError(f"--storage {url}: cannot open it: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


class PruningHook:
    """`train(..., on_validation=hook)` inside a trial's job: report val loss, ask the pruner.

    Built from plain data in the job spec ({"storage", "study", "trial_id", "report", "pruner"}),
    so it works wherever the job runs, as long as the storage is reachable (shared journal
    file or database). Returns True (stop) when the pruner says so or the trial has ended.
    """

    def __init__(self, spec: dict):
        self.spec, self.pruned, self._trial, self._storage = spec, False, None, None

    def __call__(self, step: int, val_loss: float) -> bool:
        import optuna

        if self._trial is None:
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._storage = open_storage(self.spec["storage"])
            study = optuna.load_study(study_name=self.spec["study"], storage=self._storage,
                                      pruner=make_pruner(self.spec["pruner"]))
            self._trial = optuna.trial.Trial(study, self.spec["trial_id"])
        if self._storage.get_trial(self.spec["trial_id"]).state.is_finished():
            self.pruned = True  # told already (a sibling run was pruned): no use going on
            return True
        if self.spec.get("report"):
            self._trial.report(float(val_loss), int(step))
        self.pruned = self._trial.should_prune()
        return self.pruned
