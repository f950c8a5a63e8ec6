"""Smoke runs of examples/: digits (the pipeline's objective), blackbox (shell + awk), pytorch."""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow_store import fresh_store

from hpo_mlops import TrialState
from hpo_mlops.config import load_config, optimize_kwargs
from hpo_mlops.study import Study

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
HAS_TORCH = importlib.util.find_spec("torch") is not None


def hpo(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("hpo-mlops")
    cmd = [exe] if exe else [sys.executable, "-m", "hpo_mlops.cli"]
    return subprocess.run([*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "120"})


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_digits_objective_learns_and_is_pruned_at_rungs(dask_client, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns
    prepare = load_module(EXAMPLES / "digits" / "prepare.py", "digits_prepare")
    prepare.main(str(ROOT / "params.yaml"), str(tmp_path / "data"))
    cfg = load_config(ROOT / "params.yaml", [
        "study.n_trials=10", f"tracking.uri={fresh_store(tmp_path / 'mlflow.db')}",
        f"objective.setup_args.data_dir={tmp_path / 'data'}"])
    kwargs = optimize_kwargs(cfg)
    kwargs.pop("cluster")
    study = Study.from_config(cfg)
    study.optimize(client=dask_client, **kwargs)
    states = {t.state for t in study.trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED} and len(study.trials) == 10
    rungs = {1, 3, 9}  # asha, min_budget 1, eta 3, max_budget 27
    assert all(t.pruned_step in rungs for t in study.trials if t.state is TrialState.PRUNED)
    best = study.best_trial
    assert best.value > 0.9 and [s for s, _ in best.intermediate] == list(range(1, 28))
    assert set(best.params) >= {"alpha", "loss", "penalty", "learning_rate"}


def branin(x: float, y: float) -> float:
    b, c, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 1 / (8 * math.pi)
    return (y - b * x * x + c * x - 6) ** 2 + 10 * (1 - t) * math.cos(x) + 10


def copy_example(name: str, tmp_path: Path) -> Path:
    """The example's folder in tmp_path (a run leaves its status file beside params.yaml)."""
    return shutil.copytree(EXAMPLES / name, tmp_path / name) / "params.yaml"


@pytest.mark.slow  # end to end, over 7 s: keeps the default run under 5 minutes
def test_blackbox_shell_awk_objective_with_its_defaults(tmp_path):
    params = copy_example("blackbox", tmp_path)
    uri = fresh_store(tmp_path / "mlflow.db")
    proc = hpo("run", str(params), "--set", "study.n_trials=8", "--set", f"tracking.uri={uri}",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = Study.from_config(load_config(params, [f"tracking.uri={uri}"], check=False),
                              resume=True)
    trials = study.trials
    assert len(trials) == 8 and {t.state for t in trials} <= {TrialState.COMPLETE,
                                                              TrialState.PRUNED}
    for t in trials:  # the value the awk script printed is Branin at the trial's params
        if t.state is TrialState.COMPLETE:
            assert t.value == pytest.approx(branin(t.params["x"], t.params["y"]), abs=1e-5)
            assert t.metrics["steps"] == 9, "{budget} became the scheduler's max_budget"
        else:
            assert t.pruned_step in (1, 3)
    assert "best trial" in proc.stdout


@pytest.mark.skipif(not HAS_TORCH, reason="the pytorch example needs its extra: "
                    "pip install torch==2.13.0")
@pytest.mark.slow
def test_pytorch_example_with_its_defaults(tmp_path):
    params = copy_example("pytorch", tmp_path)
    uri = fresh_store(tmp_path / "mlflow.db")
    name = f"pytorch-{tmp_path.name}"  # checkpoints are kept per study name
    sets = [f"tracking.uri={uri}", f"study.name={name}"]
    proc = hpo("run", str(params), "--set", "study.n_trials=4", "--set", sets[0], "--set",
               sets[1], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = Study.from_config(load_config(params, sets, check=False), resume=True)
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    best = study.best_trial
    assert best.value < math.log(10), "better than chance after training"
    assert best.metrics["val_accuracy"] > 0.5


@pytest.mark.skipif(not HAS_TORCH, reason="the pytorch example needs its extra: "
                    "pip install torch==2.13.0")
def test_pytorch_trial_continues_from_its_checkpoint(tmp_path):
    from hpo_mlops.trial import Trial

    mod = load_module(EXAMPLES / "pytorch" / "objective.py", "pytorch_objective")
    params = {"lr": 3e-3, "weight_decay": 1e-4, "hidden": 32, "layers": 1, "dropout": 0.0,
              "batch_size": 64}
    data = mod.load_data()
    first = Trial(0, dict(params), budget=2, context=data, checkpoint_dir=str(tmp_path))
    mod.objective(first.params, first)
    assert [s for s, _ in first.intermediate] == [1, 2]
    again = Trial(0, dict(params), budget=4, context=data, checkpoint_dir=str(tmp_path))
    out = mod.objective(again.params, again)
    assert [s for s, _ in again.intermediate] == [3, 4], "epochs 1-2 came from the checkpoint"
    assert out["val_loss"] < first.intermediate[0][1]
    done = Trial(0, dict(params), budget=4, context=data, checkpoint_dir=str(tmp_path))
    assert mod.objective(done.params, done) == out and not done.intermediate, \
        "a trial that already reached its budget returns the checkpoint's values"
    other = Trial(0, {**params, "hidden": 64}, budget=1, context=data,
                  checkpoint_dir=str(tmp_path))
    mod.objective(other.params, other)
    assert [s for s, _ in other.intermediate] == [1], "another config ignores the checkpoint"
