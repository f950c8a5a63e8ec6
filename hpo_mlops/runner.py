"""What runs inside a Dask task: one trial of a study, start to end.

It never raises for a problem of the trial itself: every outcome (complete, pruned,
failed with the error and the tail of its traceback) comes back as a plain dict, so the
manager records it and goes on. Only the loss of the worker reaches the manager as an
exception (Dask's KilledWorker), and the manager records that too.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from typing import Any

from hpo_mlops.objective import TrialFailed, as_metrics
from hpo_mlops.trial import Trial, TrialPruned

#: environment variables recorded as tags when present (where the trial really ran)
ENV_TAGS = ("SLURM_JOB_ID", "PBS_JOBID", "JOB_ID", "LSB_JOBID", "CUDA_VISIBLE_DEVICES")


def run_trial(plugin_name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one trial on this worker; ``spec`` is what the manager decided about it."""
    from distributed import get_worker

    from hpo_mlops.dask_plugin import dask_reporter

    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    reporter = dask_reporter(spec["key"]) if spec.get("reports") else None
    out = _execute(plugin.objective, spec, reporter, plugin.context, plugin.setup_error)
    out["worker"] = worker.address
    if reporter is not None:
        from distributed.utils import sync

        last = out["values"][0] if out["values"] else None
        sync(worker.loop, worker.scheduler.hpo_complete,
             key=spec["key"], trial=spec["number"], state=out["state"], value=last)
    return out


def _execute(objective: Any, spec: dict[str, Any], reporter: Any, context: Any,
             setup_error: str | None) -> dict[str, Any]:
    """Run the objective and classify the outcome; independent of Dask (tested alone)."""
    metrics_names: list[str] = spec["metrics"]
    trial = Trial(spec["number"], dict(spec["params"]), spec.get("budget"), reporter,
                  context, spec.get("attempt", 1), spec.get("checkpoint_dir"))
    out: dict[str, Any] = {
        "number": spec["number"],
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "tags": {k: os.environ[k] for k in ENV_TAGS if k in os.environ},
        "start": time.time(),
        "error": None,
        "traceback": None,
        "metrics": {},
        "values": None,
    }
    try:
        if setup_error is not None:
            raise TrialFailed(setup_error)
        raw = objective(trial.params, trial)
        if trial.should_prune() and raw is None and trial.intermediate:
            raw = trial.intermediate[-1][1]
        metrics = as_metrics(raw, metrics_names)
        out["metrics"] = metrics
        out["values"] = [metrics[m] for m in metrics_names]
        out["state"] = "PRUNED" if trial.should_prune() else "COMPLETE"
    except TrialPruned:
        out["state"] = "PRUNED"
        if trial.intermediate:
            out["values"] = [trial.intermediate[-1][1]]
            out["metrics"] = {metrics_names[0]: trial.intermediate[-1][1]}
    except TrialFailed as exc:
        out.update(state="FAILED", error=str(exc))
    except Exception as exc:
        if trial.should_prune() and trial.intermediate:
            # pruned, then the objective broke on the way out: keep it as pruned
            out["state"] = "PRUNED"
            out["values"] = [trial.intermediate[-1][1]]
        else:
            out.update(state="FAILED", error=f"{type(exc).__name__}: {exc}",
                       traceback="".join(traceback.format_exc(limit=-12))[-4000:])
    out["end"] = time.time()
    out["intermediate"] = trial.intermediate
    out["pruned_step"] = trial.pruned_step if out["state"] == "PRUNED" else None
    if out["state"] == "PRUNED" and out["pruned_step"] is None and trial.intermediate:
        out["pruned_step"] = trial.intermediate[-1][0]
    return out
