"""The smallest real study: a 4-parameter function, TPE, 2 local workers, MLflow on ./mlflow.db.

    python examples/quickstart.py            # then: mlflow ui --backend-store-uri sqlite:///mlflow.db
"""

import argparse
import math

from hpo_mlops.study import Study


def objective(params, trial):
    """A noisy bowl with a learning-curve: reports per 'epoch' so weak trials get pruned."""
    loss = (params["x"] - 2) ** 2 + 10 * params["lr"] + (0.5 if params["act"] == "tanh" else 0)
    for epoch in range(1, 6):
        trial.report(loss + 1 / epoch, step=epoch)
        if trial.should_prune():
            return loss + 1 / epoch
    return {"loss": loss, "depth_penalty": math.log(params["layers"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-trials", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sampler", default="tpe")
    ap.add_argument("--name", default="quickstart")
    args = ap.parse_args()
    study = Study(
        name=args.name,
        space={"x": "uniform(-5, 5)", "lr": "loguniform(1e-5, 1e-1)",
               "layers": "randint(1, 4)", "act": "choices(['relu', 'tanh'])"},
        metric="loss", mode="min", sampler=args.sampler, seed=0,
    )
    study.optimize(objective, n_trials=args.n_trials, n_workers=args.workers)
    states = study.trials_dataframe()["state"].value_counts().to_dict()
    print(f"trials: {states}")
    print(f"best trial #{study.best_trial.number}: loss={study.best_value:.4f}")
    print(study.export_best(fmt="yaml"))


if __name__ == "__main__":
    main()
