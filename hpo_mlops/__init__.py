"""hpo-mlops: hyperparameter optimization at cluster scale.

Samplers propose configurations, trials run as Dask futures, schedulers on the Dask
scheduler stop weak trials early, and every trial is an MLflow run nested under its
study's run.
"""

from hpo_mlops.errors import (
    ConfigError,
    HPOError,
    RegistryError,
    ReportError,
    SpaceError,
    TooManyFailures,
    UnsupportedSpaceError,
)
from hpo_mlops.results import Result, TrialRecord, TrialState
from hpo_mlops.space import Space, choices, lognormal, loguniform, normal, randint, uniform

__all__ = [
    "Study",
    "Trial",
    "TrialPruned",
    "ConfigError",
    "HPOError",
    "RegistryError",
    "ReportError",
    "Result",
    "Space",
    "SpaceError",
    "TooManyFailures",
    "TrialRecord",
    "TrialState",
    "UnsupportedSpaceError",
    "choices",
    "lognormal",
    "loguniform",
    "normal",
    "randint",
    "uniform",
]
__version__ = "0.1.0"

_LAZY = {"Study": "hpo_mlops.study", "Trial": "hpo_mlops.trial", "TrialPruned": "hpo_mlops.trial"}


def __getattr__(name: str):
    """``from hpo_mlops import Study`` without importing Dask and MLflow on ``import hpo_mlops``."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hpo_mlops' has no attribute {name!r}")
