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


_TABLES = ("runs", "tags", "params", "metrics", "latest_metrics")


def _rows(db, parent: str) -> tuple[dict[str, list[tuple]], dict[str, int]]:
    """Every row of the trial runs (not the study run) in the five run tables, each
    column as stored, the run uuids (the trial's, its study run's) replaced by names and
    the artifact URI's store folder cut off; and every other table's row count."""
    import sqlite3

    con = sqlite3.connect(db)
    names = dict(con.execute("select run_uuid, name from runs where run_uuid != ?", (parent,)))
    out = {}
    for table in _TABLES:
        cols = [c[1] for c in con.execute(f"pragma table_info({table})")]
        rows = []
        for row in con.execute(f"select * from {table} where run_uuid != ?", (parent,)):
            rec = dict(zip(cols, row, strict=True))
            uuid = rec.pop("run_uuid")
            rec["run"] = names[uuid]
            if "artifact_uri" in rec:
                rec["artifact_uri"] = rec["artifact_uri"].rsplit("/", 3)[-3:]
                assert rec["artifact_uri"][1] == uuid
                rec["artifact_uri"][1] = "<run>"
            if rec.get("value") == parent:  # mlflow.parentRunId
                rec["value"] = "<study run>"
            rows.append(tuple(sorted((k, repr(v)) for k, v in rec.items())))
        out[table] = sorted(rows)
    others = [t for (t,) in con.execute("select name from sqlite_master where type='table'")
              if t not in _TABLES]
    counts = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in others}
    con.close()
    return out, counts


@pytest.mark.parametrize("state", ["COMPLETE", "PRUNED", "FAILED", "PAUSED", "INTERRUPTED"])
def test_fast_path_writes_every_column_as_the_public_api(tmp_path, state, monkeypatch):
    """Issue 7: the same trials written both ways, every column of every row compared
    (runs, tags, params, metrics, latest_metrics; only the run uuid differs). Caught
    ``user_id=''`` where MLflow writes ``'unknown'``."""
    from mlflow.tracking import MlflowClient
    from mlflow_store import fresh_store

    monkeypatch.setenv("HPO_MLOPS_FAST_PATH", "1")  # this test is what checks a new MLflow
    seen = []
    for fast in (True, False):
        db = tmp_path / f"{fast}.db"
        uri = fresh_store(db)
        client = MlflowClient(uri)
        exp = client.create_experiment("e")
        parent = client.create_run(exp, start_time=1).info.run_id
        tracking._fast_path_ok[uri] = fast
        recs = [_payload(i, state) for i in range(3)]
        recs.append({**_payload(3, state), "intermediate": [], "metrics": {}, "values": None,
                     "params": {"p": "x" * 7000}, "tags": {}, "worker": None, "jobs": []})
        tracking._write_trials(uri, exp, parent, "study", recs, ["loss", "acc"])
        assert tracking._fast_path_ok[uri] is fast
        seen.append(_rows(db, parent))
    (fast_rows, fast_counts), (api_rows, api_counts) = seen
    assert fast_counts == api_counts, "the paths wrote rows in other tables"
    for table in _TABLES:
        assert fast_rows[table], table
        assert fast_rows[table] == api_rows[table], table
    users = {dict(r)["user_id"] for r in fast_rows["runs"]}
    assert users == {"'unknown'"}


def test_fast_path_runs_only_on_the_mlflow_versions_it_was_checked_against(monkeypatch):
    monkeypatch.delenv("HPO_MLOPS_FAST_PATH", raising=False)
    first, after = tracking.FAST_PATH_MLFLOW
    assert tracking._fast_path_allowed(f"{first[0]}.{first[1]}.0")
    assert tracking._fast_path_allowed(f"{first[0]}.{first[1]}.2rc1")
    assert not tracking._fast_path_allowed(f"{after[0]}.{after[1]}.0")
    assert not tracking._fast_path_allowed(f"{first[0]}.{first[1] - 1}.9")
    assert not tracking._fast_path_allowed("4.0.0")
    monkeypatch.setenv("HPO_MLOPS_FAST_PATH", "1")
    assert tracking._fast_path_allowed("4.0.0")
    monkeypatch.setenv("HPO_MLOPS_FAST_PATH", "0")
    assert not tracking._fast_path_allowed(f"{first[0]}.{first[1]}.0")


def test_outside_the_checked_versions_trials_go_through_the_public_api(tmp_path, monkeypatch):
    """With the fast path off (as on an unchecked MLflow) a batch still lands, one run a
    trial, and the fast path is not even tried."""
    from mlflow.tracking import MlflowClient
    from mlflow_store import fresh_store

    monkeypatch.setenv("HPO_MLOPS_FAST_PATH", "0")
    uri = fresh_store(tmp_path / "m.db")
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    tracking._fast_path_ok.pop(uri, None)
    ids = tracking._write_trials(uri, exp, parent, "study", [_payload(i) for i in range(4)],
                                 ["loss"])
    assert uri not in tracking._fast_path_ok, "the fast path was tried"
    assert len(set(ids)) == 4
    assert len(client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent}'")) == 4
