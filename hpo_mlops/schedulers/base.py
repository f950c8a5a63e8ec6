"""The scheduler interface: a pure, deterministic decision on reports.

Life of a trial as a scheduler sees it::

    plan(n)            -> which jobs to run next (new trials with a budget, or promotions)
    on_start(trial, budget, bracket)
    on_report(trial, step, value) -> CONTINUE | STOP     (many times)
    on_complete(trial, state, value)

``mode`` is ``"min"`` or ``"max"``; NaN/inf reports are treated as the worst value.

Resume: :meth:`Scheduler.state` is the rule's whole decision state as plain JSON data (what
its future decisions depend on, not every report), and :meth:`Scheduler.from_state` builds
the same rule again from it, so a resumed study does not replay reports from capped tags.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, TypeVar

from hpo_mlops.errors import ConfigError

#: Version of the layout :meth:`Scheduler.state` writes; :meth:`Scheduler.from_state` refuses
#: others rather than guessing what an older or newer layout meant.
STATE_FORMAT = 1

_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def pack_float(x: Any) -> Any:
    """A number as JSON can hold it exactly: inf/-inf/NaN as the strings ``"inf"``, ``"-inf"``,
    ``"nan"`` (JSON has no such numbers, and ``json.dumps`` would write non-standard tokens);
    everything else unchanged (ints stay ints, so budgets keep their type)."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def unpack_float(x: Any) -> Any:
    """The inverse of :func:`pack_float`."""
    if isinstance(x, str):
        if x not in _NON_FINITE:
            raise ConfigError(f"scheduler state: {x!r} is not a number")
        return _NON_FINITE[x]
    return x


def reject_unknown(rule: str, unknown: dict[str, Any], known: list[str]) -> None:
    """A typo in a scheduler option is an error naming the key, not a silent default."""
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(
            f"scheduler.{key}: unknown option for {rule!r}; known options: {', '.join(known)}"
        )


class Decision(str, Enum):
    CONTINUE = "continue"
    STOP = "stop"


@dataclass(frozen=True)
class Job:
    """One unit of work the manager should submit next.

    ``trial is None``: ask the sampler for a new configuration. Otherwise: run that
    (already known) trial again up to ``budget`` (a promotion in synchronous SHA).

    ``params``: the trial's params for this job when the rule changed them (PBT's explore;
    ``None``: as before). ``clone``: ``[donor, budget]``, the job starts from the donor
    trial's checkpoint as it was at that budget (PBT's exploit; ``None``: its own).
    """

    trial: int | None = None
    budget: float | None = None
    bracket: int | None = None
    params: dict[str, Any] | None = None
    clone: list[Any] | None = None


def _plain_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options as they read back from JSON (so that saved and given options compare)."""
    return json.loads(json.dumps({k: pack_float(v) for k, v in options.items()}))


R = TypeVar("R", bound="Scheduler")


class Scheduler(ABC):
    name: ClassVar[str] = ""
    #: False for rules that never stop anything: workers then skip the report RPC.
    needs_reports: ClassVar[bool] = True
    #: True for rules that decide budgets / promotions: the manager calls ``plan``.
    plans_budgets: ClassVar[bool] = False
    #: True for rules that settle trials' final states (``pop_finished``) and keep per-trial
    #: info for MLflow: the manager asks them after every finished job.
    tracks_trials: ClassVar[bool] = False
    #: True for rules that change params (PBT): the Dask plugin calls :meth:`bind_space` once
    #: with the study's space, and the ledger calls :meth:`on_params` for each new trial.
    needs_space: ClassVar[bool] = False
    #: True for rules whose jobs may start from another trial's checkpoint (``Job.clone``):
    #: slots then keep a snapshot of a trial's checkpoint folder at the end of each job.
    clones_checkpoints: ClassVar[bool] = False

    def __init__(self, mode: str = "min", **options: Any) -> None:
        if mode not in ("min", "max"):
            raise ConfigError(f"scheduler.mode: must be 'min' or 'max', got {mode!r}")
        self.mode = mode
        self.options = options

    # -- helpers --------------------------------------------------------------------------
    def score(self, value: float) -> float:
        """Map a reported value so that lower is better; NaN/inf count as the worst."""
        if value is None or not math.isfinite(value):
            return math.inf
        return value if self.mode == "min" else -value

    # -- hooks ----------------------------------------------------------------------------
    def plan(self, n: int) -> list[Job]:
        """The next ``n`` jobs; by default ``n`` new trials with the scheduler's budget."""
        return [Job(None, self.budget_for(None)) for _ in range(n)]

    def budget_for(self, trial: int | None) -> float | None:
        """How far a (new) trial may go; ``None`` means: as far as the objective likes."""
        return self.options.get("max_budget")

    def bind_space(self, space: Any) -> None:
        """The study's search space (``needs_space`` rules only)."""

    def on_params(self, trial: int, params: dict[str, Any]) -> None:
        """A new trial's params, just before its ``on_start`` (``needs_space`` rules only)."""

    def on_start(self, trial: int, budget: float | None = None, bracket: int | None = None) -> None:
        """A trial was submitted."""

    @abstractmethod
    def on_report(self, trial: int, step: int, value: float) -> Decision:
        """A trial reported ``value`` at ``step``; say whether it should stop."""

    def on_complete(self, trial: int, state: str, value: float | None = None) -> None:
        """A job of the trial ended (COMPLETE, PRUNED, FAILED; INTERRUPTED: will run again)."""

    def pop_finished(self) -> list[tuple[int, str]]:
        """Trials whose final state the rule settled since the last call (rung rules)."""
        return []

    def end_new_trials(self) -> None:
        """No new trials will come: decide what waits for them (synchronous rules)."""

    def trial_info(self, trial: int) -> dict[str, Any]:
        """What MLflow should show about a trial (bracket, rungs reached, budget used)."""
        return {}

    def budget_summary(self) -> dict[str, Any] | None:
        """Study-level budget numbers for the study's MLflow run; None when not tracked."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.mode, **self.options}

    # -- saved state (resume) ---------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The rule's complete decision state, as plain JSON data that ``json.dumps`` /
        ``json.loads`` round-trip exactly (no tuples, no int keys, no inf/NaN numbers).

        Why not the reports: a rule's future decisions depend on far less than every report
        (a rung rule on one value per trial and rung), and reports are what a tracking
        store caps. The header names the format, the rule, its mode and options, so that
        :meth:`from_state` can refuse a state saved by another configuration.
        """
        return {
            "format": STATE_FORMAT,
            "rule": self.name,
            "mode": self.mode,
            "options": _plain_options(self.options),
            "data": self._dump_state(),
        }

    @classmethod
    def from_state(cls: type[R], state: dict[str, Any], mode: str = "min", **options: Any) -> R:
        """The rule that saved ``state``, again: the same answers to every later call.

        ``mode`` and ``options`` are the study's scheduler configuration; a state saved with
        another rule, mode or options is refused (:class:`ConfigError` naming what differs),
        since its rungs, brackets or quotas would mean something else here.

        One thing is not carried over: :meth:`end_new_trials`. It is an announcement about
        one run of the study, and a resumed study is a new run that may start more trials
        (a larger ``n_trials``); the manager says it again once its own trials are started.
        """
        rule = cls(mode=mode, **options)
        rule._check_state(state)
        rule._load_state(state["data"])
        return rule

    def _check_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "format" not in state:
            raise ConfigError("scheduler state: not a saved scheduler state (no 'format' key)")
        if state["format"] != STATE_FORMAT:
            raise ConfigError(
                f"scheduler state: format {state['format']!r} is not supported; this version "
                f"reads format {STATE_FORMAT}"
            )
        if state.get("rule") != self.name:
            raise ConfigError(
                f"scheduler state: saved by the {state.get('rule')!r} rule, it cannot be loaded "
                f"into {self.name!r}; resume with the scheduler the study was run with"
            )
        saved = {"mode": state.get("mode"), **(state.get("options") or {})}
        given = {"mode": self.mode, **_plain_options(self.options)}
        differ = [
            f"{key}: saved {saved.get(key)!r}, given {given.get(key)!r}"
            for key in sorted(set(saved) | set(given))
            if json.dumps(saved.get(key)) != json.dumps(given.get(key))
        ]
        if differ:
            raise ConfigError(
                f"scheduler state: saved by {self.name!r} with other options ("
                + "; ".join(differ)
                + "); resume with the options it was saved with, or start a new study"
            )

    def _dump_state(self) -> dict[str, Any]:
        """The rule's own part of :meth:`state` (everything but the header)."""
        raise NotImplementedError(
            f"the {self.name!r} scheduler does not save its state; a resumed study replays "
            "its reports instead"
        )

    def _load_state(self, data: dict[str, Any]) -> None:
        """Set the rule's decision state from :meth:`_dump_state`'s data."""
        raise NotImplementedError(f"the {self.name!r} scheduler cannot load a saved state")
