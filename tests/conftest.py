"""Shared fixtures: a real 2-worker LocalCluster and a real MLflow store in a temp dir."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(scope="session")
def dask_client():
    """One real 2-process LocalCluster for the whole session (start-up costs ~2 s)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def mlflow_uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlflow.db"


def runs_of(uri: str, experiment: str):
    """All MLflow runs of an experiment: (study run, {trial number: run})."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=5000)
    parents = [r for r in runs if r.data.tags.get("hpo.role") == "study"]
    trials = {int(r.data.tags["hpo.trial"]): r for r in runs if "hpo.trial" in r.data.tags}
    assert len(trials) == len(runs) - len(parents), "every non-study run is a trial run"
    return parents, trials
