"""bench/service_load.py runs end to end with tiny numbers and loses no trial."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "service_load.py"


@pytest.mark.slow
def test_service_load_smoke_loses_nothing():
    done = subprocess.run([sys.executable, str(SCRIPT), "--clients", "4", "--trials", "12",
                           "--samplers", "random", "--no-optuna", "--seconds", "60"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost: 0" in done.stdout
    assert "| hpo-mlops random" in done.stdout
