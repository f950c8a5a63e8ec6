"""The default DVC pipeline end to end, in a fresh copy of the repository (git init there;
never in the working tree): offline `dvc repro` without a remote, a no-op re-run, a rerun
from `search` after a search parameter changed, `dvc exp run -S`, metrics and plots, and
the MLflow runs tagged with the git commit and the data hash from dvc.lock."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,  # a fresh repo and dvc repro: about 80 s together
              pytest.mark.skipif(shutil.which("dvc") is None or shutil.which("git") is None,
                                 reason="needs dvc and git on PATH")]
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@x",
       "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@x", "COLUMNS": "120"}


def sh(*cmd: str, cwd: Path, timeout: float = 400) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def without_ensemble(stages: list[str]) -> list[str]:
    """The stages but ``ensemble`` (DVC may run it anywhere after ``search``)."""
    return [s for s in stages if s != "ensemble"]


def logged(client, exp, name: str) -> list:
    """The experiment's logged models called ``name`` ("model": train_best's)."""
    return [m for m in client.search_logged_models([exp.experiment_id]) if m.name == name]


def lock_hash(repo: Path, path: str = "data/prepared") -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == path)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """The project's files (tracked and new, not ignored) in a new git repo, study smaller."""
    dest = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = dest / "params.yaml"
    params.write_text(params.read_text().replace("n_trials: 30", "n_trials: 6"))
    sh("git", "init", "-q", cwd=dest)
    if not (dest / ".dvc").is_dir():
        sh("dvc", "init", "-q", cwd=dest)
    sh("git", "add", "-A", cwd=dest)
    sh("git", "commit", "-qm", "fresh clone", cwd=dest)
    return dest


@pytest.fixture(scope="module")
def reproduced(repo: Path) -> tuple[Path, str]:
    return repo, sh("dvc", "repro", cwd=repo)


def test_repro_runs_the_whole_pipeline_offline(reproduced):
    repo, out = reproduced
    assert without_ensemble(ran(out)) == ["prepare", "search", "train_best", "evaluate"]
    assert "ensemble" in ran(out)
    assert (repo / "models" / "model.pkl").is_file()
    report = json.loads((repo / "results" / "search" / "report.json").read_text())
    assert report["n_trials"] == 6 and report["complete"] >= 1
    metrics = json.loads((repo / "results" / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] > 0.85 and metrics["n_test"] == 360
    assert not sh("dvc", "remote", "list", cwd=repo).strip(), "no remote is configured"


def test_every_mlflow_run_points_to_the_commit_and_the_data(reproduced):
    from mlflow.tracking import MlflowClient

    repo, _ = reproduced
    commit = sh("git", "rev-parse", "HEAD", cwd=repo).strip()
    data = lock_hash(repo)
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("digits")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len(runs) == 7, "the study run and its 6 trials"
    for run in runs:
        assert run.data.tags["mlflow.source.git.commit"] == commit, run.info.run_name
        assert run.data.tags["dvc.data_hash"] == data, run.info.run_name
        assert run.data.tags["dvc.data.data/prepared"] == data
    study = next(r for r in runs if r.data.tags.get("hpo.role") == "study")
    assert study.data.metrics["test_accuracy"] > 0.85
    plots = {a.path for a in client.list_artifacts(study.info.run_id, "plots")}
    assert "plots/history.png" in plots and "plots/learning_curves.png" in plots
    models = logged(client, exp, "model")
    assert len(models) == 1 and models[0].source_run_id == study.info.run_id
    assert models[0].tags["mlflow.source.git.commit"] == commit
    assert models[0].tags["dvc.data_hash"] == data
    version = client.get_model_version_by_alias("digits", "champion")
    report = json.loads((repo / "results" / "search" / "report.json").read_text())
    assert int(version.version) == 1 and version.run_id == study.info.run_id
    assert version.tags["mlflow.source.git.commit"] == commit
    assert version.tags["dvc.data_hash"] == data
    assert version.tags["hpo.study_run_id"] == study.info.run_id
    assert version.tags["hpo.best_trial"] == str(report["best_trial"])


def test_forced_train_best_with_nothing_changed_registers_no_new_version(reproduced):
    from mlflow.tracking import MlflowClient

    repo, _ = reproduced
    out = sh("dvc", "repro", "-f", "-s", "train_best", cwd=repo)
    assert ran(out) == ["train_best"] and "unchanged, re-used digits version 1" in out
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    assert [int(v.version) for v in client.search_model_versions("name = 'digits'")] == [1]
    exp = client.get_experiment_by_name("digits")
    assert len(logged(client, exp, "model")) == 1, "nothing logged again"


def test_ensemble_stage_writes_its_metrics_and_a_pyfunc_model_mlflow_loads(reproduced):
    import pickle

    import mlflow.pyfunc
    import numpy as np
    from mlflow.tracking import MlflowClient

    repo, _ = reproduced
    metrics = json.loads((repo / "results" / "ensemble" / "metrics.json").read_text())
    chosen = json.loads((repo / "results" / "ensemble" / "ensemble.json").read_text())
    assert metrics["accuracy"] > 0.85 and metrics["best_single_accuracy"] > 0.85
    assert metrics["val_log_loss"] <= metrics["best_single_val_log_loss"] + 1e-9
    assert len(chosen["members"]) == metrics["n_members"] and sum(chosen["weights"]) == \
        pytest.approx(1)
    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("digits")
    (model,) = logged(client, exp, "ensemble")
    report = json.loads((repo / "results" / "search" / "report.json").read_text())
    assert model.source_run_id == report["study_run_id"]
    with np.load(repo / "data" / "prepared" / "test.npz") as f:
        X = f["X"]
    local = pickle.loads((repo / "models" / "ensemble.pkl").read_bytes())
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlflow.db")  # models:/ resolves through it
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{model.model_id}")
    finally:
        mlflow.set_tracking_uri(before)
    assert np.allclose(loaded.predict(X), local.predict(None, X))


def test_second_repro_does_nothing(reproduced):
    repo, _ = reproduced
    out = sh("dvc", "repro", cwd=repo)
    assert ran(out) == [] and "Data and pipelines are up to date" in out


def test_changing_a_search_param_reruns_from_search(reproduced):
    repo, _ = reproduced
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("sampler: tpe", "sampler: random"))
    out = sh("dvc", "repro", cwd=repo)
    # another sampler proposes other floats, so the best configuration changes too
    assert without_ensemble(ran(out)) == ["search", "train_best", "evaluate"]
    assert "ensemble" in ran(out)
    assert "Stage 'prepare' didn't change, skipping" in out
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{repo}/mlflow.db")
    champion = client.get_model_version_by_alias("digits", "champion")
    report = json.loads((repo / "results" / "search" / "report.json").read_text())
    assert int(champion.version) == 2, "a new study run: a new version, champion moved"
    assert champion.tags["hpo.study_run_id"] == report["study_run_id"]


def test_exp_run_with_a_param_and_metrics_and_plots_show(reproduced):
    repo, _ = reproduced
    out = sh("dvc", "exp", "run", "-S", "study.n_trials=4", cwd=repo)
    # train_best and evaluate follow only if best_params.yaml changed: the first 4 trials
    # of the same seeded sampler may well hold the best of the 6
    assert ran(out)[0] == "search" and "prepare" not in ran(out)
    assert yaml.safe_load((repo / "params.yaml").read_text())["study"]["n_trials"] == 4
    report = json.loads((repo / "results" / "search" / "report.json").read_text())
    assert report["n_trials"] == 4
    metrics = json.loads(sh("dvc", "metrics", "show", "--json", cwd=repo))
    (workspace,) = metrics.values()
    shown = workspace["data"]["results/evaluate/metrics.json"]["data"]
    assert set(shown) == {"accuracy", "f1_macro", "n_test"}
    search = workspace["data"]["results/search/metrics.json"]["data"]
    assert search["n_trials"] == 4 and 0.9 < search["best_accuracy"] <= 1
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=repo))["data"]
    assert {"results/search/plots/history.png", "results/search/plots/importance.png",
            "results/search/plots/parallel_coordinates.png",
            "results/search/plots/learning_curves.png", "results/search/plots/regret.png",
            "results/search/plots/partial_dependence.png",
            "results/search/plots/partial_dependence_2d.png",
            "results/evaluate/confusion.csv", "optimization history"} == set(plots)
    html = sh("dvc", "plots", "show", "-o", "dvc_plots", cwd=repo)
    assert "dvc_plots/index.html" in html and (repo / "dvc_plots" / "index.html").is_file()
