"""What runs on a worker: a study's slot, pulling trials and running each start to end.

It never raises for a problem of the trial itself: every outcome (complete, pruned,
failed with the error and the tail of its traceback) is a plain dict that the slot hands to
the study's ledger, which records it and goes on. The loss of the worker is the ledger's to
see too (the scheduler plugin's ``remove_worker``): the trial is retried or failed there.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from typing import Any

from hpo_mlops.objective import TrialFailed, as_metrics
from hpo_mlops.trial import Trial, TrialPruned

#: environment variables recorded as tags when present (where the trial really ran)
ENV_TAGS = ("SLURM_JOB_ID", "PBS_JOBID", "JOB_ID", "LSB_JOBID", "CUDA_VISIBLE_DEVICES")


def run_slot(plugin_name: str, key: str) -> str:
    """One slot of a study: pull a job, run it, hand in its outcome with the next pull.

    A long-lived task per worker thread, instead of one Dask task per trial: a trial costs
    one round trip to the scheduler's ledger (``hpo_next``: outcome in, next job out)
    rather than a submit, a gather and a tell. With decentralized asks, this worker's own
    sampler copy proposes the next new trial's params before the call, so they travel in
    the same round trip. A worker that is closing (its lifetime is up) takes no new job.
    Returns why it stopped.
    """
    from distributed import get_worker
    from distributed.core import Status
    from distributed.utils import sync

    from hpo_mlops.dask_plugin import dask_reporter

    worker = get_worker()
    plugin = worker.plugins[plugin_name]
    reporter = dask_reporter(key) if plugin.reports else None
    address = worker.address
    done: dict[str, Any] | None = None
    proposal: tuple[dict, str] | None = None
    copy = plugin.copy
    while True:
        closing = worker.status != Status.running
        if copy is not None and copy.synced and proposal is None and not closing:
            proposal = copy.propose(address)
            if proposal is None:  # the sampler has nothing left: no new trials
                sync(worker.loop, worker.scheduler.hpo_end_new, key=key)
        reply = sync(worker.loop, worker.scheduler.hpo_next, key=key, worker=address,
                     done=done, stop=closing, proposal=proposal and proposal[0],
                     origin=proposal and proposal[1])
        done = None
        if reply.get("used"):
            proposal = None
        if reply.get("history") is not None and copy is not None:
            copy.apply(reply["start"], reply["history"], address)
        job = reply.get("job")
        if job is None:
            if reply.get("propose") and not closing:
                continue
            if reply.get("wait") and not closing:
                time.sleep(reply["wait"])
                continue
            return "closing" if closing else "done"
        params = job["params"]
        spec = {"number": job["number"], "params": params, "budget": job["budget"],
                "metrics": plugin.metrics, "attempt": job["attempt"],
                "checkpoint_dir": os.path.join(plugin.checkpoint_root, f"trial-{job['number']}")}
        if job.get("clone"):  # PBT's exploit: start from a donor's checkpoint
            spec["clone_from"] = snapshot_dir(plugin.checkpoint_root, *job["clone"])
        if job.get("snapshot"):  # PBT: this job's end may be copied by others later
            spec["snapshot_to"] = snapshot_dir(plugin.checkpoint_root, job["number"],
                                               job["budget"])
        out = _execute(plugin.objective, spec, reporter, plugin.context, plugin.setup_error)
        out["worker"], out["params"] = address, params
        done = out


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
        if spec.get("clone_from"):
            clone_checkpoint(spec["clone_from"], spec["checkpoint_dir"], spec["number"])
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
    if spec.get("snapshot_to") and out["state"] in ("COMPLETE", "PRUNED"):
        try:
            snapshot_checkpoint(spec.get("checkpoint_dir"), spec["snapshot_to"])
        except OSError as exc:
            out.update(state="FAILED", error=f"could not keep the checkpoint for PBT: {exc}")
    out["end"] = time.time()
    out["tags"].update(trial.tags)  # e.g. where save_predictions wrote
    out["intermediate"] = trial.intermediate
    out["pruned_step"] = trial.pruned_step if out["state"] == "PRUNED" else None
    if out["state"] == "PRUNED" and out["pruned_step"] is None and trial.intermediate:
        out["pruned_step"] = trial.intermediate[-1][0]
    return out


# -- checkpoints copied between trials (PBT) ------------------------------------------------
def snapshot_dir(root: str, number: int, budget: Any) -> str:
    """Where trial ``number``'s checkpoint folder is kept as it was at ``budget``."""
    return os.path.join(root, f"trial-{number}@{float(budget):.12g}")


def snapshot_checkpoint(checkpoint_dir: str | None, dest: str) -> None:
    """Keep a copy of the trial's checkpoint folder that no later job changes (an empty one
    when the objective saved nothing, so that a missing copy always means: not shared).
    Written aside and renamed, so a trial copying it never sees half of it."""
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    if checkpoint_dir and os.path.isdir(checkpoint_dir):
        shutil.copytree(checkpoint_dir, tmp)
    else:
        os.makedirs(tmp)
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def clone_checkpoint(source: str, checkpoint_dir: str | None, number: int) -> None:
    """Replace the trial's checkpoint folder by a donor's snapshot (PBT's exploit); a
    snapshot this worker cannot see fails the trial with what to do about it."""
    if not os.path.isdir(source):
        raise TrialFailed(
            f"trial {number}: PBT copies the checkpoint of another trial, but {source} is not "
            f"on this worker ({socket.gethostname()}); it was written by the worker that ran "
            "that trial. The checkpoint_dir must be a file system every worker shares: "
            "optimize(checkpoint_dir=...)"
        )
    if checkpoint_dir is None:
        return
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
    shutil.copytree(source, checkpoint_dir)
