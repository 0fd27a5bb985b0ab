"""Grids without a cluster: parsing, expansion, ids, errors, dispatch (debug/local), status, collect.

The real-SLURM counterparts (job arrays, requeue, DDP across tasks) are in tests/test_slurm.py;
Optuna sweeps (`mhc-bench sweep`, `grid tune`) are in tests/test_sweep.py.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from grid_helpers import cli, metrics, registered, train_reference, write

from harness.core.errors import UserError
from slurm.grid import load_grid
from variants.registry import variant_names

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ROOT / "slurm" / "grids"


TINY = """
    name = "t"
    preset = "tiny"
    [base]
    train.steps = 4
    train.eval_every = 2
    train.checkpoint_every = 2
    train.threads = 1
    train.diag_every = 0
    [axes]
    variant = ["identity", {{ name = "mhc", n_streams = 2 }}]
    seed = [0, 1]
    {extra}
"""


@pytest.fixture
def tiny_grid(tmp_path, data_cache):
    """A 2-variant x 2-seed tiny grid writing under tmp_path; returns (path, common CLI args)."""

    def make(extra="", **fmt):
        path = write(tmp_path, TINY.format(extra=extra, **fmt))
        return path, ["--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}"]

    return make


# ---------------------------------------------------------------------- expansion
def test_smoke_grid_expands_to_the_seven_documented_runs():
    g = load_grid(GRIDS / "smoke.toml")
    assert [r.name for r in g.runs] == ["identity", "hc", "mhc-sk_iters=1", "mhc-sk_iters=20", "mhc-lite",
                                        "mhc-prepost", "mhc-res"]
    by = {r.name: r.cfg.variant for r in g.runs}
    assert by["mhc-sk_iters=1"].sk_iters == 1 and by["mhc-sk_iters=20"].sk_iters == 20
    assert by["mhc-prepost"].fixed == "res" and by["mhc-res"].fixed == "pre,post"
    assert {r.cfg.preset for r in g.runs} == {"tiny"} and len({r.id for r in g.runs}) == 7
    for r in g.runs:  # each run folder lives in the experiment folder, named <name>-<id>
        assert r.path == g.exp_dir / f"{r.name}-{r.id}" and g.exp_dir.name == "smoke"


def test_paper_grids_have_three_seeds_and_the_papers_settings():
    for name in ("main", "table1", "k_sweep", "n_sweep"):
        g = load_grid(GRIDS / f"{name}.toml")
        assert g.preset == "small", name
        cells = {}
        for r in g.runs:
            cells.setdefault(tuple((k, v) for k, v in r.settings.items() if k != "train.seed"), set()).add(r.cfg.train.seed)
        assert all(len(seeds) >= 3 for seeds in cells.values()), name
    main = load_grid(GRIDS / "main.toml")
    assert {r.cfg.variant.name for r in main.runs} == {"identity", "hc", "mhc", "mhc-lite", "kromhc", "frac", "orthostochastic"}
    depth = load_grid(GRIDS / "depth.toml")
    assert {r.cfg.model.n_layer for r in depth.runs} == {2, 4, 8, 16, 32}
    assert {r.cfg.variant.name for r in depth.runs} == set(variant_names())  # every registered variant
    stress = load_grid(GRIDS / "lr_stress.toml")
    assert {r.cfg.model.n_layer for r in stress.runs} == {16} and len({r.cfg.optim.lr for r in stress.runs}) >= 5
    arms = {(r.cfg.variant.name, getattr(r.cfg.variant.opts(), "sk_iters", None), getattr(r.cfg.variant.opts(), "expand", None))
            for r in stress.runs}
    assert {a[0] for a in arms} == set(variant_names())  # every variant, so each has its own best lr (headline_tuned)
    assert {("mhc", 20, "copy"), ("mhc", 1, "copy"), ("mhc", 20, "lss"), ("mhc-lite", None, "lss")} <= arms
    assert len(stress.runs) == len(arms) * len({r.cfg.optim.lr for r in stress.runs}) * 3
    # its rerun of the mHC arms and the seeds study change nothing but what they say they change
    stress_ids = {r.id for r in stress.runs}
    rerun = load_grid(GRIDS / "lr_stress_mhc.toml")
    assert rerun.runs and all(r.id in stress_ids for r in rerun.runs)  # the very same configurations
    assert {r.cfg.variant.name for r in rerun.runs} == {"identity", "mhc"}
    seeds = load_grid(GRIDS / "lr_seeds.toml")
    assert all(r.id in stress_ids for r in seeds.runs if r.cfg.train.seed < 3)  # seeds 0-2 are lr_stress's own runs
    assert {r.cfg.train.seed for r in seeds.runs} == set(range(8)) and {r.cfg.optim.lr for r in seeds.runs} == {1e-2}
    table1 = load_grid(GRIDS / "table1.toml")
    assert {r.cfg.variant.fixed for r in table1.runs if r.cfg.variant.name == "hc"} >= {"pre,post", "post", ""}
    k = load_grid(GRIDS / "k_sweep.toml")
    mhc = [r.cfg.variant for r in k.runs if r.cfg.variant.name == "mhc"]
    assert {v.sk_iters for v in mhc if v.sk_mode == "paper"} == {0, 1, 2, 5, 10, 20}
    assert any(v.sk_mode == "converged" for v in mhc)
    n = load_grid(GRIDS / "n_sweep.toml")
    assert {r.cfg.variant.n_streams for r in n.runs if r.cfg.variant.name == "mhc"} == {1, 2, 4, 8}
    # --preset moves a paper grid to GPUs, as another experiment
    gpu = load_grid(GRIDS / "main.toml", preset="gpt-s")
    assert gpu.name == "main-gpt-s" and {r.cfg.model.d_model for r in gpu.runs} == {512}


def test_run_ids_are_deterministic_config_hashes_independent_of_machine_paths(tmp_path):
    a = load_grid(GRIDS / "smoke.toml")
    b = load_grid(GRIDS / "smoke.toml", runs_dir=tmp_path / "elsewhere")
    assert [r.id for r in a.runs] == [r.id for r in b.runs]
    assert [r.name for r in a.runs] == [r.name for r in b.runs]
    assert a.runs[0].cfg.run.runs_dir != b.runs[0].cfg.run.runs_dir
    # the id changes with anything that changes the numbers
    c = load_grid(GRIDS / "smoke.toml", overrides=["optim.lr=1e-3"])
    assert not {r.id for r in a.runs} & {r.id for r in c.runs}
    assert all(r.cfg.optim.lr == 1e-3 for r in c.runs)


def test_per_variant_sub_axes_only_multiply_their_variant(tmp_path):
    p = write(tmp_path, """
        preset = "tiny"
        [axes]
        variant = ["identity", "mhc", "hc"]
        mhc.sk_iters = [1, 5, 20]
        hc.n = [2, 4]
        seed = [0, 1]
        "optim.lr" = [1e-3]
    """)
    g = load_grid(p)
    names = [r.name for r in g.runs]
    assert len(g.runs) == 2 + 6 + 4
    assert "identity-seed=0" in names and "mhc-sk_iters=5-seed=1" in names and "hc-n_streams=4-seed=0" in names
    assert all(r.cfg.optim.lr == 1e-3 for r in g.runs)
    assert all(r.cfg.variant.options == {} for r in g.runs if r.cfg.variant.name == "identity")  # nothing to sweep there


@pytest.mark.parametrize("body, message", [
    ('preset = "tiny"\n[base]\noptim.lrr = 0.1\n', "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
    ('preset = "tiny"\n[axes]\nsedd = [0, 1]\n', "unknown axis 'sedd' (did you mean 'seed'?)"),
    ('preset = "tiny"\n[axes]\nseed = []\n', "axis train.seed is empty"),
    ('preset = "tiny"\n[axes]\nseed = 3\n', "must be a list"),
    ('preset = "tiny"\n[axes\nseed = [1]\n', "not valid TOML"),
    ('preset = "tiny"\nseeds = [1]\n', "unknown top-level key 'seeds'"),
    ('preset = "tinny"\n', "unknown preset 'tinny' (did you mean 'tiny'?)"),
    ('preset = "tiny"\n[axes]\nvariant = ["mhcc"]\n', "unknown variant 'mhcc' (did you mean 'mhc'?)"),
    ('preset = "tiny"\n[axes]\nvariant = [{ name = "mhc", sk_itters = [1] }]\n', "variant.sk_itters is not an option of 'mhc' (did you mean 'sk_iters'?)"),
    ('preset = "tiny"\n[axes]\nvariant = ["identity"]\nmhc.sk_iters = [1, 2]\n', "no 'mhc' arm in axes.variant"),
    ('preset = "tiny"\n[base]\ntrain.steps = "many"\n', "train.steps expects an integer"),
    ('preset = "tiny"\n[base]\ntrain.steps = 1.5\n', "train.steps expects int"),
    ('preset = "tiny"\n[axes]\nvariant = ["mhc", { name = "mhc", sk_iters = 20 }]\n', "have the same config"),
    ('preset = "tiny"\n[axes]\nvariant = [{ name = "mhc", fixed = "pree" }]\n', "unknown mapping 'pree'"),
    ('preset = "tiny"\n[slurm]\npartion = "gpu"\n', "unknown option 'partion' (did you mean 'partition'?)"),
    ('preset = "tiny"\n[axes]\n"model.n_layr" = [2, 4]\n', "unknown axis 'model.n_layr' (did you mean 'model.n_layer'?)"),
    ('preset = "tiny"\n[axes]\n"model.n_layer" = [2, "four"]\n', "model.n_layer expects an integer, got 'four'"),
    ('preset = "tiny"\n[axes]\n"model.n_layer" = [2, 4.5]\n', "model.n_layer expects int"),
    ('preset = "tiny"\n[axes]\n"optim.lr" = [1e-3, "fast"]\n', "optim.lr expects a number, got 'fast'"),
])
def test_malformed_grid_is_one_line_error_naming_file_and_problem(tmp_path, body, message):
    p = write(tmp_path, body)
    with pytest.raises(UserError) as e:
        load_grid(p, runs_dir=tmp_path / "runs")
    text = str(e.value)
    assert str(p) in text and message in text and "\n" not in text, text
    assert not (tmp_path / "runs").exists()


def test_cli_plan_writes_nothing_and_bad_grid_exits_2(tmp_path, tiny_grid):
    path, args = tiny_grid()
    code, out, _ = cli("plan", path, *args, "--cluster", "slurm", "--gpus-per-node", "1", "--time", "1:30:00")
    assert code == 0
    assert "identity-seed=0" in out and "mhc-n_streams=2-seed=1" in out and "4 runs (4 to train)" in out
    assert "90 min limit" in out and "at most 6.0 GPU-hours" in out and "nothing submitted" in out
    assert not (tmp_path / "runs").exists()
    bad = write(tmp_path, 'preset = "tiny"\n[axes]\nsedd = [1]\n', "bad.toml")
    proc = subprocess.run([sys.executable, "-m", "harness", "grid", "plan", str(bad), "--runs-dir", str(tmp_path / "runs")],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mhc-bench: error: {bad}: axes.sedd: unknown axis"), proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["--tasks-per-node", "2"], "run identity-seed=0: train.grad_accum=1 is not a multiple of the job's 2 processes "
                                "(each trains an equal share of every step's micro-batches): set train.grad_accum=2 and "
                                "train.batch_size=4 (the same 8 sequences per step), or run 1 process"),
    (["--preset", "gpt-s", "--gpus-per-node", "8"], "train.grad_accum=4 is not a multiple of the job's 8 processes"),
    (["--preset", "gpt-s", "--gpus-per-node", "4", "--nodes", "2"], "set train.grad_accum=8 and train.batch_size=16 (the same "
                                                                    "128 sequences per step), or run 4 processes"),
    (["--gpus-per-node", "2", "--tasks-per-node", "1"], "1 process(es) per node with 2 GPU(s) per node: each process drives one "
                                                        "GPU, so 1 GPU(s) would sit idle; ask for --tasks-per-node 2"),
    (["--gpus-per-task", "2"], "1 GPU(s) would sit idle"),
    (["--gpus-per-node", "1", "--tasks-per-node", "2", "--set", "train.grad_accum=2"], "processes would share a GPU; ask for --gpus-per-node 2"),
    (["--gpus-per-node", "1", "--set", "train.device=cpu"], "run identity-seed=0: train.device=cpu but the job asks for 1 GPU(s)"),
    (["--time", "1"], "time limit 1 min (--time or [slurm] time) is not longer than the 90 s before it"),
    (["--preset", "gpt-l", "--mem-gb", "4"], "run identity-seed=0: --mem-gb 4 is below the 4.86 GB its 1 process(es) per node need"),
    (["--max-requeues", "-1"], "max-requeues must be 0 or more, got -1"),
])
def test_plan_and_submit_refuse_resources_the_jobs_could_not_use(tmp_path, tiny_grid, argv, message):
    """What a job would find out only after waiting in the queue is refused by `grid plan` and `grid submit`."""
    path, args = tiny_grid()
    for command in ("plan", "submit"):
        code, out, err = cli(command, path, *args, "--cluster", "slurm", *argv)
        assert code == 2 and out == "" and err.count("\n") == 1 and message in err, (command, out, err)
        assert not (tmp_path / "runs").exists()  # nothing registered, frozen or queued


def test_plan_says_when_a_job_requeues_and_how_often(tmp_path, tiny_grid):
    path, args = tiny_grid()
    code, out, err = cli("plan", path, *args, "--cluster", "slurm", "--time", "2", "--max-requeues", "3")
    assert code == 0 and "requeue: 90 s before its 2 min limit a job checkpoints and requeues itself, at most 3 times" in out, out + err
    code, out, err = cli("plan", path, *args, "--cluster", "local", "--time", "1", "--max-requeues", "9")
    assert code == 0 and "requeue: 30 s before its 1 min limit" in out and "at most 5 times" in out, out + err


def test_slurm_jobs_get_the_signal_lead_and_the_requeue_limit_asked_for(tmp_path, monkeypatch):
    """What the SLURM executor is told (no cluster needed): the sbatch script's signal and submitit's cap."""
    import submitit

    from slurm.dispatch import Resources, make_executor, requeue_limit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))
    ex = make_executor("slurm", tmp_path / "logs", Resources(time=5, max_requeues=3))._executor
    assert ex.max_num_timeout == 3
    script = ex._make_submission_file_text("cmd", "uid")
    assert "#SBATCH --signal=USR2@90" in script and "#SBATCH --time=5" in script
    local = make_executor("local", tmp_path / "logs", Resources(time=5, max_requeues=30))._executor
    assert local.max_num_timeout == requeue_limit("local", Resources(max_requeues=30)) == 5


def test_the_job_refuses_a_world_size_with_the_words_plan_uses(tmp_path, data_cache):
    """The same check (harness.core.config.check_world) inside the job: two local tasks, grad_accum 1, past the plan."""
    from harness.core.config import check_world
    from slurm.dispatch import Dispatcher, Resources, freeze_code

    body = """
        name = "w"
        preset = "tiny"
        [base]
        variant.name = "identity"
        train.steps = 2
        train.threads = 1
    """
    grid, exp = registered(write(tmp_path, body), tmp_path / "runs", f"data.cache_dir={data_cache}")
    with pytest.raises(UserError) as said:
        check_world(grid.runs[0].cfg, 2)
    d = Dispatcher(exp, "local", Resources(tasks_per_node=2), freeze_code(exp))
    [out] = d.wait(d.submit(grid.runs))
    assert out["status"] == "failed" and str(said.value) in out["error"], out
    assert str(said.value) in json.loads((grid.runs[0].path / "status.json").read_text())["error"]
    assert not (grid.runs[0].path / "metrics.parquet").exists()  # refused before training


def test_core_imports_without_submitit_or_optuna():
    code = ("import sys, harness.cli, harness.train.loop, slurm.cli, slurm.grid, slurm.experiment; "
            "bad = [m for m in ('submitit', 'optuna') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------------- dispatch
def test_debug_submit_status_collect_and_resubmit_trains_nothing(tmp_path, tiny_grid):
    path, args = tiny_grid()
    code, out, _ = cli("submit", path, *args, "--cluster", "debug")
    assert code == 0, out
    assert out.count("done ") == 4 and "finished: 4 done" in out
    exp = tmp_path / "runs" / "t"
    man = json.loads((exp / "manifest.json").read_text())
    assert len(man["runs"]) == 4 and len(man["submissions"]) == 1 and (exp / "grid.toml").read_text() == path.read_text()
    folders = sorted(v["folder"] for v in man["runs"].values())
    mtimes = {f: (exp / f / "metrics.parquet").stat().st_mtime_ns for f in folders}

    code, out, _ = cli("status", "t", "--runs-dir", tmp_path / "runs")
    assert code == 0 and out.count(" done ") == 4 and "4/4" in out and "4 done" in out

    code, out, _ = cli("submit", path, *args, "--cluster", "debug")  # resubmission: nothing to train
    assert code == 0 and "nothing to submit" in out and out.count("skip") == 4
    assert {f: (exp / f / "metrics.parquet").stat().st_mtime_ns for f in folders} == mtimes
    assert len(json.loads((exp / "manifest.json").read_text())["submissions"]) == 1

    code, out, _ = cli("collect", exp)
    assert code == 0
    runs = pd.read_parquet(exp / "runs.parquet")
    assert len(runs) == 4 and set(runs.state) == {"done"}
    assert set(runs["variant.name"]) == {"identity", "mhc"} and set(runs["train.seed"]) == {0, 1}
    assert set(runs["variant.n_streams"]) == {0, 2} and (runs["train.steps"] == 4).all()
    assert runs["val_loss"].notna().all() and (runs["env.world_size"] == 1).all()
    merged = pd.read_parquet(exp / "metrics.parquet")
    assert len(merged) == sum(len(metrics(exp / f)) for f in folders)
    assert set(merged.run_id) == set(runs.run_id)
    one = merged[merged.run_id == runs.run_id[0]]
    assert one[one.split == "train"].step.tolist() == [1, 2, 3, 4]
    signals = pd.read_parquet(exp / "signals.parquet")  # per step, and a summary per run
    assert set(signals.run_id) == set(runs.run_id) and {"loss_spike", "grad_spike", "amax_fwd_mean"} <= set(signals.columns)
    assert (runs["signals.loss_spikes"] >= 0).all() and not runs["signals.diverged"].any()
    mhc = runs[runs["variant.name"] == "mhc"]
    assert ((mhc["signals.amax_fwd_final"] - 1).abs() < 1e-3).all()  # doubly stochastic, rows exact
    assert all((exp / f / "signals.parquet").is_file() for f in folders)  # written by training itself


def test_submit_only_trains_the_selected_runs_and_the_experiment_keeps_the_grid(tmp_path, tiny_grid):
    path, args = tiny_grid()
    code, out, err = cli("submit", path, *args, "--cluster", "debug", "--only", "mhc-*-seed=9")
    assert code == 2 and "--only 'mhc-*-seed=9' matches no run of the grid (runs: identity-seed=0" in err, err
    assert not (tmp_path / "runs" / "t").exists()  # nothing registered or written
    code, out, _ = cli("submit", path, *args, "--cluster", "debug", "--only", "mhc-*", "--only", "identity-seed=1")
    assert code == 0 and "finished: 3 done" in out and "not selected by --only: 1 run(s)" in out, out
    rows = {r["name"]: r["state"] for r in json.loads(cli("status", "t", "--runs-dir", tmp_path / "runs", "--json")[1])}
    assert rows == {"identity-seed=0": "pending", "identity-seed=1": "done", "mhc-n_streams=2-seed=0": "done", "mhc-n_streams=2-seed=1": "done"}
    code, out, _ = cli("submit", path, *args, "--cluster", "debug", "--only", "mhc-*")
    assert code == 0 and "nothing to submit: all 2 selected runs are done" in out
    from harness.analysis.table import (
        make_table,  # a table of the part trained says what is missing
    )

    md, _ = make_table(tmp_path / "runs" / "t", "table1", formats=("md",))
    assert "Not started (1): identity-seed=0." in md


def test_local_failed_and_diverged_runs_are_recorded_and_the_rest_goes_on(tmp_path, data_cache):
    # one run cannot find its corpus (fails at job time), one blows up (lr 1e30 -> inf/NaN), one is fine
    path = write(tmp_path, """
        name = "mixed"
        preset = "tiny"
        [base]
        train.steps = 4
        train.threads = 1
        train.diag_every = 0
        [axes]
        variant = [
          { name = "identity", label = "ok" },
          { name = "identity", label = "nan", optim = { lr = 1e30 } },
          { name = "identity", label = "nocorpus", "data.corpus" = "/nonexistent/corpus" },
        ]
    """)
    args = ["--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}"]
    code, out, _ = cli("submit", path, *args, "--cluster", "local", "--parallel", "2")
    assert code == 1, out  # a failed run makes the submission's exit status non-zero ...
    assert "finished: 1 diverged, 1 done, 1 failed" in out  # ... but every run was tried
    rows = {r["name"]: r for r in json.loads(cli("status", "mixed", "--runs-dir", tmp_path / "runs", "--json")[1])}
    assert rows["ok"]["state"] == "done" and rows["ok"]["step"] == 4
    assert rows["nan"]["state"] == "diverged" and "loss became" in rows["nan"]["error"]
    assert rows["nocorpus"]["state"] == "failed" and "corpus not found" in rows["nocorpus"]["error"]
    # a resubmission would retry the failed run only (the diverged one would diverge again)
    from slurm.dispatch import plan_submission
    from slurm.experiment import Experiment

    grid = load_grid(path, runs_dir=tmp_path / "runs", overrides=[f"data.cache_dir={data_cache}"])
    todo, skipped = plan_submission(Experiment(grid.exp_dir), grid.runs)
    assert [r.name for r in todo] == ["nocorpus"]
    assert {r.name: why.split(" ")[0] for r, why in skipped} == {"ok": "done", "nan": "diverged"}


def test_a_job_that_dies_before_training_reports_its_exception_not_its_log_paths(tmp_path):
    """No run folder error (e.g. the process group could not be joined): the job's own exception is shown."""
    submitit = pytest.importorskip("submitit")
    from slurm.dispatch import job_error

    ex = submitit.LocalExecutor(folder=tmp_path / "logs")
    ex.update_parameters(timeout_min=1)
    job = ex.submit(int, "not a number")  # raises in the job's process, like a failed init_process_group
    with pytest.raises(Exception) as info:
        job.results()
    assert str(info.value).rstrip().endswith("_log.out")  # what was shown before: a path, not a reason
    assert job_error(info.value) == "ValueError: invalid literal for int() with base 10: 'not a number'"


def test_rendezvous_port_is_a_function_of_the_job_outside_the_ephemeral_range():
    from slurm.dispatch import MASTER_PORTS, master_port

    ids = [f"{j}_{a}" for j in range(1, 200) for a in range(5)]
    ports = [master_port(i) for i in ids]
    assert ports == [master_port(i) for i in ids]  # every task of a job computes the same port
    assert all(MASTER_PORTS[0] <= p < MASTER_PORTS[1] <= 32768 for p in ports)  # below Linux's 32768-60999
    assert len(set(ports)) > 0.95 * len(ids)  # concurrent jobs on one node rarely meet


def test_local_jobs_run_the_code_frozen_at_submit_time(tmp_path, tiny_grid):
    from slurm.dispatch import Dispatcher, Resources, freeze_code

    path, args = tiny_grid()
    grid, exp = registered(path, tmp_path / "runs", args[-1])
    code = freeze_code(exp)
    assert code.parent == exp.path / "code" and (code / "harness" / "train" / "loop.py").read_bytes() == (ROOT / "harness" / "train" / "loop.py").read_bytes()
    d = Dispatcher(exp, "local", Resources(array_parallelism=2), code)
    outs = d.wait(d.submit(grid.runs[:2]))
    assert [o["status"] for o in outs] == ["done", "done"]
    assert all(o["code"] == str(code) for o in outs)  # the job imported harness from the snapshot
    env = json.loads((grid.runs[0].path / "env.json").read_text())
    assert env["code_snapshot"] == str(code) and "git_commit" in env


def test_snapshot_is_content_addressed_and_unaffected_by_later_edits(tmp_path):
    from slurm.snapshot import freeze

    src = tmp_path / "src"
    (src / "harness").mkdir(parents=True)
    (src / "harness" / "mod.py").write_text("X = 1\n")
    (src / "harness" / "__pycache__").mkdir()
    (src / "harness" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"junk")
    first = freeze(src, tmp_path / "code")
    assert (first / "harness" / "mod.py").read_text() == "X = 1\n" and not (first / "harness" / "__pycache__").exists()
    assert freeze(src, tmp_path / "code") == first  # same code, same copy
    (src / "harness" / "mod.py").write_text("X = 2\n")  # the checkout moves on ...
    second = freeze(src, tmp_path / "code")
    assert second != first and (first / "harness" / "mod.py").read_text() == "X = 1\n"  # ... the frozen copy does not
    assert json.loads((first / "SNAPSHOT.json").read_text())["source"] == str(src)


def test_job_reports_a_run_locked_by_another_process_and_does_not_train_it(tmp_path, tiny_grid, monkeypatch):
    from harness.core.rundir import RunDir
    from slurm.dispatch import RunJob

    path, args = tiny_grid()
    run = load_grid(path, runs_dir=tmp_path / "runs", overrides=[args[-1]]).runs[0]
    holder = RunDir(run.path)
    holder.acquire()  # another process (here: this one, on another file handle) trains it
    monkeypatch.setenv("SUBMITIT_DEBUG_JOB_ID", "DEBUG_1")
    monkeypatch.setattr("slurm.dispatch.LOCK_RETRIES", 2)
    try:
        out = RunJob(run.spec())()
    finally:
        holder.release()
    assert out["status"] == "locked" and "being trained by another process" in out["error"]
    assert not (run.path / "status.json").exists() and not (run.path / "metrics.parquet").exists()
    out = RunJob(run.spec())()  # the lock is free again: it trains
    assert out["status"] == "done" and out["step"] == 4


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_preemption_signal_checkpoints_requeues_and_resumes_exactly(tmp_path, data_cache):
    """A local job gets the pre-emption signal mid-run: it stops at a step boundary, submitit
    calls RunJob.checkpoint() and requeues it (the local controller restarts it), and the
    resumed run is bitwise the uninterrupted one."""
    from slurm.dispatch import Dispatcher, Resources, freeze_code

    body = """
        name = "pre"
        preset = "tiny"
        [base]
        variant.name = "identity"
        train.steps = 60
        train.eval_every = 2
        train.checkpoint_every = 100
        train.threads = 1
        train.diag_every = 0
    """
    grid, exp = registered(write(tmp_path, body), tmp_path / "runs", f"data.cache_dir={data_cache}")
    run = grid.runs[0]
    d = Dispatcher(exp, "local", Resources(), freeze_code(exp))
    [h] = d.submit([run])
    log = run.path / "train.log"
    deadline = time.time() + 120
    while not (log.exists() and "step 10/60" in log.read_text()):
        assert time.time() < deadline and not h.done(), "job never reached step 10"
        time.sleep(0.05)
    [task] = _children(h.job._process.pid)  # the controller's one task: the Python running RunJob
    os.kill(task, signal.SIGUSR2)  # what SLURM sends before the time limit or on pre-emption
    [out] = d.wait([h])
    assert out["status"] == "done" and out["step"] == 60
    text = log.read_text()
    stopped = int(text.split("stopped after step ")[1].split(" ")[0])
    assert 10 <= stopped < 60 and f"stopped after step {stopped} (pre-emption signal)" in text
    assert f"resuming {run.folder} at step {stopped}/60" in text
    assert "Calling checkpoint method" in "".join(p.read_text() for p in (exp.path / "logs").rglob("*_log.out"))

    clean = train_reference(tmp_path, body, data_cache)
    a, b = metrics(clean.run_dir), metrics(run.path)
    assert b[b.split == "train"].step.tolist() == list(range(1, 61))  # none lost, none repeated
    assert a.loss.tolist() == b.loss.tolist()  # bitwise on CPU


def test_a_time_out_past_the_requeue_limit_fails_the_run_and_says_why(tmp_path, data_cache):
    """A local job with a 1-minute limit and no requeues left gets its warning signal: submitit
    will not requeue it, so the run is failed (not left "stopped" for ever), the reason in its
    status, in `grid status` and in the collected runs table; a resubmission resumes it."""
    from slurm.dispatch import Dispatcher, Resources, freeze_code

    body = """
        name = "cap"
        preset = "tiny"
        [base]
        variant.name = "identity"
        train.steps = 5000
        train.eval_every = 10
        train.checkpoint_every = 0
        train.threads = 1
        train.diag_every = 0
    """
    grid, exp = registered(write(tmp_path, body), tmp_path / "runs", f"data.cache_dir={data_cache}")
    run = grid.runs[0]
    d = Dispatcher(exp, "local", Resources(time=1, max_requeues=0), freeze_code(exp))
    [h] = d.submit([run])
    log = run.path / "train.log"
    while not (log.exists() and "step 10/5000" in log.read_text()) and not h.done():
        time.sleep(0.05)
    if not h.done():  # else the time limit's own signal came first (30 s in): the same path
        [task] = _children(h.job._process.pid)
        os.kill(task, signal.SIGUSR2)  # within 10 min of a 1 min limit: submitit counts it as a time-out
    [out] = d.wait([h])
    status = json.loads((run.path / "status.json").read_text())
    step = status["step"]
    assert out["status"] == status["status"] == "failed" and 10 <= step < 5000, (out, status)
    said = f"not requeued: timed-out too many times (max_requeues = 0); stopped at step {step}/5000 with a checkpoint"
    assert status["error"].startswith(said) and out["error"] == status["error"]
    assert (run.path / "checkpoint.pt").exists()  # resumable
    code, text, _ = cli("status", exp.path)
    assert code == 0 and "failed" in text and f"{step}/5000" in text and "not requeued: timed-out too many times" in text
    cli("collect", exp.path)
    row = pd.read_parquet(exp.path / "runs.parquet").iloc[0]
    assert row.state == "failed" and row.error == status["error"]
    from slurm.dispatch import plan_submission

    assert plan_submission(exp, [run])[0] == [run]  # `grid submit` again would resume it


def test_ddp_two_local_tasks_match_a_single_process_run(tmp_path, data_cache):
    """The same multi-process path SLURM takes (submitit tasks -> torch.distributed, gloo on CPU)."""
    from slurm.dispatch import Dispatcher, Resources, freeze_code

    body = """
        name = "ddp"
        preset = "tiny"
        [base]
        variant.name = "mhc"
        train.steps = 6
        train.grad_accum = 2
        train.eval_every = 3
        train.threads = 1
        train.diag_every = 0
    """
    grid, exp = registered(write(tmp_path, body), tmp_path / "runs", f"data.cache_dir={data_cache}")
    d = Dispatcher(exp, "local", Resources(tasks_per_node=2), freeze_code(exp))
    [out] = d.wait(d.submit(grid.runs))
    assert out["status"] == "done" and out["world_size"] == 2
    assert json.loads((grid.runs[0].path / "env.json").read_text())["world_size"] == 2
    single = train_reference(tmp_path, body, data_cache, "one")
    a, b = metrics(single.run_dir), metrics(grid.runs[0].path)
    assert a.step.tolist() == b.step.tolist()  # rank 0 alone wrote the table: no duplicated rows
    # rank r trains micro-batches r, r+2, ...: together exactly the single process's batch
    assert (a.loss - b.loss).abs().max() < 1e-5, (a.loss.tolist(), b.loss.tolist())
    assert a.loss.iloc[-1] < a.loss.iloc[1]


def test_a_run_keeps_its_folder_when_the_grid_grows(tmp_path, data_cache):
    """seed = [0] -> [0, 1] renames run 0 ("identity" -> "identity-seed=0") but it is the same run."""
    one = write(tmp_path, 'name = "grow"\npreset = "tiny"\n[base]\ntrain.steps = 2\ntrain.diag_every = 0\n'
                          '[axes]\nvariant = ["identity"]\nseed = [0]\n')
    args = ["--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}", "--cluster", "debug"]
    assert cli("submit", one, *args)[0] == 0
    one.write_text(one.read_text().replace("seed = [0]", "seed = [0, 1]"))
    code, out, _ = cli("submit", one, *args)
    assert code == 0 and "skip  identity: done" in out and "finished: 1 done" in out, out
    exp = tmp_path / "runs" / "grow"
    assert sorted(p.name.rsplit("-", 1)[0] for p in exp.iterdir() if (p / "status.json").exists()) == ["identity", "identity-seed=1"]


def test_status_and_collect_show_the_latest_version_of_an_edited_grid(tmp_path, data_cache):
    path = write(tmp_path, 'name = "ed"\npreset = "tiny"\n[base]\ntrain.steps = 2\ntrain.diag_every = 0\n')
    args = ["--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}", "--cluster", "debug"]
    assert cli("submit", path, *args)[0] == 0
    path.write_text(path.read_text().replace("train.steps = 2", "train.steps = 3"))  # a new version: new runs
    assert cli("submit", path, *args)[0] == 0
    exp = tmp_path / "runs" / "ed"
    code, out, _ = cli("status", exp)
    assert "3/3" in out and "2/2" not in out and "1 run(s) of earlier versions" in out
    assert "2/2" in cli("status", exp, "--all")[1]
    cli("collect", exp)
    assert pd.read_parquet(exp / "runs.parquet")["train.steps"].tolist() == [3]
    cli("collect", exp, "--all")
    assert sorted(pd.read_parquet(exp / "runs.parquet")["train.steps"]) == [2, 3]
    from harness.analysis.table import (
        make_table,  # tables and reports take the latest version too
    )

    md, files = make_table(exp, "table1", formats=("md", "csv"))
    assert pd.read_csv(files["csv"])["runs"].tolist() == [1]
    assert "Left out, runs of an earlier version of the grid (1): tiny-" in md


def test_a_job_keeps_the_failure_train_recorded_and_survives_a_status_it_cannot_write(tmp_path, monkeypatch):
    from harness.core.rundir import RunDir
    from slurm.dispatch import _record_refusal

    run = RunDir(tmp_path / "r")
    run.path.mkdir()
    run.write_status("failed", error="OSError: no space left on device", step=7, checkpoint_step=5)
    _record_refusal(run, UserError("disk full"))
    assert run.read_status()["checkpoint_step"] == 5 and run.read_status()["error"].startswith("OSError")

    finished = RunDir(tmp_path / "d")
    finished.path.mkdir()
    finished.write_status("diverged", step=176, error="loss became nan at step 176")
    _record_refusal(finished, UserError("unknown config key 'text_field' in saved config"))
    assert finished.read_status()["status"] == "diverged" and finished.read_status()["step"] == 176

    fresh = RunDir(tmp_path / "s")
    fresh.path.mkdir()
    _record_refusal(fresh, UserError("corpus missing"))
    assert fresh.read_status() == {**fresh.read_status(), "status": "failed", "error": "UserError: corpus missing"}

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(RunDir, "write_status", read_only)
    _record_refusal(RunDir(tmp_path / "t"), UserError("corpus missing"))  # no second exception


def test_deep_grids_share_the_headline_setting_with_eight_seeds():
    """headline, table1_deep, k_sweep_deep and headline_long train where the variants separate:
    16 blocks of tiny, peak lr 1e-2, 8 seeds per configuration (the converged Sinkhorn arm 3), and
    differ from the headline only in what they say they change."""
    headline = load_grid(GRIDS / "headline.toml")
    assert {r.cfg.variant.name for r in headline.runs} == set(variant_names())
    assert {r.cfg.variant.name for r in headline.runs if r.cfg.variant.opts().__dict__.get("expand") == "lss"} == {"mhc", "mhc-lite"}
    head_ids = {r.id for r in headline.runs}
    for name in ("headline", "table1_deep", "k_sweep_deep", "headline_long"):
        g = load_grid(GRIDS / f"{name}.toml")
        assert g.preset == "tiny" and {(r.cfg.model.n_layer, r.cfg.optim.lr) for r in g.runs} == {(16, 1e-2)}, name
        cells = {}
        for r in g.runs:
            cells.setdefault(tuple((k, v) for k, v in r.settings.items() if k != "train.seed"), set()).add(r.cfg.train.seed)
        for cell, seeds in cells.items():
            converged = ("variant.sk_mode", "converged") in cell
            assert seeds == set(range(3 if converged else 8)), (name, cell)
    table1 = load_grid(GRIDS / "table1_deep.toml")
    assert {r.cfg.variant.opts().fixed for r in table1.runs if r.cfg.variant.name == "hc"} == {"pre,post", "post", "", "res"}
    repeated = [r for r in table1.runs if r.cfg.variant.name == "identity" or r.cfg.variant.opts().fixed == ""]
    assert len(repeated) == 16 and {r.id for r in repeated} <= head_ids  # the same runs as the headline's
    k_sweep = load_grid(GRIDS / "k_sweep_deep.toml")
    assert {r.cfg.variant.opts().sk_iters for r in k_sweep.runs if r.cfg.variant.name == "mhc"} >= {0, 1, 2, 5, 10, 20}
    tuned = load_grid(GRIDS / "headline_tuned.toml")
    lrs = {}
    for r in tuned.runs:  # one lr per arm (mHC and mHC + LSS are two arms of one variant)
        lrs.setdefault(r.arm.split("-lr=")[0], set()).add(r.cfg.optim.lr)
        assert r.cfg.model.n_layer == 16 and r.cfg.train.steps == 400
    assert all(len(v) == 1 for v in lrs.values()) and lrs["identity"] == {1e-3} and lrs["mhc"] == {3e-3}
    assert set(lrs) == {r.arm for r in headline.runs} and len(tuned.runs) == 8 * len(lrs)  # every headline arm, tuned
    long = load_grid(GRIDS / "headline_long.toml")
    assert {r.cfg.train.steps for r in long.runs} == {1600} and {r.cfg.variant.name for r in long.runs} == {"identity", "mhc", "mhc-lite"}


def test_many_runs_not_started_are_counted_per_configuration_not_listed():
    from harness.analysis.table import NAMED_MISSING, _not_started

    few = [f"identity-seed={s}" for s in range(3)]
    assert _not_started(few) == "Not started (3): identity-seed=0; identity-seed=1; identity-seed=2. `mhc-bench grid submit` trains them."
    many = ([f"mhc-sk_iters={k}-lr=0.01-seed={s}" for k in (20, 1) for s in range(4)]
            + [f"mhc-lite-lss-lr={lr}-seed={s}" for lr in (0.001, 0.01) for s in range(4)])
    assert len(many) > NAMED_MISSING
    note = _not_started(many)
    assert note.startswith("Not started (16): runs of mhc (8), mhc-lite-lss (8).") and "seed=" not in note, note


def test_reuse_from_copies_finished_runs_of_the_same_id_and_trains_only_the_rest(tmp_path, tiny_grid):
    path, args = tiny_grid()
    code, out, _ = cli("submit", path, *args, "--cluster", "debug", "--only", "identity-*")
    assert code == 0 and "finished: 2 done" in out, out
    source = tmp_path / "runs" / "t"
    first = next(source.glob("identity-seed=0-*"))
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    # another experiment of the same grid: the identity's two runs are copies, only mhc trains
    code, out, err = cli("submit", path, *args, "--cluster", "debug", "--experiment", "u", "--reuse-from", "t")
    assert code == 0 and "finished: 2 done" in out and out.count("reused: a copy of t/identity-seed=") == 2, out + err
    copy = tmp_path / "runs" / "u" / first.name
    assert json.loads((copy / "config.json").read_text())["run"]["runs_dir"] == str(tmp_path / "runs" / "u")
    assert json.loads((first / "config.json").read_text())["run"]["runs_dir"] == str(source)  # the source untouched
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before
    pd.testing.assert_frame_equal(metrics(copy), metrics(first))
    assert not list((tmp_path / "runs" / "u").glob(".*reuse*"))  # no temporary folder left
    rows = {r["name"]: r["state"] for r in json.loads(cli("status", "u", "--runs-dir", tmp_path / "runs", "--json")[1])}
    assert set(rows.values()) == {"done"} and len(rows) == 4
    # naming the experiment being submitted, or one that does not exist, is one line and writes nothing
    code, _, err = cli("submit", path, *args, "--cluster", "debug", "--experiment", "v", "--reuse-from", "v")
    assert code == 2 and "experiment folder not found: v" in err and not (tmp_path / "runs" / "v").exists(), err
    code, _, err = cli("submit", path, *args, "--cluster", "debug", "--reuse-from", "t")
    assert code == 2 and "--reuse-from t: that is the experiment being submitted" in err, err


def test_a_stream_scaled_arm_is_labelled_so_and_never_taken_for_the_papers_setting():
    from harness.analysis.table import paper_setting, row_label

    plain = {"variant": {"name": "mhc", "sk_iters": 20}}
    scaled = {"variant": {"name": "mhc", "sk_iters": 20, "expand": "lss"}}
    assert row_label(plain) == "mHC" and paper_setting(plain)
    assert row_label(scaled) == "mHC + LSS" and not paper_setting(scaled)  # even with no plain mHC beside it
    assert row_label({"variant": {"name": "mhc-lite", "expand": "lss", "fixed": "pre,post"}}) == "mHC-lite + LSS: H_res only"
