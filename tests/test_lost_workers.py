"""Every worker lost for good: the study stops after ``cluster.worker_timeout`` with a
message, the trials that were running are recorded as interrupted, and the study resumes."""

from __future__ import annotations

import time

import objectives as obj
import pytest
from conftest import runs_of

from hpo_mlops import TrialState
from hpo_mlops.cluster import ClusterError
from hpo_mlops.study import Study


@pytest.mark.slow  # end to end, over 7 s: keeps the default run under 5 minutes
def test_all_workers_gone_stops_after_worker_timeout_and_resumes(mlflow_uri, tmp_path):
    flag = tmp_path / "close-workers"
    flag.write_text("x")
    objective = obj.closes_its_worker(str(flag))
    cluster = {"kind": "local", "n_workers": 2, "threads_per_worker": 1, "worker_timeout": 3}
    first = Study("all-lost", {"x": "uniform(0, 1)"}, sampler="random", seed=3,
                  tracking_uri=mlflow_uri)
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as err:
        first.optimize(objective, n_trials=10, cluster=cluster)
    took = time.monotonic() - t0
    msg = str(err.value)
    assert "no worker for 3 s" in msg and "all-lost" in msg, msg
    assert took < 60, f"stopped after {took:.0f} s"
    # study.trials lists finished trials; the table holds every trial, interrupted too
    states = {n: t.state for n, t in first.table.records.items()}
    assert {states[n] for n in range(4)} == {TrialState.COMPLETE}
    interrupted = [n for n, s in states.items() if s is TrialState.INTERRUPTED]
    assert interrupted and min(interrupted) >= 4, states
    _, runs = runs_of(mlflow_uri, "all-lost")
    assert {n: r.data.tags["hpo.state"] for n, r in runs.items()} == {
        n: s.value for n, s in states.items()}, "MLflow holds what the study says"

    flag.unlink()
    second = Study("all-lost", {"x": "uniform(0, 1)"}, sampler="random", seed=3,
                   tracking_uri=mlflow_uri)
    second.optimize(objective, n_trials=10, cluster=cluster)
    assert [t.number for t in second.trials] == list(range(10))
    assert {t.state for t in second.trials} == {TrialState.COMPLETE}
    _, after = runs_of(mlflow_uri, "all-lost")
    assert sorted(after) == list(range(10))
    assert all(after[n].info.run_id == runs[n].info.run_id for n in range(4)), (
        "finished trials were not run again")


@pytest.mark.parametrize("bad", [0, -1, "soon", True])
def test_a_bad_local_worker_timeout_names_the_option(bad):
    from hpo_mlops.cluster import LocalClusterFactory
    from hpo_mlops.config import ConfigError

    with pytest.raises(ConfigError, match=r"cluster\.worker_timeout: must be a number of seconds"):
        LocalClusterFactory(worker_timeout=bad)


def test_a_null_local_worker_timeout_waits_for_ever():
    from hpo_mlops.cluster import LocalClusterFactory

    assert LocalClusterFactory(worker_timeout=None).worker_timeout is None
    assert LocalClusterFactory().worker_timeout == 120
