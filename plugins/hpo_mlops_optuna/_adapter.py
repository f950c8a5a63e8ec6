"""One adapter that puts any Optuna sampler behind :class:`hpo_mlops.samplers.Sampler`.

It drives an in-memory Optuna study through the ask/tell API: ``ask`` creates Optuna
trials and suggests the space's parameters define-by-run (in the space's order, parents
before children, skipping parameters whose condition does not hold), ``tell`` finishes
the Optuna trial that produced the params dict, or adds a recorded trial with
``study.add_trial`` when resuming. Asked-but-not-told trials stay RUNNING in the Optuna
study, which is what lets TPE's constant liar and GP's q-batch acquisition keep parallel
asks apart. A trial another replica proposed (``running``) becomes a RUNNING trial too,
written straight into the study's storage so that the Optuna sampler is not run for it.

Resume: recorded trials told before the first ask are added as observations, and the
Optuna sampler is then rebuilt with a seed derived from (seed, number of recorded trials).
Why: Optuna samplers draw from their own seeded generator (random start-up trials,
NSGA-II's first generation, QMC's scramble), so the study's plain seed would propose the
earlier run's first configurations again.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import Trial
from optuna.trial import TrialState as OptunaState

from hpo_mlops.errors import HPOError
from hpo_mlops.results import Result, TrialState
from hpo_mlops.samplers.base import Params, Sampler
from hpo_mlops.space import Space

from ._mapping import Native, native, plain

_log = logging.getLogger(__name__)

#: how often a duplicate of a pending point is thrown back to the Optuna sampler before
#: the adapter picks a non-pending point itself
_REASKS = 8
#: random draws tried for that point before a duplicate is accepted (a finite space with
#: fewer points than pending trials)
_FALLBACK_DRAWS = 1000


class MissingDependencyError(HPOError, ImportError):
    """The Optuna sampler needs a package that is not installed (e.g. ``cmaes``, ``torch``).

    An :class:`ImportError`, so callers that probe optional samplers can skip them, and an
    :class:`HPOError`, so the CLI prints the one-line install hint instead of a traceback.
    """


@contextmanager
def quiet() -> Iterator[None]:
    """Silence Optuna while the adapter calls it.

    Optuna logs every finished trial at INFO and warns about experimental features; the
    manager has its own trial log and MLflow, so both are noise here. Levels are restored
    afterwards: a user's own Optuna code in the same process keeps its settings.
    """
    logger = logging.getLogger("optuna")
    old = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            yield
    finally:
        logger.setLevel(old)


_Key = tuple[tuple[str, str, str], ...]


def _own(table: dict[int, Any], params: Params) -> Any:
    """``table``'s entry for this very dict (entries hold the dict first), else None: an
    equal dict, or a new one that reuses a freed id, is not the same trial."""
    entry = table.get(id(params))
    return entry if entry is not None and entry[0] is params else None


def continued_seed(seed: int | None, n_recorded: int) -> int | None:
    """The seed a resumed Optuna sampler gets after ``n_recorded`` recorded trials.

    Deterministic (a resumed study is reproducible), different for every number of
    recorded trials (each resume starts a new stream), the plain seed for a fresh study
    (its sequence is unchanged) and ``None`` for an unseeded one.
    """
    if seed is None or n_recorded == 0:
        return seed
    return int(np.random.SeedSequence([seed, n_recorded]).generate_state(1)[0])


def _key(params: Params) -> _Key:
    """Identity of a configuration: ``1``, ``1.0`` and ``True`` are different points."""
    return tuple(sorted((k, type(v).__name__, repr(v)) for k, v in params.items()))


class OptunaSampler(Sampler):
    """Base of the Optuna adapters; subclasses name the Optuna class and its defaults.

    ``options`` are passed to the Optuna sampler's constructor (on top of ``defaults``);
    the study's seed becomes its ``seed`` unless the options name one.
    """

    #: the Optuna sampler class this adapter wraps
    optuna_class: ClassVar[type[optuna.samplers.BaseSampler]]
    #: options this adapter sets differently from Optuna's own defaults (and why: see
    #: each subclass); a user's option always wins
    defaults: ClassVar[dict[str, Any]] = {}
    #: (module, pip requirement) the Optuna sampler imports lazily
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: the Optuna sampler models PRUNED trials (TPE does; CMA-ES and GP ignore them), so a
    #: trial paused at a rung is told to it as pruned there at once (see ``pause``)
    learns_from_pruned: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        label = self.name or type(self).__name__
        for module, requirement in self.requires:
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(
                    f"sampler {label!r} needs the package {requirement!r}, which is not "
                    f"installed: pip install {requirement}"
                )
        # Refuse unknown options now (registry.create turns TypeError into a ConfigError
        # naming the sampler), not at setup() after a cluster has been started.
        sig = inspect.signature(self.optuna_class)
        try:
            sig.bind(**options)
        except TypeError as exc:
            allowed = ", ".join(p for p in sig.parameters if p != "self")
            raise TypeError(f"{exc}; {self.optuna_class.__name__} accepts: {allowed}") from None
        self._study: optuna.Study | None = None
        self._natives: dict[str, Native] = {}
        # id(params dict) -> (that dict, its Optuna trial -- or the storage id of the
        # RUNNING trial ``running`` wrote --, its key at ask time). The dict is kept so its
        # id cannot be reused by another object while the trial is pending.
        self._pending: dict[int, tuple[Params, Trial | int, _Key]] = {}
        self._pending_keys: dict[_Key, int] = {}
        # id(params) -> (that dict, reports told so far, its key or None): paused trials
        # already told to Optuna as PRUNED, still pending for duplicate checks
        self._paused: dict[int, tuple[Params, int, _Key | None]] = {}
        self._rng = np.random.default_rng()
        self._storage: optuna.storages.BaseStorage | None = None
        self._study_id = 0
        # resume: recorded dicts told before the first ask (id -> dict, counted once each)
        self._recorded: dict[int, Params] = {}
        self._stream_started = False
        self._n_recorded = 0

    # -- configuration ----------------------------------------------------------------------
    def sampler_options(self) -> dict[str, Any]:
        """Keyword arguments for the Optuna sampler, without ``seed``."""
        return {**self.defaults, **self.options}

    def describe(self) -> dict[str, Any]:
        """Name and the options the Optuna sampler really gets (defaults included)."""
        opts = self.sampler_options()
        opts.pop("seed", None)
        seed = self.options.get("seed", self.seed)
        out: dict[str, Any] = {"name": self.name or type(self).__name__, **opts}
        if seed is not None:
            out["seed"] = seed
        return out

    @property
    def study(self) -> optuna.Study:
        """The underlying in-memory Optuna study, for inspection (e.g. in tests)."""
        if self._study is None:
            raise RuntimeError(f"sampler {self.name!r}: call setup() before using it")
        return self._study

    def _build(self, **extra: Any) -> optuna.samplers.BaseSampler:
        """A fresh Optuna sampler with the study's seed and this adapter's options."""
        kwargs = {**self.sampler_options(), **extra}
        kwargs["seed"] = continued_seed(kwargs.get("seed", self.seed), self._n_recorded)
        with quiet():
            return self.optuna_class(**kwargs)

    def _setup(self) -> None:
        assert self.space is not None
        self._natives = {p.name: native(p) for p in self.space}
        self._pending.clear()
        self._pending_keys.clear()
        self._paused.clear()
        self._recorded.clear()
        self._stream_started = False
        self._n_recorded = 0
        self._rng = np.random.default_rng(self.seed)
        # our own storage object, so that ``running`` can write a RUNNING trial through the
        # public storage API (creating an Optuna ``Trial`` would run the sampler for it)
        self._storage = optuna.storages.InMemoryStorage()
        with quiet():
            self._study = optuna.create_study(
                storage=self._storage, directions=list(self.directions), sampler=self._build()
            )
        self._study_id = self._storage.get_study_id_from_name(self._study.study_name)

    # -- ask ---------------------------------------------------------------------------------
    def ask(self, n: int = 1) -> list[Params]:
        """``n`` configurations, none equal to another pending one.

        The Optuna sampler is asked first (constant liar etc. already steer it away from
        pending points); a duplicate it still proposes -- likely in small discrete spaces,
        above all while TPE/GP draw their random start-up trials -- is failed in the
        Optuna study (failed trials are invisible to every Optuna sampler) and asked
        again; after a few tries the adapter enqueues a random non-pending point.
        """
        space = self._space()
        out = []
        with quiet():
            self._continue_stream()
            self._before_ask()
            for _ in range(n):
                params, trial = self._ask_one(space)
                key = _key(params)
                self._pending[id(params)] = (params, trial, key)
                self._pending_keys[key] = self._pending_keys.get(key, 0) + 1
                out.append(params)
        return out

    def _continue_stream(self) -> None:
        """At the first ask of a resumed study: a seed derived from the recorded trials."""
        if self._stream_started:
            return
        self._stream_started = True
        self._n_recorded = len(self._recorded)
        self._recorded.clear()
        if self._n_recorded:
            self.study.sampler = self._build()
            self._rng = np.random.default_rng(continued_seed(self.seed, self._n_recorded))

    def _ask_one(self, space: Space) -> tuple[Params, Trial]:
        for _ in range(_REASKS):
            trial = self.study.ask()
            params = self._suggest(space, trial)
            if _key(params) not in self._pending_keys:
                return params, trial
            self.study.tell(trial, state=OptunaState.FAIL)
        for _ in range(_FALLBACK_DRAWS):
            candidate = space.sample(self._rng)
            if _key(candidate) not in self._pending_keys:
                self.study.enqueue_trial(
                    {k: self._natives[k].to_native(v) for k, v in candidate.items()}
                )
                trial = self.study.ask()
                return self._suggest(space, trial), trial
        # Fewer points in the space than pending trials: a duplicate cannot be avoided.
        trial = self.study.ask()
        return self._suggest(space, trial), trial

    def _suggest(self, space: Space, trial: Trial) -> Params:
        """Define-by-run: parents are suggested before the children they switch on."""
        params: Params = {}
        for p in space:
            if p.condition is not None and not p.condition.holds(params):
                continue
            nat = self._natives[p.name]
            params[p.name] = plain(nat.to_public(nat.suggest(trial)))
        return params

    # -- tell --------------------------------------------------------------------------------
    def tell(self, params: Params, result: Result) -> None:
        """Finish the Optuna trial behind ``params``, or replay a recorded trial.

        PRUNED trials first get their intermediate values reported, as Optuna's own
        pruning does, so TPE learns from them (Optuna keeps the last one as the value);
        FAILED (and INTERRUPTED) ones become FAIL, which Optuna samplers ignore. A trial
        told as paused already adds what it did since, as a new observation.
        """
        self._space()
        paused = _own(self._paused, params)
        if paused is not None:
            del self._paused[id(params)]
            self._release(paused[2])
            if result.state is not TrialState.PRUNED or len(result.intermediate) > paused[1]:
                self._replay(params, result)
            return
        entry = _own(self._pending, params)
        if entry is None:
            self._note_recorded(params)
            self._replay(params, result)
            return
        # a malformed result raises here, before the trial stops being pending
        values = self._values(result) if result.state is TrialState.COMPLETE else None
        del self._pending[id(params)]
        self._release(entry[2])
        self._finish(entry[1], result, values)

    def running(self, params: Params) -> None:
        """Another replica's trial has started: a RUNNING trial with ``params`` in the
        study (so TPE's constant liar and GP's q-batch count it) and a pending key (so
        the duplicate check does), exactly as if ``ask`` had returned this dict.

        It is written through the storage, not ``study.ask``: asking would run the Optuna
        sampler (a TPE fit) for a trial whose parameters are known already, and a replica
        hears of every other replica's trial. ``tell`` / ``pause`` finish it.
        """
        space = self._space()
        if _own(self._pending, params) is not None or _own(self._paused, params) is not None:
            return  # pending here already
        try:
            public = space.validate_params(params)
        except HPOError as exc:
            _log.warning(
                "sampler %r: not counting a running trial outside the space: %s", self.name, exc
            )
            return
        natives = {k: self._natives[k] for k in public}
        assert self._storage is not None
        with quiet():
            frozen = optuna.trial.create_trial(
                params={k: natives[k].to_native(v) for k, v in public.items()},
                distributions={k: n.dist for k, n in natives.items()},
                state=OptunaState.RUNNING,
            )
            trial_id = self._storage.create_new_trial(self._study_id, template_trial=frozen)
        key = _key(params)
        self._pending[id(params)] = (params, trial_id, key)
        self._pending_keys[key] = self._pending_keys.get(key, 0) + 1

    def pause(self, params: Params, result: Result) -> None:
        """Tell Optuna a trial waiting at a rung as PRUNED there, if its sampler learns from
        pruned trials; each later rung is a new observation, the outcome one more."""
        self._space()
        paused = _own(self._paused, params)
        entry = None if paused is not None else _own(self._pending, params)
        if paused is None and entry is None:
            self._note_recorded(params)  # paused in an earlier run: one it ran
        if not self.learns_from_pruned or len(self.directions) != 1:
            return
        n = len(result.intermediate)
        if paused is not None and n <= paused[1]:
            return  # nothing new since it was told
        if entry is not None:  # first pause: its own Optuna trial ends PRUNED here
            del self._pending[id(params)]
            self._finish(entry[1], result, None)
            key = entry[2]
        else:  # a later rung, or paused in an earlier run (resume): a new observation
            self._replay(params, result)
            key = paused[2] if paused is not None else None
        self._paused[id(params)] = (params, n, key)

    def _release(self, key: _Key | None) -> None:
        """The configuration stops counting as pending for duplicate checks."""
        if key is None:
            return
        self._pending_keys[key] -= 1
        if not self._pending_keys[key]:
            del self._pending_keys[key]

    def _note_recorded(self, params: Params) -> None:
        """A recorded trial told before the first ask: it moves the resumed stream on."""
        if not self._stream_started:
            self._recorded[id(params)] = params

    def _finish(self, trial: Trial | int, result: Result, values: list[float] | None) -> None:
        if isinstance(trial, int):
            self._finish_running(trial, result, values)
            return
        with quiet():
            if result.state is TrialState.COMPLETE and values is not None:
                self.study.tell(trial, values, state=OptunaState.COMPLETE)
            elif result.state is TrialState.PRUNED:
                for step, value in self._intermediate(result).items():
                    trial.report(value, step)
                self.study.tell(trial, state=OptunaState.PRUNED)
            else:  # FAILED, INTERRUPTED, or COMPLETE with NaN (Optuna refuses NaN)
                self.study.tell(trial, state=OptunaState.FAIL)

    def _finish_running(self, trial_id: int, result: Result, values: list[float] | None) -> None:
        """``_finish`` for a trial ``running`` wrote: by trial number, reports through the
        storage (there is no ``Trial`` object to report on)."""
        assert self._storage is not None
        number = self._storage.get_trial_number_from_id(trial_id)
        with quiet():
            if result.state is TrialState.COMPLETE and values is not None:
                self.study.tell(number, values, state=OptunaState.COMPLETE)
            elif result.state is TrialState.PRUNED:
                for step, value in self._intermediate(result).items():
                    self._storage.set_trial_intermediate_value(trial_id, step, value)
                self.study.tell(number, state=OptunaState.PRUNED)
            else:
                self.study.tell(number, state=OptunaState.FAIL)

    def _replay(self, params: Params, result: Result) -> None:
        """Add a trial recorded by an earlier run (resume) as an observation."""
        space = self._space()
        if not result.state.finished:
            return  # a RUNNING/INTERRUPTED record holds nothing to learn from
        try:
            public = space.validate_params(params)
        except HPOError as exc:
            _log.warning(
                "sampler %r: not learning from a recorded trial outside the space: %s",
                self.name,
                exc,
            )
            return
        natives = {k: self._natives[k] for k in public}
        kwargs: dict[str, Any] = {
            "params": {k: natives[k].to_native(v) for k, v in public.items()},
            "distributions": {k: n.dist for k, n in natives.items()},
        }
        if result.state is TrialState.COMPLETE and self._values(result) is not None:
            kwargs.update(state=OptunaState.COMPLETE, values=self._values(result))
            if result.intermediate:
                kwargs["intermediate_values"] = self._intermediate(result)
        elif result.state is TrialState.PRUNED:
            inter = self._intermediate(result)
            kwargs.update(state=OptunaState.PRUNED, intermediate_values=inter)
            if inter:
                kwargs["values"] = [inter[max(inter)]]  # what study.tell(PRUNED) stores
        else:
            kwargs.update(state=OptunaState.FAIL)
        with quiet():
            frozen = optuna.trial.create_trial(**kwargs)
            self.study.add_trial(frozen)
        self._on_replay(frozen)

    # -- hooks for subclasses ------------------------------------------------------------------
    def _before_ask(self) -> None:
        """Called (inside :func:`quiet`) at the start of every ``ask``."""

    def _on_replay(self, trial: optuna.trial.FrozenTrial) -> None:
        """Called after a recorded trial was added to the study."""

    def _values(self, result: Result) -> list[float] | None:
        if result.values is None or len(result.values) != len(self.directions):
            raise ValueError(
                f"sampler {self.name!r}: a COMPLETE result needs one value per objective "
                f"({len(self.directions)}: {', '.join(self.directions)}), got {result.values!r}"
            )
        values = [float(v) for v in result.values]
        return None if any(math.isnan(v) for v in values) else values

    def _intermediate(self, result: Result) -> dict[int, float]:
        """Steps -> values Optuna can hold: single-objective only (Optuna's rule), the
        last report of a repeated step wins; with none, the pruned value at step 0."""
        if len(self.directions) != 1:
            return {}
        inter = {int(step): float(v) for step, v in result.intermediate}
        if not inter and result.values:
            inter = {0: float(result.values[0])}
        return dict(sorted(inter.items()))

    def _space(self) -> Space:
        if self.space is None or self._study is None:
            raise RuntimeError(f"sampler {self.name!r}: call setup() before ask()/tell()")
        return self.space
