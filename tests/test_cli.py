"""The `hpo-mlops` command line, run as a user runs it (a subprocess), on the session's
2-worker cluster: outputs, plain lines off a terminal, a live panel on one, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import runs_of
from mlflow_store import fresh_store

OBJECTIVES = textwrap.dedent("""
    import time

    def objective(params, trial):
        for step in range(1, 4):
            trial.report((params["x"] - 1) ** 2 + 1 / step, step)
            if trial.should_prune():
                return (params["x"] - 1) ** 2 + 1 / step
        return {"loss": (params["x"] - 1) ** 2, "aux": 1.0}

    def fails(params, trial):
        raise ValueError("boom")

    def slow(params, trial):
        time.sleep(1.0)
        return params["x"]
""")


def hpo_cmd() -> list[str]:
    exe = shutil.which("hpo-mlops")
    return [exe] if exe else [sys.executable, "-m", "hpo_mlops.cli"]


def hpo(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run([*hpo_cmd(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def hpo_here(*args: str) -> tuple[int, str, str]:
    """The same command in this process (for read-only commands: no interpreter start-up)."""
    from typer.testing import CliRunner

    from hpo_mlops.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def write_params(d: Path, address: str, name: str = "cli", **study) -> Path:
    (d / "obj.py").write_text(OBJECTIVES)
    doc = {
        "study": {"name": name, "n_trials": 6, "seed": 0, **study},
        "space": {"x": "uniform(-2, 3)"},
        "sampler": "random",
        "scheduler": "fifo",
        "cluster": {"address": address},
        "tracking": {"uri": fresh_store(d / "mlflow.db")},
        "objective": {"function": "obj.py:objective"},
    }
    p = d / "params.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


@pytest.fixture(scope="module")
def finished(dask_client, tmp_path_factory):
    """One study run by `hpo-mlops run --out` (6 trials), shared by the read-only tests."""
    d = tmp_path_factory.mktemp("cli")
    write_params(d, dask_client.scheduler.address)
    proc = hpo("run", "params.yaml", "--out", "out", cwd=d)
    return d, proc


def test_run_prints_plain_lines_off_a_terminal_and_writes_outputs(finished):
    d, proc = finished
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    trial_lines = [ln for ln in lines if ln.startswith("trial ")]
    assert len(trial_lines) == 6 and all(" complete: loss=" in ln for ln in trial_lines)
    assert any(ln.strip().startswith("[done 6/6") for ln in lines)
    assert "\x1b[" not in proc.stdout, "no terminal control codes in a log"
    report = json.loads((d / "out" / "report.json").read_text())
    assert (report["n_trials"], report["complete"], report["failed"]) == (6, 6, 0)
    numbers = json.loads((d / "out" / "metrics.json").read_text())
    assert numbers["best_loss"] == report["best_value"] and numbers["complete"] == 6
    assert lines[-2].startswith(f"best trial {report['best_trial']}: loss=")
    rows = list(csv.DictReader((d / "out" / "trials.csv").open()))
    assert sorted(int(r["number"]) for r in rows) == list(range(6))
    best = yaml.safe_load((d / "out" / "best_params.yaml").read_text())
    assert best["trial"] == report["best_trial"]
    assert best["value"]["loss"] == pytest.approx(min(float(r["value"]) for r in rows))
    history = (d / "out" / "history.csv").read_text().splitlines()
    assert history[0] == "trial,value,best_so_far" and len(history) == 7
    pngs = sorted(p.name for p in (d / "out" / "plots").glob("*.png"))
    assert pngs == ["history.png", "importance.png", "learning_curves.png",
                    "parallel_coordinates.png", "partial_dependence.png", "regret.png"]
    from mlflow.tracking import MlflowClient

    parents, trials = runs_of(f"sqlite:///{d}/mlflow.db", "cli")
    assert len(parents) == 1 and len(trials) == 6
    client = MlflowClient(f"sqlite:///{d}/mlflow.db")
    logged = [a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")]
    assert sorted(logged) == [f"plots/{p}" for p in pngs]


def test_status_best_and_export_read_the_recorded_study(finished):
    d, _ = finished
    params = str(d / "params.yaml")
    report = json.loads((d / "out" / "report.json").read_text())
    code, out, err = hpo_here("status", params)
    assert code == 0, err
    assert "trials: 6  complete 6" in out
    assert f"(trial {report['best_trial']})" in out
    assert "running: none" in out
    code, out, err = hpo_here("best", params, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["trial"] == report["best_trial"]
    assert doc["value"]["loss"] == pytest.approx(report["best_value"])
    assert yaml.safe_load(hpo_here("best", params)[1]) == doc
    code, out, err = hpo_here("export", params)
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 6 and {"number", "state", "value", "params_x", "metrics_aux"} <= set(rows[0])
    assert hpo_here("export", params, "-o", str(d / "t.csv"))[0] == 0
    assert (d / "t.csv").read_text() == out
    missing = hpo("best", "--set", "study.name=nope", cwd=d)  # the real entry point
    assert missing.returncode == 1
    assert missing.stderr.strip() == (f"hpo-mlops: error: no recorded trial of study 'nope' in "
                                      f"sqlite:///{d}/mlflow.db")
    assert hpo_here("status", params, "--set", f"tracking.uri=sqlite:///{d}/none.db",
                    "--set", "study.name=other")[0] == 1
    assert not (d / "none.db").exists(), "a read command creates no tracking store"


def test_resume_runs_only_what_is_missing(dask_client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns
    params = str(write_params(tmp_path, dask_client.scheduler.address, name="res", n_trials=3))
    assert hpo_here("run", params, "--progress", "quiet")[0] == 0
    code, out, err = hpo_here("resume", params, "--set", "study.n_trials=5")
    assert code == 0, err
    assert sorted(ln.split()[1] for ln in out.splitlines() if ln.startswith("trial ")) == ["3", "4"]
    parents, trials = runs_of(f"sqlite:///{tmp_path}/mlflow.db", "res")
    assert len(parents) == 1 and sorted(trials) == [0, 1, 2, 3, 4]


def test_bad_config_exits_2_with_one_line_and_traceback_only_with_debug(tmp_path):
    write_params(tmp_path, "tcp://127.0.0.1:9")
    proc = hpo("run", "--set", "scheduler={name: asha, eta: 1, max_budget: 9}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "hpo-mlops: error: scheduler.eta: must be an integer >= 2, got 1\n"
    assert proc.stdout == ""
    debug = hpo("run", "--debug", "--set", "study.n_trial=3", cwd=tmp_path)
    assert debug.returncode == 2
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith(
        "hpo-mlops: error: study.n_trial: unknown key (did you mean 'n_trials'?)")
    usage = hpo("run", "--no-such-flag", cwd=tmp_path)
    assert usage.returncode == 2 and "No such option" in usage.stderr


def test_a_failing_study_exits_1_with_the_reason(dask_client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = str(write_params(tmp_path, dask_client.scheduler.address, name="fails", n_trials=3))
    code, _, err = hpo_here("run", params, "--set", "objective.function=obj.py:fails")
    assert code == 1
    assert err.splitlines() == [
        "hpo-mlops: error: study 'fails' has no completed trial (3 failed, 0 pruned); "
        "last error: ValueError: boom"]
    code, _, err = hpo_here("run", params, "--set", "objective.function=obj.py:fails",
                            "--set", "study.max_failures=0", "--set", "study.name=capped")
    assert code == 1
    assert len(err.splitlines()) == 1 and err.startswith("hpo-mlops: error: study 'capped' ")
    assert "more than max_failures=0" in err and "Traceback" not in err


@pytest.mark.slow  # end to end, over 7 s: keeps the default run under 5 minutes
def test_live_panel_on_a_terminal(dask_client, tmp_path):
    write_params(tmp_path, dask_client.scheduler.address, name="tty", n_trials=4)
    master, slave = pty.openpty()
    proc = subprocess.Popen([*hpo_cmd(), "run"], cwd=tmp_path, stdin=slave, stdout=slave,
                            stderr=slave, env={**os.environ, "COLUMNS": "150", "TERM": "xterm"})
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-2000:]
    assert "\x1b[" in text, "a terminal gets a live (redrawn) display"
    assert "done 4/4" in text and "━" in text
    assert not any(ln.startswith("trial ") for ln in text.splitlines()), "no log lines on a tty"


@pytest.mark.slow  # end to end, over 7 s: keeps the default run under 5 minutes
def test_status_shows_running_trials_and_their_workers(dask_client, tmp_path):
    write_params(tmp_path, dask_client.scheduler.address, name="slow", n_trials=6)
    run = subprocess.Popen([*hpo_cmd(), "run", "--set", "objective.function=obj.py:slow"],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    seen = ""
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and run.poll() is None:
            out = hpo_here("status", str(tmp_path / "params.yaml"))[1]
            if " running on tcp://" in out:
                seen = out
                break
            time.sleep(0.2)
    finally:
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    assert seen, "status never showed a running trial"
    running = [ln for ln in seen.splitlines() if " running on tcp://" in ln]
    workers = set(dask_client.scheduler_info(n_workers=-1)["workers"])
    assert all(ln.split(" on ")[1].split()[0] in workers for ln in running)
    final = hpo_here("status", str(tmp_path / "params.yaml"))[1]
    assert final.splitlines()[-1].startswith("running: none")


def test_help_lists_the_commands_with_examples(tmp_path):
    proc = hpo("--help", cwd=tmp_path)
    assert proc.returncode == 0
    for word in ("run", "resume", "status", "best", "export", "Examples:",
                 "hpo-mlops run params.yaml --set study.n_trials=20",
                 "dvc exp run -S study.n_trials=20"):
        assert word in proc.stdout
    sub = hpo("run", "--help", cwd=tmp_path)
    assert sub.returncode == 0 and "--set" in sub.stdout and "--debug" in sub.stdout


def test_cluster_job_script_renders_without_submitting(tmp_path):
    params = str(write_params(tmp_path, "tcp://127.0.0.1:9"))
    code, out, err = hpo_here("cluster", "job-script", params, "--set",
                              "cluster={kind: slurm, cores: 2, memory: 4GB}")
    assert code == 0, err
    assert "#SBATCH --cpus-per-task=2" in out and "dask_worker" in out
    code, _, err = hpo_here("cluster", "job-script", params)
    assert code == 2 and err == ("hpo-mlops: error: cluster.address: a running scheduler "
                                 "submits no batch jobs\n")
