"""Optuna's samplers behind the hpo-mlops :class:`~hpo_mlops.samplers.Sampler` interface.

Registered (``pyproject.toml``, group ``hpo_mlops.samplers``) as:

============== ======================= ============= ===============
name           Optuna class            conditional   multi-objective
============== ======================= ============= ===============
tpe            TPESampler              yes           yes
cmaes          CmaEsSampler            no            no
gp             GPSampler               no            yes
qmc            QMCSampler              no            yes
nsga2          NSGAIISampler           no            yes
optuna.random  RandomSampler           yes           yes
============== ======================= ============= ===============

"Conditional: no" means Optuna would fall back to independent random sampling for
parameters outside the space every trial shares, so the sampler would quietly stop
being what the user picked; such spaces are refused at ``setup`` instead. Options given
in the study config are passed to the Optuna class unchanged, e.g.
``sampler: {name: tpe, n_startup_trials: 20}``. ``cmaes`` needs the ``cmaes`` package and
``gp`` needs ``torch``; without them the sampler refuses to be created with the pip line.
"""

from __future__ import annotations

from typing import Any, ClassVar

import optuna

from hpo_mlops.space import Choices

from ._adapter import MissingDependencyError, OptunaSampler, _log

#: recorded trials needed to warm-start CMA-ES (it keeps the best 10 %, at least one)
_WARM_START_MIN = 10

__all__ = [
    "CmaEsSampler",
    "GPSampler",
    "MissingDependencyError",
    "NSGAIISampler",
    "OptunaRandomSampler",
    "OptunaSampler",
    "QMCSampler",
    "TPESampler",
]


class TPESampler(OptunaSampler):
    """Tree-structured Parzen estimator, Optuna's default and our best general choice.

    Defaults differ from Optuna's where the study loop needs it: ``multivariate=True``
    (models interactions; Optuna picks it only for single-objective) and
    ``constant_liar=True`` (pending trials count as bad ones, so the many parallel asks of
    a cluster do not pile onto one point). For a conditional space ``group=True`` is added
    (when multivariate): without groups, multivariate TPE models only the parameters
    every trial shares and falls back to one-at-a-time TPE for the conditional ones.
    A trial waiting at a rung of SHA or Hyperband is told as pruned there at once
    (``pause``), so TPE models each rung while it fills, as BOHB does.
    """

    name = "tpe"
    supports_conditional = True
    supports_multi_objective = True
    optuna_class = optuna.samplers.TPESampler
    defaults: ClassVar[dict[str, Any]] = {"multivariate": True, "constant_liar": True}
    learns_from_pruned = True

    def sampler_options(self) -> dict[str, Any]:
        opts = super().sampler_options()
        if (
            self.space is not None
            and self.space.is_conditional
            and opts.get("multivariate")
            and "group" not in self.options
        ):
            opts["group"] = True
        return opts


class CmaEsSampler(OptunaSampler):
    """CMA-ES for continuous (and integer) spaces, single objective.

    Categorical parameters are sampled at random by Optuna. Its per-trial warnings about
    that are off by default; ``setup`` says it once instead. When resuming, trials told
    before the first ask warm-start the CMA-ES distribution (``source_trials``).
    """

    name = "cmaes"
    optuna_class = optuna.samplers.CmaEsSampler
    defaults: ClassVar[dict[str, Any]] = {"warn_independent_sampling": False}
    requires = (("cmaes", "cmaes"),)

    def _setup(self) -> None:
        self._warm_start: list[optuna.trial.FrozenTrial] = []
        self._asked = False
        super()._setup()
        assert self.space is not None
        categorical = [p.name for p in self.space if isinstance(p.dist, Choices)]
        if categorical:
            _log.warning(
                "sampler 'cmaes': CMA-ES models numbers only; categorical parameters "
                "%s are sampled at random",
                ", ".join(categorical),
            )

    def _on_replay(self, trial: optuna.trial.FrozenTrial) -> None:
        if not self._asked and trial.state == optuna.trial.TrialState.COMPLETE:
            self._warm_start.append(trial)

    def _before_ask(self) -> None:
        # Optuna's CMA-ES keeps its evolution in its own generations and ignores trials
        # added with add_trial. On resume, start it from the recorded trials instead
        # (warm-starting CMA-ES, Nomura et al. 2021: the mean and covariance of the best
        # 10 %), which needs at least 10 of them and none of the options it excludes.
        if self._asked:
            return
        self._asked = True
        excluded = {"x0", "sigma0", "use_separable_cma", "source_trials"} & set(self.options)
        if len(self._warm_start) >= _WARM_START_MIN and not excluded:
            self.study.sampler = self._build(source_trials=list(self._warm_start))
        self._warm_start = []


class GPSampler(OptunaSampler):
    """Gaussian-process Bayesian optimisation (logEI / logEHVI; q-batch over pending trials).

    The most sample-efficient choice for small budgets of expensive trials, and the
    slowest per ask (it fits a GP with torch every time). Multi-objective is supported.
    """

    name = "gp"
    supports_multi_objective = True
    optuna_class = optuna.samplers.GPSampler
    defaults: ClassVar[dict[str, Any]] = {"warn_independent_sampling": False}
    requires = (("torch", "torch"), ("scipy", "scipy"))


class QMCSampler(OptunaSampler):
    """Quasi-Monte Carlo (Sobol/Halton): space-filling, model-free.

    ``scramble=True`` by default (Optuna: False): an unscrambled Sobol sequence starts in
    the corner of the box and ignores the seed. Optuna keeps it off for independent
    workers that must agree on one sequence; here one manager owns the sampler.
    """

    name = "qmc"
    supports_multi_objective = True
    optuna_class = optuna.samplers.QMCSampler
    defaults: ClassVar[dict[str, Any]] = {
        "scramble": True,
        "warn_asynchronous_seeding": False,
        "warn_independent_sampling": False,
    }


class NSGAIISampler(OptunaSampler):
    """NSGA-II genetic algorithm, the usual choice for several objectives.

    Trials replayed on resume are seen as observations but belong to no generation, so
    NSGA-II's evolution starts afresh from the new trials.
    """

    name = "nsga2"
    supports_multi_objective = True
    optuna_class = optuna.samplers.NSGAIISampler


class OptunaRandomSampler(OptunaSampler):
    """Optuna's random search: the baseline, and a check that the adapter is neutral."""

    name = "optuna.random"
    supports_conditional = True
    supports_multi_objective = True
    optuna_class = optuna.samplers.RandomSampler
