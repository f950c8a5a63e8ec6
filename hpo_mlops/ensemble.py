"""Ensembles of a study's trials, chosen from their saved validation predictions.

Why: the best single configuration of a search leaves accuracy on the table that the next
few already paid for; DeepHyper builds an ensemble from its best trials with Caruana et al.
2004 ("Ensemble selection from libraries of models") and splits the predictive
uncertainty into aleatoric and epistemic parts. Here a trial saves its validation
predictions with one call (``trial.save_predictions``, a ``.npz`` beside its checkpoint,
its path in the trial's ``hpo.predictions`` tag); :func:`select` then needs no model at
all, only those arrays, so it can rerun after every finished trial (``study.keep_ensemble``).

* ``method="caruana"``: greedy selection with replacement. Start from the ``n_init`` best
  trials, then add, again and again, whichever trial (one already in it included) lowers
  the ensemble's validation loss most: log loss of the averaged probabilities, or MSE of
  the averaged means. Stop at ``k`` distinct members, when the gain falls below ``tol``,
  or after ``max_steps`` additions. Weights are the selection counts, normalised.
* ``method="topk"``: the ``k`` trials with the lowest validation loss, equal weights.

Trials are ranked by that loss of their saved predictions, not by the study's metric (the
ensemble minimises the loss; the metric may be accuracy, which ties). Only COMPLETE trials
are candidates unless ``include_pruned``: a pruned trial's predictions come from a shorter
training than the one its configuration gets when the ensemble's members are trained again.

For regression the ensemble's prediction is the weighted mean of the members' means, and
its variance, by the law of total variance, is the weighted mean of the members'
variances (aleatoric: the noise each member sees) plus the weighted variance of their
means (epistemic: how much the members disagree). :class:`EnsembleModel` is the ensemble
with its members' models, as an MLflow ``pyfunc`` model.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpo_mlops.errors import ConfigError
from hpo_mlops.results import TrialRecord, TrialState

KINDS = ("proba", "regression")
METHODS = ("caruana", "topk")
PREDICTIONS_TAG = "hpo.predictions"  # = hpo_mlops.trial.PREDICTIONS_TAG (no import cycle)
_EPS = 1e-15  # probabilities are clipped to [eps, 1] for the log loss, as scikit-learn does


# -- what a trial saves ------------------------------------------------------------------------
def check_predictions(y_pred: Any, y_true: Any, kind: str, variance: Any = None,
                      what: str = "predictions") -> dict[str, np.ndarray]:
    """The arrays ``trial.save_predictions`` writes, checked: shapes, kinds, finite values."""
    if kind not in KINDS:
        raise ConfigError(f"{what}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    pred = _numeric(y_pred, f"{what}: y_pred")
    if kind == "proba":
        if pred.ndim != 2 or pred.shape[1] < 2:
            raise ConfigError(f"{what}: kind='proba' needs y_pred of shape (n_samples, "
                              f"n_classes >= 2), got shape {pred.shape}")
        if variance is not None:
            raise ConfigError(f"{what}: variance is for kind='regression' only")
        if pred.min() < 0 or not np.allclose(pred.sum(axis=1), 1.0, atol=1e-4):
            raise ConfigError(f"{what}: kind='proba' needs probabilities (each row >= 0, "
                              "summing to 1); use hpo_mlops.ensemble.probabilities(model, X)")
    elif pred.ndim != 1:
        raise ConfigError(f"{what}: kind='regression' needs y_pred of shape (n_samples,), "
                          f"got shape {pred.shape}")
    out = {"y_pred": pred, "kind": np.array(kind)}
    if variance is not None:
        var = _numeric(variance, f"{what}: variance")
        if var.shape != pred.shape or var.min() < 0:
            raise ConfigError(f"{what}: variance needs shape {pred.shape} and values >= 0, got "
                              f"shape {var.shape}")
        out["variance"] = var
    if y_true is not None:
        out["y_true"] = _targets(y_true, kind, len(pred), pred.shape[-1], what)
    return out


def _numeric(x: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: must be an array of numbers ({exc})") from None
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ConfigError(f"{what}: must be a non-empty array of finite numbers")
    return arr


def _targets(y_true: Any, kind: str, n: int, n_classes: int, what: str) -> np.ndarray:
    y = _numeric(y_true, f"{what}: y_true")
    if y.shape != (n,):
        raise ConfigError(f"{what}: y_true must have shape ({n},) like y_pred, got {y.shape}")
    if kind == "proba":
        if not np.all(y == np.round(y)) or y.min() < 0 or y.max() >= n_classes:
            raise ConfigError(f"{what}: y_true must hold class indices 0..{n_classes - 1} "
                              "(the columns of y_pred)")
        return y.astype(np.int64)
    return y


def probabilities(model: Any, X: Any) -> np.ndarray:
    """Class probabilities of a fitted classifier: ``predict_proba``, or else the softmax of
    ``decision_function`` (a hinge-loss SGD or an SVM has no probabilities of its own)."""
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64)
    if not hasattr(model, "decision_function"):
        raise ConfigError(f"{type(model).__name__} has neither predict_proba nor "
                          "decision_function: it gives no class probabilities")
    scores = np.asarray(model.decision_function(X), dtype=np.float64)
    if scores.ndim == 1:  # binary: one score for the positive class
        scores = np.stack([-scores, scores], axis=1)
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def regression_output(model: Any, X: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A regressor's means, and its variances when ``predict`` offers ``return_std``
    (a Gaussian process, BayesianRidge), else ``None``."""
    try:
        has_std = "return_std" in inspect.signature(model.predict).parameters
    except (TypeError, ValueError):
        has_std = False
    if has_std:
        mean, std = model.predict(X, return_std=True)
        return np.asarray(mean, dtype=np.float64).ravel(), np.square(np.asarray(std, dtype=np.float64)).ravel()
    return np.asarray(model.predict(X), dtype=np.float64).ravel(), None


# -- the library: the trials' saved predictions -------------------------------------------------
@dataclass
class Library:
    """The saved predictions of a study's trials, read once each (``keep_ensemble`` selects
    again after every trial, so rereading every file each time would grow with the study)."""

    _cache: dict[tuple[int, str], dict[str, np.ndarray] | None] = field(default_factory=dict)

    def load(self, trials: Sequence[TrialRecord], kind: str | None = None,
             include_pruned: bool = False) -> tuple[list[int], dict[str, Any]]:
        """Trial numbers with usable predictions, and the stacked arrays: ``pred`` (m, n) for
        regression or (m, n, classes), ``var`` (m, n) or ``None``, ``y_true``, ``kind``."""
        states = (TrialState.COMPLETE, TrialState.PRUNED) if include_pruned else (
            TrialState.COMPLETE,)
        done = [t for t in trials if t.state in states]
        tagged = [t for t in done if t.tags.get(PREDICTIONS_TAG)]
        if not tagged:
            raise ConfigError(
                f"no trial saved predictions ({len(done)} "
                f"{'complete or pruned' if include_pruned else 'complete'} trials): call "
                "trial.save_predictions(y_pred, y_true) in the objective to build an ensemble")
        numbers, arrays, missing = [], [], []
        for t in tagged:
            key = (t.number, t.tags[PREDICTIONS_TAG])
            if key not in self._cache:
                self._cache[key] = _read(key[1])
            if self._cache[key] is None:
                missing.append(t.number)
            else:
                numbers.append(t.number)
                arrays.append(self._cache[key])
        if missing:
            warnings.warn(f"trials {missing}: their saved predictions are gone or unreadable "
                          "(a checkpoint directory no worker shares with this process?); "
                          "left out of the ensemble", stacklevel=3)
        if not numbers:
            raise ConfigError(f"no trial's saved predictions could be read (trials {missing}); "
                              "give optimize(checkpoint_dir=...) a folder this process sees")
        return numbers, _stack(numbers, arrays, kind)


def _read(path: str) -> dict[str, np.ndarray] | None:
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError):
        return None


def _stack(numbers: list[int], arrays: list[dict[str, np.ndarray]], kind: str | None
           ) -> dict[str, Any]:
    kinds = {str(a["kind"]) for a in arrays}
    if len(kinds) > 1:
        raise ConfigError(f"trials saved predictions of different kinds {sorted(kinds)}; "
                          "an ensemble needs one kind")
    (saved,) = kinds
    if kind is not None and kind != saved:
        raise ConfigError(f"kind={kind!r}, but the trials saved kind={saved!r} predictions")
    shapes = {a["y_pred"].shape for a in arrays}
    if len(shapes) > 1:
        by_shape = {s: [n for n, a in zip(numbers, arrays, strict=True) if a["y_pred"].shape == s]
                    for s in shapes}
        raise ConfigError("trials saved predictions of different shapes "
                          f"{ {str(s): ns[:5] for s, ns in by_shape.items()} }: every trial must "
                          "predict the same validation set")
    truths = [(n, a["y_true"]) for n, a in zip(numbers, arrays, strict=True) if "y_true" in a]
    for n, y in truths[1:]:
        if not np.array_equal(y, truths[0][1]):
            raise ConfigError(f"trials {truths[0][0]} and {n} saved different y_true: every "
                              "trial must predict the same validation set")
    with_var = [a.get("variance") for a in arrays]
    return {"kind": saved, "pred": np.stack([a["y_pred"] for a in arrays]),
            "var": np.stack(with_var) if all(v is not None for v in with_var) else None,
            "has_var": [v is not None for v in with_var],
            "y_true": truths[0][1] if truths else None}


# -- selection -----------------------------------------------------------------------------
@dataclass
class Ensemble:
    """Which trials, with which weights: what :func:`select` chose.

    ``members`` are trial numbers (distinct, in the order first chosen), ``weights`` sum
    to 1; ``val_loss`` is the ensemble's validation loss (log loss or MSE) and
    ``best_single_loss`` that of ``best_single``, the best trial alone; ``history`` the
    loss after each greedy step. ``val_predictions`` is the ensemble's validation
    prediction (probabilities, or the mean for regression).
    """

    members: list[int]
    weights: list[float]
    kind: str
    method: str
    val_loss: float
    best_single: int
    best_single_loss: float
    history: list[float] = field(default_factory=list)
    n_candidates: int = 0
    val_predictions: np.ndarray | None = field(default=None, repr=False)
    #: the study run it came from (where :meth:`log_model` logs by default)
    run_id: str | None = field(default=None, repr=False)
    tracking_uri: str | None = field(default=None, repr=False)
    study: str | None = field(default=None, repr=False)

    @property
    def loss_name(self) -> str:
        return "log_loss" if self.kind == "proba" else "mse"

    def combine(self, predictions: Sequence[Any], variances: Sequence[Any] | None = None
                ) -> np.ndarray | RegressionPrediction:
        """The ensemble's prediction from its members' (one per member, in ``members``
        order): averaged probabilities, or for regression a :class:`RegressionPrediction`."""
        if len(predictions) != len(self.members):
            raise ConfigError(f"combine: needs one prediction per member ({len(self.members)}: "
                              f"trials {self.members}), got {len(predictions)}")
        preds = [np.asarray(p, dtype=np.float64) for p in predictions]
        if len({p.shape for p in preds}) > 1:
            raise ConfigError(f"combine: members' predictions differ in shape "
                              f"{[p.shape for p in preds]}")
        w = np.asarray(self.weights)
        if self.kind == "proba":
            return np.tensordot(w, np.stack(preds), axes=1)
        var = None
        if variances is not None and all(v is not None for v in variances):
            var = np.stack([np.asarray(v, dtype=np.float64) for v in variances])
        return split_variance(w, np.stack(preds), var)

    def to_pyfunc(self, models: Mapping[int, Any] | Sequence[Any]) -> Any:
        """The ensemble with its members' fitted models (by trial number, or in ``members``
        order), as an MLflow ``pyfunc`` model (:class:`hpo_mlops.ensemble_model.EnsembleModel`;
        its own module, as importing MLflow's pyfunc takes seconds)."""
        from hpo_mlops.ensemble_model import EnsembleModel

        if isinstance(models, Mapping):
            lacking = [m for m in self.members if m not in models]
            if lacking:
                raise ConfigError(f"to_pyfunc: no model for member trials {lacking}")
            models = [models[m] for m in self.members]
        if len(models) != len(self.members):
            raise ConfigError(f"to_pyfunc: needs one model per member ({len(self.members)}), "
                              f"got {len(models)}")
        return EnsembleModel(list(models), list(self.weights), self.kind, list(self.members))

    def log_model(self, models: Mapping[int, Any] | Sequence[Any], name: str = "ensemble",
                  run_id: str | None = None, tracking_uri: str | None = None,
                  input_example: Any = None, pip_requirements: list[str] | None = None,
                  tags: dict[str, str] | None = None) -> Any:
        """Log the ensemble (its members' models and weights) as a ``pyfunc`` model on the
        study's run (or ``run_id``), with its members, weights and losses as params and
        metrics; returns MLflow's ``ModelInfo`` (``.model_uri`` loads it back)."""
        run_id = run_id or self.run_id
        uri = tracking_uri or self.tracking_uri
        if run_id is None:
            raise ConfigError("log_model: no run to log on: the study is not tracked; give "
                              "run_id (and tracking_uri)")
        import mlflow
        import mlflow.pyfunc

        python_model = self.to_pyfunc(models)
        if uri:
            mlflow.set_tracking_uri(uri)
        if pip_requirements is None:  # stated: inferring them runs a subprocess (seconds)
            import sklearn

            pip_requirements = [f"numpy=={np.__version__}",
                                f"scikit-learn=={sklearn.__version__}", "hpo-mlops"]
        params = {"ensemble.method": self.method, "ensemble.members": str(self.members),
                  "ensemble.weights": str([round(w, 4) for w in self.weights])}
        # its advice (models from code instead of a pickled object) is noise here
        logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=name, python_model=python_model, input_example=input_example,
                pip_requirements=pip_requirements, params=params, tags=tags or {})
            mlflow.log_metrics({f"ensemble_val_{self.loss_name}": self.val_loss,
                                f"best_single_val_{self.loss_name}": self.best_single_loss})
            mlflow.set_tag("hpo.ensemble_uri", info.model_uri)
        return info


@dataclass
class RegressionPrediction:
    """An ensemble's regression output: ``mean``, and its variance split in two parts that
    add up to ``variance``: ``aleatoric`` (members' own predicted variances; 0 when they
    predict none, see ``aleatoric_known``) and ``epistemic`` (the members' disagreement)."""

    mean: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    aleatoric_known: bool = True

    @property
    def variance(self) -> np.ndarray:
        return self.aleatoric + self.epistemic


def split_variance(weights: np.ndarray, means: np.ndarray, variances: np.ndarray | None
                   ) -> RegressionPrediction:
    """The law of total variance for a weighted mixture of members (means: (m, n))."""
    w = np.asarray(weights, dtype=np.float64)
    mean = w @ means
    epistemic = w @ np.square(means - mean)
    if variances is None:
        return RegressionPrediction(mean, np.zeros_like(mean), epistemic, aleatoric_known=False)
    return RegressionPrediction(mean, w @ variances, epistemic)


def _scores(pred: np.ndarray, kind: str, y: np.ndarray) -> np.ndarray:
    """What the loss needs of each member, (m, n): the probability of the true class (the
    log loss of an average of probabilities depends on nothing else), or the mean."""
    if kind == "proba":
        if pred.shape[2] <= int(y.max()):
            raise ConfigError(f"y_true holds class {int(y.max())}, but the predictions have "
                              f"{pred.shape[2]} classes")
        return pred[:, np.arange(pred.shape[1]), y]
    return pred


def _loss(s: np.ndarray, kind: str, y: np.ndarray) -> np.ndarray:
    """Loss of each row of averaged scores, (..., n) -> (...)."""
    if kind == "proba":
        return -np.log(np.clip(s, _EPS, 1.0)).mean(axis=-1)
    return np.square(s - y).mean(axis=-1)


def _check_options(k: Any, method: Any, n_init: Any, tol: Any, max_steps: Any) -> None:
    if method not in METHODS:
        raise ConfigError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    for key, v in (("k", k), ("n_init", n_init), ("max_steps", max_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{key}: must be an integer >= 1, got {v!r}")
    if n_init > k:
        raise ConfigError(f"n_init: must be at most k={k}, got {n_init}")
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not tol >= 0:
        raise ConfigError(f"tol: must be a number >= 0, got {tol!r}")


def greedy_weights(scores: np.ndarray, kind: str, y: np.ndarray, k: int, n_init: int = 1,
                   tol: float = 1e-6, max_steps: int = 100) -> tuple[np.ndarray, list[float]]:
    """Caruana's selection with replacement on ``scores`` (m, n): the selection counts of
    each candidate, and the loss after each step. Each step tries every candidate at once
    (one (m, n) array operation), so a step costs O(m n)."""
    losses = _loss(scores, kind, y)
    order = np.argsort(losses, kind="stable")
    counts = np.zeros(len(scores), dtype=np.int64)
    counts[order[:n_init]] = 1
    total = scores[order[:n_init]].sum(axis=0)
    size = n_init
    history = [float(_loss(total / size, kind, y))]
    while (counts > 0).sum() < k and size < n_init + max_steps:
        trial_losses = _loss((total + scores) / (size + 1), kind, y)
        j = int(np.argmin(trial_losses))
        if history[-1] - trial_losses[j] < tol or not math.isfinite(trial_losses[j]):
            break
        counts[j] += 1
        total += scores[j]
        size += 1
        history.append(float(trial_losses[j]))
    return counts, history


def select(trials: Sequence[TrialRecord], k: int = 5, method: str = "caruana", n_init: int = 1,
           tol: float = 1e-6, max_steps: int = 100, y_true: Any = None, kind: str | None = None,
           include_pruned: bool = False, library: Library | None = None) -> Ensemble:
    """Choose an ensemble among ``trials`` (COMPLETE ones that saved predictions).

    ``k``: at most this many distinct members; ``n_init``: Caruana starts from the
    ``n_init`` best; ``tol``: stop when a step lowers the loss by less; ``max_steps``:
    additions at most; ``y_true``: the validation targets, when the trials saved none;
    ``include_pruned``: pruned trials are candidates too (their predictions come from a
    shorter training: use it when members are trained again at the full budget anyway,
    and a pruning scheduler left few complete trials).
    """
    _check_options(k, method, n_init, tol, max_steps)
    numbers, lib = (library or Library()).load(trials, kind, include_pruned)
    pred, kind = lib["pred"], lib["kind"]
    if y_true is not None:
        y = _targets(y_true, kind, pred.shape[1], pred.shape[-1], "y_true")
    elif lib["y_true"] is not None:
        y = lib["y_true"]
    else:
        raise ConfigError("no y_true: the trials saved none; give study.ensemble(y_true=...) "
                          "or trial.save_predictions(y_pred, y_true)")
    scores = _scores(pred, kind, y)
    single = _loss(scores, kind, y)
    best = int(np.argmin(single))
    if method == "topk":
        chosen = np.argsort(single, kind="stable")[:k]
        counts = np.zeros(len(numbers), dtype=np.int64)
        counts[chosen] = 1
        history = []
    else:
        counts, history = greedy_weights(scores, kind, y, k, n_init, tol, max_steps)
    idx = [int(i) for i in np.flatnonzero(counts)]
    # members in the order of their own loss (the first is the best of them)
    idx.sort(key=lambda i: (single[i], numbers[i]))
    weights = counts[idx] / counts.sum()
    val_pred = np.tensordot(weights, pred[idx], axes=1)
    val_loss = float(_loss(weights @ scores[idx], kind, y))
    if kind == "regression" and lib["var"] is None and any(lib["has_var"]):
        warnings.warn("some trials saved a variance and others none: the ensemble's "
                      "aleatoric part is 0", stacklevel=2)
    return Ensemble(members=[numbers[i] for i in idx], weights=[float(w) for w in weights],
                    kind=kind, method=method, val_loss=val_loss, best_single=numbers[best],
                    best_single_loss=float(single[best]), history=history,
                    n_candidates=len(numbers), val_predictions=val_pred)


# -- rerun after every trial ----------------------------------------------------------------
class KeptEnsemble:
    """A study subscriber that selects again after every finished trial, so
    ``.latest`` is always the ensemble of the trials so far (``None`` until one can be
    built). The saved predictions are read once each (a :class:`Library`)."""

    def __init__(self, trials: Callable[[], Sequence[TrialRecord]], **options: Any) -> None:
        _check_options(options.get("k", 5), options.get("method", "caruana"),
                       options.get("n_init", 1), options.get("tol", 1e-6),
                       options.get("max_steps", 100))
        self._trials, self._options = trials, options
        self._library = Library()
        self.latest: Ensemble | None = None
        self.selections = 0
        self.error: str | None = None  # why the last selection built nothing
        self.unsubscribe: Callable[[], None] = lambda: None

    def __call__(self, kind: str, rec: TrialRecord) -> None:
        if kind != "finished" or rec.state is TrialState.FAILED:
            return
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ens = select(self._trials(), library=self._library, **self._options)
        except ConfigError as exc:  # e.g. no trial saved predictions yet: keep the last one
            self.error = str(exc)
            return
        self.latest, self.error = ens, None
        self.selections += 1
