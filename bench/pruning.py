"""Pruning: budget and wall time to first reach a target score, against no pruning and
Optuna's own HyperbandPruner, plus the scheduler plugin's latency and throughput.

Tasks, epochs as the budget (max 81, eta 3; ``--max-budget`` to change):

* digits     scikit-learn digits, a one-hidden-layer MLPClassifier (SGD with momentum)
             trained by partial_fit, validation accuracy (data loaded once per worker with
             ``setup=``); target 0.983, the best accuracy of the top 2.7% of 300 random
             configurations within 81 epochs, first reached at epoch 40-50 by most of them
* digits-sgd the same data with a linear SGDClassifier; target 0.97. Kept to show why it
             is a poor pruning benchmark: the linear model saturates, the top configurations
             all plateau at 0.963-0.972 (the best of 600 random ones: 0.9722), so reaching
             0.97 is one validation sample of luck on a plateau more than a better
             configuration, and the epoch-1 accuracy ranks configurations poorly (Spearman
             0.69 with the best, against 0.82 for the MLP)
* synthetic  cheap power-law learning curves, target reached by about 1% of random
             configurations at epoch 20-70; early values predict final ones well
* deceptive  like synthetic, but the best configurations start slowest (ASHA's weak spot,
             what Hyperband's brackets hedge against)

Contenders: no pruning (fifo), median, asha, asha_promotion, hyperband, async_hyperband on hpo-mlops
(2-worker LocalCluster), and Optuna's study.optimize(n_jobs=2) with HyperbandPruner, side
by side, all with the same sampler (``--sampler tpe``, the default, so tpe + hyperband is
BOHB-like; or ``random``, the setting of the ASHA and Hyperband papers). ``dehb`` is DEHB
(plugins/hpo_mlops_dehb) as the sampler, which picks each trial's budget in its own Hyperband
brackets (min 1, max, eta as above), under fifo; ``--sampler`` does not apply to it. No pruning runs
``--trials`` trials, every pruning contender 4x as many, which costs them about the same
budget or less: the question is how much budget each needs to reach the target, not how
far a fixed number of trials gets. Every epoch is appended with its time to a log; after a
run the budget consumed (epochs, all trials) and the wall time until the first report >=
target are read off it. Median over the seeds, a seed that misses the target counting as
never (so a median of "inf" means it missed in most seeds).

Synchronous rules resume a promoted trial from its checkpoint (trial.save / trial.load),
as the README shows, so no epoch is trained twice.

    python bench/pruning.py [--seeds 5] [--trials 150] [--tasks digits,synthetic,deceptive]
                            [--sampler tpe|random] [--target digits=0.98]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import tempfile
import time
import warnings

MAX_BUDGET, ETA = 81, 3  # the issue's own example; --max-budget to change
SGD_SPACE = {"alpha": "loguniform(1e-6, 1e-1)", "eta0": "loguniform(1e-4, 1.0)",
             "loss": "choices(['hinge', 'log_loss', 'modified_huber'])",
             "lr": "choices(['constant', 'invscaling', 'adaptive'])"}
MLP_SPACE = {"lr": "loguniform(3e-5, 0.3)", "alpha": "loguniform(1e-6, 1.0)",
             "hidden": "choices([8, 16, 32, 64, 128])", "batch": "choices([16, 32, 64, 128, 256])",
             "momentum": "uniform(0.0, 0.99)"}
# targets were set from random configurations alone (about the top 1-3% of them), before
# any pruning rule ran on the task
TARGETS = {"digits": 0.983, "digits-sgd": 0.97, "synthetic": 0.97, "deceptive": 0.975}


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


# A task is ``init(params, seed) -> state`` and ``epoch(state, data) -> score``; the state is
# plain picklable data, so hpo-mlops' synchronous rules resume a promoted trial from its
# checkpoint (trial.save / trial.load) instead of training it again from epoch 1.
def mlp_init(params, seed):
    from sklearn.neural_network import MLPClassifier

    return {"epoch": 0, "clf": MLPClassifier(
        hidden_layer_sizes=(params["hidden"],), alpha=params["alpha"], solver="sgd",
        learning_rate_init=params["lr"], momentum=params["momentum"],
        batch_size=params["batch"], random_state=seed)}


def sgd_init(params, seed):
    from sklearn.linear_model import SGDClassifier

    return {"epoch": 0, "clf": SGDClassifier(loss=params["loss"], alpha=params["alpha"],
                                             eta0=params["eta0"], learning_rate=params["lr"],
                                             random_state=seed)}


def digits_epoch(state, data):
    """One ``partial_fit`` pass over the training split; validation accuracy."""
    import numpy as np

    xtr, xva, ytr, yva = data
    state["clf"].partial_fit(xtr, ytr, classes=np.arange(10))
    return float(state["clf"].score(xva, yva))


def _final_quality(params):
    """(final quality, log10 distance of eta0 from its best value) of a synthetic task:
    a narrow peak at alpha ~3e-5, eta0 ~0.03, log_loss, invscaling."""
    import math

    x = math.log10(params["alpha"]) + 4.5
    y = math.log10(params["eta0"]) + 1.5
    q = 0.99 - 0.06 * x * x - 0.10 * y * y
    q += {"hinge": -0.02, "log_loss": 0.0, "modified_huber": -0.01}[params["loss"]]
    q += {"constant": -0.015, "invscaling": 0.0, "adaptive": -0.005}[params["lr"]]
    return q, y


def synthetic_init(params, seed):
    """A cheap power-law learning curve ``q - d * epoch**-c + noise``.

    The final quality ``q`` peaks in a narrow region (alpha ~3e-5, eta0 ~0.03, log_loss,
    invscaling): about 1% of random configurations ever reach the 0.97 target, at epoch
    20-70. The gap after one epoch ``d`` and its decay ``c`` depend on the params too: small
    steps and ``invscaling`` start further behind and close the gap more slowly, so the
    best configurations are not the best early (they are at 0.69-0.75 after one epoch, where
    fast mediocre ones are at 0.8). Over 3,000 random configurations the Spearman
    correlation with the final value is 0.97 at epoch 1 and 0.99 at 3. Noise 0.003 per
    report, seeded by trial.
    """
    import random

    q, y = _final_quality(params)
    slow = {"constant": 0.0, "invscaling": 0.1, "adaptive": 0.05}[params["lr"]] - 0.05 * y
    return {"epoch": 0, "q": q, "d": min(max(0.2 + slow, 0.05), 0.5),
            "c": min(max(1.0 - 2 * slow, 0.4), 2.0), "noise": random.Random(seed * 7919 + 1)}


def synthetic_epoch(state, data):
    return state["q"] - state["d"] * state["epoch"] ** -state["c"] + state["noise"].gauss(0, 0.003)


def deceptive_init(params, seed):
    """Like ``synthetic`` but the best configurations are the *slowest* starters:
    ``q * (1 - exp(-epoch / tau))`` with ``tau`` up to 4 for the best region, so they sit at
    0.2-0.5 after one epoch while fast mediocre ones are at 0.75, and only show at epoch 9-27.
    About 1.5% of random configurations reach the 0.975 target. This is the case Hyperband's
    brackets hedge against: a rule that judges every trial at epoch 1 (ASHA) is misled."""
    import random

    q, y = _final_quality(params)
    tau = 2.0 * 10 ** (-0.5 * y) * {"constant": 0.7, "invscaling": 2.0, "adaptive": 1.0}[params["lr"]]
    return {"epoch": 0, "q": q, "tau": tau, "noise": random.Random(seed * 7919 + 1)}


def deceptive_epoch(state, data):
    import math

    return state["q"] * (1 - math.exp(-state["epoch"] / state["tau"])) + state["noise"].gauss(0, 0.004)


# task -> (init, epoch, space, data loader run once per worker or None)
TASKS = {"digits": (mlp_init, digits_epoch, MLP_SPACE, load_digits_split),
         "digits-sgd": (sgd_init, digits_epoch, SGD_SPACE, load_digits_split),
         "synthetic": (synthetic_init, synthetic_epoch, SGD_SPACE, None),
         "deceptive": (deceptive_init, deceptive_epoch, SGD_SPACE, None)}


def train(task, params, data, seed, log_path, report, budget, state=None):
    """Train from ``state`` (a checkpoint) or from scratch up to epoch ``budget``; every
    epoch is logged with its time; ``report(score, epoch) -> stop?``. Returns (score, state)."""
    init, epoch, _, _ = TASKS[task]
    state = state or init(params, seed)
    score = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while state["epoch"] < int(budget):
            state["epoch"] += 1
            score = epoch(state, data)
            _log(log_path, seed, state["epoch"], score)
            if report(score, state["epoch"]):
                break
    return score, state


def hpo_objective(task, log_path):
    def objective(params, trial):
        def report(score, step):
            trial.report(score, step)
            return trial.should_prune()

        score, state = train(task, params, trial.context, trial.number, log_path, report,
                             trial.budget, trial.load())
        trial.save(state)
        return {"accuracy": score}

    return objective


# -- contenders -------------------------------------------------------------------------------
def run_hpo(task, rule, seed, n_trials, client, log_path, sampler="tpe"):
    from hpo_mlops.study import Study

    spec = {"name": sampler, "seed": seed}
    if rule == "dehb":  # DEHB is the sampler and picks each trial's budget; fifo runs it there
        spec = {"name": "dehb", "seed": seed, "min_budget": 1, "max_budget": MAX_BUDGET,
                "eta": ETA}
        rule = "fifo"
    scheduler = {"name": rule, "max_budget": MAX_BUDGET}
    if rule not in ("fifo", "median"):  # the rung rules
        scheduler.update(min_budget=1, eta=ETA)
    if rule == "median":
        scheduler.update(min_trials=5, warmup_steps=1)
    _, _, space, setup = TASKS[task]
    study = Study(f"bench-{task}-{rule}-{seed}", space, metric="accuracy", mode="max",
                  sampler=spec, scheduler=scheduler, tracking=False)
    study.optimize(hpo_objective(task, log_path), n_trials=n_trials, client=client,
                   setup=setup, checkpoint_dir=tempfile.mkdtemp())
    return study


def run_optuna(task, seed, n_trials, log_path, sampler="tpe"):
    import optuna
    from hpo_mlops_optuna._mapping import native

    from hpo_mlops.space import Space

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _, _, space, setup = TASKS[task]
    data = setup() if setup else None
    natives = [native(p) for p in Space.from_dict(space)]  # the very space hpo-mlops searches

    def objective(trial):
        params = {n.name: n.to_public(n.suggest(trial)) for n in natives}

        def report(score, step):
            trial.report(score, step)
            return trial.should_prune()

        score, _ = train(task, params, data, trial.number, log_path, report, MAX_BUDGET)
        if trial.should_prune():
            raise optuna.TrialPruned()
        return score

    study = optuna.create_study(
        direction="maximize", sampler=(optuna.samplers.TPESampler(seed=seed) if sampler == "tpe"
                 else optuna.samplers.RandomSampler(seed=seed)),
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


def _median(values):
    """Median with a miss (None) counted as infinitely late: a rule that misses the target
    in most seeds gets 'miss', not the median of its few lucky seeds."""
    return statistics.median(math.inf if v is None else v for v in values)


def print_table(task, target, rows):
    print(f"\n{task}: target {target}; budget = epochs summed over all trials until the first "
          "report >= target (a miss counts as never)")
    print(f"{'rule':<16} {'trials':>6} {'hit':>5} {'budget->target':>15} {'s->target':>10} "
          f"{'total budget':>13} {'wall s':>7} {'best':>6} {'saving vs fifo':>15}")
    fifo = _median(s[0] for s in rows["fifo"][1]) if "fifo" in rows else math.nan
    for rule, (n_trials, stats) in rows.items():
        b = _median(s[0] for s in stats)
        w = _median(s[1] for s in stats)
        hits = sum(s[0] is not None for s in stats)
        tot = statistics.median(s[2] for s in stats)
        wall = statistics.median(s[4] for s in stats)
        best = statistics.median(s[3] for s in stats)
        ratio = fifo / b if b < math.inf else 0.0
        print(f"{rule:<16} {n_trials:>6} {hits:>2}/{len(stats):<2} {b:>15.0f} {w:>10.2f} "
              f"{tot:>13.0f} {wall:>7.2f} {best:>6.3f} {ratio:>14.1f}x")
        print(f"{'':<16} per seed: {' '.join('-' if s[0] is None else str(s[0]) for s in stats)}")


# -- the plugin's latency and throughput ------------------------------------------------------
def plugin_latency(n_reports=2000):
    """Round trip of one report from a worker, and reports/s from 16 concurrent reporters
    (2 worker processes x 8 threads), against a rule on the scheduler."""
    from distributed import Client, LocalCluster

    from hpo_mlops.dask_plugin import HubPlugin

    cluster = LocalCluster(n_workers=2, threads_per_worker=8, dashboard_address=None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client.register_plugin(HubPlugin())
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
    ap.add_argument("--first-seed", type=int, default=0,
                    help="seeds run are first-seed .. first-seed+seeds-1 (to add seeds to a run)")
    ap.add_argument("--trials", type=int, default=150, help="trials without pruning (fifo)")
    ap.add_argument("--prune-trials", type=int, default=0,
                    help="trials for every pruning contender (default 4x --trials: they are "
                         "given about the budget of fifo, not the same number of trials)")
    ap.add_argument("--tasks", default="digits,synthetic,deceptive")
    ap.add_argument("--rules",
                    default="fifo,median,asha,asha_promotion,hyperband,async_hyperband,dehb,"
                            "optuna")
    ap.add_argument("--max-budget", type=int, default=MAX_BUDGET)
    ap.add_argument("--skip-latency", action="store_true", help="skip the plugin's latency run")
    ap.add_argument("--sampler", choices=["tpe", "random"], default="tpe")
    ap.add_argument("--target", action="append", default=[],
                    help="override a task's target: --target synthetic=0.98 (repeatable)")
    args = ap.parse_args()
    MAX_BUDGET = args.max_budget
    for item in args.target:
        task, _, value = item.partition("=")
        TARGETS[task] = float(value)
    warnings.filterwarnings("ignore")
    os.environ["PYTHONWARNINGS"] = "ignore"  # the worker processes too
    for name in ("distributed", "optuna"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from distributed import Client

    from hpo_mlops.cluster import build_cluster

    # the LocalCluster a study would start itself (no scheduler-side queue)
    cluster = build_cluster({"kind": "local", "n_workers": 2, "dashboard_address": None})
    client = Client(cluster)
    print(f"{args.trials} trials without pruning, {args.prune_trials or 4 * args.trials} with, max_budget={MAX_BUDGET} epochs, eta={ETA}, "
          f"2 workers, sampler {args.sampler} everywhere, median over {args.seeds} seeds; cores={os.cpu_count()}")
    rules = args.rules.split(",")
    for task in args.tasks.split(","):
        target = TARGETS[task]
        rows = {}
        for rule in rules:
            n_trials = args.trials if rule == "fifo" else args.prune_trials or 4 * args.trials
            stats = []
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                log_path = tempfile.mktemp(prefix="prune-log-")
                open(log_path, "w").close()
                t0 = time.time()
                if rule == "optuna":
                    run_optuna(task, seed, n_trials, log_path, args.sampler)
                else:
                    run_hpo(task, rule, seed, n_trials, client, log_path, args.sampler)
                wall = time.time() - t0
                stats.append((*read_log(log_path, t0, target), wall))
                os.unlink(log_path)
            rows[rule] = (n_trials, stats)
        print_table(task, target, rows)
    client.close()
    cluster.close()
    if args.skip_latency:
        return
    p50, p99, rate = plugin_latency()
    print(f"\nshould_prune round trip from a worker: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms;"
          f" {rate:.0f} reports/s with 16 concurrent reporters on 2 workers")


if __name__ == "__main__":
    main()
