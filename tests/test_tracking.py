"""The MLflow writer: the direct-SQL batch path writes exactly what MLflow's public API
writes, as MLflow itself reads it back."""

from __future__ import annotations

import math

import pytest

from hpo_mlops import tracking
from hpo_mlops.results import TrialState


def _payload(number: int, state: str = "COMPLETE") -> dict:
    start = 1_700_000_000.25
    return {
        "number": number, "params": {"x": 0.5 * number, "act": "relu", "n": number},
        "state": state, "values": [1.0 / (number + 1)],
        "metrics": {"loss": 1.0 / (number + 1), "acc": 0.9},
        "intermediate": [(1, 2.0), (2, 1.5), (3, float("nan"))],
        "error": "boom" if state == "FAILED" else None, "traceback": None,
        "worker": "tcp://w:1", "host": "h", "start": start, "end": start + 0.5, "attempts": 1,
        "budget": 9, "pruned_step": 3 if state == "PRUNED" else None,
        "tags": {"hpo.bracket": "0", "SLURM_JOB_ID": "42"}, "run_id": None, "jobs": [[9, 3]],
    }


def _view(client, run_id):
    run = client.get_run(run_id)
    hist = [(m.step, m.value if not math.isnan(m.value) else "nan")
            for m in client.get_metric_history(run_id, "loss")]
    tags = {k: v for k, v in run.data.tags.items() if k != "mlflow.parentRunId"}
    return (run.info.status, run.info.run_name, run.info.start_time, run.info.end_time,
            run.data.params, run.data.metrics, tags, sorted(hist, key=repr))


@pytest.mark.parametrize("state", ["COMPLETE", "PRUNED", "FAILED"])
def test_fast_path_writes_what_the_public_api_writes(tmp_path, state):
    from mlflow.tracking import MlflowClient

    views = []
    for fast in (True, False):
        uri = f"sqlite:///{tmp_path}/{fast}.db"
        client = MlflowClient(uri)
        exp = client.create_experiment("e")
        parent = client.create_run(exp).info.run_id
        tracking._fast_path_ok[uri] = fast
        recs = [_payload(i, state) for i in range(3)]
        ids = tracking._write_trials(uri, exp, parent, "study", recs, ["loss"])
        assert tracking._fast_path_ok[uri] is fast, "the fast path did not fall back"
        children = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")
        assert sorted(r.info.run_id for r in children) == sorted(ids)
        views.append([_view(client, i) for i in ids])
    assert views[0] == views[1]
    status = views[0][0][0]
    assert status == tracking.STATUS[TrialState(state)]


def test_a_trial_written_twice_in_one_batch_is_one_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    paused = _payload(7, "PAUSED")
    done = {**_payload(7), "jobs": [[3, 2], [9, 1]]}
    ids = tracking._write_trials(uri, exp, parent, "study", [paused, done], ["loss"])
    assert ids[0] == ids[1]
    later = tracking._write_trials(uri, exp, parent, "study", [{**done, "run_id": None}], ["loss"])
    assert later == ids[:1], "a later batch updates the same run"
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")) == 1
