"""What the manager records about a trial, and what samplers are told.

These are plain data shared by the manager, the samplers, the tracker and the
schedulers, so each of them can be tested without the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class TrialState(str, Enum):
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAILED = "FAILED"
    INTERRUPTED = "INTERRUPTED"
    PAUSED = "PAUSED"  # ended a job at a rung; waits to be promoted (synchronous SHA)

    @property
    def finished(self) -> bool:
        """Finished trials count towards ``n_trials`` and are never run again."""
        return self in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED)


@dataclass
class Result:
    """What a sampler is told about a trial it (or a previous run) proposed.

    ``values`` holds one number per objective (``None`` for failed trials); for a pruned
    trial it holds the last reported value, as Optuna's TPE uses it.
    """

    state: TrialState
    values: list[float] | None = None
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    budget: float | None = None


@dataclass
class TrialRecord:
    """Everything known about one trial: the public ``study.trials`` entries."""

    number: int
    params: dict[str, Any]
    state: TrialState = TrialState.RUNNING
    values: list[float] | None = None  # one per objective, in the study's metric order
    metrics: dict[str, float] = field(default_factory=dict)  # every metric returned
    intermediate: list[tuple[int, float]] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    worker: str | None = None
    host: str | None = None
    start: float | None = None  # unix time
    end: float | None = None
    attempts: int = 1
    budget: float | None = None
    pruned_step: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    run_id: str | None = None  # MLflow run holding this trial
    #: one ``[budget, n_reports]`` per finished job (a promoted trial runs several)
    jobs: list[list] = field(default_factory=list)

    @property
    def value(self) -> float | None:
        """The primary objective value (first metric)."""
        return None if not self.values else self.values[0]

    @property
    def duration(self) -> float | None:
        if self.start is None or self.end is None:
            return None
        return self.end - self.start

    def to_result(self) -> Result:
        return Result(self.state, self.values, list(self.intermediate), self.budget)


def is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
