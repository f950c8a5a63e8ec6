"""The README's Python example runs as written (on a fresh temp dir and MLflow store)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # end to end, over 7 s: keeps the default run under 5 minutes
def test_readme_python_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"## In Python\s+```python\n(.*?)```", text, re.S).group(1)
    assert "from hpo_mlops import Study" in code
    code = code.replace("n_trials=100", "n_trials=12")  # same code, a shorter run
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "best_params.yaml").read_text().startswith("trial:")
    assert "'x':" in res.stdout
