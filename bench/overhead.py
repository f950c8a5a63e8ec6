"""Manager overhead: trials per second and worker utilization, against the usual patterns.

Two workers, N trials (default 500), two objectives: one that returns at once, one that
sleeps 50 ms. Run side by side in the same run, each contender in a fresh process with a
fresh 2-worker LocalCluster, each with MLflow logging on into its own fresh sqlite store:

* hpo-mlops            Study.optimize on a 2-worker LocalCluster (MLflow: one nested run a trial)
* optuna n_jobs=2      study.optimize(n_jobs=2), one mlflow.start_run per trial inside the objective
* optuna ask/tell+dask ask/tell from the client, trials as Dask futures on the same LocalCluster,
                       one mlflow.start_run per finished trial in the loop
* hyperopt fmin        fmin (sequential: one trial at a time), one mlflow.start_run per trial

utilization = ideal time / actual time, ideal = n_trials * trial_seconds / n_workers.
Every contender uses the same kind of sampler (``--sampler random``: framework overhead
only; ``--sampler tpe`` for the model-based samplers).

    python bench/overhead.py [--trials 500] [--sampler random|tpe] [--only hpo-mlops,optuna-dask]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings

SPACE = {"x": "uniform(-5, 5)", "y": "uniform(-5, 5)", "lr": "loguniform(1e-5, 1e-1)"}


def instant(params, trial=None):
    return (params["x"] - 1) ** 2 + (params["y"] + 2) ** 2 + params["lr"]


def sleep50(params, trial=None):
    time.sleep(0.05)
    return instant(params)


def _store() -> str:
    return f"sqlite:///{tempfile.mkdtemp(prefix='bench-')}/mlflow.db"


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("optuna", "hyperopt", "mlflow", "alembic", "distributed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


# -- contenders ------------------------------------------------------------------------------
QUEUE = 1  # ready trials per worker (Study.optimize's queue_per_worker); --queue


def run_hpo_mlops(objective, n, client, sampler):
    from hpo_mlops.study import Study

    study = Study(f"hpo-{objective.__name__}", SPACE, sampler=sampler, scheduler="fifo",
                  seed=0, tracking_uri=_store())
    t = time.perf_counter()
    study.optimize(objective, n_trials=n, client=client, queue_per_worker=QUEUE)
    return time.perf_counter() - t, len(study.trials)


def _optuna_sampler(kind):
    import optuna

    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=0, multivariate=True, constant_liar=True)
    return optuna.samplers.RandomSampler(seed=0)


def _suggest(trial):
    return {"x": trial.suggest_float("x", -5, 5), "y": trial.suggest_float("y", -5, 5),
            "lr": trial.suggest_float("lr", 1e-5, 1e-1, log=True)}


def _mlflow_log_trial(parent_id, number, params, value):
    import mlflow

    with mlflow.start_run(run_name=f"trial-{number}", nested=True,
                          tags={"mlflow.parentRunId": parent_id}):
        mlflow.log_params(params)
        mlflow.log_metric("loss", value)


def run_optuna_threads(objective, n, client, sampler):
    import mlflow
    import optuna

    mlflow.set_tracking_uri(_store())
    mlflow.set_experiment(f"optuna-{objective.__name__}")
    study = optuna.create_study(sampler=_optuna_sampler(sampler))
    with mlflow.start_run(run_name="study") as parent:
        pid = parent.info.run_id

        def obj(trial):
            params = _suggest(trial)
            value = objective(params)
            _mlflow_log_trial(pid, trial.number, params, value)
            return value

        t = time.perf_counter()
        study.optimize(obj, n_trials=n, n_jobs=2)
        return time.perf_counter() - t, len(study.trials)


def run_optuna_dask(objective, n, client, sampler):
    import mlflow
    import optuna
    from distributed import as_completed

    mlflow.set_tracking_uri(_store())
    mlflow.set_experiment(f"optuna-dask-{objective.__name__}")
    study = optuna.create_study(sampler=_optuna_sampler(sampler))
    workers = len(client.scheduler_info()["workers"])
    with mlflow.start_run(run_name="study") as parent:
        t = time.perf_counter()
        running = {}
        ac = as_completed()

        def submit():
            trial = study.ask()
            params = _suggest(trial)
            fut = client.submit(objective, params, pure=False)
            running[fut] = (trial, params)
            ac.add(fut)

        for _ in range(min(workers, n)):
            submit()
        asked = len(running)
        for fut in ac:
            trial, params = running.pop(fut)
            value = fut.result()
            study.tell(trial, value)
            _mlflow_log_trial(parent.info.run_id, trial.number, params, value)
            if asked < n:
                submit()
                asked += 1
        return time.perf_counter() - t, len(study.trials)


def run_hyperopt(objective, n, client, sampler):
    import hyperopt
    import mlflow
    import numpy as np
    from hyperopt import hp

    mlflow.set_tracking_uri(_store())
    mlflow.set_experiment(f"hyperopt-{objective.__name__}")
    space = {"x": hp.uniform("x", -5, 5), "y": hp.uniform("y", -5, 5),
             "lr": hp.loguniform("lr", np.log(1e-5), np.log(1e-1))}
    algo = hyperopt.tpe.suggest if sampler == "tpe" else hyperopt.rand.suggest
    with mlflow.start_run(run_name="study") as parent:
        counter = iter(range(n))

        def obj(params):
            params = {k: float(v) for k, v in params.items()}
            value = objective(params)
            _mlflow_log_trial(parent.info.run_id, next(counter), params, value)
            return value

        trials = hyperopt.Trials()
        t = time.perf_counter()
        hyperopt.fmin(obj, space, algo=algo, max_evals=n, trials=trials,
                      rstate=np.random.default_rng(0), show_progressbar=False)
        return time.perf_counter() - t, len(trials.trials)


def queue_cost(client, n_trials=80, seeds=5):
    """What the ready-trial queue costs the sampler: TPE asks one trial per worker ahead,
    before the results of the running ones are known. Best value after ``n_trials`` on the
    instant objective, median over seeds, with and without the queue."""
    import statistics

    from hpo_mlops.study import Study

    out = {}
    for q in (0, 1, 2):
        bests = []
        for seed in range(seeds):
            study = Study(f"q{q}-{seed}", SPACE, sampler="tpe", scheduler="fifo", seed=seed,
                          tracking=False)
            study.optimize(instant, n_trials=n_trials, client=client, queue_per_worker=q)
            bests.append(study.best_value)
        out[q] = statistics.median(bests)
    return out


CONTENDERS = {
    "hpo-mlops": run_hpo_mlops,
    "optuna-n_jobs": run_optuna_threads,
    "optuna-dask": run_optuna_dask,
    "hyperopt": run_hyperopt,
}


def _cluster():
    """The 2-worker LocalCluster a study would start itself (no scheduler-side queue)."""
    from distributed import Client

    from hpo_mlops.cluster import build_cluster

    cluster = build_cluster({"kind": "local", "n_workers": 2, "dashboard_address": None})
    return cluster, Client(cluster)


def child(name: str, obj_name: str, trials: int, sampler: str) -> None:
    """One contender on one objective in a fresh process with a fresh 2-worker cluster, so
    no contender inherits another's threads, caches or garbage (seen: MLflow's fluent API
    left state that cost the next contender 2% utilization in a shared process)."""
    _quiet()
    cluster, client = _cluster()
    objective = {"instant": instant, "sleep50": sleep50}[obj_name]
    with contextlib.redirect_stderr(open(os.devnull, "w")):
        wall, done = CONTENDERS[name](objective, trials, client, sampler)
    print(json.dumps({"wall": wall, "done": done}))
    client.close()
    cluster.close()


def main() -> None:
    global QUEUE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--sampler", choices=["random", "tpe"], default="random")
    ap.add_argument("--only", default=",".join(CONTENDERS))
    ap.add_argument("--objectives", default="instant,sleep50")
    ap.add_argument("--queue-cost", action="store_true",
                    help="also measure what the ready-trial queue costs TPE")
    ap.add_argument("--queue", type=int, default=QUEUE, help="hpo-mlops queue_per_worker")
    ap.add_argument("--child", nargs=2, metavar=("CONTENDER", "OBJECTIVE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    QUEUE = args.queue
    if args.child:
        child(*args.child, args.trials, args.sampler)
        return
    chosen = [c for c in args.only.split(",") if c]
    results = {}
    print(f"{args.trials} trials, 2 workers, sampler={args.sampler}, cores={os.cpu_count()}; "
          "each contender in its own process and cluster, one after the other")
    for obj_name in args.objectives.split(","):
        per_trial = 0.05 if obj_name == "sleep50" else 0.0
        for name in chosen:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, obj_name, "--trials", str(args.trials),
                 "--sampler", args.sampler, "--queue", str(args.queue)],
                capture_output=True, text=True, check=True)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[(obj_name, name)] = (res["wall"], res["done"], res["done"] * per_trial / 2)
    cost = None
    if args.queue_cost:
        _quiet()
        cluster, client = _cluster()
        cost = queue_cost(client)
        client.close()
        cluster.close()

    print(f"{'objective':<9} {'contender':<15} {'trials':>6} {'wall s':>8} {'trials/s':>9} "
          f"{'util':>6} {'vs hpo-mlops':>13}")
    for (obj_name, name), (wall, done, ideal) in results.items():
        util = f"{ideal / wall:6.1%}" if ideal else "     -"
        ref = results.get((obj_name, "hpo-mlops"))
        ratio = f"{(ref[1] / ref[0]) / (done / wall):12.2f}x" if ref else ""
        print(f"{obj_name:<9} {name:<15} {done:>6} {wall:>8.2f} {done / wall:>9.1f} {util} {ratio}")
    print("'vs hpo-mlops' = hpo-mlops trials/s divided by the contender's trials/s")
    if cost:
        print("TPE best after 80 trials (median of 5 seeds; lower is better), by ready trials "
              "queued per worker: " + ", ".join(f"{q}: {v:.4f}" for q, v in cost.items()))


if __name__ == "__main__":
    main()
