"""`mhc-bench sweep`: a study per variant arm, pruning on validation loss, failed trials, export of the best."""

import json
import textwrap

import optuna
import pytest
from optuna.trial import TrialState

from slurm.grid import load_grid

SWEEP = """
    name = "sw"
    preset = "tiny"
    [base]
    train.steps = {steps}
    train.eval_every = 2
    train.checkpoint_every = 0
    train.threads = 1
    train.diag_every = 0
    [axes]
    {axes}
    [tune]
    trials = 3
    sampler = "random"
    pruner = {pruner}
    [tune.params]
    "optim.lr" = {{ low = 1e-4, high = 1e-2, log = true }}
"""


def sweep_cli(*argv):
    """`mhc-bench sweep ...` in this process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*map(str, argv)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def sweep_grid(tmp_path, data_cache):
    def make(steps=2, axes='variant = ["identity", { name = "mhc", n_streams = 2 }]', pruner='"none"'):
        path = tmp_path / "sw.toml"
        path.write_text(textwrap.dedent(SWEEP.format(steps=steps, axes=axes, pruner=pruner)))
        return path, ["--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}"]

    return make


def trials(url, name):
    from slurm.sweep import open_storage

    return optuna.load_study(study_name=name, storage=open_storage(url)).get_trials()


def test_a_sweep_tunes_each_variant_and_exports_its_best_as_a_grid(sweep_grid, tmp_path):
    path, args = sweep_grid()
    code, out, err = sweep_cli("sweep", path, *args, "--cluster", "debug")
    assert code == 0, out + err
    assert "estimate: a trial of every arm" in out and "3 trials per arm: about" in out  # the bill, before it starts
    exp = tmp_path / "runs" / "sw"
    best = json.loads((exp / "best.json").read_text())
    assert set(best["variants"]) == {"identity", "mhc-n_streams=2"}
    for arm, b in best["variants"].items():
        assert b["study"] == f"sw/{arm}" and b["trials_finished"] == 3 and 1e-4 <= b["params"]["optim.lr"] <= 1e-2
        assert f"best {arm}: trial {b['trial']}" in out
    runs = json.loads((exp / "manifest.json").read_text())["runs"].values()
    assert sorted(r["name"] for r in runs) == sorted(f"t{i}-{a}" for i in range(3) for a in ("identity", "mhc-n_streams=2"))
    # the exported grid: the same arms, each at its own best learning rate, no [tune]
    exported = load_grid(exp / "best.toml", runs_dir=tmp_path / "runs")
    assert exported.name == "sw-best" and not exported.tune
    assert {r.arm: r.cfg.optim.lr for r in exported.runs} == {a: b["params"]["optim.lr"] for a, b in best["variants"].items()}
    assert f"grid:  {exp / 'best.toml'}" in out
    # a rerun (here through the `grid tune` alias) continues each study; `sweep best` only exports
    code, out, _ = sweep_cli("grid", "tune", path, *args, "--cluster", "debug", "--trials", "4")
    assert code == 0 and "identity trial 3:" in out and "trial 0:" not in out
    out_path = tmp_path / "exported.toml"
    code, out, _ = sweep_cli("sweep", "best", path, *args, "-o", out_path)
    assert code == 0 and "trial" in out and str(out_path) in out and "submitted" not in out
    assert all(b["trials_finished"] == 4 for b in json.loads((exp / "best.json").read_text())["variants"].values())
    assert len(load_grid(out_path).runs) == 2


def test_a_trial_is_pruned_on_its_validation_loss_in_its_job(sweep_grid, tmp_path):
    """Local jobs (subprocesses) open the trial in the shared journal: the first run reports, both ask the pruner."""
    path, args = sweep_grid(steps=6, axes='variant = ["identity"]\nseed = [0, 1]', pruner='{ name = "threshold", upper = 0.0 }')
    code, out, err = sweep_cli("sweep", path, *args, "--cluster", "local", "--trials", "1")
    assert code == 2 and "no trial finished successfully (1 pruned)" in err, out + err
    assert "identity trial 0: pruned at step 2" in out
    [t] = trials(str(tmp_path / "runs" / "sw" / "optuna.journal"), "sw/identity")
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [2]
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "sw").glob("t0-*/status.json")]
    assert [(s["status"], s["step"]) for s in statuses] == [("stopped", 2), ("stopped", 2)]


def test_a_failed_trial_is_marked_failed_with_its_error_in_an_rdb_storage(sweep_grid, tmp_path):
    path, args = sweep_grid(axes='variant = ["identity"]')
    url = f"sqlite:///{tmp_path / 'sweep.db'}"
    code, out, err = sweep_cli("sweep", path, *args, "--set", f"data.corpus={tmp_path / 'missing'}",
                               "--cluster", "local", "--trials", "1", "--storage", url)
    assert code == 2 and "no trial finished successfully (1 fail)" in err, out + err
    [t] = trials(url, "sw/identity")
    assert t.state == TrialState.FAIL and "failed" in t.user_attrs["error"] and "missing" in t.user_attrs["error"]
    assert not (tmp_path / "runs" / "sw" / "optuna.journal").exists()


@pytest.mark.parametrize("pruner, message", [
    ('"mean"', "pruner 'mean'"),
    ('{ name = "median", warmup = 3 }', "pruner median: unknown option 'warmup'"),
    ('{ name = "threshold", upper = "x" }', "upper = 'x' must be a number"),
])
def test_a_bad_pruner_is_one_error_naming_the_file(sweep_grid, tmp_path, pruner, message):
    path, args = sweep_grid(pruner=pruner)
    code, _, err = sweep_cli("sweep", path, *args, "--cluster", "debug")
    assert code == 2 and err.count("\n") == 1 and str(path) in err and message in err, err
    assert not (tmp_path / "runs" / "sw").exists()


def test_sweep_best_without_a_sweep_says_what_to_run(sweep_grid):
    path, args = sweep_grid()
    code, _, err = sweep_cli("sweep", "best", path, *args)
    assert code == 2 and "run `mhc-bench sweep" in err and err.count("\n") == 1, err


def test_two_arms_with_one_label_are_refused(sweep_grid, tmp_path):
    path, args = sweep_grid(axes='variant = [{ name = "mhc", sk_iters = [1] }, { name = "mhc", sk_iters = [20] }]')
    code, _, err = sweep_cli("sweep", path, *args, "--cluster", "debug")
    assert code == 2 and "several arms labelled 'mhc'" in err and str(path) in err, err
    assert not (tmp_path / "runs" / "sw").exists()


def test_a_resumed_sweep_proposes_only_new_points(sweep_grid, tmp_path):
    """3, then 4, then 6 trials: each rerun draws new points (the sampler is not restarted from its seed)."""
    path, args = sweep_grid(axes='variant = ["identity"]')
    outs = []
    for n in (3, 4, 6):
        code, out, err = sweep_cli("sweep", path, *args, "--cluster", "debug", "--trials", n)
        assert code == 0, out + err
        outs.append(out)
    ts = trials(str(tmp_path / "runs" / "sw" / "optuna.journal"), "sw/identity")
    assert [t.number for t in ts] == list(range(6)) and all(t.state == TrialState.COMPLETE for t in ts)
    lrs = [t.params["optim.lr"] for t in ts]
    assert len(set(lrs)) == 6, lrs
    assert all("reused" not in line or "(1 run(s) submitted, 0 reused)" in line
               for out in outs for line in out.splitlines() if " trial " in line and "submitted" in line), outs


def test_a_killed_sweep_loses_no_finished_trial(sweep_grid, tmp_path, monkeypatch):
    """Killed after a trial's run finished but before the study was told; and a trial asked but not yet
    drawn: the rerun tells the first its value without training again, and draws the second's values."""
    path, args = sweep_grid(axes='variant = ["identity"]')

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(optuna.study.Study, "tell", killed)
        code, _, err = sweep_cli("sweep", path, *args, "--cluster", "debug", "--trials", "2")
        assert code == 130 and "interrupted" in err
    journal = str(tmp_path / "runs" / "sw" / "optuna.journal")
    from slurm.sweep import open_storage

    optuna.load_study(study_name="sw/identity", storage=open_storage(journal)).ask()  # killed right after ask()
    assert [t.state for t in trials(journal, "sw/identity")] == [TrialState.RUNNING, TrialState.RUNNING]
    [run0] = (tmp_path / "runs" / "sw").glob("t0-*")
    done = json.loads((run0 / "status.json").read_text())
    assert done["status"] == "done"

    code, out, err = sweep_cli("sweep", path, *args, "--cluster", "debug", "--trials", "2")
    assert code == 0, out + err
    assert "identity trial 0: " in out and "(0 run(s) submitted, 1 reused)" in out
    t0, t1 = trials(journal, "sw/identity")
    assert t0.state == t1.state == TrialState.COMPLETE and t0.value == done["val_loss"]
    assert set(t1.params) == {"optim.lr"} and t1.params != t0.params
    assert (run0 / "train.log").read_text().count("training ") == 1  # trained once, by the killed sweep
    [run1] = (tmp_path / "runs" / "sw").glob("t1-*")
    assert json.loads((run1 / "config.json").read_text())["optim"]["lr"] == t1.params["optim.lr"]


def test_a_sweep_refuses_resources_its_runs_cannot_use_before_anything_is_queued(sweep_grid, tmp_path):
    """The check `grid submit` makes: for the whole sweep when no tuned value bears on it, else per trial."""
    path, args = sweep_grid(axes='variant = ["identity"]')
    code, out, err = sweep_cli("sweep", path, *args, "--cluster", "debug", "--tasks-per-node", "2")
    assert code == 2 and err.count("\n") == 1 and "run t0-identity" not in err, err
    assert "run identity: train.grad_accum=1 is not a multiple of the job's 2 processes" in err
    assert not (tmp_path / "runs" / "sw").exists()

    text = path.read_text().replace('[tune.params]', '[tune.params]\n"train.grad_accum" = { choices = [1, 2] }')
    path.write_text(text)
    code, out, err = sweep_cli("sweep", path, *args, "--cluster", "debug", "--tasks-per-node", "2", "--trials", "4")
    assert code == 0, out + err
    ts = trials(str(tmp_path / "runs" / "sw" / "optuna.journal"), "sw/identity")
    by_accum = {a: [t for t in ts if t.params["train.grad_accum"] == a] for a in (1, 2)}
    assert by_accum[1] and by_accum[2], [t.params for t in ts]
    for t in by_accum[1]:  # failed without a job or a run folder
        assert t.state == TrialState.FAIL and "not a multiple of the job's 2 processes" in t.user_attrs["error"]
        assert f"identity trial {t.number}: " in out and "failed before submission" in out
        assert not list((tmp_path / "runs" / "sw").glob(f"t{t.number}-*"))
    assert all(t.state == TrialState.COMPLETE for t in by_accum[2])
