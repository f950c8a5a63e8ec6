"""Studies on a real Slurm (``bash ci/slurm-up.sh``): trials run inside Slurm
jobs, a cancelled job loses no trial, and the queue holds none of a study's jobs afterwards.

Skipped, with the reason, where ``sinfo``/``sbatch`` are missing or no node is up. Each
test names its jobs uniquely (``job_name``) so that ``squeue -n`` sees only its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import runs_of

from hpo_mlops import TrialState
from hpo_mlops.cluster import ClusterError
from hpo_mlops.study import Study

TESTS = Path(__file__).resolve().parent


def _slurm_state() -> str | None:
    """None if a Slurm node can take jobs here, else why not."""
    missing = [t for t in ("sinfo", "sbatch", "squeue", "scancel") if shutil.which(t) is None]
    if missing:
        return f"no Slurm here ({', '.join(missing)} not found); run bash ci/slurm-up.sh"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed ({exc}); run bash ci/slurm-up.sh"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        why = (out.stderr.strip() or f"node states {states}").splitlines()[0]
        return f"Slurm is not up ({why}); run bash ci/slurm-up.sh"
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True,
                          timeout=15).stdout.split()
    if not any(c.isdigit() and int(c) >= 2 for c in cpus):
        return f"the Slurm node has {cpus} CPUs; the tests run two 1-core jobs at once (SLURM_CI_CPUS=2)"
    return None


_WHY = _slurm_state()
pytestmark = [pytest.mark.slurm, pytest.mark.slow,
              pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def squeue(name: str) -> list[str]:
    """Job ids of this name that Slurm still lists (pending, running or completing)."""
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return out.split()


@pytest.fixture
def job_name(request):
    """A unique job name per test; any job of that name left at the end is a failure."""
    name = f"hpo-{request.node.name[5:25]}-{uuid.uuid4().hex[:6]}"
    yield name
    left = squeue(name)
    if left:
        subprocess.run(["scancel", *left], check=False)
        pytest.fail(f"jobs {left} of {name} were left in the queue")


def slurm(job_name: str, log_dir: Path, **extra) -> dict:
    """A small SLURMCluster config: 1-core jobs that can import the tests' objectives."""
    cfg = {"kind": "slurm", "queue": os.environ.get("SLURM_CI_PARTITION", "debug"),
           "cores": 1, "memory": "1GB", "walltime": "00:10:00", "jobs": 2,
           "job_name": job_name, "log_directory": str(log_dir), "worker_timeout": 120,
           "prologue": [f"export PYTHONPATH={TESTS}:$PYTHONPATH"]}
    cfg.update(extra)
    return cfg


def quick(params, trial):
    time.sleep(0.1)
    return {"loss": (params["x"] - 1) ** 2, "pid": float(os.getpid())}


def logged(params, trial):
    """Writes '<slurm job> <trial> start|end' lines to $HPO_SLURM_LOG; sleeps a while."""
    path = os.environ["HPO_SLURM_LOG"]
    job = os.environ.get("SLURM_JOB_ID", "?")
    with open(path, "a") as fh:
        fh.write(f"{job} {trial.number} {trial.attempt} start\n")
    time.sleep(float(os.environ.get("HPO_SLURM_SLEEP", "1")))
    with open(path, "a") as fh:
        fh.write(f"{job} {trial.number} {trial.attempt} end\n")
    return params["x"] ** 2


def fails(params, trial):
    raise ValueError("broken objective")


def test_twenty_trials_on_two_slurm_jobs(tmp_path, mlflow_uri, job_name):
    study = Study("slurm20", {"x": "uniform(-2, 2)"}, sampler="random", seed=1,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    study.optimize(quick, n_trials=20, cluster=slurm(job_name, tmp_path / "logs"))
    assert squeue(job_name) == [], "every job of the study is gone when optimize returns"
    assert [t.number for t in study.trials] == list(range(20))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    parents, runs = runs_of(mlflow_uri, "slurm20")
    assert len(parents) == 1 and sorted(runs) == list(range(20))
    jobs = {r.data.tags.get("SLURM_JOB_ID") for r in runs.values()}
    assert None not in jobs and all(j.isdigit() for j in jobs), "every trial ran in a job"
    assert len(jobs) == 2, f"both jobs ran trials: {jobs}"
    for run in runs.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["hpo.attempts"] == "1"
    assert not list(Path.cwd().glob("slurm-*.out")), "logs go to log_directory"
    assert len(list((tmp_path / "logs").glob("*.err"))) == 2


def test_scancel_of_a_worker_job_mid_study_loses_no_trial(tmp_path, mlflow_uri, job_name,
                                                          monkeypatch):
    log = tmp_path / "trials.log"
    log.touch()
    monkeypatch.setenv("HPO_SLURM_LOG", str(log))  # sbatch exports it to the jobs
    monkeypatch.setenv("HPO_SLURM_SLEEP", "2")
    killed: dict[str, str] = {}

    def cancel_a_running_trial() -> None:
        """Once trial 2 is running in some job, scancel that job."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            lines = [line.split() for line in log.read_text().splitlines()]
            started = {(j, n) for j, n, a, what in lines if what == "start" and a == "1"}
            ended = {(j, n) for j, n, a, what in lines if what == "end"}
            running = sorted((int(n), j) for j, n in started - ended if int(n) >= 2)
            if running:
                number, job = running[0]
                subprocess.run(["scancel", job], check=True)
                killed.update(job=job, trial=str(number))
            time.sleep(0.1)

    watcher = threading.Thread(target=cancel_a_running_trial, daemon=True)
    watcher.start()
    study = Study("slurm-scancel", {"x": "uniform(-2, 2)"}, sampler="random", seed=2,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    study.optimize(logged, n_trials=8, cluster=slurm(job_name, tmp_path / "logs"))
    watcher.join(timeout=5)
    assert killed, "the watcher cancelled a job while a trial ran in it"
    assert squeue(job_name) == []
    # every trial accounted for, exactly once, and all of them completed
    assert [t.number for t in study.trials] == list(range(8))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    _, runs = runs_of(mlflow_uri, "slurm-scancel")
    assert sorted(runs) == list(range(8))
    victim = study.table.records[int(killed["trial"])]
    assert victim.attempts == 2 and runs[victim.number].data.tags["hpo.attempts"] == "2"
    assert victim.tags["SLURM_JOB_ID"] != killed["job"], "the re-run ran in another job"
    # a trial already handed to the cancelled worker (queued behind the victim) is re-run
    # too; every re-run trial names the lost worker, every other one ran once
    for t in study.trials:
        assert t.attempts in (1, 2) and ("hpo.lost_workers" in t.tags) == (t.attempts == 2)
    ends = [line.split() for line in log.read_text().splitlines() if line.endswith("end")]
    finished = sorted(int(n) for _, n, _, _ in ends)
    assert set(finished) == set(range(8)) and finished.count(victim.number) == 1, \
        "the cancelled attempt never finished; the trial ran to the end once"


def test_a_failing_study_cancels_its_jobs(tmp_path, mlflow_uri, job_name):
    from hpo_mlops import TooManyFailures

    study = Study("slurm-fails", {"x": "uniform(-2, 2)"}, sampler="random", seed=3,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    with pytest.raises(TooManyFailures):
        study.optimize(fails, n_trials=10, max_failures=0,
                       cluster=slurm(job_name, tmp_path / "logs", jobs=1))
    assert squeue(job_name) == []


def test_a_rejected_partition_shows_sbatchs_own_message(tmp_path, mlflow_uri, job_name):
    study = Study("slurm-bad-queue", {"x": "uniform(-2, 2)"}, sampler="random",
                  scheduler="fifo", tracking_uri=mlflow_uri)
    cfg = slurm(job_name, tmp_path / "logs", queue="no-such-partition")
    with pytest.raises(ClusterError) as err:
        study.optimize(quick, n_trials=2, cluster=cfg)
    msg = str(err.value)
    assert msg.startswith("cluster kind 'slurm': sbatch refused the worker job:")
    assert "invalid partition specified: no-such-partition" in msg, "sbatch's stderr"
    assert "Traceback" not in msg and "Exit code" not in msg
    assert squeue(job_name) == []


def test_no_worker_within_the_timeout_fails_clearly_and_cancels_the_jobs(tmp_path, job_name):
    study = Study("slurm-pending", {"x": "uniform(-2, 2)"}, sampler="random",
                  scheduler="fifo", tracking=False)
    cfg = slurm(job_name, tmp_path / "logs", directives=["--begin=now+1hour"],
                worker_timeout=3)
    with pytest.raises(ClusterError, match=r"no worker joined within 3 s") as err:
        study.optimize(quick, n_trials=2, cluster=cfg)
    assert "PENDING (BeginTime)" in str(err.value), "Slurm's view of the waiting jobs"
    assert squeue(job_name) == [], "the waiting jobs were cancelled"
    assert study.trials == []


def test_gpu_style_resources_run_one_trial_at_a_time_per_worker(tmp_path, mlflow_uri, job_name):
    """A 2-core job whose worker declares GPU=1: trials holding GPU=1 never overlap on it."""
    study = Study("slurm-gpu", {"x": "uniform(-2, 2)"}, sampler="random", seed=4,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    cfg = slurm(job_name, tmp_path / "logs", cores=2, processes=1, jobs=1,
                resources={"GPU": 1})
    study.optimize(quick, n_trials=6, cluster=cfg, resources={"GPU": 1})
    spans = sorted((t.start, t.end) for t in study.trials)
    assert len(spans) == 6 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), \
        "with 2 threads but one GPU slot, trials ran one after another"
    assert squeue(job_name) == []


SCRIPT = textwrap.dedent("""
    import json, sys, time
    from hpo_mlops.study import Study

    MARK = sys.argv[3]  # the test waits for this file: a trial is in flight

    def objective(params, trial):
        open(MARK, "a").close()
        time.sleep(1.0)
        return params["x"] ** 2

    if __name__ == "__main__":
        cfg = json.loads(sys.argv[2])
        study = Study("slurm-ctrl-c", {"x": "uniform(-1, 1)"}, sampler="random", seed=0,
                      scheduler="fifo", tracking_uri=sys.argv[1])
        print("START", flush=True)
        study.optimize(objective, n_trials=50, cluster=cfg)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_study_cancels_every_job(tmp_path, mlflow_uri, job_name, sig):
    import json

    script = tmp_path / "study.py"
    script.write_text(SCRIPT)
    cfg = slurm(job_name, tmp_path / "logs")
    mark = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(script), mlflow_uri, json.dumps(cfg),
                             str(mark)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(squeue_running(job_name)) < 2:
            time.sleep(0.2)
        assert len(squeue_running(job_name)) == 2, "both jobs ran"
        # a worker job runs long before its first trial does (the worker starts, connects,
        # imports): wait for a trial to be in flight, not for a fixed time
        while time.monotonic() < deadline + 60 and not mark.exists():
            time.sleep(0.2)
        assert mark.exists(), "a trial started"
        time.sleep(0.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, (out, err[-3000:])
    assert squeue(job_name) == [], f"{sig!r} left no job in the queue"
    parents, runs = runs_of(mlflow_uri, "slurm-ctrl-c")
    assert parents[0].info.status == "KILLED"
    assert "INTERRUPTED" in {r.data.tags["hpo.state"] for r in runs.values()}


def squeue_running(name: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-n", name, "-t", "RUNNING", "-o", "%i"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return out.split()


def test_adaptive_scaling_grows_for_waiting_trials_and_cancels_at_the_end(tmp_path, mlflow_uri,
                                                                          job_name):
    study = Study("slurm-adapt", {"x": "uniform(-2, 2)"}, sampler="random", seed=5,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    cfg = slurm(job_name, tmp_path / "logs", adapt={"minimum": 0, "maximum": 2})
    del cfg["jobs"]
    study.optimize(slow, n_trials=10, cluster=cfg)
    assert {t.state for t in study.trials} == {TrialState.COMPLETE} and len(study.trials) == 10
    jobs = {t.tags.get("SLURM_JOB_ID") for t in study.trials}
    assert None not in jobs and len(jobs) == 2, f"scaled from 0 to 2 jobs: {jobs}"
    assert squeue(job_name) == []


def test_workers_with_a_lifetime_retire_without_losing_trials(tmp_path, mlflow_uri, job_name):
    import dask

    study = Study("slurm-lifetime", {"x": "uniform(-2, 2)"}, sampler="random", seed=6,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    cfg = slurm(job_name, tmp_path / "logs", lifetime="3s", lifetime_stagger="1s")
    # replace a retired job after 1 s instead of 15 (dask's lost-worker-timeout)
    with dask.config.set({"distributed.deploy.lost-worker-timeout": "1s"}):
        study.optimize(slow, n_trials=20, cluster=cfg)
    assert [t.number for t in study.trials] == list(range(20))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    jobs = {t.tags.get("SLURM_JOB_ID") for t in study.trials}
    assert len(jobs) > 2, f"retired jobs were replaced: {jobs}"
    assert squeue(job_name) == []


def slow(params, trial):
    time.sleep(0.5)
    return params["x"] ** 2
