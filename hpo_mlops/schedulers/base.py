"""The scheduler interface: a pure, deterministic decision on reports.

Life of a trial as a scheduler sees it::

    plan(n)            -> which jobs to run next (new trials with a budget, or promotions)
    on_start(trial, budget, bracket)
    on_report(trial, step, value) -> CONTINUE | STOP     (many times)
    on_complete(trial, state, value)

``mode`` is ``"min"`` or ``"max"``; NaN/inf reports are treated as the worst value.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

from hpo_mlops.errors import ConfigError


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
    """

    trial: int | None = None
    budget: float | None = None
    bracket: int | None = None


class Scheduler(ABC):
    name: ClassVar[str] = ""
    #: False for rules that never stop anything: workers then skip the report RPC.
    needs_reports: ClassVar[bool] = True
    #: True for rules that decide budgets / promotions: the manager calls ``plan``.
    plans_budgets: ClassVar[bool] = False
    #: True for rules that settle trials' final states (``pop_finished``) and keep per-trial
    #: info for MLflow: the manager asks them after every finished job.
    tracks_trials: ClassVar[bool] = False

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
