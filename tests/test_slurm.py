"""Grids on a real SLURM: the single-node test cluster of slurm/cluster.sh (slurmctld, slurmd,
slurmdbd + MariaDB, munge). `.ci/run` brings it up and sets MHC_REQUIRE_SLURM=1, so in CI these
tests fail rather than skip when the cluster is missing; elsewhere they skip with the reason.

    bash slurm/cluster.sh up && export SLURM_CONF=/tmp/mhc-bench-slurm/slurm.conf
"""

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from grid_helpers import cli, metrics, submit_one, train_reference, write

pytestmark = pytest.mark.slurm
DEFAULT_CONF = Path(os.environ.get("MHC_SLURM_DIR", "/tmp/mhc-bench-slurm")) / "slurm.conf"


def _reachable() -> tuple[str | None, str]:
    """(SLURM_CONF to use, reason it is unusable or '')."""
    conf = os.environ.get("SLURM_CONF") or (str(DEFAULT_CONF) if DEFAULT_CONF.is_file() else None)
    if shutil.which("sbatch") is None:
        return None, "no sbatch on PATH (bash slurm/cluster.sh up installs and starts the test cluster)"
    env = dict(os.environ, **({"SLURM_CONF": conf} if conf else {}))
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return None, "sinfo timed out"
    if out.returncode != 0 or not re.search(r"idle|mixed|alloc", out.stdout):
        return None, f"no SLURM node ready (sinfo: {(out.stdout + out.stderr).strip()[:200]!r}); run bash slurm/cluster.sh up"
    return conf, ""


@pytest.fixture(autouse=True)
def cancel_leftovers(tmp_path):
    """A failing test must not leave its jobs queued: cancel the ones its experiments recorded."""
    yield
    ids = {j for m in tmp_path.glob("runs/*/manifest.json") for s in json.loads(m.read_text())["submissions"]
           for j in s.get("jobs", {}).values()}
    if ids and shutil.which("scancel"):
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def cluster():
    conf, reason = _reachable()
    if reason:
        if os.environ.get("MHC_REQUIRE_SLURM") == "1":
            pytest.fail(f"MHC_REQUIRE_SLURM=1 but the test cluster is unusable: {reason}")
        pytest.skip(reason)
    with pytest.MonkeyPatch.context() as mp:
        if conf:
            mp.setenv("SLURM_CONF", conf)
        yield conf


def sh(*cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout


def wait_for(pred, timeout: float, what: str, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def job_logs(exp_dir: Path, lines: int = 25) -> str:
    """The tail of every job log of an experiment, for a failing assertion's message."""
    return "".join(f"\n==> {p} <==\n" + "\n".join(p.read_text(errors="replace").splitlines()[-lines:])
                   for p in sorted(Path(exp_dir).glob("logs/**/*_log.*")))


def array_ids(listing: str) -> set[str]:
    """The job ids in a squeue/sacct listing, array elements (123_4, 123_[5-7]) folded to their array."""
    return {j.split("_")[0] for j in listing.split()}


def active_jobs(ids) -> list[str]:
    return sh("squeue", "-h", "-o", "%i", "-j", ",".join(ids)).split() if ids else []


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# ---------------------------------------------------------------------- the tests
def test_job_array_collect_and_resubmissions_never_train_a_run_twice(cluster, tmp_path, data_cache):
    path = write(tmp_path, """
        name = "arr"
        preset = "tiny"
        [base]
        train.steps = 6
        train.eval_every = 3
        train.checkpoint_every = 3
        train.threads = 1
        train.diag_every = 0
        [axes]
        variant = ["identity", { name = "mhc", n_streams = 2 }]
        seed = [0, 1]
        [slurm]
        time = 10
        cpus_per_task = 1
        mem_gb = 2
    """)
    args = ["--runs-dir", tmp_path / "runs", "--set", f"data.cache_dir={data_cache}", "--cluster", "slurm"]
    code, out, _ = cli("submit", path, *args)
    assert code == 0, out
    first = re.search(r"as SLURM job array (\d+)", out).group(1)
    # a second submission right away, forced past the "already queued" check: the run locks
    # must still keep every run to one training
    code, out2, _ = cli("submit", path, *args, "--force")
    assert code == 0
    second = re.findall(r"as SLURM job array (\d+)", out2)
    assert second, out2  # at most 2 of the 4 runs can have started (2 CPUs): twins were queued
    # a third, not forced: every run is queued, running or done, so nothing is submitted
    code, out3, _ = cli("submit", path, *args)
    assert code == 0 and "nothing to submit" in out3, out3

    jobs = [first, *second]
    wait_for(lambda: not active_jobs(jobs), 240, f"jobs {jobs} to finish", every=1.0)
    exp = tmp_path / "runs" / "arr"
    man = json.loads((exp / "manifest.json").read_text())
    assert len(man["runs"]) == 4
    assert [s["cluster"] for s in man["submissions"]] == ["slurm"] * len(jobs)
    assert {j.split("_")[0] for j in man["submissions"][0]["jobs"].values()} == {first}  # one array
    expected = sorted(f"{first}_{i}|COMPLETED" for i in range(4))  # accounting lags the queue a little
    wait_for(lambda: sorted(sh("sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", first).split()) == expected,
             30, f"sacct to show {expected}", every=0.5)
    for info in man["runs"].values():
        run = exp / info["folder"]
        log = _text(run / "train.log")
        assert log.count(f"training {info['folder']} at step 0/6") == 1 and "resuming" not in log, log
        assert metrics(run).query("split == 'train'").step.tolist() == list(range(1, 7))
        code_dir = Path(json.loads((run / "env.json").read_text())["code_snapshot"])  # the frozen copy ran
        assert code_dir.parent == exp / "code" and str(code_dir) == man["submissions"][0]["code"]
    import submitit

    for job_id in man["submissions"][1]["jobs"].values():  # the forced twins trained nothing:
        out = submitit.SlurmJob(folder=exp / "logs" / "%j", job_id=job_id).results()[0]
        assert out["status"] in ("done", "locked"), out  # they found their run done, or locked

    code, out, _ = cli("status", exp)
    assert code == 0 and out.count(" done ") == 4 and "COMPLETED" in out
    code, out, _ = cli("collect", exp)
    runs = pd.read_parquet(exp / "runs.parquet")
    assert len(runs) == 4 and set(runs.state) == {"done"} and set(runs["variant.name"]) == {"identity", "mhc"}
    assert len(pd.read_parquet(exp / "metrics.parquet")) == sum(len(metrics(exp / f)) for f in runs.folder)

    known = set(jobs) | array_ids(sh("sacct", "-n", "-X", "-o", "JobID"))
    code, out, _ = cli("submit", path, *args)  # everything is done: nothing is queued
    assert code == 0 and "nothing to submit" in out and out.count("done at step 6") == 4
    # no new job: squeue knows a submission at once (sacct's accounting may lag behind it,
    # so array elements of the earlier jobs may still appear there: compare job ids, not rows)
    assert array_ids(sh("squeue", "-h", "-o", "%i") + sh("sacct", "-n", "-X", "-o", "JobID")) <= known


def test_requeued_run_resumes_to_the_uninterrupted_runs_exact_loss(cluster, tmp_path, data_cache):
    """Pre-empted twice: SLURM's warning signal (submitit checkpoints and requeues the job),
    then `scontrol requeue`. The final run is bitwise the uninterrupted one."""

    body = """
        name = "rq"
        preset = "tiny"
        [base]
        variant.name = "identity"
        train.steps = 150
        train.eval_every = 2
        train.checkpoint_every = 100
        train.threads = 1
        train.diag_every = 0
        [slurm]
        time = 10
        cpus_per_task = 1
    """
    code, out, run = submit_one(tmp_path, body, data_cache, "--cluster", "slurm")
    assert code == 0, out
    job = re.search(r"as SLURM job array (\d+)", out).group(1)
    log = run.path / "train.log"

    def last_step() -> int:  # validation lines come every 2 steps: compare, never match one number
        return max((int(n) for n in re.findall(r"step (\d+)/150", _text(log))), default=0)

    wait_for(lambda: last_step() >= 10, 120, "step 10")
    sh("scancel", "--signal=USR2", job)  # what SLURM sends 90 s before the time limit, and on pre-emption
    wait_for(lambda: "resuming" in _text(log), 120, "the requeued job to resume")
    first_stop = int(re.search(r"stopped after step (\d+) \(pre-emption signal\)", _text(log)).group(1))
    wait_for(lambda: last_step() >= first_stop + 10 or "done:" in _text(log), 120, "progress after resuming")
    assert "done:" not in _text(log), "the run finished before the second interruption; make it longer"
    sh("scontrol", "requeue", job)  # an administrator's requeue: SIGTERM, then the job runs again
    clean = train_reference(tmp_path, body, data_cache)
    wait_for(lambda: "done:" in _text(log), 240, "the run to finish")

    text = _text(log)
    stops = [int(s) for s in re.findall(r"stopped after step (\d+) \(pre-emption signal\)", text)]
    assert len(stops) == 2 and 10 <= stops[0] < stops[1] < 150, text
    for s in stops:
        assert f"resuming {run.folder} at step {s}/150" in text
    attempts = sh("sacct", "-n", "-D", "-X", "-P", "-o", "State", "-j", job).split()
    assert attempts.count("REQUEUED") == 2, attempts
    submitit_log = "".join(p.read_text() for p in (run.path.parent / "logs").rglob("*_log.out"))
    assert "Calling checkpoint method" in submitit_log and f"Requeued job {job}" in submitit_log

    a, b = metrics(clean.run_dir), metrics(run.path)
    assert b.query("split == 'train'").step.tolist() == list(range(1, 151))  # no step lost or repeated
    assert a.loss.tolist() == b.loss.tolist()  # bitwise: CPU fp32 is reproducible
    assert json.loads((run.path / "status.json").read_text())["val_loss"] == clean.val_loss


def test_a_job_out_of_requeues_fails_its_run_with_the_reason(cluster, tmp_path, data_cache):
    """--max-requeues 0: SLURM's warning signal within 10 min of a 10 min limit is a time-out
    submitit will not requeue: the job ends FAILED and the run says why (it used to stay "stopped")."""
    body = """
        name = "cap"
        preset = "tiny"
        [base]
        variant.name = "identity"
        train.steps = 3000
        train.eval_every = 2
        train.checkpoint_every = 0
        train.threads = 1
        train.diag_every = 0
        [slurm]
        time = 10
        cpus_per_task = 1
        max_requeues = 0
    """
    code, out, run = submit_one(tmp_path, body, data_cache, "--cluster", "slurm")
    assert code == 0, out
    job = re.search(r"as SLURM job array (\d+)", out).group(1)
    log = run.path / "train.log"
    wait_for(lambda: re.search(r"step (\d\d+)/3000", _text(log)), 120, "step 10")
    sh("scancel", "--signal=USR2", job)  # what SLURM sends 90 s before the time limit
    wait_for(lambda: not active_jobs([job]), 120, "the job to end", every=0.5)
    status = json.loads((run.path / "status.json").read_text())
    assert status["status"] == "failed", (status, job_logs(run.path.parent))
    assert status["error"].startswith(f"not requeued: timed-out too many times (max_requeues = 0); stopped at step {status['step']}/3000")
    assert "Requeued job" not in job_logs(run.path.parent, lines=200)
    wait_for(lambda: "FAILED" in sh("sacct", "-n", "-X", "-P", "-o", "State", "-j", job), 30, "sacct to say FAILED", every=0.5)
    code, text, _ = cli("status", run.path.parent)
    assert code == 0 and "failed" in text and "FAILED" in text and "not requeued: timed-out too many times" in text


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_task_job_trains_data_parallel_and_matches_a_single_process_run(cluster, tmp_path, data_cache, parallel):
    """DDP replicates, FSDP shards (tests/test_fsdp.py has its checkpoint and resume checks)."""
    body = f"""
        name = "{parallel}"
        preset = "tiny"
        [base]
        variant.name = "mhc"
        variant.n_streams = 2
        train.steps = 6
        train.grad_accum = 2
        train.eval_every = 3
        train.threads = 1
        train.diag_every = 0
        train.parallel = "{parallel}"
        [slurm]
        time = 10
        cpus_per_task = 1
    """
    code, out, run = submit_one(tmp_path, body, data_cache, "--cluster", "slurm", "--tasks-per-node", "2", "--wait")
    assert code == 0 and "finished: 1 done" in out, out + job_logs(run.path.parent)
    env = json.loads((run.path / "env.json").read_text())
    assert env["world_size"] == 2 and env["parallel"] == parallel and env["SLURM_JOB_ID"]
    assert int(env["MASTER_PORT"]) < 32768  # the rendezvous stays out of the kernel's ephemeral ports
    logs = sorted(p.name for p in (run.path.parent / "logs").rglob("*_log.out"))
    assert any("_0_log" in n for n in logs) and any("_1_log" in n for n in logs)  # two tasks ran
    single = train_reference(tmp_path, body, data_cache, "one")
    a, b = metrics(single.run_dir), metrics(run.path)
    assert a.step.tolist() == b.step.tolist()  # rank 0 alone wrote: no duplicated rows
    # tolerance for the different order of floating-point sums (an all-reduce); in practice exact
    assert (a.loss - b.loss).abs().max() < 1e-5, (a.loss.tolist(), b.loss.tolist())
