"""The HTTP service (issue 15): a real Service (Dask scheduler, ledger, MLflow on sqlite)
behind a real uvicorn server on 127.0.0.1, clients over real HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hpo_mlops.remote import RemoteError, RemoteStudy
from hpo_mlops.study import Study

SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)"}
#: the CLI as the console script runs it (``-m hpo_mlops.cli`` would be a second module)
HPO = [sys.executable, "-c", "from hpo_mlops.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def objective(params: dict, trial: Any) -> float:
    """Written for Study.optimize: reports, checks pruning, returns the loss."""
    loss = params["x"] ** 2 + params["y"] ** 2
    for step in range(1, 4):
        trial.report(loss + 1.0 / step, step)
        if trial.should_prune():
            return loss + 1.0 / step
    return loss


@contextlib.contextmanager
def served(tmp_path: Path, name: str = "svc", n_trials: int | None = 12,
           scheduler: Any = "fifo", lease: float = 300.0, workers: int = 0,
           objective_fn: Any = None, tls: tuple[str, str] | None = None,
           **study_kw: Any) -> Iterator[dict[str, Any]]:
    """A running service of one study; yields its URL, tokens and the Study."""
    import uvicorn

    from hpo_mlops.service.server import Service, create_app
    from hpo_mlops.service.tokens import TokenStore

    tokens = TokenStore(tmp_path / "tokens.db")
    secret, _ = tokens.create(name, days=1)
    other, _ = tokens.create("another-study", days=1)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = Study(name, space=SPACE, metric="loss", sampler={"name": "random", "seed": 0},
                  scheduler=scheduler, tracking_uri=uri, **study_kw)
    kwargs: dict[str, Any] = {"n_trials": n_trials}
    if objective_fn is not None:
        kwargs["objective"] = objective_fn
    service = Service([(study, kwargs)], tokens, workers=workers, lease=lease, ask_wait=2.0)
    service.start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(
        create_app(service), host="127.0.0.1", port=port, log_level="warning",
        ssl_certfile=tls and tls[0], ssl_keyfile=tls and tls[1]))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    base = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield {"base": base, "url": f"{base}/studies/{name}", "token": secret, "other": other,
               "tokens": tokens, "study": study, "service": service, "uri": uri}
    finally:
        server.should_exit = True
        thread.join(10)
        service.stop()


def api(s: dict, path: str, token: str | None = None, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {token or s['token']}"} if token != "" else {}
    headers.update(kw.pop("headers", {}))
    return requests.post(f"{s['base']}/api/v1/studies/svc/{path}", headers=headers,
                         timeout=30, **kw)


def wait_done(study: Study, n: int, timeout: float = 20) -> None:
    until = time.monotonic() + timeout
    while len(study.table.finished()) < n and time.monotonic() < until:
        time.sleep(0.05)


def test_remote_study_runs_an_unchanged_objective_and_every_trial_is_an_mlflow_run(tmp_path):
    import mlflow

    with served(tmp_path) as s:
        remote = RemoteStudy(s["url"], s["token"], client="laptop")
        ran = remote.optimize(objective)
        wait_done(s["study"], 12)
        best = remote.best()
        trials = remote.trials()
        study = s["study"]
    assert ran == 12  # the client ran until the study was over, then stopped by itself
    assert [t["state"] for t in trials] == ["COMPLETE"] * 12
    assert {t["worker"] for t in trials} == {"http:laptop"}
    assert all([r[0] for r in t["reports"]] == [1, 2, 3] for t in trials)
    assert best["value"] == min(t["value"] for t in trials)
    assert best["value"] == pytest.approx(best["params"]["x"] ** 2 + best["params"]["y"] ** 2)
    # one MLflow run per trial, nested under the study's run, as on Dask
    client = mlflow.MlflowClient(s["uri"])
    exp = client.get_experiment_by_name("svc")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.run_id]
    assert len(children) == 12
    assert sorted(r.data.metrics["loss"] for r in children) == sorted(t["value"] for t in trials)


def test_tokens_missing_revoked_or_of_another_study_are_refused_and_change_nothing(tmp_path):
    with served(tmp_path) as s:
        assert api(s, "ask", token="").status_code == 401
        r = api(s, "ask", token=s["other"])
        assert r.status_code == 403 and "another-study" in r.json()["detail"]
        assert s["token"] not in r.text
        info = [t for t in s["tokens"].list() if t.study == "svc"][0]
        s["tokens"].revoke(info.id)
        r = api(s, "ask")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert s["study"].table.records == {}  # no trial was asked


def test_bad_requests_get_a_4xx_naming_the_field(tmp_path):
    with served(tmp_path) as s:
        job = api(s, "ask", json={"client": "c1"}).json()
        n = job["trial"]
        r = api(s, f"trials/{n}/report", data="{not json",
                headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
        r = api(s, f"trials/{n}/report", json={"value": 1.0})
        assert r.status_code == 422 and "body.step" in r.json()["detail"]
        r = api(s, f"trials/{n}/report", json={"step": "one", "value": 1.0})
        assert r.status_code == 422 and "body.step" in r.json()["detail"]
        r = api(s, f"trials/{n}/report", json={"step": 1, "value": 1.0, "lr": 3})
        assert r.status_code == 422 and "body.lr: unknown field" in r.json()["detail"]
        r = api(s, "trials/99/report", json={"step": 1, "value": 1.0})
        assert r.status_code == 404 and "trial: 99" in r.json()["detail"]
        r = api(s, f"trials/{n}/tell", json={"state": "COMPLETE"})
        assert r.status_code == 422 and "body.value" in r.json()["detail"]
        r = api(s, f"trials/{n}/tell", json={"error": "x" * 70_000, "state": "FAILED"})
        assert r.status_code == 413
        chunked = {"Content-Type": "application/json"}  # a generator body: no Content-Length
        r = api(s, f"trials/{n}/tell", headers=chunked,
                data=iter([b'{"state": "FAILED", "error": "', b"x" * 70_000, b'"}']))
        assert r.status_code == 413
        r = api(s, f"trials/{n}/report", headers=chunked,
                data=iter([b'{"step": 2, ', b'"value": 1.0}']))
        assert r.json() == {"prune": False}
        r = api(s, f"trials/{n}/report", json={"step": 1, "value": 1.0})
        assert r.status_code == 422 and "steps must increase" in r.json()["detail"]
        assert api(s, f"trials/{n}/tell", json={"value": 0.5}).status_code == 200
        r = api(s, f"trials/{n}/report", json={"step": 3, "value": 1.0})
        assert r.status_code == 409 and "has finished" in r.json()["detail"]
        rec = s["study"].table.records[n]
        wait_done(s["study"], 1)
    assert rec.value == 0.5 and rec.intermediate == [(2, 1.0)]  # the refused ones left no trace


def test_a_tell_sent_again_is_recorded_once(tmp_path):
    with served(tmp_path) as s:
        job = api(s, "ask").json()
        body = {"value": 1.25, "job": job["job"]}
        first = api(s, f"trials/{job['trial']}/tell", json=body).json()
        again = api(s, f"trials/{job['trial']}/tell", json=body).json()
        other = api(s, f"trials/{job['trial']}/tell", json={"value": 7.0, "job": job["job"]})
        wait_done(s["study"], 1)
        trials = s["study"].trials
    assert first == {"recorded": True, "duplicate": False, "state": "COMPLETE"}
    assert again == {"recorded": False, "duplicate": True, "state": "COMPLETE"}
    assert other.status_code == 409
    assert [(t.number, t.value) for t in trials] == [(job["trial"], 1.25)]


def test_a_trial_whose_client_vanished_is_asked_again_after_its_lease(tmp_path):
    with served(tmp_path, lease=1.0, n_trials=2) as s:
        first = api(s, "ask", json={"client": "gone"}).json()
        api(s, f"trials/{first['trial']}/report", json={"step": 1, "value": 3.0})
        time.sleep(1.5)  # no report, no tell: the client vanished
        second = api(s, "ask", json={"client": "alive"}).json()
        assert second["trial"] == first["trial"] and second["attempt"] == 2
        assert second["params"] == first["params"]
        r = api(s, f"trials/{first['trial']}/tell", json={"value": 1.0, "job": first["job"]})
        assert r.status_code == 409  # the vanished client's job is over
        ok = api(s, f"trials/{first['trial']}/tell", json={"value": 2.0, "job": second["job"]})
        assert ok.json()["recorded"]
        wait_done(s["study"], 1)
        rec = s["study"].table.records[first["trial"]]
    assert rec.value == 2.0 and rec.attempts == 2 and rec.worker == "http:alive"
    assert rec.tags.get("hpo.leases_expired") == "1"


def test_asha_prunes_http_trials_and_an_over_study_answers_410(tmp_path):
    sched = {"name": "asha", "min_budget": 1, "max_budget": 9, "eta": 3}
    with served(tmp_path, scheduler=sched, n_trials=15) as s:
        remote = RemoteStudy(s["url"], s["token"])

        def climb(params: dict, trial: Any) -> float:
            loss = params["x"] ** 2
            for step in range(1, trial.budget + 1):
                trial.report(loss, step)
                if trial.should_prune():
                    return loss
            return loss

        assert remote.optimize(climb) == 15
        wait_done(s["study"], 15)
        states = [t.state.value for t in s["study"].trials]
        r = api(s, "ask")
    assert states.count("PRUNED") >= 5 and states.count("COMPLETE") >= 1
    assert r.status_code == 410 and "not running" in r.json()["detail"]


def test_http_clients_and_dask_workers_share_one_study(tmp_path):
    def slow(params: dict, trial: Any) -> float:
        time.sleep(0.2)
        return objective(params, trial)

    with served(tmp_path, n_trials=16, workers=1, objective_fn=slow) as s:
        remote = RemoteStudy(s["url"], s["token"], client="remote")
        ran = remote.optimize(slow)
        wait_done(s["study"], 16)
        workers = [t.worker for t in s["study"].trials]
    assert len(workers) == 16 and ran >= 1
    assert sum(w == "http:remote" for w in workers) == ran
    assert sum(w.startswith("tcp://") for w in workers) == 16 - ran >= 1


def test_health_and_openapi_schema_are_published(tmp_path):
    with served(tmp_path) as s:
        health = requests.get(f"{s['base']}/api/v1/health", timeout=10).json()
        schema = requests.get(f"{s['base']}/openapi.json", timeout=10).json()
    assert health["studies"]["svc"]["running"] is True
    paths = set(schema["paths"])
    for op in ("ask", "trials/{number}/report", "trials/{number}/tell", "best", "trials"):
        assert f"/api/v1/studies/{{study}}/{op}" in paths


def test_remote_study_retries_while_the_service_is_unreachable(tmp_path):
    remote = RemoteStudy(f"http://127.0.0.1:{free_port()}/studies/svc", "hpo_x_y",
                         retry_for=1.0)
    start = time.monotonic()
    with pytest.raises(RemoteError, match="cannot reach .* gave up after retrying for 1 s"):
        remote.ask()
    assert time.monotonic() - start >= 0.7  # it retried rather than failing at once


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_https_with_a_certificate(tmp_path):
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    with served(tmp_path, n_trials=3, tls=(cert, key)) as s:
        assert s["base"].startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):  # not a certificate it trusts
            requests.get(f"{s['base']}/api/v1/health", timeout=10)
        ran = RemoteStudy(s["url"], s["token"], verify=cert).optimize(objective)
        wait_done(s["study"], 3)
    assert ran == 3 and len(s["study"].trials) == 3


@pytest.mark.slow
def test_cli_serve_curl_session_then_ctrl_c_interrupts_and_serving_again_resumes(tmp_path):
    """The docs' curl session against `hpo-mlops serve`, then Ctrl-C and a resume."""
    params = tmp_path / "params.yaml"
    params.write_text(json.dumps({
        "study": {"name": "svc", "metric": "loss", "mode": "min", "n_trials": 3},
        "space": SPACE, "sampler": "random", "scheduler": "fifo",
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}}))
    env = {**os.environ, "HPO_MLOPS_TOKENS": str(tmp_path / "tokens.db")}
    made = subprocess.run([*HPO, "token", "create", "svc",
                           "--days", "1"], env=env, capture_output=True, text=True, check=True)
    token = next(w for w in made.stdout.split() if w.startswith("hpo_"))
    port = free_port()

    def start() -> subprocess.Popen:
        proc = subprocess.Popen([*HPO, "serve", str(params),
                                 "--port", str(port)], env=env, cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        until = time.monotonic() + 60
        while time.monotonic() < until:
            with contextlib.suppress(requests.ConnectionError):
                requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
                return proc
            time.sleep(0.2)
        proc.kill()
        raise AssertionError(proc.stdout.read())

    s = {"base": f"http://127.0.0.1:{port}", "token": token}
    proc = start()
    done = api(s, "ask").json()
    api(s, f"trials/{done['trial']}/tell", json={"value": 0.5})
    running = api(s, "ask").json()
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "recorded as interrupted" in out and token not in out
    proc = start()  # serving the same file again resumes: trial 0 kept, the running one again
    again = api(s, "ask").json()
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert again["trial"] == running["trial"] and again["params"] == running["params"]


def test_a_rule_that_copies_checkpoints_between_trials_is_refused(tmp_path):
    from hpo_mlops.errors import ConfigError
    from hpo_mlops.service.server import Service
    from hpo_mlops.service.tokens import TokenStore

    study = Study("pbt", SPACE, sampler="random", tracking=False,
                  scheduler={"name": "pbt", "perturbation_interval": 2, "max_budget": 6})
    with pytest.raises(ConfigError, match="'pbt' .* copies one trial's checkpoint"):
        Service([(study, {"n_trials": 4})], TokenStore(tmp_path / "t.db"))
