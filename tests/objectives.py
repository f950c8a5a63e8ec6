"""Objectives used by the tests; a module of their own so Dask workers import them by name."""

from __future__ import annotations

import math
import os
import time


def quadratic(params, trial):
    for step in range(1, 4):
        trial.report((params["x"] - 2) ** 2 + 1 / step, step)
    return {"loss": (params["x"] - 2) ** 2, "aux": 1.0}


def sometimes_fails(params, trial):
    if params["x"] < 0:
        raise ValueError(f"x={params['x']} is negative")
    return params["x"] ** 2


def returns_nan(params, trial):
    return float("nan") if params["x"] < 0 else params["x"] ** 2


def returns_text(params, trial):
    return "not a number"


def sleepy(params, trial):
    """Trial 0 is long, the others short: shows refilling without lock-step batches."""
    time.sleep(2.0 if trial.number == 0 else 0.05)
    return {"loss": params["x"], "t0": time.time()}


def counting(params, trial):
    """Appends its trial number to $HPO_TEST_LOG so a test can see what actually ran."""
    with open(os.environ["HPO_TEST_LOG"], "a") as fh:
        fh.write(f"{trial.number}\n")
    return (params["x"] - 1) ** 2


def two_metrics(params, trial):
    return {"loss": (params["x"] - 1) ** 2, "latency": math.fabs(params["x"] + 1)}


def load_context():
    path = os.environ["HPO_TEST_LOG"]
    with open(path, "a") as fh:
        fh.write(f"{os.getpid()}\n")
    return {"pid": os.getpid(), "data": list(range(10))}


def uses_context(params, trial):
    time.sleep(0.2)
    assert trial.context["data"] == list(range(10))
    return {"loss": params["x"], "ctx_pid": trial.context["pid"], "pid": os.getpid()}


def pruned_when_bad(params, trial):
    """Good trials (x near 0) report low values; bad ones high: the median rule stops them."""
    for step in range(1, 11):
        trial.report(abs(params["x"]) + 1.0 / step, step)
        if trial.should_prune():
            return abs(params["x"]) + 1.0 / step
    return abs(params["x"])


def curve(params, trial):
    """A learning curve with epochs as the budget and a checkpoint, so promotions resume."""
    import json

    state = trial.load() or {"epoch": 0}
    log = params.get("log_path") if isinstance(params, dict) else None
    score = abs(params["x"]) + 1.0 / max(state["epoch"], 1)
    for epoch in range(state["epoch"] + 1, int(trial.budget) + 1):
        score = abs(params["x"]) + 1.0 / epoch
        trial.report(score, epoch)
        trial.save({"epoch": epoch})
        if trial.should_prune():
            break
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps([trial.number, trial.budget]) + "\n")
    return score


def curve_logged(log_path, fail_number=None, flag=None):
    """``curve`` that logs each job (trial, budget) and can fail one trial while ``flag`` exists."""
    def objective(params, trial):
        if fail_number is not None and trial.number == fail_number and os.path.exists(flag):
            raise RuntimeError("planned failure")
        out = curve(params, trial)
        with open(log_path, "a") as fh:
            fh.write(f"{trial.number} {trial.budget}\n")
        return out
    return objective


def nap(params, trial):
    time.sleep(0.05)
    return params["x"]


def every_step(params, trial):
    """Reports at every step up to its budget, as a deep-learning loop reports per batch."""
    value = abs(params["x"])
    for step in range(1, int(trial.budget) + 1):
        value = abs(params["x"]) + 1.0 / step
        trial.report(value, step)
        if trial.should_prune():
            break
    return value


def closes_its_worker(flag):
    """Sleeps; while ``flag`` exists, trials from number 4 on close their worker and its
    nanny (so the worker does not come back: a cluster that lost every node for good)."""
    def objective(params, trial):
        if trial.number >= 4 and os.path.exists(flag):
            from distributed import get_worker

            worker = get_worker()
            worker.loop.add_callback(worker.close, nanny=True)
            time.sleep(30)  # the worker goes away under the trial
        time.sleep(0.2)
        return params["x"]
    return objective
