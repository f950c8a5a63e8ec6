"""Stage ``train_best``: the best configuration of the search, trained on train +
validation at the full budget (the scheduler's ``max_budget`` epochs).

    python examples/digits/train_best.py [params.yaml] [search_dir] [model_path]

The model is a DVC output (``models/model.pkl``) and is logged to MLflow as a model on the
study's run, with the best params and the git commit / data hash tags, so the MLflow UI
links the model to the trials that chose it.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import yaml
from objective import DEFAULT_EPOCHS, fit_epochs, load_data, make_model

from hpo_mlops.config import load_config
from hpo_mlops.pipeline import provenance_tags


def main(params: str = "params.yaml", search_dir: str = "results/search",
         model_path: str = "models/model.pkl") -> None:
    cfg = load_config(params, check=False)
    best = yaml.safe_load((Path(search_dir) / "best_params.yaml").read_text())
    report = json.loads((Path(search_dir) / "report.json").read_text())
    epochs = (cfg.scheduler.get("max_budget", DEFAULT_EPOCHS) if isinstance(cfg.scheduler, dict)
              else DEFAULT_EPOCHS)
    data_dir = cfg.objective.setup_args.get("data_dir", "data/prepared") if cfg.objective else "data/prepared"
    data = load_data(data_dir)
    X = np.concatenate([data["X_train"], data["X_val"]])
    y = np.concatenate([data["y_train"], data["y_val"]])
    model = fit_epochs(make_model(best["params"]), X, y, int(epochs))
    out = Path(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps(model))
    print(f"trained trial {best['trial']}'s configuration for {epochs} epochs on {len(X)} "
          f"images -> {out}")
    run_id = report.get("study_run_id")
    if cfg.tracking.enabled and run_id:
        import mlflow
        import mlflow.sklearn

        mlflow.set_tracking_uri(report["tracking_uri"])
        # pickle is what the pipeline itself stores; MLflow's advice to use skops is noise here
        logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
        tags = {**provenance_tags(cfg.tracking.dvc_data), "hpo.best_trial": str(best["trial"])}
        import sklearn

        with mlflow.start_run(run_id=run_id):
            info = mlflow.sklearn.log_model(
                model, name="model", params={k: str(v) for k, v in best["params"].items()},
                tags=tags, input_example=X[:2], serialization_format="pickle",
                # what the model needs, stated: inferring it runs a subprocess (seconds)
                pip_requirements=[f"scikit-learn=={sklearn.__version__}",
                                  f"numpy=={np.__version__}"],
            )
            mlflow.set_tag("hpo.model_uri", info.model_uri)
        print(f"logged {info.model_uri} on the study run {run_id}")


if __name__ == "__main__":
    main(*sys.argv[1:])
