"""Stage ``ensemble``: an ensemble of the search's best trials (Caruana's greedy selection
on their saved validation probabilities), its members trained again like ``train_best``
(train + validation, ``max_budget`` epochs), measured on the test split beside the best
single trial.

    python examples/digits/ensemble.py [params.yaml] [search_dir] [model_path] [out_dir] [k] [method]

The trials' predictions are read from the study's MLflow run (each trial's
``hpo.predictions`` tag names its ``.npz`` file, in the study's checkpoint folder on this
machine), so the stage runs where ``search`` ran. Writes the ensemble (an MLflow ``pyfunc``
model, pickled: ``models/ensemble.pkl``), ``metrics.json`` (test accuracy of the ensemble
and of the best single trial, validation log losses) and ``ensemble.json`` (members and
weights); logs the pyfunc model on the study run and, when ``hpo_mlops.model_registry``
is there, registers it as ``<study>-ensemble`` with the alias ``champion``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
from objective import final_training, fit_epochs, make_model

from hpo_mlops.config import load_config
from hpo_mlops.errors import ConfigError
from hpo_mlops.pipeline import provenance_tags
from hpo_mlops.study import Study


def main(params: str = "params.yaml", search_dir: str = "results/search",
         model_path: str = "models/ensemble.pkl", out_dir: str = "results/ensemble",
         k: str = "5", method: str = "caruana") -> None:
    cfg = load_config(params, check=False)
    report = json.loads((Path(search_dir) / "report.json").read_text())
    if not cfg.tracking.enabled or not report.get("study_run_id"):
        raise ConfigError("the ensemble stage reads the trials from the study's MLflow run: "
                          "tracking must be enabled")
    study = Study.from_config(cfg, resume=True)  # read-only: the study's latest run
    if study.run_id != report["study_run_id"]:
        raise ConfigError(f"the latest run of study {study.name!r} is {study.run_id}, not the "
                          f"search's {report['study_run_id']}: run the search stage again")
    ens = study.ensemble(k=int(k), method=method)
    X, y, epochs, data_dir = final_training(cfg)
    params_of = {t.number: t.params for t in study.trials}
    best = study.best_trial.number  # the trial train_best trains
    models = {n: fit_epochs(make_model(params_of[n]), X, y, epochs)
              for n in {*ens.members, best}}
    model = ens.to_pyfunc(models)
    with np.load(Path(data_dir) / "test.npz") as f:
        X_test, y_test = f["X"], f["y"]
    proba = model.predict(None, X_test)
    single = model.models[ens.members.index(best)] if best in ens.members else models[best]
    metrics = {"accuracy": round(float((proba.argmax(axis=1) == y_test).mean()), 6),
               "best_single_accuracy": round(float(single.score(X_test, y_test)), 6),
               "val_log_loss": round(ens.val_loss, 6),
               "best_single_val_log_loss": round(ens.best_single_loss, 6),
               "n_members": len(ens.members), "n_candidates": ens.n_candidates}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "ensemble.json").write_text(json.dumps(
        {"method": ens.method, "members": ens.members, "weights": ens.weights,
         "best_single": ens.best_single, "best_trial": best}, indent=2) + "\n")
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(model))
    print(f"ensemble of trials {ens.members} (weights {[round(w, 3) for w in ens.weights]}, "
          f"{len(X)} images, {epochs} epochs): test accuracy {metrics['accuracy']:.4f} against "
          f"{metrics['best_single_accuracy']:.4f} for the best trial {best} -> {path}")
    log_and_register(ens, models, X[:2], path.read_bytes(), report, cfg.tracking.dvc_data)


def log_and_register(ens: Any, models: dict[int, Any], example: np.ndarray, model_bytes: bytes,
                     report: dict, dvc_data: list[str]) -> None:
    """Log the pyfunc model on the study run, and register it when the registry helper is
    there (only a new ensemble is logged: the same tags re-use the existing version)."""
    provenance = provenance_tags(dvc_data)
    dirty = {k: provenance.pop(k) for k in ("git.dirty",) if k in provenance}
    tags = {**provenance, "hpo.study_run_id": report["study_run_id"],
            "hpo.ensemble_members": json.dumps(ens.members),
            "hpo.ensemble_weights": json.dumps([round(w, 6) for w in ens.weights]),
            "hpo.model_sha256": hashlib.sha256(model_bytes).hexdigest()}

    def log() -> str:
        info = ens.log_model(models, input_example=example, tags={**provenance, **dirty})
        print(f"logged {info.model_uri} on the study run {report['study_run_id']}")
        return info.model_uri

    try:
        from hpo_mlops.model_registry import register_model
    except ImportError:
        log()
        return
    reg = register_model(f"{report['study']}-ensemble", log, tags,
                         run_id=report["study_run_id"], info_tags=dirty,
                         tracking_uri=report["tracking_uri"])
    print(f"{'registered' if reg.created else 'unchanged, re-used'} {reg.name} version "
          f"{reg.version} as {reg.uri}")


if __name__ == "__main__":
    main(*sys.argv[1:])
