"""The handle an objective receives: ``objective(params, trial)``.

It runs on a worker. ``report`` sends the value to the study's scheduler rule (over one
RPC to the Dask scheduler plugin) and remembers the decision, so ``should_prune`` costs
nothing; with a rule that never stops trials (``fifo``) no RPC is made at all.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import warnings
from collections.abc import Callable
from typing import Any

from hpo_mlops.errors import ReportError

#: reporter(trial_number, step, value) -> True when the trial should stop
Reporter = Callable[[int, int, float], bool]
#: the tag holding the path of a trial's saved validation predictions (``save_predictions``)
PREDICTIONS_TAG = "hpo.predictions"
PREDICTIONS_FILE = "predictions.npz"


class TrialPruned(Exception):  # noqa: N818 - the name users know from Optuna
    """Raise from an objective to stop a trial the scheduler pruned (returning works too)."""


class Trial:
    """What an objective sees of its trial.

    Attributes: ``params`` (this trial's configuration), ``number`` (unique in the study),
    ``budget`` (how far it may go, e.g. epochs; ``None`` when the scheduler sets none),
    ``context`` (what ``optimize(setup=...)`` built once on this worker), ``attempt``.
    """

    def __init__(
        self,
        number: int,
        params: dict[str, Any],
        budget: float | None = None,
        reporter: Reporter | None = None,
        context: Any = None,
        attempt: int = 1,
        checkpoint_dir: str | None = None,
    ) -> None:
        self.number = number
        self.params = params
        self.budget = int(budget) if isinstance(budget, float) and budget.is_integer() else budget
        self.context = context
        self.attempt = attempt
        self._checkpoint_dir = checkpoint_dir
        self._reporter = reporter
        self._intermediate: list[tuple[int, float]] = []
        self._prune = False
        self._pruned_step: int | None = None
        #: tags recorded on the trial's record and its MLflow run (e.g. ``hpo.predictions``)
        self.tags: dict[str, str] = {}

    # -- reports --------------------------------------------------------------------------
    def report(self, value: float, step: int) -> None:
        """Record ``value`` (the study's primary metric) at ``step`` (epoch, iteration...).

        Steps must be integers that increase; NaN/inf are recorded as the worst value.
        """
        if step is None or isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise ReportError(f"trial.report needs an integer step, got step={step!r}")
        step = int(step)
        if self._intermediate and step <= self._intermediate[-1][0]:
            raise ReportError(
                f"trial {self.number}: steps must increase, got step={step} after "
                f"step={self._intermediate[-1][0]}"
            )
        if self._prune:
            raise ReportError(
                f"trial {self.number} was pruned at step {self._pruned_step}; "
                f"return from the objective instead of reporting step={step}"
            )
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ReportError(f"trial.report needs a number, got value={value!r}")
        value = float(value)
        if not math.isfinite(value):
            warnings.warn(
                f"trial {self.number} reported {value} at step {step}; counted as the worst value",
                stacklevel=2,
            )
        self._intermediate.append((step, value))
        if self._reporter is not None and self._reporter(self.number, step, value):
            self._prune = True
            self._pruned_step = step

    def should_prune(self) -> bool:
        """True when the scheduler decided, at the last report, that this trial should stop."""
        return self._prune

    # -- checkpoints: a promoted trial (synchronous SHA / Hyperband) resumes from them -------
    @property
    def checkpoint_dir(self) -> str | None:
        """A directory of this trial's own, kept across its jobs (created on first use).

        Put it on a file system every worker sees (``optimize(checkpoint_dir=...)`` on HPC).
        """
        if self._checkpoint_dir is not None:
            os.makedirs(self._checkpoint_dir, exist_ok=True)
        return self._checkpoint_dir

    def save(self, state: Any, name: str = "checkpoint.pkl") -> None:
        """Pickle ``state`` into the trial's checkpoint directory (atomically)."""
        if self.checkpoint_dir is None:
            return
        path = os.path.join(self.checkpoint_dir, name)
        with open(path + ".tmp", "wb") as fh:
            pickle.dump(state, fh)
        os.replace(path + ".tmp", path)

    def load(self, name: str = "checkpoint.pkl") -> Any:
        """What :meth:`save` stored in an earlier job of this trial, or ``None``."""
        if self._checkpoint_dir is None:
            return None
        path = os.path.join(self._checkpoint_dir, name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as fh:
            return pickle.load(fh)

    def save_predictions(self, y_pred: Any, y_true: Any = None, kind: str = "proba",
                         variance: Any = None, name: str = PREDICTIONS_FILE) -> str | None:
        """Keep this trial's validation predictions, so ``study.ensemble`` can pick members.

        ``kind="proba"``: ``y_pred`` holds class probabilities, shape (n, classes), and
        ``y_true`` the class indices; ``kind="regression"``: ``y_pred`` the predicted means,
        shape (n,), and ``variance`` (optional) each prediction's variance, for the
        ensemble's aleatoric part. ``y_true`` may be left out if ``study.ensemble`` is given
        it. Written as ``.npz`` beside the trial's checkpoint; the path goes into the
        ``hpo.predictions`` tag of the trial (its record and MLflow run), where the study
        finds it. Returns the path (``None`` without a checkpoint directory).
        """
        from hpo_mlops.ensemble import check_predictions

        arrays = check_predictions(y_pred, y_true, kind, variance,
                                   f"trial {self.number}: save_predictions")
        if self.checkpoint_dir is None:
            return None
        import numpy as np

        path = os.path.join(self.checkpoint_dir, name)
        with open(path + ".tmp", "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(path + ".tmp", path)
        self.tags[PREDICTIONS_TAG] = os.path.abspath(path)
        return path

    @property
    def intermediate(self) -> list[tuple[int, float]]:
        return list(self._intermediate)

    @property
    def pruned_step(self) -> int | None:
        return self._pruned_step

    def __repr__(self) -> str:
        return f"Trial(number={self.number}, params={self.params!r}, budget={self.budget!r})"
