"""Studies on a real (Son of) Grid Engine (``sudo bash ci/sge-up.sh``): the same study,
job-loss and cancel tests as ``test_slurm.py``, with ``cluster={"kind": "sge", ...}``.

Skipped, with the reason, where ``qstat``/``qsub`` are missing or no queue instance can take
two 1-slot jobs. Each test names its jobs uniquely (``job_name``) so that it sees only its own.
Unlike ``sbatch``, ``qsub`` does not pass the submitting environment to the job, so what the
jobs need (``PYTHONPATH``, the trial log) is exported by the job's ``prologue``.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import runs_of

from hpo_mlops import TrialState
from hpo_mlops.cluster import ClusterError
from hpo_mlops.study import Study

TESTS = Path(__file__).resolve().parent
QUEUE = os.environ.get("SGE_CI_QUEUE", "all.q")
UP = "run sudo bash ci/sge-up.sh"

#: a deleted job stays listed (state ``dr``) for about a second while its processes exit
GONE_WITHIN = 20.0


def _sge_state() -> str | None:
    """None if a Grid Engine queue instance can take two 1-slot jobs here, else why not."""
    missing = [t for t in ("qstat", "qsub", "qdel", "qconf") if shutil.which(t) is None]
    if missing:
        return f"no Grid Engine here ({', '.join(missing)} not found); {UP}"
    try:
        out = subprocess.run(["qstat", "-f", "-q", QUEUE], capture_output=True, text=True,
                             timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"qstat failed ({exc}); {UP}"
    if out.returncode != 0:
        why = (out.stderr.strip() or out.stdout.strip() or "no answer").splitlines()[0]
        return f"Grid Engine is not up ({why}); {UP}"
    slots = 0
    for line in out.stdout.splitlines():
        cols = line.split()
        # all.q@host  BI  0/0/2  0.35  lx-amd64  [states]
        if cols and cols[0].startswith(f"{QUEUE}@") and len(cols) == 5:  # no state letters
            slots += int(cols[2].split("/")[-1])
    if slots < 2:
        return (f"queue {QUEUE} has {slots} usable slots; the tests run two 1-slot jobs at "
                f"once ({UP}, SGE_CI_SLOTS=2)")
    return None


_WHY = _sge_state()
pytestmark = [pytest.mark.sge, pytest.mark.slow, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]


def qjobs(name: str, state: str | None = None) -> list[str]:
    """Ids of the jobs of this name that Grid Engine still lists (any state, or ``state``
    such as ``r``)."""
    out = subprocess.run(["qstat", "-u", "*", "-xml"], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    ids = []
    for job in ET.fromstring(out).iter("job_list"):
        if job.findtext("JB_name") == name and (state is None or job.findtext("state") == state):
            ids.append(job.findtext("JB_job_number"))
    return ids


def gone(name: str, within: float = GONE_WITHIN) -> list[str]:
    """The jobs of ``name`` still listed after waiting up to ``within`` seconds ([] = none)."""
    deadline = time.monotonic() + within
    while (left := qjobs(name)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


@pytest.fixture
def job_name(request):
    """A unique job name per test; any job of that name left at the end is a failure."""
    name = f"hpo-{request.node.name[5:25]}-{uuid.uuid4().hex[:6]}".replace("[", "-").rstrip("]")
    yield name
    left = gone(name, within=5)
    if left:
        subprocess.run(["qdel", "-f", *left], check=False, capture_output=True)
        pytest.fail(f"jobs {left} of {name} were left in the queue")


def sge(job_name: str, log_dir: Path, env: dict[str, str] | None = None, **extra) -> dict:
    """A small SGECluster config: 1-slot jobs that can import the tests' objectives."""
    path = ":".join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    prologue = [f"export PYTHONPATH={shlex.quote(path)}"]
    prologue += [f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    cfg = {"kind": "sge", "queue": QUEUE, "cores": 1, "memory": "1GB", "walltime": "00:10:00",
           "jobs": 2, "job_name": job_name, "log_directory": str(log_dir),
           "worker_timeout": 120, "prologue": prologue}
    cfg.update(extra)
    return cfg


def quick(params, trial):
    time.sleep(0.1)
    return {"loss": (params["x"] - 1) ** 2, "pid": float(os.getpid())}


def logged(params, trial):
    """Writes '<sge job> <trial> <attempt> start|end' lines to $HPO_SGE_LOG; sleeps a while."""
    path = os.environ["HPO_SGE_LOG"]
    job = os.environ.get("JOB_ID", "?")
    with open(path, "a") as fh:
        fh.write(f"{job} {trial.number} {trial.attempt} start\n")
    time.sleep(float(os.environ.get("HPO_SGE_SLEEP", "1")))
    with open(path, "a") as fh:
        fh.write(f"{job} {trial.number} {trial.attempt} end\n")
    return params["x"] ** 2


def fails(params, trial):
    raise ValueError("broken objective")


def test_twenty_trials_on_two_sge_jobs(tmp_path, mlflow_uri, job_name):
    study = Study("sge20", {"x": "uniform(-2, 2)"}, sampler="random", seed=1,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    study.optimize(quick, n_trials=20, cluster=sge(job_name, tmp_path / "logs"))
    assert gone(job_name) == [], "every job of the study leaves the queue"
    assert [t.number for t in study.trials] == list(range(20))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    parents, runs = runs_of(mlflow_uri, "sge20")
    assert len(parents) == 1 and sorted(runs) == list(range(20))
    jobs = {r.data.tags.get("JOB_ID") for r in runs.values()}
    assert None not in jobs and all(j.isdigit() for j in jobs), "every trial ran in a job"
    assert len(jobs) == 2, f"both jobs ran trials: {jobs}"
    for run in runs.values():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["hpo.attempts"] == "1"
    assert not list(Path.cwd().glob(f"{job_name}.*")), "logs go to log_directory"
    assert len(list((tmp_path / "logs").glob(f"{job_name}.o*"))) == 2, "-j y: one log per job"


def test_qdel_of_a_worker_job_mid_study_loses_no_trial(tmp_path, mlflow_uri, job_name):
    log = tmp_path / "trials.log"
    log.touch()
    killed: dict[str, str] = {}

    def delete_a_running_trials_job() -> None:
        """Once trial 2 is running in some job, qdel that job."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            lines = [line.split() for line in log.read_text().splitlines()]
            started = {(j, n) for j, n, a, what in lines if what == "start" and a == "1"}
            ended = {(j, n) for j, n, a, what in lines if what == "end"}
            running = sorted((int(n), j) for j, n in started - ended if int(n) >= 2)
            if running:
                number, job = running[0]
                subprocess.run(["qdel", job], check=True, capture_output=True)
                killed.update(job=job, trial=str(number))
            time.sleep(0.1)

    watcher = threading.Thread(target=delete_a_running_trials_job, daemon=True)
    watcher.start()
    study = Study("sge-qdel", {"x": "uniform(-2, 2)"}, sampler="random", seed=2,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    cfg = sge(job_name, tmp_path / "logs", env={"HPO_SGE_LOG": str(log), "HPO_SGE_SLEEP": "2"})
    study.optimize(logged, n_trials=8, cluster=cfg)
    watcher.join(timeout=5)
    assert killed, "the watcher deleted a job while a trial ran in it"
    assert gone(job_name) == []
    # every trial accounted for, exactly once, and all of them completed
    assert [t.number for t in study.trials] == list(range(8))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    _, runs = runs_of(mlflow_uri, "sge-qdel")
    assert sorted(runs) == list(range(8))
    victim = study.table.records[int(killed["trial"])]
    assert victim.attempts == 2 and runs[victim.number].data.tags["hpo.attempts"] == "2"
    assert victim.tags["JOB_ID"] != killed["job"], "the re-run ran in another job"
    # a trial already handed to the deleted job's worker (queued behind the victim) is
    # re-run too; every re-run trial names the lost worker, every other one ran once
    for t in study.trials:
        assert t.attempts in (1, 2) and ("hpo.lost_workers" in t.tags) == (t.attempts == 2)
    ends = [line.split() for line in log.read_text().splitlines() if line.endswith("end")]
    finished = sorted(int(n) for _, n, _, _ in ends)
    assert set(finished) == set(range(8)) and finished.count(victim.number) == 1, \
        "the deleted attempt never finished; the trial ran to the end once"


def test_a_failing_study_deletes_its_jobs(tmp_path, mlflow_uri, job_name):
    from hpo_mlops import TooManyFailures

    study = Study("sge-fails", {"x": "uniform(-2, 2)"}, sampler="random", seed=3,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    with pytest.raises(TooManyFailures):
        study.optimize(fails, n_trials=10, max_failures=0,
                       cluster=sge(job_name, tmp_path / "logs", jobs=1))
    assert gone(job_name) == []


def test_a_rejected_queue_shows_qsubs_own_message(tmp_path, mlflow_uri, job_name):
    study = Study("sge-bad-queue", {"x": "uniform(-2, 2)"}, sampler="random",
                  scheduler="fifo", tracking_uri=mlflow_uri)
    cfg = sge(job_name, tmp_path / "logs", queue="no-such-queue")
    with pytest.raises(ClusterError) as err:
        study.optimize(quick, n_trials=2, cluster=cfg)
    msg = str(err.value)
    assert msg.startswith("cluster kind 'sge': qsub refused the worker job:"), msg
    assert "no-such-queue" in msg, "qsub's stderr"
    assert "Traceback" not in msg and "Exit code" not in msg
    assert gone(job_name) == []


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
        study = Study("sge-ctrl-c", {"x": "uniform(-1, 1)"}, sampler="random", seed=0,
                      scheduler="fifo", tracking_uri=sys.argv[1])
        print("START", flush=True)
        study.optimize(objective, n_trials=50, cluster=cfg)
""")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_study_deletes_every_job(tmp_path, mlflow_uri, job_name, sig):
    script = tmp_path / "study.py"
    script.write_text(SCRIPT)
    cfg = sge(job_name, tmp_path / "logs")
    mark = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, str(script), mlflow_uri, json.dumps(cfg),
                             str(mark)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(qjobs(job_name, "r")) < 2:
            time.sleep(0.2)
        assert len(qjobs(job_name, "r")) == 2, "both jobs ran"
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
    assert gone(job_name) == [], f"{sig!r} left no job in the queue"
    parents, runs = runs_of(mlflow_uri, "sge-ctrl-c")
    assert parents[0].info.status == "KILLED"
    assert "INTERRUPTED" in {r.data.tags["hpo.state"] for r in runs.values()}
