"""A small PyTorch MLP on scikit-learn's digits, on CPU, with epochs as the budget.

Each epoch ends with a checkpoint (model, optimizer, epoch, params) in
``trial.checkpoint_dir``, so a trial that is run again -- a retry after its worker was lost,
or a promotion to a larger budget by synchronous successive halving -- continues from its
last epoch instead of starting over. The validation loss is reported after every epoch, so
ASHA stops weak trials at 1 and 3 epochs.

Needs the ``torch`` extra: ``pip install torch==2.13.0`` (or ``pip install -e ".[torch]"``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_EPOCHS = 9


def load_data(seed: int = 0) -> dict[str, Any]:
    """Digits as float tensors, split 80/20 into train/validation (once per worker)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    torch.set_num_threads(1)  # one trial per worker process: no oversubscription
    X, y = load_digits(return_X_y=True)
    X_tr, X_va, y_tr, y_va = train_test_split(X / 16.0, y, test_size=0.2, random_state=seed,
                                              stratify=y)
    as_t = lambda a, dt: torch.tensor(a, dtype=dt)  # noqa: E731
    return {"X_train": as_t(X_tr, torch.float32), "y_train": as_t(y_tr, torch.long),
            "X_val": as_t(X_va, torch.float32), "y_val": as_t(y_va, torch.long)}


def make_model(params: dict[str, Any]) -> Any:
    from torch import nn

    layers: list[Any] = []
    width = 64
    for _ in range(params["layers"]):
        layers += [nn.Linear(width, params["hidden"]), nn.ReLU(), nn.Dropout(params["dropout"])]
        width = params["hidden"]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _checkpoint_path(trial: Any) -> Path:
    root = trial.checkpoint_dir or os.path.join(tempfile.gettempdir(), "hpo-pytorch-example",
                                                f"trial-{trial.number}")
    return Path(root) / "last.pt"


def objective(params: dict[str, Any], trial: Any) -> dict[str, float]:
    import torch
    from torch import nn

    data = trial.context if trial.context is not None else load_data()
    torch.manual_seed(trial.number)
    model = make_model(params)
    opt = torch.optim.AdamW(model.parameters(), lr=params["lr"],
                            weight_decay=params["weight_decay"])
    ckpt = _checkpoint_path(trial)
    first = 1
    val = {"val_loss": float("nan"), "val_accuracy": 0.0}
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        if state.get("params") == params:  # not a file another configuration left there
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            first, val = state["epoch"] + 1, state["val"]
    loss_fn = nn.CrossEntropyLoss()
    X, y = data["X_train"], data["y_train"]
    for epoch in range(first, int(trial.budget or DEFAULT_EPOCHS) + 1):
        model.train()
        for idx in torch.randperm(len(X)).split(params["batch_size"]):
            opt.zero_grad()
            loss_fn(model(X[idx]), y[idx]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            logits = model(data["X_val"])
            val = {"val_loss": float(loss_fn(logits, data["y_val"])),
                   "val_accuracy": float((logits.argmax(1) == data["y_val"]).float().mean())}
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                    "epoch": epoch, "params": params, "val": val}, ckpt)
        trial.report(val["val_loss"], step=epoch)
        if trial.should_prune():
            break
    return val  # the checkpoint's, when it had already reached the budget
