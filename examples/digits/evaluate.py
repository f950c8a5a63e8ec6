"""Stage ``evaluate``: the trained model on the held-out test split.

    python examples/digits/evaluate.py [params.yaml] [model_path] [out_dir]

Writes ``metrics.json`` (DVC metrics) and ``confusion.csv`` (a DVC confusion-matrix plot),
and logs ``test_accuracy`` / ``test_f1_macro`` on the study's MLflow run.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from hpo_mlops.config import load_config
from hpo_mlops.pipeline import provenance_tags


def main(params: str = "params.yaml", model_path: str = "models/model.pkl",
         out_dir: str = "results/evaluate", search_dir: str = "results/search") -> None:
    cfg = load_config(params, check=False)
    data_dir = cfg.objective.setup_args.get("data_dir", "data/prepared") if cfg.objective else "data/prepared"
    with np.load(Path(data_dir) / "test.npz") as f:
        X, y = f["X"], f["y"]
    model = pickle.loads(Path(model_path).read_bytes())
    pred = model.predict(X)
    metrics = {"accuracy": round(float(accuracy_score(y, pred)), 6),
               "f1_macro": round(float(f1_score(y, pred, average="macro")), 6),
               "n_test": len(y)}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "confusion.csv").write_text(
        "actual,predicted\n" + "".join(f"{a},{p}\n" for a, p in zip(y, pred, strict=True)))
    print(f"test accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f} "
          f"on {len(y)} images")
    report_path = Path(search_dir) / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if cfg.tracking.enabled and report.get("study_run_id"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(report["tracking_uri"])
        run_id = report["study_run_id"]
        for k in ("accuracy", "f1_macro"):
            client.log_metric(run_id, f"test_{k}", metrics[k])
        for k, v in provenance_tags(cfg.tracking.dvc_data).items():
            client.set_tag(run_id, k, v)


if __name__ == "__main__":
    main(*sys.argv[1:])
