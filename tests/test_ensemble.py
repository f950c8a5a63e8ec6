"""Ensembles of a study's trials (hpo_mlops/ensemble.py): Caruana's greedy selection on
synthetic predictions whose answer is known, the regression variance split, the errors on
bad options, and a real study on the LocalCluster with a real MLflow store whose objective
saves its predictions: the ensemble is chosen, logged as a pyfunc model, loaded back from
MLflow, and predicts what it predicted in-process; rerun after every trial it is ready."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mlflow_store import fresh_store
from sklearn.metrics import log_loss

from hpo_mlops.ensemble import Library, probabilities, select, split_variance
from hpo_mlops.errors import ConfigError
from hpo_mlops.results import TrialRecord, TrialState
from hpo_mlops.study import Study
from hpo_mlops.trial import PREDICTIONS_TAG, Trial

N = 400
Y = np.random.default_rng(0).integers(0, 3, N)


def confident(correct: np.ndarray, y: np.ndarray = Y, p: float = 0.8) -> np.ndarray:
    """Probabilities (n, 3): ``p`` on the true class where ``correct``, else on a wrong one."""
    out = np.full((len(y), 3), (1 - p) / 2)
    label = np.where(correct, y, (y + 1) % 3)
    out[np.arange(len(y)), label] = p
    return out


def saved(tmp_path, number: int, y_pred, y_true=Y, kind: str = "proba", variance=None,
          state: TrialState = TrialState.COMPLETE) -> TrialRecord:
    """A finished trial whose objective called ``trial.save_predictions``."""
    trial = Trial(number, {"i": number}, checkpoint_dir=str(tmp_path / f"trial-{number}"))
    path = trial.save_predictions(y_pred, y_true, kind=kind, variance=variance)
    assert path is not None and os.path.isfile(path)
    return TrialRecord(number, {"i": number}, state, values=[0.0], tags=dict(trial.tags))


def halves() -> tuple[np.ndarray, np.ndarray]:
    first = np.arange(N) < N // 2
    return first | (np.arange(N) % 5 == 0), ~first | (np.arange(N) % 5 == 1)


# -- selection on synthetic predictions ------------------------------------------------------
def test_two_complementary_members_beat_either_alone_and_a_useless_one_is_never_picked(tmp_path):
    a, b = halves()  # each right on its own half (and a fifth of the other)
    useless = confident(np.zeros(N, bool), p=0.9)  # always confidently wrong
    trials = [saved(tmp_path, 0, confident(a)), saved(tmp_path, 1, confident(b)),
              saved(tmp_path, 2, useless)]
    ens = select(trials, k=3)
    assert sorted(ens.members) == [0, 1] and 2 not in ens.members
    assert ens.weights == [0.5, 0.5] and sum(ens.weights) == 1
    alone = [log_loss(Y, confident(m), labels=[0, 1, 2]) for m in (a, b)]
    assert ens.best_single_loss == pytest.approx(min(alone))
    mixed = log_loss(Y, (confident(a) + confident(b)) / 2)
    assert ens.val_loss == pytest.approx(mixed) and mixed < min(alone)
    assert ens.history[0] == pytest.approx(min(alone)) and ens.history[-1] == pytest.approx(mixed)


def test_weights_are_selection_counts_with_replacement_and_stop_at_k_unique(tmp_path):
    rng = np.random.default_rng(1)
    # many members, each right on a random 70%: the ensemble keeps adding distinct ones
    trials = [saved(tmp_path, i, confident(rng.random(N) < 0.7)) for i in range(12)]
    library = Library()
    for k in (1, 2, 4):
        ens = select(trials, k=k, library=library)
        assert len(ens.members) == k == len(set(ens.members))
        assert sum(ens.weights) == pytest.approx(1)
    # a strong member and a weaker one right where it is wrong: 1:1 beats the strong one
    # alone, 2:1 does better still (a useless third keeps k=3 out of reach)
    strong = rng.random(N) < 0.85
    weak = ~strong | (rng.random(N) < 0.6)
    trials = [saved(tmp_path, 20, confident(strong, p=0.95)),
              saved(tmp_path, 21, confident(weak, p=0.7)),
              saved(tmp_path, 22, confident(np.zeros(N, bool)))]
    ens = select(trials, k=3, max_steps=50, tol=0)
    assert ens.members == [20, 21]
    steps = len(ens.history)  # the start (n_init=1) and one entry per addition
    counts = np.asarray(ens.weights) * steps
    assert np.allclose(counts, np.round(counts)) and counts[0] >= 2 and counts[1] == 1
    arrays = {t.number: np.load(t.tags[PREDICTIONS_TAG])["y_pred"] for t in trials}
    blend = sum(w * arrays[n] for n, w in zip(ens.members, ens.weights, strict=True))
    assert np.allclose(blend, ens.val_predictions)
    assert ens.val_loss == pytest.approx(log_loss(Y, blend))
    assert ens.val_loss < ens.best_single_loss
    assert all(x >= y for x, y in zip(ens.history, ens.history[1:], strict=False))


def test_tol_stops_early_and_topk_takes_the_k_best_with_equal_weights(tmp_path):
    a, b = halves()
    rng = np.random.default_rng(2)
    trials = [saved(tmp_path, 0, confident(a)), saved(tmp_path, 1, confident(b)),
              saved(tmp_path, 2, confident(rng.random(N) < 0.55)),
              saved(tmp_path, 3, confident(np.zeros(N, bool)))]
    assert select(trials, k=3, tol=10.0).members == [select(trials, k=1).best_single]
    top = select(trials, k=3, method="topk")
    losses = {t.number: log_loss(Y, np.load(t.tags[PREDICTIONS_TAG])["y_pred"]) for t in trials}
    assert set(top.members) == set(sorted(losses, key=losses.get)[:3]) == {0, 1, 2}
    assert top.weights == [1 / 3] * 3


def test_only_complete_trials_unless_pruned_ones_are_asked_for(tmp_path):
    a, b = halves()
    trials = [saved(tmp_path, 0, confident(a)),
              saved(tmp_path, 1, confident(b), state=TrialState.PRUNED)]
    assert select(trials, k=2).members == [0]
    assert sorted(select(trials, k=2, include_pruned=True).members) == [0, 1]


# -- regression: mean, aleatoric and epistemic parts -----------------------------------------
def test_regression_variance_split_adds_up_to_the_mixture_variance(tmp_path):
    rng = np.random.default_rng(3)
    y = rng.normal(size=N)
    means = [y + 0.5, y - 0.5, y + rng.normal(scale=2, size=N)]  # two opposite biases, a noisy one
    vars_ = [np.full(N, 0.2), np.full(N, 0.3), np.full(N, 4.0)]
    trials = [saved(tmp_path, i, m, y, kind="regression", variance=v)
              for i, (m, v) in enumerate(zip(means, vars_, strict=True))]
    ens = select(trials, k=3)
    assert sorted(ens.members) == [0, 1] and ens.kind == "regression"
    assert ens.val_loss == pytest.approx(0.0, abs=1e-12) and ens.best_single_loss > 0.2
    preds = ens.combine([means[m] for m in ens.members], [vars_[m] for m in ens.members])
    w = np.asarray(ens.weights)
    mu = np.stack([means[m] for m in ens.members])
    var = np.stack([vars_[m] for m in ens.members])
    # law of total variance, from the second moment of the mixture
    total = w @ (var + mu**2) - (w @ mu) ** 2
    assert np.allclose(preds.mean, y) and np.allclose(preds.variance, total)
    assert np.allclose(preds.aleatoric, w @ var) and np.allclose(preds.epistemic, 0.25)
    no_var = split_variance(w, mu, None)
    assert not no_var.aleatoric_known and np.allclose(no_var.aleatoric, 0)
    assert np.allclose(no_var.variance, no_var.epistemic)


# -- errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"k": 0}, "k: must be an integer >= 1, got 0"),
    ({"method": "best"}, "method: must be one of caruana, topk, got 'best'"),
    ({"k": 2, "n_init": 3}, "n_init: must be at most k=2, got 3"),
    ({"tol": -1}, "tol: must be a number >= 0"),
    ({"kind": "regression"}, "kind='regression', but the trials saved kind='proba'"),
])
def test_bad_options_name_what_is_allowed(tmp_path, options, message):
    trials = [saved(tmp_path, 0, confident(halves()[0]))]
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select(trials, **options)


def test_no_predictions_mismatched_shapes_and_bad_saves_are_config_errors(tmp_path):
    bare = TrialRecord(0, {}, TrialState.COMPLETE, values=[1.0])
    with pytest.raises(ConfigError, match=r"no trial saved predictions \(1 complete trials\): "
                                          r"call trial.save_predictions"):
        select([bare])
    a, _ = halves()
    short = saved(tmp_path, 2, confident(a[:100], Y[:100]), Y[:100])
    with pytest.raises(ConfigError, match="different shapes .* same validation set"):
        select([saved(tmp_path, 1, confident(a)), short])
    other = saved(tmp_path, 3, confident(a), (Y + 1) % 3)
    with pytest.raises(ConfigError, match="trials 1 and 3 saved different y_true"):
        select([saved(tmp_path, 1, confident(a)), other])
    with pytest.raises(ConfigError, match="no y_true"):
        select([saved(tmp_path, 4, confident(a), None)])
    trial = Trial(5, {}, checkpoint_dir=str(tmp_path / "t5"))
    with pytest.raises(ConfigError, match="kind must be one of proba, regression, got 'labels'"):
        trial.save_predictions(confident(a), Y, kind="labels")
    with pytest.raises(ConfigError, match="needs probabilities"):
        trial.save_predictions(confident(a) * 2, Y)
    with pytest.raises(ConfigError, match=r"y_true must have shape \(400,\)"):
        trial.save_predictions(confident(a), Y[:10])
    with pytest.raises(ConfigError, match=r"class indices 0..2"):
        trial.save_predictions(confident(a), Y + 3)
    with pytest.raises(ConfigError, match=r"kind='regression' needs y_pred of shape \(n_samples,\)"):
        trial.save_predictions(confident(a), kind="regression")
    assert not trial.tags  # nothing saved
    assert Trial(6, {}).save_predictions(confident(a), Y) is None  # no checkpoint folder


def test_gone_files_are_left_out_with_a_warning(tmp_path):
    a, b = halves()
    trials = [saved(tmp_path, 0, confident(a)), saved(tmp_path, 1, confident(b))]
    os.remove(trials[1].tags[PREDICTIONS_TAG])
    with pytest.warns(UserWarning, match=r"trials \[1\]: their saved predictions are gone"):
        assert select(trials, k=2).members == [0]


# -- a real study ----------------------------------------------------------------------------
def digits_split():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    return X[:500], y[:500], X[500:800], y[500:800]


def fit(params):
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = digits_split()
    part = slice(params["part"], None, 4)  # a quarter of the train split
    return LogisticRegression(C=params["C"], max_iter=300).fit(X[part], y[part])


def objective(params, trial):
    """A classifier on part of digits; its validation probabilities saved for the ensemble."""
    model = fit(params)
    _, _, X_val, y_val = digits_split()
    proba = probabilities(model, X_val)
    trial.save_predictions(proba, y_val)
    return float(log_loss(y_val, proba, labels=list(range(10))))


SPACE = {"C": "loguniform(0.1, 10)", "part": "choices([0, 1, 2, 3])"}


def test_a_study_builds_an_ensemble_that_mlflow_loads_back(dask_client, tmp_path, monkeypatch):
    import mlflow.pyfunc

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns
    uri = fresh_store(tmp_path / "mlflow.db")
    study = Study("ens", SPACE, metric="log_loss", sampler="random", scheduler="fifo", seed=3,
                  tracking_uri=uri)
    kept = study.keep_ensemble(k=3)
    # central asks: the seeded sampler gives the same 8 configurations every run (copies on
    # the workers are seeded by worker address, which changes from run to run)
    study.optimize(objective, n_trials=8, client=dask_client, checkpoint_dir=str(tmp_path / "ck"),
                   asks="central")
    assert all(t.state is TrialState.COMPLETE and t.tags[PREDICTIONS_TAG].startswith(
        str(tmp_path / "ck")) for t in study.trials)
    ens = study.ensemble(k=3)
    # rerun after each of the 8 trials; the last selection is the study's ensemble
    assert kept.selections == 8 and kept.latest.members == ens.members
    # members trained on other quarters of the data disagree: together they do better
    assert 2 <= len(ens.members) <= 3 and sum(ens.weights) == pytest.approx(1)
    assert ens.best_single == study.best_trial.number  # the metric is the same log loss
    assert ens.val_loss < ens.best_single_loss
    _, _, X_val, y_val = digits_split()
    params = {t.number: t.params for t in study.trials}
    models = {n: fit(params[n]) for n in ens.members}
    member_preds = [probabilities(models[n], X_val) for n in ens.members]
    assert np.allclose(ens.combine(member_preds), ens.val_predictions)
    info = ens.log_model(models, input_example=X_val[:2])
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert np.allclose(loaded.predict(X_val), ens.val_predictions)
    from mlflow.tracking import MlflowClient

    run = MlflowClient(uri).get_run(study.run_id)
    assert run.data.tags["hpo.ensemble_uri"] == info.model_uri
    assert run.data.metrics["ensemble_val_log_loss"] == pytest.approx(ens.val_loss)
    # another process finds the predictions through the trials' MLflow runs
    again = Study("ens", SPACE, metric="log_loss", sampler="random", scheduler="fifo",
                  tracking_uri=uri)
    assert again.ensemble(k=3).members == ens.members
