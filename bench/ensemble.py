"""Ensembles: digits test accuracy of the ensemble against the best single trial, and the
cost of one selection as the number of trials grows.

Accuracy. The pipeline's own objective (examples/digits/objective.py: a linear
SGDClassifier, 27 epochs, its validation probabilities saved with
``trial.save_predictions``) in a study of ``--trials`` trials (tpe, no pruning, a 2-worker
LocalCluster, no tracking), per seed. Then ``study.ensemble(k)`` by Caruana's selection and
by ``topk``; the members are trained again from their params exactly as in their trials
(same data, same seed: the models whose validation predictions chose them) and the
ensemble averages their test probabilities. Against: the best trial by the study's metric
(validation accuracy), and the best by validation log loss (the ensemble's first member).
The test split is the pipeline's (prepare.py: 360 images, never seen by the search).

Cost. ``select`` on synthetic libraries of m trials (360 validation samples, 10 classes,
as digits), k=5: the first selection (each trial's .npz read once) and a rerun with the
files already read (what ``study.keep_ensemble`` pays after each trial). Median of
``--repeats``, in ms, on this machine.

    python bench/ensemble.py [--seeds 3] [--trials 30] [--k 5] [--sizes 10,30,100,300,1000]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "digits"))

from objective import DEFAULT_EPOCHS, fit_epochs, load_data, make_model  # noqa: E402

from hpo_mlops.ensemble import Library, probabilities, select  # noqa: E402
from hpo_mlops.results import TrialRecord, TrialState  # noqa: E402
from hpo_mlops.study import Study  # noqa: E402
from hpo_mlops.trial import PREDICTIONS_TAG, Trial  # noqa: E402

SPACE = {  # params.yaml's space
    "alpha": "loguniform(1e-6, 1e-1)",
    "loss": "choices(['hinge', 'log_loss', 'modified_huber'])",
    "penalty": "choices(['l2', 'l1', 'elasticnet'])",
    "l1_ratio": {"dist": "uniform(0.05, 0.95)", "when": {"penalty": "elasticnet"}},
    "learning_rate": "choices(['optimal', 'adaptive'])",
    "eta0": {"dist": "loguniform(1e-3, 1.0)", "when": {"learning_rate": "adaptive"}},
}


def prepared(folder: str) -> str:
    """The pipeline's splits (prepare.py, its default seed and sizes) in ``folder``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("digits_prepare",
                                                  ROOT / "examples" / "digits" / "prepare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = os.path.join(folder, "data")
    mod.main(str(ROOT / "params.yaml"), out)
    return out


def accuracy_row(seed: int, n_trials: int, k: int, data_dir: str, client: object,
                 folder: str) -> dict[str, float]:
    from objective import objective

    study = Study(f"ens-{seed}", SPACE, metric="accuracy", mode="max", sampler="tpe",
                  scheduler="fifo", seed=seed, tracking=False)
    study.optimize(objective, n_trials=n_trials, client=client,
                   setup=lambda: load_data(data_dir),
                   checkpoint_dir=os.path.join(folder, f"ck-{seed}"))
    data = load_data(data_dir)
    with np.load(Path(data_dir) / "test.npz") as f:
        X_test, y_test = f["X"], f["y"]
    params = {t.number: t.params for t in study.trials}
    cache: dict[int, np.ndarray] = {}

    saved = {t.number: t.tags[PREDICTIONS_TAG] for t in study.trials}

    def test_proba(n: int) -> np.ndarray:
        if n not in cache:
            model = fit_epochs(make_model(params[n]), data["X_train"], data["y_train"],
                               DEFAULT_EPOCHS)
            with np.load(saved[n]) as f:  # the very model of the trial
                assert np.allclose(f["y_pred"], probabilities(model, data["X_val"]))
            cache[n] = probabilities(model, X_test)
        return cache[n]

    def acc(p: np.ndarray) -> float:
        return float((p.argmax(axis=1) == y_test).mean())

    row = {"best_trial": acc(test_proba(study.best_trial.number))}
    for method in ("caruana", "topk"):
        ens = study.ensemble(k=k, method=method)
        row["best_logloss"] = acc(test_proba(ens.best_single))
        row[method] = acc(ens.combine([test_proba(n) for n in ens.members]))
        row[f"{method}_members"] = len(ens.members)
        row[f"{method}_val_gain"] = ens.best_single_loss - ens.val_loss
    return row


def synthetic_library(m: int, folder: str, n: int = 360, classes: int = 10,
                      seed: int = 0) -> list[TrialRecord]:
    """m trials' saved predictions: noisy, each right on a random part of the samples."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    trials = []
    for i in range(m):
        logits = rng.normal(size=(n, classes))
        logits[np.arange(n), y] += rng.uniform(0.5, 3.0)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        t = Trial(i, {}, checkpoint_dir=os.path.join(folder, f"m{m}", f"trial-{i}"))
        t.save_predictions(p, y)
        trials.append(TrialRecord(i, {}, TrialState.COMPLETE, values=[0.0], tags=dict(t.tags)))
    return trials


def cost_rows(sizes: list[int], k: int, repeats: int, folder: str) -> list[tuple]:
    rows = []
    for m in sizes:
        trials = synthetic_library(m, folder)
        first, again, steps = [], [], 0
        for _ in range(repeats):
            lib = Library()
            t0 = time.perf_counter()
            ens = select(trials, k=k, library=lib)
            first.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            select(trials, k=k, library=lib)
            again.append(time.perf_counter() - t0)
            steps = len(ens.history)
        rows.append((m, 1000 * statistics.median(first), 1000 * statistics.median(again), steps))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--sizes", default="10,30,100,300,1000")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as folder:
        data_dir = prepared(folder)
        with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                          silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            rows = [accuracy_row(s, args.trials, args.k, data_dir, client, folder)
                    for s in range(args.seeds)]
        print(f"\ndigits test accuracy ({args.trials} trials, tpe, no pruning, k={args.k}; "
              "360 test images)")
        print(f"{'seed':>4} {'best trial':>10} {'best logloss':>12} {'caruana':>8} {'(members)':>9} "
              f"{'topk':>6}")
        for s, r in enumerate(rows):
            print(f"{s:>4} {r['best_trial']:>10.4f} {r['best_logloss']:>12.4f} {r['caruana']:>8.4f} "
                  f"{r['caruana_members']:>9} {r['topk']:>6.4f}")
        med = {key: statistics.median(r[key] for r in rows)
               for key in ("best_trial", "best_logloss", "caruana", "topk")}
        print(f"{'med':>4} {med['best_trial']:>10.4f} {med['best_logloss']:>12.4f} "
              f"{med['caruana']:>8.4f} {'':>9} {med['topk']:>6.4f}")
        print(f"\nselection cost, k={args.k}, 360 samples x 10 classes (median of "
              f"{args.repeats}, ms)")
        print(f"{'trials':>6} {'first (reads .npz)':>18} {'rerun (cached)':>14} {'steps':>5}")
        for m, first, again, steps in cost_rows([int(x) for x in args.sizes.split(",")],
                                                args.k, args.repeats, folder):
            print(f"{m:>6} {first:>18.1f} {again:>14.2f} {steps:>5}")


if __name__ == "__main__":
    main()
