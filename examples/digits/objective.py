"""The digits study's objective: a linear classifier trained by SGD, one epoch per step.

``trial.budget`` (the scheduler's ``max_budget``) is the number of epochs; after each epoch
the validation accuracy is reported, so ASHA stops weak configurations at its rungs
(1, 3, 9 epochs...) and only promising ones get all 27. ``load_data`` runs once per Dask
worker (``objective.setup`` in params.yaml), not once per trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpo_mlops.ensemble import probabilities

DEFAULT_EPOCHS = 27


def load_data(data_dir: str = "data/prepared") -> dict[str, np.ndarray]:
    """Train and validation splits written by ``prepare.py``."""
    d = Path(data_dir)
    out = {}
    for split in ("train", "val"):
        with np.load(d / f"{split}.npz") as f:
            out[f"X_{split}"], out[f"y_{split}"] = f["X"], f["y"]
    return out


def final_training(cfg: Any) -> tuple[np.ndarray, np.ndarray, int, str]:
    """What a chosen configuration is trained on after the search (train_best, ensemble):
    train + validation images, the study's max_budget epochs, and the data folder."""
    epochs = (cfg.scheduler.get("max_budget", DEFAULT_EPOCHS) if isinstance(cfg.scheduler, dict)
              else DEFAULT_EPOCHS)
    data_dir = (cfg.objective.setup_args.get("data_dir", "data/prepared") if cfg.objective
                else "data/prepared")
    data = load_data(data_dir)
    X = np.concatenate([data["X_train"], data["X_val"]])
    y = np.concatenate([data["y_train"], data["y_val"]])
    return X, y, int(epochs), data_dir


def make_model(params: dict[str, Any], seed: int = 0) -> Any:
    """An SGDClassifier from a trial's params (conditional ones may be absent)."""
    from sklearn.linear_model import SGDClassifier

    return SGDClassifier(
        loss=params["loss"], penalty=params["penalty"], alpha=params["alpha"],
        l1_ratio=params.get("l1_ratio", 0.15), learning_rate=params["learning_rate"],
        eta0=params.get("eta0", 0.01), random_state=seed,
    )


def fit_epochs(model: Any, X: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0,
               on_epoch: Any = None) -> Any:
    """``epochs`` shuffled passes of ``partial_fit``; ``on_epoch(epoch)`` may return True
    to stop early (the trial was pruned)."""
    rng = np.random.default_rng(seed)
    classes = np.arange(10)
    for epoch in range(1, epochs + 1):
        idx = rng.permutation(len(X))
        model.partial_fit(X[idx], y[idx], classes=classes)
        if on_epoch is not None and on_epoch(epoch):
            break
    return model


def objective(params: dict[str, Any], trial: Any) -> dict[str, float]:
    data = trial.context if trial.context is not None else load_data()
    model = make_model(params)
    last = {"accuracy": 0.0}

    def on_epoch(epoch: int) -> bool:
        last["accuracy"] = float(model.score(data["X_val"], data["y_val"]))
        trial.report(last["accuracy"], step=epoch)
        return trial.should_prune()

    fit_epochs(model, data["X_train"], data["y_train"], int(trial.budget or DEFAULT_EPOCHS),
               on_epoch=on_epoch)
    # for the `ensemble` stage: class probabilities on the validation split (a .npz file)
    trial.save_predictions(probabilities(model, data["X_val"]), data["y_val"])
    return {"accuracy": last["accuracy"],
            "train_accuracy": float(model.score(data["X_train"], data["y_train"]))}
