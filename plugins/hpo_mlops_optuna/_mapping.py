"""Our distributions <-> Optuna's, in both directions.

Samplers are asked in our terms (``Uniform``, ``RandInt``, ``Normal``, ``Choices``) but
Optuna only knows floats, ints and categoricals. Each parameter gets one :class:`Native`
that says which Optuna distribution stands in for it, how to turn what Optuna suggested
into a value of the space (``to_public``) and how to turn a recorded value back into
what Optuna would have suggested (``to_native``, for trials replayed on resume). Both
ways go through the same object so an asked trial and a replayed one look identical to
the Optuna sampler (same distributions, same internal values).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import Trial

from hpo_mlops.space import Choices, Normal, Param, RandInt, Uniform


@dataclass(frozen=True)
class Native:
    """How one parameter of the space is expressed to Optuna."""

    name: str
    dist: BaseDistribution
    to_public: Callable[[Any], Any]
    to_native: Callable[[Any], Any]

    def suggest(self, trial: Trial) -> Any:
        """Ask ``trial`` through the public ``suggest_*`` API; returns Optuna's raw value."""
        d = self.dist
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(self.name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(self.name, d.low, d.high, step=d.step, log=d.log)
        assert isinstance(d, CategoricalDistribution)
        return trial.suggest_categorical(self.name, list(d.choices))


def _grid_top(low: float, high: float, q: float) -> float:
    """The largest point of the q grid anchored at ``low`` that is <= ``high``.

    Optuna warns and moves ``high`` itself when (high - low) is not a multiple of the
    step; passing the grid's real top (rounded like :meth:`Uniform.clip` rounds) keeps
    its grid and ours identical and silent.
    """
    n = int(math.floor((high - low) / q + 1e-9))
    return round(low + n * q, 12)


def _unambiguous(options: tuple[Any, ...]) -> bool:
    """Can Optuna tell the options apart? ``1``, ``1.0`` and ``True`` compare equal, and
    Optuna finds a categorical value by ``==``, so such options go to Optuna as indices."""
    try:
        return len(set(options)) == len(options)
    except TypeError:  # pragma: no cover - options are validated scalars
        return False


def native(param: Param) -> Native:
    """The Optuna stand-in for ``param``; see the module docstring."""
    d = param.dist
    if isinstance(d, Uniform):
        if d.log:
            # Optuna cannot combine log=True with a step: sample the log-continuous
            # value and snap it onto our grid (clip() also keeps it inside [low, high]).
            od: BaseDistribution = FloatDistribution(float(d.low), float(d.high), log=True)
        elif d.q is not None:
            od = FloatDistribution(float(d.low), _grid_top(d.low, d.high, d.q), step=float(d.q))
        else:
            od = FloatDistribution(float(d.low), float(d.high))
        return Native(param.name, od, lambda v: d.clip(float(v)), lambda v: d.clip(float(v)))
    if isinstance(d, RandInt):
        top = d.low + ((d.high - d.low) // d.q) * d.q
        od = IntDistribution(int(d.low), int(top), step=int(d.q), log=d.log)
        return Native(param.name, od, lambda v: int(v), lambda v: int(d.clip(v)))
    if isinstance(d, Normal):
        # Optuna has no Gaussian: search the quantile u in [0, 1] and map it through the
        # inverse CDF, so every Optuna sampler sees a bounded box and the prior's shape
        # is kept (uniform u = Gaussian value).
        od = FloatDistribution(0.0, 1.0)
        return Native(
            param.name,
            od,
            lambda u: float(d.from_quantile(float(u))),
            lambda v: float(d.to_quantile(float(v))),
        )
    if isinstance(d, Choices):
        if _unambiguous(d.options):
            od = CategoricalDistribution(list(d.options))
            return Native(
                param.name, od, lambda v: d.options[d.index(v)], lambda v: d.options[d.index(v)]
            )
        od = CategoricalDistribution(list(range(len(d.options))))
        return Native(param.name, od, lambda i: d.options[int(i)], lambda v: d.index(v))
    raise TypeError(f"{param.name}: no Optuna mapping for {type(d).__name__}")


def plain(value: Any) -> Any:
    """A plain Python scalar: numpy scalars (which Optuna may pass through) become
    int/float/bool so that params are JSON-, YAML- and MLflow-friendly."""
    item = getattr(value, "item", None)
    if item is not None and type(value).__module__ == "numpy":
        return item()
    return value
