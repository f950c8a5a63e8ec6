"""The sampler interface every built-in and plugin sampler implements.

A sampler is bound once to a space, the objective directions and a seed (``setup``),
then asked for configurations and told results. ``tell`` is called with the very dict
object ``ask`` returned; a dict the sampler never handed out (a trial recorded by an
earlier run of the study, when resuming) is an observation to learn from.

Parallel asks must not hand out duplicates of pending points: a sampler that models
the objective (TPE, GP) must account for pending trials (e.g. Optuna's constant liar).

Resume: a resumed study builds a new sampler, sets it up with the same seed and tells it
every recorded trial before its first ``ask``. The sampler must then go on where the
earlier run stopped, not start its stream again (which would propose the configurations
already run): see ``Sampler.tell``.

Replicas: with ``replicable = True`` the core may run one copy of the sampler per worker
process (each ``setup`` with a seed of its own) instead of one central sampler, and tell
every copy every result; a copy hears of the trials other copies proposed through
``running`` before their results.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from hpo_mlops.errors import ConfigError, UnsupportedSpaceError
from hpo_mlops.results import Result
from hpo_mlops.space import Space

Params = dict[str, Any]


def _capable(flag: str) -> list[str]:
    """Registered samplers with a capability, for error messages (read from the classes)."""
    from hpo_mlops import registry

    out = []
    for name in registry.names(registry.SAMPLERS):
        try:
            if getattr(registry.load(registry.SAMPLERS, name), flag, False):
                out.append(name)
        except Exception:  # noqa: BLE001 - a broken plugin must not hide the real error
            continue
    return out


def split_seed(spec: Any, seed: int | None) -> tuple[Any, int | None]:
    """(the sampler spec without ``seed``, the seed to set it up with).

    Why: users seed a search either way, ``Study(seed=7)`` or ``sampler={"name": "random",
    "seed": 7}`` (``--set sampler.seed=7``), but only some sampler classes take ``seed`` as an
    option; the built-in ones would ignore it and hyperopt's would refuse it. So a seed among
    the options is taken out here and becomes the study's seed; two different seeds are refused.
    """
    if not isinstance(spec, dict) or "name" not in spec or spec.get("seed") is None:
        return spec, seed  # nothing to take out (a dict without a name is refused later)
    spec = dict(spec)
    own = spec.pop("seed")
    if isinstance(own, bool) or not isinstance(own, int) or own < 0:
        raise ConfigError(f"sampler.seed: must be an integer >= 0, got {own!r}")
    if seed is not None and seed != own:
        raise ConfigError(
            f"sampler.seed ({own}) and the study's seed ({seed}) differ; give only one"
        )
    return spec, own


class Sampler(ABC):
    """ask/tell sampler. Subclasses set the capability flags and implement the three hooks."""

    #: can the sampler express conditional parameters (``x if parent == 'a'``)?
    supports_conditional: ClassVar[bool] = False
    #: can it optimize several objectives at once (Pareto front)?
    supports_multi_objective: ClassVar[bool] = False
    #: do copies that each see the whole shared history (their own asks, the other copies'
    #: trials through ``running`` and every ``tell``) search as well as one central sampler?
    #: Why: at hundreds of concurrent trials one central model-based sampler (Optuna's TPE
    #: takes 6-20 ms an ask, growing with the history) cannot keep the cluster busy, so the
    #: core runs one copy per worker process, as DeepHyper does -- but only for samplers
    #: that say so here. Samplers whose state is not a function of the shared history
    #: (one enumeration, one evolving population, one low-discrepancy sequence) keep the
    #: default, ``False``: one central sampler asks. A third-party sampler declares it
    #: itself; not declaring it is the safe choice.
    replicable: ClassVar[bool] = False
    #: does it choose each new trial's budget along with its configuration (DEHB picks a
    #: fidelity per job)? Then ``budget_of`` gives it, the trial runs at that budget, and
    #: the study refuses a rule that plans budgets itself (hyperband, sha). Budgets travel
    #: with central asks only, so such a sampler keeps ``replicable = False``.
    chooses_budgets: ClassVar[bool] = False

    name: str = ""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.space: Space | None = None
        self.directions: list[str] = ["minimize"]
        self.seed: int | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def setup(self, space: Space, directions: list[str], seed: int | None = None) -> None:
        """Bind to a study; refuses spaces or objectives this sampler cannot express."""
        label = self.name or type(self).__name__
        if space.is_conditional and not self.supports_conditional:
            conditional = [p.name for p in space if p.condition is not None]
            raise UnsupportedSpaceError(
                f"sampler {label!r} cannot express conditional parameters "
                f"({', '.join(conditional)}); use one that can: "
                f"{', '.join(_capable('supports_conditional'))}"
            )
        if len(directions) > 1 and not self.supports_multi_objective:
            raise UnsupportedSpaceError(
                f"sampler {label!r} optimizes a single objective, got {len(directions)} "
                f"metrics; use one that supports several: "
                f"{', '.join(_capable('supports_multi_objective'))}"
            )
        self.space, self.directions, self.seed = space, directions, seed
        self._setup()

    def _setup(self) -> None:
        """Build the underlying engine; ``self.space`` etc. are set."""

    @abstractmethod
    def ask(self, n: int = 1) -> list[Params]:
        """Up to ``n`` new configurations; fewer (or none) when the sampler is exhausted."""

    @abstractmethod
    def tell(self, params: Params, result: Result) -> None:
        """Report the outcome of ``params`` (one ``ask`` returned, or a recorded trial).

        Recorded trials (dicts the sampler never handed out, told before its first
        ``ask`` when a study resumes) must move the sampler on, as if it had proposed
        them itself: a seeded random stream skips the draws they took, a grid skips their
        points, a seeded model-based sampler changes its seed. Why: otherwise a resumed
        seeded study proposes the configurations it already ran.
        """

    def budget_of(self, params: Params) -> Any:
        """The budget chosen for ``params`` (a dict ``ask`` just returned) when
        ``chooses_budgets``; ``None``: the rule's budget."""
        return None

    def running(self, params: Params) -> None:
        """A trial another copy of this sampler proposed has started with ``params``.

        Only the core's replicas call it (see ``replicable``). A sampler that keeps
        pending trials apart (a constant liar, a duplicate check, hyperopt's pending docs)
        must count ``params`` as pending from now on, exactly as if its own ``ask`` had
        returned this very dict: later it gets ``pause(params, ...)`` and/or
        ``tell(params, ...)`` with this same dict object -- ``tell`` with an INTERRUPTED
        result when the trial never ends -- and only then stops counting it as pending.
        It is not a recorded trial: it does not move a resumed stream on. The default, for
        samplers that ignore pending trials (random search), does nothing.
        """

    def pause(self, params: Params, result: Result) -> None:
        """``params`` waits at a rung of a synchronous rule (SHA, Hyperband); ``result`` is
        what it will be if the rung stops it there: PRUNED, with its reports so far.

        Why: a rung is decided only when its last trial arrives (81 configurations at the
        first rung of Hyperband with ``max_budget=81``), so a sampler that waited for
        ``tell`` would propose the whole rung without feedback, and one with a constant liar
        would count the waiting trials as its worst. A sampler that learns from pruned
        trials should take this as one now, as BOHB models each budget as its results come
        in. It may be called again at later rungs, and for a trial paused in an earlier run
        (resume); ``tell`` still comes once, with the outcome. The default waits for it.
        """

    def state(self) -> dict[str, Any] | None:
        """Optional serialisable state for resuming; ``None`` means: replay the trials."""
        return None

    def describe(self) -> dict[str, Any]:
        """Name and options, logged on the study's MLflow run."""
        return {"name": self.name or type(self).__name__, **self.options}
