"""The MLflow UI really shows a study: a real `mlflow server` over the store a study wrote,
checked through its REST API, and pages rendered by headless Chromium (Debian `chromium`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import objectives as obj
import pytest
from mlflow_store import fresh_store

from hpo_mlops.study import Study

SPACE = {"x": "uniform(-5, 5)", "act": "choices(['relu', 'tanh'])"}
N_TRIALS = 8
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(dask_client, tmp_path_factory):
    """A study of 8 trials in a fresh store, served by `mlflow server` on 127.0.0.1."""
    d = tmp_path_factory.mktemp("ui")
    uri = fresh_store(d / "mlflow.db")
    cwd = os.getcwd()
    os.chdir(d)  # the experiment's artifacts go to ./mlruns: keep them in the temp dir
    try:
        study = Study("ui-study", SPACE, metric="loss", sampler="random", scheduler="fifo",
                      seed=0, tracking_uri=uri)
        study.optimize(obj.quadratic, n_trials=N_TRIALS, client=dask_client)
    finally:
        os.chdir(cwd)
    port = free_port()
    log = (d / "server.log").open("w")
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", uri, "--default-artifact-root",
         str(d / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=d, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start:\n{(d / 'server.log').read_text()[-3000:]}")
            time.sleep(0.3)
        yield base, study, d
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the workers it started
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)
        log.close()


def api(base: str, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{base}/api/2.0/mlflow/{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.mark.slow  # end to end, over 7 s: keeps the default run under 5 minutes
def test_rest_api_shows_the_study_run_and_its_nested_trials(server):
    base, study, _ = server
    q = urllib.parse.urlencode({"experiment_name": "ui-study"})
    exp = api(base, f"experiments/get-by-name?{q}")["experiment"]
    runs = api(base, "runs/search", {"experiment_ids": [exp["experiment_id"]],
                                     "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    studies = [r for r, t in zip(runs, tags, strict=True) if t.get("hpo.role") == "study"]
    assert len(studies) == 1
    parent = studies[0]["info"]["run_id"]
    trials = {int(t["hpo.trial"]): r for r, t in zip(runs, tags, strict=True)
              if t.get("mlflow.parentRunId") == parent}
    assert sorted(trials) == list(range(N_TRIALS)) and len(runs) == N_TRIALS + 1
    for n, run in trials.items():
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        rec = study.table.records[n]
        assert set(params) == set(SPACE) and params["act"] == rec.params["act"]
        assert float(params["x"]) == pytest.approx(rec.params["x"])
        assert metrics["loss"] == pytest.approx(rec.value) and metrics["aux"] == 1.0
        assert run["info"]["status"] == "FINISHED"
    q = urllib.parse.urlencode({"run_id": trials[0]["info"]["run_id"], "metric_key": "loss"})
    history = api(base, f"metrics/get-history?{q}")["metrics"]
    assert [m["step"] for m in history][:3] == [1, 2, 3], "one point per reported step"
    best = {m["key"]: m["value"] for m in studies[0]["data"]["metrics"]}["best_loss"]
    assert best == pytest.approx(study.best_value)


def screenshot(url: str, png: Path, profile: Path) -> str:
    """Render ``url`` (JavaScript run) into ``png``; returns the DOM it rendered."""
    proc = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1800,1200",
         "--virtual-time-budget=6000", f"--screenshot={png}", "--dump-dom", url],
        capture_output=True, timeout=180)
    assert png.is_file() and png.stat().st_size > 20_000, proc.stderr.decode()[-2000:]
    return proc.stdout.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                    "(Debian: apt-get install -y chromium)")
@pytest.mark.slow
def test_chromium_renders_the_experiment_and_the_trials_side_by_side(server):
    base, study, d = server
    exp = api(base, "experiments/get-by-name?experiment_name=ui-study")["experiment"]
    ids = [t.run_id for t in study.trials]
    pages = {
        # the experiment's runs: the study run (its trials nested under it)
        "experiment": f"{base}/#/experiments/{exp['experiment_id']}/runs",
        # the trials side by side: what a user opens to compare them
        "compare": f"{base}/#/compare-runs?" + urllib.parse.urlencode(
            {"runs": json.dumps(ids), "experiments": json.dumps([exp["experiment_id"]])}),
    }
    shots = Path(os.environ.get("HPO_UI_SCREENSHOTS", d))
    shots.mkdir(parents=True, exist_ok=True)
    import matplotlib.image as mpimg
    import numpy as np

    for name, url in pages.items():
        png = shots / f"mlflow-{name}.png"
        dom = screenshot(url, png, d / f"chromium-profile-{name}")
        pixels = mpimg.imread(png)
        assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 100, \
            f"{name}: the page rendered as a blank image"
        if name == "experiment":
            assert "ui-study" in dom and "Training runs" in dom
        else:
            assert f"Comparing {N_TRIALS} Runs" in dom
            for n in range(N_TRIALS):
                assert f"trial-{n:04d}" in dom
            assert "Parameters" in dom and ">act<" in dom and ">loss<" in dom
