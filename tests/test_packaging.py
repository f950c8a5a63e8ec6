"""One wheel brings the engine and the first-party plugins, entry points included; the
engine itself never imports a sampler library."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_plugins_and_entry_points(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    wheel = next(tmp_path.glob("hpo_mlops-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for pkg in ("hpo_mlops/study.py", "hpo_mlops_optuna/__init__.py",
                "hpo_mlops_hyperopt/__init__.py", "hpo_mlops_jobqueue/__init__.py"):
        assert pkg in names, f"{pkg} missing from the wheel"
    assert not any(n.startswith(("tests/", "bench/", "plugins/")) for n in names)
    ep = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(ep).decode()
    for line in ("[hpo_mlops.samplers]", "tpe = hpo_mlops_optuna:TPESampler",
                 "hyperopt.tpe = hpo_mlops_hyperopt:HyperoptTPESampler",
                 "[hpo_mlops.schedulers]", "[hpo_mlops.clusters]",
                 "slurm = hpo_mlops_jobqueue:SlurmFactory", "hpo-mlops = hpo_mlops.cli:main"):
        assert line in text, f"{line!r} missing from entry_points.txt"


def test_engine_does_not_import_sampler_libraries():
    code = (
        "import sys, hpo_mlops, hpo_mlops.study, hpo_mlops.space, hpo_mlops.tracking, "
        "hpo_mlops.dask_plugin, hpo_mlops.samplers.random, hpo_mlops.samplers.grid\n"
        "from hpo_mlops.study import Study\n"
        "Study('x', {'x': 'uniform(0, 1)'}, sampler='random', tracking=False)\n"
        "bad = [m for m in ('optuna', 'hyperopt') if m in sys.modules]\n"
        "assert not bad, bad"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for path in (ROOT / "hpo_mlops").rglob("*.py"):
        text = path.read_text()
        assert "import optuna" not in text and "import hyperopt" not in text, path
