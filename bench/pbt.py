"""PBT against ASHA on the digits MLP of ``bench/pruning.py``, at the same total budget.

The task (data, model, one epoch of ``partial_fit``) is ``bench/pruning.py``'s; only the
learning rate and the momentum are searched (the rest fixed: 64 hidden units, alpha 1e-4,
batches of 64), since those are what PBT can change while a model trains. PBT changes them
in the model it loaded: scikit-learn's SGD optimizer keeps its own copy, so it is set too.

* pbt   a population of ``--population`` members (random initial params), 3 epochs per
        interval, ``--max-budget`` epochs each: population x max_budget epochs in all
* asha  random sampler, ``asha`` (min 1, max ``--max-budget``, eta 3), as many trials as
        reach about the same number of epochs (measured, printed beside)

Final validation accuracy of the best trial that trained to ``--max-budget``; median of
``--seeds`` seeds.

    python bench/pbt.py [--seeds 5] [--population 8] [--max-budget 27] [--asha-trials 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pruning  # noqa: E402 - the task code, not copied

SPACE = {"lr": "loguniform(3e-5, 0.3)", "momentum": "uniform(0.0, 0.99)",
         "hidden": "choices([64])", "alpha": "choices([0.0001])", "batch": "choices([64])"}


def objective(log_path: str):
    """``pruning.train`` from the checkpoint, with this job's lr and momentum put into the
    loaded model (a PBT member's params change between jobs)."""

    def run(params, trial):
        state = trial.load()
        if state is not None:
            clf = state["clf"]
            clf.set_params(learning_rate_init=params["lr"], momentum=params["momentum"])
            opt = getattr(clf, "_optimizer", None)
            if opt is not None:
                opt.learning_rate_init = opt.learning_rate = params["lr"]
                opt.momentum = params["momentum"]

        def report(score, step):
            trial.report(score, step)
            return trial.should_prune()

        score, state = pruning.train("digits", params, trial.context, trial.number, log_path,
                                     report, trial.budget, state)
        trial.save(state)
        return {"accuracy": score}

    return run


def run(rule: str, seed: int, n_trials: int, max_budget: int, client) -> tuple[float, float]:
    from hpo_mlops.study import Study

    if rule == "pbt":
        scheduler = {"name": "pbt", "perturbation_interval": 3, "max_budget": max_budget,
                     "seed": seed}
    else:
        scheduler = {"name": "asha", "min_budget": 1, "max_budget": max_budget, "eta": 3}
    study = Study(f"bench-pbt-{rule}-{seed}", SPACE, metric="accuracy", mode="max",
                  sampler={"name": "random", "seed": seed}, scheduler=scheduler,
                  tracking=False)
    log = tempfile.mktemp(suffix=".log")
    study.optimize(objective(log), n_trials=n_trials, client=client,
                   setup=pruning.load_digits_split, checkpoint_dir=tempfile.mkdtemp())
    with open(log) as fh:
        epochs = sum(1 for _ in fh)
    os.unlink(log)
    return study.best_value, epochs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--max-budget", type=int, default=27)
    ap.add_argument("--asha-trials", type=int, default=40)
    args = ap.parse_args()
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    rows = {}
    for rule, n in (("pbt", args.population), ("asha", args.asha_trials)):
        acc, epochs = [], []
        for seed in range(args.seeds):
            a, e = run(rule, seed, n, args.max_budget, client)
            acc.append(a)
            epochs.append(e)
            print(f"{rule} seed {seed}: accuracy {a:.4f}, {e} epochs", flush=True)
        rows[rule] = (n, statistics.median(epochs), statistics.median(acc), min(acc), max(acc))
    client.close()
    cluster.close()
    print(f"\ndigits MLP (lr, momentum), max_budget {args.max_budget} epochs, "
          f"median of {args.seeds} seeds")
    print("| rule | trials | epochs (median) | final val. accuracy (median) | min | max |")
    print("|---|---|---|---|---|---|")
    for rule, (n, e, med, lo, hi) in rows.items():
        print(f"| {rule} | {n} | {e:.0f} | {med:.4f} | {lo:.4f} | {hi:.4f} |")


if __name__ == "__main__":
    main()
