"""Stage ``train_best``: the best configuration of the search, trained on train +
validation at the full budget (the scheduler's ``max_budget`` epochs).

    python examples/digits/train_best.py [params.yaml] [search_dir] [model_path]

The model is a DVC output (``models/model.pkl``) and is logged to MLflow as a model on the
study's run, with the best params and the git commit / data hash tags, so the MLflow UI
links the model to the trials that chose it. It is registered in the MLflow Model Registry
under the study's name with the alias ``champion`` (``models:/digits@champion``); the
version is tagged with the git commit, the DVC data hash, the study run, the best trial and
the model's sha256, and a rerun with all of those unchanged logs and registers nothing new:
it points ``champion`` at the existing version (hpo_mlops.model_registry).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import yaml
from objective import final_training, fit_epochs, make_model

from hpo_mlops.config import load_config
from hpo_mlops.pipeline import provenance_tags


def main(params: str = "params.yaml", search_dir: str = "results/search",
         model_path: str = "models/model.pkl") -> None:
    cfg = load_config(params, check=False)
    best = yaml.safe_load((Path(search_dir) / "best_params.yaml").read_text())
    report = json.loads((Path(search_dir) / "report.json").read_text())
    X, y, epochs, _ = final_training(cfg)
    model = fit_epochs(make_model(best["params"]), X, y, epochs)
    out = Path(model_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps(model))
    print(f"trained trial {best['trial']}'s configuration for {epochs} epochs on {len(X)} "
          f"images -> {out}")
    run_id = report.get("study_run_id")
    if cfg.tracking.enabled and run_id:
        register(model, best, X[:2], out.read_bytes(), report, cfg.tracking.dvc_data)


def register(model: object, best: dict, example: np.ndarray, model_bytes: bytes,
             report: dict, dvc_data: list[str]) -> None:
    """Log the model on the study run (only when this model is new) and register it."""
    import mlflow
    import mlflow.sklearn
    import sklearn

    from hpo_mlops.model_registry import BEST_TRIAL, MODEL_SHA256, STUDY_RUN, register_model

    run_id = report["study_run_id"]
    mlflow.set_tracking_uri(report["tracking_uri"])
    # pickle is what the pipeline itself stores; MLflow's advice to use skops is noise here
    logging.getLogger("mlflow.sklearn").setLevel(logging.ERROR)
    provenance = provenance_tags(dvc_data)
    dirty = {k: provenance.pop(k) for k in ("git.dirty",) if k in provenance}
    tags = {**provenance, STUDY_RUN: run_id, BEST_TRIAL: str(best["trial"]),
            MODEL_SHA256: hashlib.sha256(model_bytes).hexdigest()}

    def log() -> str:
        with mlflow.start_run(run_id=run_id):
            info = mlflow.sklearn.log_model(
                model, name="model", params={k: str(v) for k, v in best["params"].items()},
                tags={**provenance, **dirty, "hpo.best_trial": str(best["trial"])},
                input_example=example, serialization_format="pickle",
                # what the model needs, stated: inferring it runs a subprocess (seconds)
                pip_requirements=[f"scikit-learn=={sklearn.__version__}",
                                  f"numpy=={np.__version__}"],
            )
            mlflow.set_tag("hpo.model_uri", info.model_uri)
        print(f"logged {info.model_uri} on the study run {run_id}")
        return info.model_uri

    reg = register_model(report["study"], log, tags, run_id=run_id, info_tags=dirty,
                         tracking_uri=report["tracking_uri"])
    mlflow.MlflowClient(report["tracking_uri"]).set_tag(
        run_id, "hpo.registered_model", f"{reg.name}/{reg.version}")
    print(f"{'registered' if reg.created else 'unchanged, re-used'} {reg.name} version "
          f"{reg.version} as {reg.uri}")

if __name__ == "__main__":
    main(*sys.argv[1:])
