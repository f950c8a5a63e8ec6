"""Batch-system clusters from config, without a batch system: job scripts, validation, and
the manager's re-run of trials whose worker died (on a LocalCluster built from config)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from conftest import runs_of

from hpo_mlops import ConfigError, RegistryError, TrialState
from hpo_mlops.cluster import build_cluster, connect, job_script, make_factory
from hpo_mlops.study import Study

KINDS = ["slurm", "pbs", "moab", "sge", "lsf", "oar", "htcondor"]

#: the line each batch system's directives start with (HTCondor writes a submit file)
PREFIX = {"slurm": "#SBATCH", "pbs": "#PBS", "moab": "#PBS", "sge": "#$", "lsf": "#BSUB",
          "oar": "#OAR", "htcondor": ""}


def config(kind: str, **extra):
    cfg = {"kind": kind, "cores": 2, "memory": "4GB", "job_name": "hpo-test",
           "prologue": ["module load cuda/12", "export HPO_MARK=1"],
           "interface": "lo", "local_directory": "/scratch/$USER",
           "lifetime": "55m", "lifetime_stagger": "4m", "resources": {"GPU": 1}}
    if kind == "htcondor":
        cfg.update(disk="1GB", directives={"request_gpus": 1})
    else:
        cfg.update(walltime="01:00:00", queue="gpu")
        cfg["directives"] = {"slurm": ["--gres=gpu:1"], "pbs": ["-l ngpus=1"],
                             "moab": ["-l gpus=1"], "sge": ["-l gpu=1"],
                             "lsf": ['-gpu "num=1"'], "oar": ["-t gpu"]}[kind]
    if kind == "oar":
        cfg["memory_per_core_property_name"] = "not_applicable"
    cfg.update(extra)
    return cfg


@pytest.mark.parametrize("kind", KINDS)
def test_job_script_renders_from_config_for_every_batch_system(kind, tmp_path):
    cfg = config(kind, log_directory=str(tmp_path / "logs"))
    script = job_script(cfg)
    lines = script.splitlines()
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    # dask-worker arguments: lifetime, resources, interface, local directory, one thread each
    assert "--lifetime 3300s --lifetime-stagger 240s" in worker
    assert "--resources GPU=1" in worker and "--interface lo" in worker
    assert "--local-directory /scratch/$USER" in worker
    assert "--nthreads 1 " in worker and "--nworkers 2" in worker, "one process per core"
    assert "<scheduler-address>" in worker, "rendered without starting a scheduler"
    assert not (tmp_path / "logs").exists(), "printing a script creates no directory"
    if kind != "oar":  # dask-jobqueue's OAR script leaves logs to OAR's defaults
        assert str(tmp_path / "logs") in script
    if kind == "htcondor":
        assert "request_gpus = 1" in lines and "MY.DaskWorkerDisk = 1000000000" in lines
        assert "module load cuda/12; export HPO_MARK=1; " in worker, "HTCondor: one command"
        return
    prefix = PREFIX[kind]
    queue = f"{prefix} -p gpu" if kind == "slurm" else f"{prefix} -q gpu"
    gpu = f"{prefix} {cfg['directives'][0]}"
    assert queue in lines and gpu in lines
    assert lines.index(gpu) < lines.index("module load cuda/12") < lines.index(worker), \
        "directives, then the prologue, then the worker"
    assert lines.index("export HPO_MARK=1") == lines.index("module load cuda/12") + 1


def test_slurm_script_has_the_batch_options_by_their_slurm_names():
    lines = job_script(config("slurm", account="proj42")).splitlines()
    for directive in ("#SBATCH -p gpu", "#SBATCH -A proj42", "#SBATCH -t 01:00:00",
                      "#SBATCH --cpus-per-task=2", "#SBATCH --gres=gpu:1", "#SBATCH -J hpo-test"):
        assert directive in lines, directive
    cfg = config("slurm")
    cfg.pop("queue")
    assert "#SBATCH -p debug" in job_script({**cfg, "partition": "debug"}), "partition = queue"
    with pytest.raises(ConfigError, match="give partition or queue, not both"):
        make_factory({**cfg, "partition": "debug", "queue": "gpu"})


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_required_option_names_it_and_the_batch_system(kind):
    cfg = config(kind)
    del cfg["memory"]
    with pytest.raises(ConfigError, match=rf"^cluster\.memory: required for kind '{kind}'"):
        make_factory(cfg)


def test_htcondor_also_needs_disk_and_takes_directives_as_a_mapping():
    cfg = config("htcondor")
    del cfg["disk"]
    with pytest.raises(ConfigError, match=r"cluster\.disk: required for kind 'htcondor'"):
        make_factory(cfg)
    with pytest.raises(ConfigError, match=r"cluster\.directives: for kind 'htcondor' a mapping"):
        make_factory(config("htcondor", directives=["request_gpus = 1"]))


def test_an_unknown_kind_lists_the_registered_ones():
    with pytest.raises(RegistryError) as err:
        make_factory({"kind": "slurmm", "cores": 1, "memory": "1GB"})
    msg = str(err.value)
    assert "unknown cluster kind 'slurmm'" in msg and "did you mean 'slurm'" in msg
    for kind in [*KINDS, "local"]:
        assert kind in msg


def test_unknown_options_are_refused_with_the_likely_name():
    with pytest.raises(ConfigError, match=r"cluster\.quue: unknown option for kind 'slurm' "
                                          r"\(did you mean 'queue'\?\); known: .*walltime"):
        make_factory(config("slurm", quue="gpu"))
    with pytest.raises(ConfigError, match=r"cluster\.account: .*LSF calls it project"):
        make_factory(config("lsf", account="proj"))
    with pytest.raises(ConfigError, match=r"cluster\.walltime: unknown option for kind 'htcondor'"):
        make_factory(config("htcondor", walltime="01:00:00"))


@pytest.mark.parametrize("extra, message", [
    ({"jobs": 0}, r"cluster\.jobs: must be an integer >= 1, got 0"),
    ({"jobs": 2, "adapt": {"maximum": 4}}, r"cluster\.jobs: give jobs .* or adapt"),
    ({"adapt": {"minimum": 3, "maximum": 2}}, r"cluster\.adapt\.minimum: must be <= maximum=2"),
    ({"adapt": {"minimum": 1}}, r"cluster\.adapt\.maximum: required for kind 'slurm'"),
    ({"adapt": {"maximum": 2, "max": 3}}, r"cluster\.adapt\.max: unknown option"),
    ({"memory": "lots"}, r"cluster\.memory: must be a size such as '16GB', got 'lots'"),
    ({"cores": 0}, r"cluster\.cores: must be an integer >= 1"),
    ({"processes": 4}, r"cluster\.processes: at most cores=2"),
    ({"lifetime": "soon"}, r"cluster\.lifetime: must be a duration"),
    ({"lifetime": None, "lifetime_stagger": "2m"}, r"cluster\.lifetime"),
    ({"resources": {"GPU": 0}}, r"cluster\.resources: must map names to amounts > 0"),
    ({"worker_timeout": -1}, r"cluster\.worker_timeout: must be a number of seconds > 0"),
    ({"directives": "--gres=gpu:1", "job_extra_directives": []}, r"give directives or"),
])
def test_bad_values_name_the_option(extra, message):
    cfg = config("slurm", **extra)
    if cfg.get("lifetime") is None:
        cfg.pop("lifetime")
    with pytest.raises(ConfigError, match=message):
        make_factory(cfg)


def test_a_local_cluster_has_no_job_script_and_address_takes_no_options():
    with pytest.raises(ConfigError, match="kind 'local' submits no batch jobs"):
        job_script({"kind": "local"})
    with (pytest.raises(ConfigError, match=r"cluster\.address: .* no other cluster options"),
          connect(cluster={"address": "tcp://127.0.0.1:1", "n_workers": 2})):
        pass


def test_a_batch_cluster_config_leaves_ctrl_c_to_the_manager():
    """Importing dask-jobqueue sets SIGINT to sys.exit(): Ctrl-C would exit 0, silently."""
    code = ("import signal; from hpo_mlops.cluster import make_factory; "
            "make_factory({'kind': 'slurm', 'cores': 1, 'memory': '1GB'}); "
            "import dask_jobqueue; "
            "print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "True"


def test_cluster_config_with_an_address_connects_to_that_scheduler(dask_client):
    with connect(cluster={"address": dask_client.scheduler.address}) as client:
        assert client is not dask_client
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
    assert dask_client.status == "running", "a scheduler we only connected to stays up"


def test_build_cluster_passes_a_ready_object_through(dask_client):
    assert build_cluster(dask_client.cluster) is dask_client.cluster


# -- a worker lost mid-trial: the manager re-runs the trial ----------------------------------
def dies_on_first_attempt(params, trial):
    """Kills its own worker process on trial 1's first attempt."""
    if trial.number == 1 and trial.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"loss": params["x"] ** 2, "attempt": float(trial.attempt)}


def always_dies(params, trial):
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_trial_whose_worker_dies_runs_again_and_is_recorded_once(mlflow_uri):
    study = Study("retry", {"x": "uniform(-1, 1)"}, sampler="random", seed=0,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    # max_concurrent=2 on 2 workers: no trial waits in the dying worker's queue, so only
    # trial 1 is lost (a queued one would be re-sent too, and count an attempt)
    study.optimize(dies_on_first_attempt, n_trials=6, max_concurrent=2,
                   cluster={"kind": "local", "n_workers": 2}, max_retries=2)
    assert [t.number for t in study.trials] == list(range(6))
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
    for t in study.trials:
        want = 2 if t.number == 1 else 1
        assert t.attempts == want and t.metrics["attempt"] == want, t
        assert ("hpo.lost_workers" in t.tags) == (want == 2)
    parents, runs = runs_of(mlflow_uri, "retry")
    assert sorted(runs) == list(range(6)), "one MLflow run per trial, retries included"
    assert {n: r.data.tags["hpo.attempts"] for n, r in runs.items()} == \
        {n: str(2 if n == 1 else 1) for n in range(6)}
    assert parents[0].info.status == "FINISHED"


def test_a_trial_that_keeps_losing_its_worker_fails_after_max_retries(mlflow_uri):
    study = Study("retry-fail", {"x": "uniform(-1, 1)"}, sampler="random", seed=0,
                  scheduler="fifo", tracking_uri=mlflow_uri)
    study.optimize(always_dies, n_trials=1, cluster={"kind": "local", "n_workers": 2},
                   max_retries=1)
    (trial,) = study.trials
    assert trial.state is TrialState.FAILED and trial.attempts == 2
    assert trial.error.startswith("worker lost 2 time(s), more than max_retries=1; "
                                  "last: worker tcp://")
    assert len(trial.tags["hpo.lost_workers"].split(",")) == 2
    _, runs = runs_of(mlflow_uri, "retry-fail")
    assert runs[0].data.tags["hpo.attempts"] == "2" and runs[0].info.status == "FAILED"


def test_max_retries_is_validated():
    study = Study("retry-bad", {"x": "uniform(-1, 1)"}, sampler="random", tracking=False)
    with pytest.raises(ConfigError, match=r"max_retries: must be an integer >= 0, got -1"):
        study.optimize(dies_on_first_attempt, n_trials=1, max_retries=-1)
