"""Ctrl-C: stop submitting, record running trials as interrupted, leave nothing behind, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
from conftest import runs_of

SCRIPT = textwrap.dedent("""
    import sys, time
    from hpo_mlops.study import Study

    def objective(params, trial):
        time.sleep(float(sys.argv[3]))
        return params["x"] ** 2

    if __name__ == "__main__":
        study = Study("ctrl-c", {"x": "uniform(-1, 1)"}, sampler="random", seed=0,
                      scheduler="fifo", tracking_uri=sys.argv[1])
        study.optimize(objective, n_trials=int(sys.argv[2]), n_workers=2)
        print("DONE", len(study.trials), flush=True)
""")


def _group(pgid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, ProcessLookupError):
            pass
    return out


@pytest.mark.slow
def test_ctrl_c_records_interrupted_trials_cleans_up_and_resumes(tmp_path, mlflow_uri):
    script = tmp_path / "study.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), mlflow_uri, "40", "0.5"],
                            cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "mlflow.db"
    deadline = time.time() + 60
    import sqlite3

    while time.time() < deadline:  # wait until a few trials are recorded
        time.sleep(0.5)
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    n = con.execute("select count(*) from runs where status='FINISHED'").fetchone()[0]
            except sqlite3.Error:
                n = 0
            if n >= 4:
                break
    assert proc.poll() is None, proc.communicate()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "DONE" not in out
    assert "KeyboardInterrupt" in err
    assert "Dask Worker process" not in err, "workers leave Ctrl-C to the manager"
    time.sleep(1)
    assert not _group(proc.pid), "worker processes left behind after Ctrl-C"

    parents, runs = runs_of(mlflow_uri, "ctrl-c")
    assert parents[0].info.status == "KILLED"
    states = {n: r.data.tags["hpo.state"] for n, r in runs.items()}
    interrupted = [n for n, s in states.items() if s == "INTERRUPTED"]
    finished = [n for n, s in states.items() if s == "COMPLETE"]
    assert interrupted, "the trials in flight are recorded as interrupted"
    assert all(runs[n].info.status == "KILLED" for n in interrupted)
    assert len(finished) >= 4 and len(runs) < 40

    # resume: interrupted trials run again, finished ones never; n_trials is the total
    total = len(finished) + len(interrupted) + 2
    res = subprocess.run([sys.executable, str(script), mlflow_uri, str(total), "0.01"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"DONE {total}" in res.stdout
    parents, runs2 = runs_of(mlflow_uri, "ctrl-c")
    assert len(parents) == 1 and sorted(runs2) == list(range(total))
    assert all(runs2[n].data.tags["hpo.state"] == "COMPLETE" for n in runs2)
    for n in finished:  # untouched: same run, same end time
        assert runs2[n].info.end_time == runs[n].info.end_time
    for n in interrupted:  # same MLflow run, now finished
        assert runs2[n].info.run_id == runs[n].info.run_id
