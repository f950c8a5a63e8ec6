"""Issue 13 item 8: more than one study on one store at once, as users share stores.

Two ``hpo-mlops run`` processes (each its own manager, cluster and writer) start at the same
moment against one store: a sqlite file on a laptop, and what HPC sites run, one
``mlflow server`` backed by a real PostgreSQL (``ci/postgres-up.sh`` starts one; without it
those tests are skipped with the reason). Both must finish with every trial recorded once.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import runs_of
from mlflow_store import MlflowServer, fresh_store
from test_cli import hpo_cmd

N_TRIALS = 12

OBJECTIVE = textwrap.dedent("""
    import time

    def objective(params, trial):
        time.sleep(0.05)
        trial.report(params["x"] ** 2 + 1.0, 1)
        return {"loss": params["x"] ** 2, "aux": params["x"]}
""")


def _pg_uri() -> tuple[str | None, str]:
    """The PostgreSQL URI to test against (``HPO_MLOPS_PG_URI``, else the one
    ``ci/postgres-up.sh`` wrote), or ``None`` and why not."""
    uri = os.environ.get("HPO_MLOPS_PG_URI")
    env_file = Path(os.environ.get("PG_CI_DIR", Path(tempfile.gettempdir()) / "pg-ci")) / "pg-ci.env"
    if not uri and env_file.is_file():
        for line in env_file.read_text().splitlines():
            if line.startswith("PG_CI_URI="):
                uri = line.split("=", 1)[1].strip()
    if not uri:
        return None, ("no PostgreSQL: start one with `sudo bash ci/postgres-up.sh` "
                      "(or set HPO_MLOPS_PG_URI)")
    try:
        import psycopg2
    except ImportError:
        return None, "psycopg2 is not installed (pip install -e '.[test]')"
    try:
        psycopg2.connect(uri, connect_timeout=5).close()
    except psycopg2.Error as exc:
        return None, f"PostgreSQL at {uri} does not answer ({str(exc).strip().splitlines()[0]}); run `sudo bash ci/postgres-up.sh`"
    return uri, ""


def _params(d: Path, name: str, uri: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "obj.py").write_text(OBJECTIVE)
    doc = {
        "study": {"name": name, "n_trials": N_TRIALS, "seed": 0},
        "space": {"x": "uniform(-2, 2)"},
        "sampler": "random",
        "scheduler": "fifo",
        "cluster": {"kind": "local", "n_workers": 1, "threads_per_worker": 2},
        "tracking": {"uri": uri},
        "objective": {"function": "obj.py:objective"},
    }
    p = d / "params.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def _two_runs_at_once(tmp_path: Path, uri: str, prefix: str) -> None:
    """Two `hpo-mlops run` processes on ``uri`` at the same moment; both must finish with
    all their trials recorded once, and their study runs FINISHED."""
    names = [f"{prefix}-a", f"{prefix}-b"]
    env = {**os.environ, "COLUMNS": "120"}
    procs = []
    for name in names:
        d = tmp_path / name
        _params(d, name, uri)
        procs.append(subprocess.Popen([*hpo_cmd(), "run", "params.yaml"], cwd=d, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    for name, proc in zip(names, procs, strict=True):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: exit {proc.returncode}\n{out[-2000:]}\n{err[-3000:]}"
    for name in names:
        parents, trials = runs_of(uri, name)
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", name
        assert sorted(trials) == list(range(N_TRIALS)), (name, sorted(trials))
        assert {r.data.tags["hpo.state"] for r in trials.values()} == {"COMPLETE"}
        assert all(r.data.metrics.get("aux") is not None for r in trials.values())


@pytest.mark.slow
def test_two_cli_runs_share_one_sqlite_store(tmp_path):
    _two_runs_at_once(tmp_path, fresh_store(tmp_path / "shared.db"), "sqlite")


_PG, _PG_WHY = _pg_uri()
postgres = pytest.mark.postgres
needs_pg = pytest.mark.skipif(_PG is None, reason=_PG_WHY)


@pytest.fixture
def pg_server(tmp_path):
    """A real `mlflow server` on the PostgreSQL database (shared between runs, as a
    site's is: the tests use study names of their own)."""
    srv = MlflowServer(tmp_path / "server", store=_PG)
    srv.folder.mkdir(parents=True, exist_ok=True)
    srv.start(timeout=120)
    yield srv
    srv.kill()


@pytest.mark.slow
@postgres
@needs_pg
def test_two_cli_runs_share_one_mlflow_server_on_postgres(tmp_path, pg_server):
    prefix = f"pg-{uuid.uuid4().hex[:8]}"  # the database may be shared between runs
    _two_runs_at_once(tmp_path, pg_server.uri, prefix)
    # the rows are in PostgreSQL itself, not in some file next to the server
    import psycopg2

    conn = psycopg2.connect(pg_server.store, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM runs r JOIN experiments e "
                        "ON r.experiment_id = e.experiment_id WHERE e.name IN (%s, %s)",
                        (f"{prefix}-a", f"{prefix}-b"))
            assert cur.fetchone()[0] == 2 * (N_TRIALS + 1)
    finally:
        conn.close()


@postgres
@needs_pg
def test_a_study_tracks_straight_into_postgres_and_resumes(tmp_path):
    """``tracking_uri=postgresql://...`` without a server (MLflow's SQLAlchemy store): a
    study of 12, then resumed to 16, every trial once."""
    from hpo_mlops import Study

    uri = _PG
    space = {"x": "uniform(-2, 2)"}

    def objective(params, trial):
        return params["x"] ** 2

    cluster = {"kind": "local", "n_workers": 1, "threads_per_worker": 2}
    name = f"pg-direct-{uuid.uuid4().hex[:8]}"  # the database may be shared between runs
    Study(name, space, sampler="random", seed=1, tracking_uri=uri).optimize(
        objective, n_trials=12, cluster=cluster)
    again = Study(name, space, sampler="random", seed=1, tracking_uri=uri)
    again.optimize(objective, n_trials=16, cluster=cluster)
    assert [t.number for t in again.trials] == list(range(16))
    parents, trials = runs_of(uri, name)
    assert sorted(trials) == list(range(16))
    assert len({p.info.run_id for p in parents}) == 1, "resume reuses the study run"
