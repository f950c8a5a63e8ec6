"""Median stopping rule (Golovin et al. 2017, as Optuna's MedianPruner).

Stop a trial at ``step`` when its best value so far is worse than the median of the
values other trials reported at the same step, once ``min_trials`` trials have finished
and after ``warmup_steps``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from hpo_mlops.errors import ConfigError
from hpo_mlops.schedulers.base import Decision, Scheduler, reject_unknown


class MedianScheduler(Scheduler):
    name = "median"

    def __init__(
        self, mode: str = "min", min_trials: int = 5, warmup_steps: int = 0,
        max_budget: float | None = None, **unknown
    ) -> None:
        reject_unknown(self.name, unknown, ["mode", "min_trials", "warmup_steps", "max_budget"])
        extra = {} if max_budget is None else {"max_budget": max_budget}
        super().__init__(mode, min_trials=min_trials, warmup_steps=warmup_steps, **extra)
        if not isinstance(min_trials, int) or min_trials < 1:
            raise ConfigError(f"scheduler.min_trials: must be an integer >= 1, got {min_trials!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(
                f"scheduler.warmup_steps: must be an integer >= 0, got {warmup_steps!r}"
            )
        self.min_trials = min_trials
        self.warmup_steps = warmup_steps
        self._at_step: dict[int, dict[int, float]] = defaultdict(dict)  # step -> trial -> score
        self._best: dict[int, float] = {}
        self._finished = 0

    def on_report(self, trial: int, step: int, value: float) -> Decision:
        s = self.score(value)
        self._at_step[step][trial] = s
        self._best[trial] = min(self._best.get(trial, s), s)
        if self._finished < self.min_trials or step < self.warmup_steps:
            return Decision.CONTINUE
        others = [v for t, v in self._at_step[step].items() if t != trial]
        if not others:
            return Decision.CONTINUE
        return Decision.STOP if self._best[trial] > statistics.median(others) else Decision.CONTINUE

    def on_complete(self, trial: int, state: str, value: float | None = None) -> None:
        if state in ("COMPLETE", "PRUNED"):
            self._finished += 1
