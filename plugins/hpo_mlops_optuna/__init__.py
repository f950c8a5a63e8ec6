"""Optuna's samplers behind the hpo-mlops :class:`~hpo_mlops.samplers.Sampler` interface.

Registered (``pyproject.toml``, group ``hpo_mlops.samplers``) as:

============== ======================= ============= =============== ==========
name           Optuna class            conditional   multi-objective replicable
============== ======================= ============= =============== ==========
tpe            TPESampler              yes           yes             yes
cmaes          CmaEsSampler            no            no              no
gp             GPSampler               no            yes             no
qmc            QMCSampler              no            yes             no
nsga2          NSGAIISampler           no            yes             no
optuna.random  RandomSampler           yes           yes             yes
============== ======================= ============= =============== ==========

"Conditional: no" means Optuna would fall back to independent random sampling for
parameters outside the space every trial shares, so the sampler would quietly stop
being what the user picked; such spaces are refused at ``setup`` instead. Options given
in the study config are passed to the Optuna class unchanged, e.g.
``sampler: {name: tpe, n_startup_trials: 20}``. ``cmaes`` needs the ``cmaes`` package and
``gp`` needs ``torch``; without them the sampler refuses to be created with the pip line.

"Replicable" (:attr:`hpo_mlops.samplers.Sampler.replicable`): one copy per worker process,
each told the whole history, searches as well as one central sampler; the others ask
centrally (the reason is on each class).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import FloatDistribution, IntDistribution

from hpo_mlops.space import Choices

from ._adapter import MissingDependencyError, OptunaSampler, _log, continued_seed

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
    #: its model is a function of the study's trials, RUNNING ones included (the liar),
    #: and its proposals are random draws from that model, so copies with their own seeds
    #: that each hold the shared history propose apart, as one central TPE would
    replicable = True

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
    #: not replicable: Optuna's CMA-ES evolves one distribution from the generations it
    #: sampled itself and ignores trials added to its study, so each copy would run a
    #: separate CMA-ES on its own share of the trials
    replicable = False

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
            source = [_numeric_part(t) for t in self._warm_start]
            self.study.sampler = self._build(source_trials=source)
        self._warm_start = []


def _numeric_part(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """``trial`` with only the parameters CMA-ES models (numbers of more than one value).

    Why: Optuna accepts a source trial only when its parameters are exactly the CMA-ES
    search space, which leaves out categorical and single-valued ones; a recorded trial
    of a space with a categorical parameter would otherwise stop the warm start with
    "No compatible source_trials".
    """
    keep = {
        k: d
        for k, d in trial.distributions.items()
        if isinstance(d, FloatDistribution | IntDistribution) and not d.single()
    }
    return optuna.trial.create_trial(
        params={k: trial.params[k] for k in keep},
        distributions=keep,
        value=trial.value,
        state=trial.state,
    )


class GPSampler(OptunaSampler):
    """Gaussian-process Bayesian optimisation (logEI / logEHVI; q-batch over pending trials).

    The most sample-efficient choice for small budgets of expensive trials, and the
    slowest per ask (it fits a GP with torch every time). Multi-objective is supported.
    """

    name = "gp"
    supports_multi_objective = True
    optuna_class = optuna.samplers.GPSampler
    defaults: ClassVar[dict[str, Any]] = {"warn_independent_sampling": False}
    #: not replicable: it proposes the maximiser of an acquisition function that is
    #: nearly deterministic in the history, so copies asking before they hear of each
    #: other's trials would propose the same point (and it is meant for few, costly trials)
    replicable = False
    requires = (("torch", "torch"), ("scipy", "scipy"))


class QMCSampler(OptunaSampler):
    """Quasi-Monte Carlo (Sobol/Halton): space-filling, model-free.

    ``scramble=True`` by default (Optuna: False): an unscrambled Sobol sequence starts in
    the corner of the box and ignores the seed. Optuna keeps it off for independent
    workers that must agree on one sequence; here one manager owns the sampler.

    Resume continues the sequence where the earlier run left it (its index skips the
    recorded trials, the first of which Optuna draws at random), so 10 + 10 trials are
    the 20 of one uninterrupted run; scrambling keeps the study's seed.
    """

    name = "qmc"
    supports_multi_objective = True
    optuna_class = optuna.samplers.QMCSampler
    #: not replicable: space filling comes from one sequence whose index is counted in
    #: the sampler's own study; copies would draw overlapping, independently scrambled ones
    replicable = False

    defaults: ClassVar[dict[str, Any]] = {
        "scramble": True,
        "warn_asynchronous_seeding": False,
        "warn_independent_sampling": False,
    }

    def _continue_stream(self) -> None:
        """Skip the sequence's index past the recorded trials instead of reseeding.

        Optuna counts the points it drew in its study (a private helper, hence the
        fallback to the adapter's reseeding if it is gone); the first trial of a study is
        drawn at random and takes no index, so ``n`` recorded trials took ``n - 1``.
        """
        engine = self.study.sampler
        skip = getattr(engine, "_find_sample_id", None)
        n = len(self._recorded)
        if self._stream_started or n == 0 or not callable(skip):
            super()._continue_stream()
            return
        self._stream_started = True
        self._recorded.clear()
        self._rng = np.random.default_rng(continued_seed(self.seed, n))
        space = engine.infer_relative_search_space(self.study, None)  # type: ignore[arg-type]
        if space:
            for _ in range(n - 1):
                skip(self.study, space)


class NSGAIISampler(OptunaSampler):
    """NSGA-II genetic algorithm, the usual choice for several objectives.

    Trials replayed on resume are seen as observations but belong to no generation, so
    NSGA-II's evolution starts afresh from the new trials.
    """

    name = "nsga2"
    supports_multi_objective = True
    optuna_class = optuna.samplers.NSGAIISampler
    #: not replicable: generations (selection, crossover) are built from the trials the
    #: sampler itself assigned to them, so copies would each evolve a population of their own
    replicable = False


class OptunaRandomSampler(OptunaSampler):
    """Optuna's random search: the baseline, and a check that the adapter is neutral."""

    name = "optuna.random"
    supports_conditional = True
    supports_multi_objective = True
    optuna_class = optuna.samplers.RandomSampler
    #: independent draws: copies with their own seeds are one random search
    replicable = True
