"""An ensemble of a study's trials as an MLflow ``pyfunc`` model (see :mod:`hpo_mlops.ensemble`).

A module of its own because importing ``mlflow.pyfunc`` takes seconds, and
:mod:`hpo_mlops.ensemble` is imported on workers (``trial.save_predictions``) and after
every trial (``study.keep_ensemble``), where no model is built.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mlflow.pyfunc import PythonModel

from hpo_mlops.ensemble import KINDS, probabilities, regression_output, split_variance
from hpo_mlops.errors import ConfigError


class EnsembleModel(PythonModel):
    """The ensemble as an MLflow ``pyfunc`` model: its members' fitted models and weights.

    ``predict`` gives, for ``kind="proba"``, the weighted average of the members'
    class probabilities, shape (n, classes) (``argmax`` for labels); for regression a
    DataFrame with ``mean``, ``variance``, ``aleatoric`` and ``epistemic`` columns.
    """

    #: MLflow's own switch (as for its ChatModel): no type-hint schema for ``predict``, and
    #: no warning, when the class is defined, that it has none (on purpose: see ``predict``)
    _skip_type_hint_validation = True

    def __init__(self, models: list[Any], weights: list[float], kind: str,
                 members: list[int] | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"kind: must be one of {', '.join(KINDS)}, got {kind!r}")
        if len(models) != len(weights) or not models:
            raise ConfigError(f"one weight per model: {len(models)} models, {len(weights)} "
                              "weights")
        self.models, self.weights, self.kind = list(models), list(weights), kind
        self.members = list(members or range(len(models)))

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """See the class docstring (``context``, ``params``: MLflow's, unused). No type
        hints: MLflow would read them as the model's input schema."""
        X = model_input.to_numpy() if hasattr(model_input, "to_numpy") else np.asarray(model_input)
        w = np.asarray(self.weights)
        if self.kind == "proba":
            return np.tensordot(w, np.stack([probabilities(m, X) for m in self.models]), axes=1)
        import pandas as pd

        outs = [regression_output(m, X) for m in self.models]
        var = None if any(v is None for _, v in outs) else np.stack([v for _, v in outs])
        r = split_variance(w, np.stack([mu for mu, _ in outs]), var)
        return pd.DataFrame({"mean": r.mean, "variance": r.variance,
                             "aleatoric": r.aleatoric, "epistemic": r.epistemic})
