"""Slurm against a LocalCluster: the same study, objective and number of workers on each.

What it shows: how much a batch-system cluster costs a study once its jobs run (the trials
reach workers over TCP from a scheduler in the manager, exactly as on a LocalCluster; the
difference is job start-up and the job script's Python start). Two numbers per cluster:

* trials/s          finished trials per second of the trial window (first trial start to
                    last trial end), and of the whole ``optimize`` call (cluster start,
                    jobs queued and started, MLflow, cancelling the jobs included)
* utilization       busy worker time / (window x workers): the share of the window the
                    workers spent inside the objective

Needs a running Slurm (``bash ci/slurm-up.sh``; with 2 CPUs and 1-core jobs,
``--workers 2`` fits). MLflow logging is on, into a fresh sqlite store per run.

    python bench/hpc.py [--trials 100] [--workers 2] [--seconds 0.2] [--repeat 1]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import warnings


def objective(params, trial):
    """Sleeps ``HPO_BENCH_SECONDS`` (sbatch exports the manager's environment to the jobs)."""
    time.sleep(float(os.environ.get("HPO_BENCH_SECONDS", "0.2")))
    return (params["x"] - 1) ** 2


def run(cluster: dict, n_trials: int, name: str) -> dict:
    from hpo_mlops.study import Study

    store = tempfile.mkdtemp(prefix="bench-hpc-")
    study = Study(name, {"x": "uniform(-5, 5)"}, sampler="random", scheduler="fifo", seed=0,
                  tracking_uri=f"sqlite:///{store}/mlflow.db")
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n_trials, cluster=cluster)
    total = time.perf_counter() - t0
    trials = study.trials
    start = min(t.start for t in trials)
    end = max(t.end for t in trials)
    busy = sum(t.end - t.start for t in trials)
    workers = len({t.worker for t in trials})
    shutil.rmtree(store, ignore_errors=True)
    return {"window_s": end - start, "total_s": total, "busy_s": busy, "n": len(trials),
            "workers_used": workers,
            "jobs": len({t.tags.get("SLURM_JOB_ID") for t in trials} - {None})}


def slurm_up() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "sinfo/sbatch not found"
    out = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc")
                                      for s in out.stdout.split()):
        return "no Slurm node is up"
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.2, help="each trial sleeps this long")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cluster (median shown)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("distributed").setLevel(logging.ERROR)
    os.environ["HPO_BENCH_SECONDS"] = str(args.seconds)
    why = slurm_up()
    if why:
        raise SystemExit(f"bench/hpc.py: needs Slurm ({why}); run bash ci/slurm-up.sh")
    logs = tempfile.mkdtemp(prefix="bench-hpc-logs-")
    clusters = {
        "local": {"kind": "local", "n_workers": args.workers},
        "slurm": {"kind": "slurm", "cores": 1, "memory": "1GB", "walltime": "00:30:00",
                  "jobs": args.workers, "job_name": "hpo-bench", "log_directory": logs,
                  "queue": os.environ.get("SLURM_CI_PARTITION", "debug")},
    }
    print(f"{args.trials} trials of {args.seconds:g} s, {args.workers} workers, "
          f"{os.cpu_count()} CPUs, MLflow on (sqlite)")
    print(f"{'cluster':8} {'trials/s (window)':>18} {'trials/s (total)':>17} "
          f"{'utilization':>12} {'window s':>9} {'total s':>8} {'workers':>8} {'jobs':>5}")
    results = {}
    for kind, cfg in clusters.items():
        runs = [run(cfg, args.trials, f"bench-{kind}-{i}") for i in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        util = med["busy_s"] / (med["window_s"] * args.workers)
        results[kind] = (med, util)
        print(f"{kind:8} {med['n'] / med['window_s']:18.2f} {med['n'] / med['total_s']:17.2f} "
              f"{util:12.1%} {med['window_s']:9.2f} {med['total_s']:8.2f} "
              f"{med['workers_used']:8.0f} {med['jobs']:5.0f}")
    (loc, lu), (slu, su) = results["local"], results["slurm"]
    print(f"slurm/local: trials/s (window) x{loc['window_s'] / slu['window_s']:.2f}, "
          f"utilization x{su / lu:.2f}, total time x{slu['total_s'] / loc['total_s']:.2f}")
    shutil.rmtree(logs, ignore_errors=True)


if __name__ == "__main__":
    main()
