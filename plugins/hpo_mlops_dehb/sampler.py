"""DEHB behind the ask/tell :class:`Sampler` interface; it chooses each trial's budget too.

DEHB (Awad et al., IJCAI 2021) runs Hyperband's brackets, but the configurations of a rung
come from a differential-evolution subpopulation kept per fidelity: in the first round of
brackets a higher rung re-evaluates the best configurations of the rung below, afterwards it
evaluates mutants (mutation + crossover) of the lower rung's best. Either way each job is a
configuration evaluated *from scratch* at one fidelity, never a trial continued. So here every
DEHB job is one new trial whose budget is DEHB's fidelity:

- ``ask`` calls ``DEHB.ask()`` and returns the job's configuration as params; the job's
  fidelity is what :meth:`DEHBSampler.budget_of` answers for that dict. The study puts it
  on the queued copy under :data:`hpo_mlops.ledger.BUDGET_KEY` and the ledger starts the
  trial at that budget instead of the rule's (``chooses_budgets``), so the rule must be one
  that plans no budgets (``fifo``, or ``asha`` / ``median`` to also stop trials early).
- ``tell`` calls ``DEHB.tell(job_info, {"fitness", "cost"})`` with the job ``ask`` made for
  that dict. DEHB minimizes: a maximized metric is negated. A failed trial (or one that never
  ends, INTERRUPTED) is told as fitness ``inf`` -- DEHB's bracket waits for every job of a rung
  before it evolves the next one, so a job it is never told would hold its bracket forever.

The search space goes to DEHB as a unit hypercube (DEHB's ``dimensions`` mode, no
ConfigSpace): each parameter is one coordinate ``u`` in [0, 1] that we map ourselves, as
DEHB's ConfigSpace mapping would, but for every distribution of our space (``q=`` grids,
``log=True`` integers, ``normal`` through its quantile, choices of any scalar type) and with
plain Python values. Conditional spaces are refused: DEHB's hypercube has no inactive
coordinates (its ConfigSpace path imputes them with defaults, so mutation would move
parameters that do not exist).

Resume: DEHB 0.1.x cannot be warm-started (its ``tell`` refuses results it did not ask for,
``NotImplementedError``). Trials recorded by an earlier run are counted, and the first ``ask``
builds DEHB with a seed moved on by that count, so a resumed seeded study does not propose
the configurations it already ran; it does not learn from them.

Side effects of the ``dehb`` package: building a ``DEHB`` reconfigures the global ``loguru``
logger (a stdout handler at WARNING, replacing any the program set) and opens a log file in
its ``output_path``, which is a temporary folder here (removed when the sampler goes).
"""

from __future__ import annotations

import math
import numbers
import shutil
import tempfile
import weakref
from typing import Any, ClassVar

import numpy as np

from hpo_mlops.errors import ConfigError
from hpo_mlops.results import Result, TrialState
from hpo_mlops.samplers.base import Params, Sampler
from hpo_mlops.space import Choices, Normal, Param, RandInt, Uniform

__all__ = ["DEHBSampler"]

#: DEHB's mutation strategies (``AsyncDE.mutation``) and crossovers (``AsyncDE.crossover``)
_MUTATIONS = ("rand1", "rand2", "rand2dir", "best1", "best2", "currenttobest1", "randtobest1")
_CROSSOVERS = ("bin", "exp")
_SEED_HIGH = 2**32 - 1  # DEHB draws its own seeds below this


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ConfigError(f"sampler.{key}: must be a finite number, got {value!r}")
    return value  # type: ignore[return-value]


def _from_unit(param: Param, u: float) -> Any:
    """The value of ``param`` at coordinate ``u`` of DEHB's unit hypercube (a plain scalar).

    Every value of a finite distribution gets an equal slice of [0, 1] (rounding instead
    would give the two ends half a slice each, as DEHB's own integer mapping does).
    """
    u = min(max(float(u), 0.0), 1.0)
    d = param.dist
    if isinstance(d, Choices):
        return d.options[min(int(u * len(d.options)), len(d.options) - 1)]
    if isinstance(d, RandInt):
        if d.log:  # log-uniform over [low - 0.5, high + 0.5), as RandInt.sample draws
            lo, hi = math.log(d.low - 0.5 + 1e-9), math.log(d.high + 0.5)
            return int(min(max(round(math.exp(lo + u * (hi - lo))), d.low), d.high))
        n = (d.high - d.low) // d.q + 1
        return int(d.low + min(int(u * n), n - 1) * d.q)
    if isinstance(d, Uniform):
        if d.log:
            lo, hi = math.log(d.low), math.log(d.high)
            return d.clip(math.exp(lo + u * (hi - lo)))
        return d.clip(d.low + u * (d.high - d.low))
    if isinstance(d, Normal):
        return float(d.from_quantile(u))
    raise TypeError(f"{param.name}: no DEHB mapping for {type(d).__name__}")  # pragma: no cover


class DEHBSampler(Sampler):
    """DEHB: differential evolution inside Hyperband's brackets; it picks the budgets.

    Options (``sampler: {name: dehb, ...}``): ``max_budget`` (required), ``min_budget``
    (default 1) and ``eta`` (default 3) as for ``hyperband``; DEHB's ``mutation_factor``
    (0.5), ``crossover_prob`` (0.5) and ``strategy`` (``"rand1_bin"``).
    """

    supports_conditional: ClassVar[bool] = False
    supports_multi_objective: ClassVar[bool] = False
    #: one evolving population and one bracket schedule: copies would each run their own
    replicable: ClassVar[bool] = False
    chooses_budgets: ClassVar[bool] = True

    def __init__(
        self,
        max_budget: float | None = None,
        min_budget: float = 1,
        eta: int = 3,
        mutation_factor: float = 0.5,
        crossover_prob: float = 0.5,
        strategy: str = "rand1_bin",
    ) -> None:
        if max_budget is None:
            raise ConfigError(
                "sampler.max_budget: required for dehb (the largest budget DEHB gives a trial, "
                "in report steps, e.g. epochs)"
            )
        _number("max_budget", max_budget)
        _number("min_budget", min_budget)
        if isinstance(eta, bool) or not isinstance(eta, numbers.Integral) or eta < 2:
            raise ConfigError(f"sampler.eta: must be an integer >= 2, got {eta!r}")
        if not 0 < min_budget < max_budget:
            raise ConfigError(
                f"sampler.min_budget: must be > 0 and < max_budget, got min_budget={min_budget}, "
                f"max_budget={max_budget}"
            )
        if max_budget < min_budget * eta * (1 - 1e-9):
            raise ConfigError(
                f"sampler.max_budget: must be >= min_budget * eta = {min_budget * eta} so that "
                f"DEHB has at least two fidelities, got max_budget={max_budget}"
            )
        for key, v in (("mutation_factor", mutation_factor), ("crossover_prob", crossover_prob)):
            if not 0 < _number(key, v) <= (2 if key == "mutation_factor" else 1):
                top = 2 if key == "mutation_factor" else 1
                raise ConfigError(f"sampler.{key}: must be in (0, {top}], got {v!r}")
        mutation, _, crossover = str(strategy).rpartition("_")
        if mutation not in _MUTATIONS or crossover not in _CROSSOVERS:
            raise ConfigError(
                f"sampler.strategy: must be <mutation>_<crossover> with mutation one of "
                f"{', '.join(_MUTATIONS)} and crossover bin or exp, got {strategy!r}"
            )
        super().__init__(max_budget=max_budget, min_budget=min_budget, eta=int(eta),
                         mutation_factor=mutation_factor, crossover_prob=crossover_prob,
                         strategy=strategy)
        # budgets stay ints where both ends are ints and DEHB's fidelity is one (27 * 3**-3
        # is 1.0000000000000002 in floating point)
        self._int_budgets = all(isinstance(v, numbers.Integral) for v in (min_budget, max_budget))

    # -- lifecycle ------------------------------------------------------------------------
    def _setup(self) -> None:
        assert self.space is not None
        import dehb  # noqa: F401  (fail at setup, with the package's own message, not at ask)

        self._sign = -1.0 if self.directions[0] == "maximize" else 1.0
        self._params = list(self.space)
        self._dehb: Any = None  # built at the first ask (resume: once recorded trials are known)
        self._recorded = 0
        # id(params) -> (the dict ask returned, DEHB's job info); holding the dict keeps its
        # id from being reused while the trial is pending
        self._pending: dict[int, tuple[Params, dict[str, Any]]] = {}

    def _build(self) -> Any:
        from dehb import DEHB

        seed = self.seed
        if seed is None:
            seed = int(np.random.default_rng().integers(_SEED_HIGH))
        elif self._recorded:  # resume: move the seeded stream on (see the module docstring)
            seed = int(np.random.default_rng([seed, self._recorded]).integers(_SEED_HIGH))
        folder = tempfile.mkdtemp(prefix="hpo-mlops-dehb-")
        weakref.finalize(self, shutil.rmtree, folder, True)
        o = self.options
        return DEHB(
            f=None, dimensions=len(self._params), configspace=False,
            min_fidelity=o["min_budget"], max_fidelity=o["max_budget"], eta=o["eta"],
            mutation_factor=o["mutation_factor"], crossover_prob=o["crossover_prob"],
            strategy=o["strategy"], seed=seed, n_workers=1, save_freq="end",
            output_path=folder,
        )

    # -- ask / tell -----------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Params]:
        """``n`` DEHB jobs as params; :meth:`budget_of` gives each one's fidelity."""
        assert self.space is not None, "setup() first"
        if self._dehb is None:
            self._dehb = self._build()
        out: list[Params] = []
        for _ in range(max(n, 0)):
            job = self._dehb.ask()
            vector = np.asarray(job["config"], dtype=float)
            params = {p.name: _from_unit(p, u) for p, u in zip(self._params, vector, strict=True)}
            self._pending[id(params)] = (params, job)
            out.append(params)
        return out

    def budget_of(self, params: Params) -> float | int | None:
        """The fidelity DEHB chose for ``params`` (a dict ``ask`` returned and not told yet)."""
        entry = self._pending.get(id(params))
        if entry is None or entry[0] is not params:
            return None
        fidelity = float(entry[1]["fidelity"])
        if self._int_budgets and math.isclose(fidelity, round(fidelity), rel_tol=1e-9):
            return int(round(fidelity))
        return fidelity

    def tell(self, params: Params, result: Result) -> None:
        """Tell DEHB the job ``params`` came from; a dict it never asked counts for resume."""
        assert self.space is not None, "setup() first"
        if result.state is TrialState.RUNNING:
            return
        key = self._find(params)
        if key is None:
            if self._dehb is None:
                self._recorded += 1  # an earlier run's trial: moves the seed on (resume)
            return  # DEHB 0.1.x cannot take a result it did not ask for
        _, job = self._pending.pop(key)
        self._dehb.tell(job, {"fitness": self._fitness(result),
                              "cost": float(result.budget or job["fidelity"])})

    def _find(self, params: Params) -> int | None:
        """The pending key of ``params``: the very dict ``ask`` returned, or an equal copy."""
        if id(params) in self._pending and self._pending[id(params)][0] is params:
            return id(params)
        return next((k for k, (p, _) in self._pending.items() if p == params), None)

    def _fitness(self, result: Result) -> float:
        """What DEHB minimizes: the value (a pruned trial's last report); ``inf`` if none."""
        value = None
        if result.state in (TrialState.COMPLETE, TrialState.PRUNED):
            if result.values:
                value = result.values[0]
            elif result.intermediate:
                value = result.intermediate[-1][1]
        if value is None or not math.isfinite(value):
            return math.inf
        return self._sign * float(value)
