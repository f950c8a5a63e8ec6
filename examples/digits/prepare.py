"""Stage ``prepare``: scikit-learn's digits (shipped with the package: no download), scaled
to [0, 1] and split into train / validation / test, written as ``.npz`` files.

    python examples/digits/prepare.py [params.yaml] [out_dir]

The search tunes on train -> validation; ``evaluate`` alone touches the test split.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def main(params: str = "params.yaml", out_dir: str = "data/prepared") -> None:
    cfg = (yaml.safe_load(Path(params).read_text()) or {}).get("pipeline", {}).get("prepare", {})
    test_size, val_size = cfg.get("test_size", 0.2), cfg.get("val_size", 0.2)
    seed = cfg.get("seed", 0)
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    X_rest, X_test, y_rest, y_test = train_test_split(
        X, y, test_size=test_size, random_state=seed, stratify=y)
    X_train, X_val, y_train, y_val = train_test_split(
        X_rest, y_rest, test_size=val_size / (1 - test_size), random_state=seed, stratify=y_rest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, (a, b) in {"train": (X_train, y_train), "val": (X_val, y_val),
                         "test": (X_test, y_test)}.items():
        np.savez_compressed(out / f"{name}.npz", X=a, y=b)
    print(f"prepared {len(X_train)} train, {len(X_val)} validation, {len(X_test)} test images "
          f"in {out}/")


if __name__ == "__main__":
    main(*sys.argv[1:])
