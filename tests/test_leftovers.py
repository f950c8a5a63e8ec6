"""Issue 13 item 7: a study leaves a user's cluster as it found it.

On a cluster that outlives the study (the user's own ``Client``): each worker's Ctrl-C
handler is ignored while the study runs and given back afterwards, and a manager that dies
without saying goodbye (SIGKILL) leaves no ledger in the Dask scheduler's plugin.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from hpo_mlops import Study
from hpo_mlops.dask_plugin import PLUGIN_NAME

ROOT = Path(__file__).resolve().parents[1]


def _handler() -> str:
    h = signal.getsignal(signal.SIGINT)
    return "ignored" if h is signal.SIG_IGN else "default" if h is signal.default_int_handler else repr(h)


def _handler_in_trial(params, trial):
    return {"loss": params["x"], "sigint": 1.0 if _handler() == "ignored" else 0.0}


def test_workers_get_their_ctrl_c_handler_back_after_the_study(dask_client, mlflow_uri):
    before = dask_client.run(_handler)  # a Dask worker's own: asyncio's Ctrl-C handler
    assert "ignored" not in before.values(), before
    study = Study("sigint-back", {"x": "uniform(0, 1)"}, sampler="random", seed=0,
                  tracking_uri=mlflow_uri)
    study.optimize(_handler_in_trial, n_trials=4, client=dask_client)
    assert {t.metrics["sigint"] for t in study.trials} == {1.0}, "ignored while trials ran"
    assert dask_client.run(_handler) == before, "the workers' own handler is back"


def _hubs(dask_scheduler) -> list[str]:
    plugin = dask_scheduler.plugins.get(PLUGIN_NAME)
    return sorted(plugin.hubs) if plugin is not None else []


MANAGER = textwrap.dedent("""
    import sys, time
    from hpo_mlops import Study

    def slow(params, trial):
        time.sleep(3)
        return params["x"]

    if __name__ == "__main__":
        study = Study("killed-manager", {"x": "uniform(0, 1)"}, sampler="random", seed=0,
                      tracking=False)
        study.optimize(slow, n_trials=4, address=sys.argv[1])
""")


def test_a_killed_manager_leaves_no_ledger_on_the_scheduler(dask_client, tmp_path):
    script = tmp_path / "manager.py"
    script.write_text(MANAGER)
    before = dask_client.run_on_scheduler(_hubs)
    proc = subprocess.Popen([sys.executable, str(script), dask_client.scheduler.address],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(dask_client.run_on_scheduler(_hubs)) <= len(before):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the study never registered"
            time.sleep(0.2)
        time.sleep(1.0)  # its trials are running on the workers now (for 3 s each)
    finally:
        proc.kill()  # SIGKILL: no hpo_forget, no teardown
        proc.wait()
    deadline = time.monotonic() + 30
    while dask_client.run_on_scheduler(_hubs) != before:
        assert time.monotonic() < deadline, (
            f"ledgers left on the scheduler: {dask_client.run_on_scheduler(_hubs)}")
        time.sleep(0.2)
