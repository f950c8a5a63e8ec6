"""Pruning: budget and wall time to first reach a target score, against no pruning and
Optuna's own HyperbandPruner, plus the scheduler plugin's latency and throughput.

Two tasks, epochs as the budget (max 81, eta 3):

* digits     scikit-learn digits, SGDClassifier trained by partial_fit, validation accuracy
             (data loaded once per worker with ``setup=``)
* synthetic  cheap learning curves whose early ranking only partly predicts the final one

Contenders (TPE sampler for all, so ``tpe`` + ``hyperband`` is BOHB-like): no pruning (fifo),
median, asha, hyperband, async_hyperband on hpo-mlops (2-worker LocalCluster), and Optuna's
study.optimize(n_jobs=2) with HyperbandPruner, side by side. Every report is appended with
its time to a log; after a run the budget consumed (epochs, all trials) and the wall time
until the first report >= target are read off it. Median over the seeds.

    python bench/pruning.py [--seeds 5] [--trials 150] [--tasks digits,synthetic]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings

MAX_BUDGET, ETA = 81, 3  # the issue's own example; --max-budget to change
SPACE = {"alpha": "loguniform(1e-6, 1e-1)", "eta0": "loguniform(1e-4, 1.0)",
         "loss": "choices(['hinge', 'log_loss', 'modified_huber'])",
         "lr": "choices(['constant', 'invscaling', 'adaptive'])"}
TARGETS = {"digits": 0.968, "synthetic": 0.94}


# -- tasks (module level: workers import them) --------------------------------------------------
def load_digits_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    scaler = StandardScaler().fit(xtr)
    return scaler.transform(xtr), scaler.transform(xva), ytr, yva


def _log(path: str, trial: int, step: int, score: float) -> None:
    with open(path, "a") as fh:
        fh.write(f"{time.time()} {trial} {step} {score}\n")


def digits_epochs(params, data, trial_number, log_path, report, budget=MAX_BUDGET):
    """Train up to ``budget`` epochs; ``report(score, epoch) -> stop?``."""
    import numpy as np
    from sklearn.linear_model import SGDClassifier

    xtr, xva, ytr, yva = data
    clf = SGDClassifier(loss=params["loss"], alpha=params["alpha"], eta0=params["eta0"],
                        learning_rate=params["lr"], random_state=trial_number)
    classes = np.unique(ytr)
    score = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(1, int(budget) + 1):
            clf.partial_fit(xtr, ytr, classes=classes)
            score = float(clf.score(xva, yva))
            _log(log_path, trial_number, epoch, score)
            if report(score, epoch):
                break
    return score


def synthetic_epochs(params, data, trial_number, log_path, report, budget=MAX_BUDGET):
    """final quality from the params, approached along a curve with a param-dependent speed."""
    import math

    q = 1.0 - 0.5 * abs(math.log10(params["alpha"]) + 4) / 3 - 0.3 * abs(math.log10(params["eta0"]) + 2) / 2
    q += {"hinge": 0.0, "log_loss": 0.03, "modified_huber": 0.01}[params["loss"]]
    speed = {"constant": 2.0, "invscaling": 6.0, "adaptive": 4.0}[params["lr"]]
    score = 0.0
    for epoch in range(1, int(budget) + 1):
        score = q * (1 - math.exp(-epoch / speed))
        _log(log_path, trial_number, epoch, score)
        if report(score, epoch):
            break
    return score


TASKS = {"digits": digits_epochs, "synthetic": synthetic_epochs}


def hpo_objective(task, log_path):
    fn = TASKS[task]

    def objective(params, trial):
        data = trial.context if task == "digits" else None

        def report(score, step):
            trial.report(score, step)
            return trial.should_prune()

        return {"accuracy": fn(params, data, trial.number, log_path, report, trial.budget)}

    return objective


# -- contenders -------------------------------------------------------------------------------
def run_hpo(task, rule, seed, n_trials, client, log_path):
    from hpo_mlops.study import Study

    scheduler = {"name": rule, "max_budget": MAX_BUDGET}
    if rule in ("asha", "hyperband", "async_hyperband", "sha"):
        scheduler.update(min_budget=1, eta=ETA)
    if rule == "median":
        scheduler.update(min_trials=5, warmup_steps=1)
    study = Study(f"bench-{task}-{rule}-{seed}", SPACE, metric="accuracy", mode="max",
                  sampler={"name": "tpe", "seed": seed}, scheduler=scheduler, tracking=False)
    study.optimize(hpo_objective(task, log_path), n_trials=n_trials, client=client,
                   setup=load_digits_split if task == "digits" else None,
                   checkpoint_dir=tempfile.mkdtemp())
    return study


def run_optuna(task, seed, n_trials, log_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    data = load_digits_split() if task == "digits" else None
    fn = TASKS[task]

    def objective(trial):
        params = {"alpha": trial.suggest_float("alpha", 1e-6, 1e-1, log=True),
                  "eta0": trial.suggest_float("eta0", 1e-4, 1.0, log=True),
                  "loss": trial.suggest_categorical("loss", ["hinge", "log_loss", "modified_huber"]),
                  "lr": trial.suggest_categorical("lr", ["constant", "invscaling", "adaptive"])}

        def report(score, step):
            trial.report(score, step)
            return trial.should_prune()

        score = fn(params, data, trial.number, log_path, report, MAX_BUDGET)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return score

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=MAX_BUDGET,
                                              reduction_factor=ETA))
    study.optimize(objective, n_trials=n_trials, n_jobs=2)
    return study


def read_log(path, t0, target):
    """(budget until first >= target, seconds until then, total budget, best score)."""
    rows = []
    with open(path) as fh:
        for line in fh:
            t, _trial, _step, score = line.split()
            rows.append((float(t), float(score)))
    rows.sort()
    hit = next((i for i, (_, s) in enumerate(rows) if s >= target), None)
    best = max((s for _, s in rows), default=float("nan"))
    if hit is None:
        return None, None, len(rows), best
    return hit + 1, rows[hit][0] - t0, len(rows), best


# -- the plugin's latency and throughput ------------------------------------------------------
def plugin_latency(n_reports=2000):
    """Round trip of one report from a worker, and reports/s from 16 concurrent reporters
    (2 worker processes x 8 threads), against a rule on the scheduler."""
    from distributed import Client, LocalCluster

    from hpo_mlops.dask_plugin import PruningPlugin

    cluster = LocalCluster(n_workers=2, threads_per_worker=8, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client.register_plugin(PruningPlugin())
    # the median rule keeps every report and never stops a trial here (no trial finishes)
    client.sync(client.scheduler.hpo_register, key="lat",
                spec={"name": "median", "min_trials": 10**9}, mode="min")

    def ping(trial, n):
        from distributed import get_worker

        from hpo_mlops.dask_plugin import dask_reporter

        get_worker()  # noqa: B018 - must run on a worker
        report = dask_reporter("lat")
        times = []
        for step in range(1, n + 1):
            t = time.perf_counter()
            report(trial, step, 1.0 / step)
            times.append(time.perf_counter() - t)
        return times

    times = sorted(client.submit(ping, 0, n_reports, pure=False).result())
    p50, p99 = times[len(times) // 2], times[int(len(times) * 0.99)]
    # throughput: many concurrent reporters (2 workers x 8 threads)
    t = time.perf_counter()
    futs = [client.submit(ping, 100 + i, n_reports // 4, pure=False) for i in range(16)]
    total = sum(len(f.result()) for f in futs)
    rate = total / (time.perf_counter() - t)
    client.close()
    cluster.close()
    return p50, p99, rate


def main() -> None:
    global MAX_BUDGET
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=150)
    ap.add_argument("--tasks", default="digits,synthetic")
    ap.add_argument("--rules", default="fifo,median,asha,hyperband,async_hyperband,optuna")
    ap.add_argument("--max-budget", type=int, default=MAX_BUDGET)
    args = ap.parse_args()
    MAX_BUDGET = args.max_budget
    warnings.filterwarnings("ignore")
    os.environ["PYTHONWARNINGS"] = "ignore"  # the worker processes too
    for name in ("distributed", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.worker-saturation": float("inf")}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                               silence_logs=logging.ERROR)
    client = Client(cluster)
    print(f"{args.trials} trials a study, max_budget={MAX_BUDGET} epochs, eta={ETA}, "
          f"2 workers, TPE everywhere, median over {args.seeds} seeds; cores={os.cpu_count()}")
    rules = args.rules.split(",")
    for task in args.tasks.split(","):
        target = TARGETS[task]
        rows = {}
        for rule in rules:
            stats = []
            for seed in range(args.seeds):
                log_path = tempfile.mktemp(prefix="prune-log-")
                open(log_path, "w").close()
                t0 = time.time()
                if rule == "optuna":
                    run_optuna(task, seed, args.trials, log_path)
                else:
                    run_hpo(task, rule, seed, args.trials, client, log_path)
                wall = time.time() - t0
                stats.append((*read_log(log_path, t0, target), wall))
                os.unlink(log_path)
            rows[rule] = stats
        base = statistics.median(s[2] for s in rows["fifo"]) if "fifo" in rows else None
        print(f"\n{task}: target {target} (budget = epochs summed over all trials)")
        print(f"{'rule':<16} {'hit':>5} {'budget->target':>15} {'s->target':>10} "
              f"{'total budget':>13} {'wall s':>7} {'best':>6} {'saving vs fifo':>15}")
        for rule, stats in rows.items():
            hits = [s for s in stats if s[0] is not None]
            b = statistics.median(s[0] for s in hits) if hits else float("nan")
            w = statistics.median(s[1] for s in hits) if hits else float("nan")
            tot = statistics.median(s[2] for s in stats)
            wall = statistics.median(s[4] for s in stats)
            best = statistics.median(s[3] for s in stats)
            fifo_hits = [s[0] for s in rows.get("fifo", []) if s[0] is not None]
            ratio = (statistics.median(fifo_hits) / b) if fifo_hits and hits else float("nan")
            print(f"{rule:<16} {len(hits)}/{len(stats):<3} {b:>15.0f} {w:>10.2f} {tot:>13.0f} "
                  f"{wall:>7.2f} {best:>6.3f} {ratio:>14.1f}x")
        if base:
            print(f"(no pruning spends {base:.0f} epochs for {args.trials} trials)")
    client.close()
    cluster.close()
    p50, p99, rate = plugin_latency()
    print(f"\nshould_prune round trip from a worker: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms;"
          f" {rate:.0f} reports/s with 16 concurrent reporters on 2 workers")


if __name__ == "__main__":
    main()
