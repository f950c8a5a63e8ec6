"""Median stopping rule (Golovin et al. 2017, as Optuna's MedianPruner).

Stop a trial at ``step`` when its best value so far is worse than the median of the
values other trials reported at the same step, once ``min_trials`` trials have finished
and after ``warmup_steps``.

Its saved state (:meth:`~hpo_mlops.schedulers.base.Scheduler.state`) cannot be smaller than
the values it compares: the median at a step may become any of the values held there as
later trials report it, so every value at every step from ``warmup_steps`` on is kept (steps
before it are never compared, so they are neither kept nor saved), plus each trial's best.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from typing import Any

from hpo_mlops.errors import ConfigError
from hpo_mlops.schedulers.base import (
    Decision,
    Scheduler,
    pack_float,
    reject_unknown,
    unpack_float,
)


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
        self._best[trial] = min(self._best.get(trial, s), s)
        if step < self.warmup_steps:  # never compared: not kept (nor saved)
            return Decision.CONTINUE
        self._at_step[step][trial] = s
        if self._finished < self.min_trials:
            return Decision.CONTINUE
        others = [v for t, v in self._at_step[step].items() if t != trial]
        if not others:
            return Decision.CONTINUE
        return Decision.STOP if self._best[trial] > statistics.median(others) else Decision.CONTINUE

    def on_complete(self, trial: int, state: str, value: float | None = None) -> None:
        if state in ("COMPLETE", "PRUNED"):
            self._finished += 1

    # -- saved state ------------------------------------------------------------------------
    def _dump_state(self) -> dict[str, Any]:
        """Per trial (by number): its best score, the steps it holds a score at (as runs of
        consecutive steps, ``[first, count]``: a trial reporting every epoch costs one run)
        and those scores. Per trial rather than per step, so that no step or trial number is
        written once per value; sorted, so that equal rules write equal states."""
        held: dict[int, list[tuple[Any, float]]] = {t: [] for t in self._best}
        for step, scores in self._at_step.items():
            for trial, score in scores.items():
                held.setdefault(trial, []).append((_canon_step(step), score))
        trials = []
        for trial in sorted(held):
            pairs = sorted(held[trial], key=lambda p: p[0])
            trials.append([
                trial,
                pack_float(self._best[trial]) if trial in self._best else None,
                _runs([p[0] for p in pairs]),
                [pack_float(p[1]) for p in pairs],
            ])  # fmt: skip
        return {"finished": self._finished, "trials": trials}

    def _load_state(self, data: dict[str, Any]) -> None:
        self._finished = int(data["finished"])
        for trial, best, runs, scores in data["trials"]:
            if best is not None:
                self._best[trial] = unpack_float(best)
            steps = _unruns(runs)
            if len(steps) != len(scores):
                raise ConfigError(
                    f"scheduler state: trial {trial} has {len(steps)} steps but "
                    f"{len(scores)} values"
                )
            for step, score in zip(steps, scores, strict=True):
                self._at_step[step][trial] = unpack_float(score)


def _canon_step(step: Any) -> Any:
    """Step 3.0 and step 3 are one dict key; write it one way whoever reported it first."""
    return int(step) if isinstance(step, float) and step.is_integer() else step


def _runs(steps: list[Any]) -> list[list[Any]]:
    """Sorted steps as ``[first, count]`` runs of consecutive integers (a non-integer step is
    a run of one)."""
    out: list[list[Any]] = []
    for step in steps:
        last = out[-1] if out else None
        if (
            last is not None
            and isinstance(step, int)
            and isinstance(last[0], int)
            and step == last[0] + last[1]
        ):
            last[1] += 1
        else:
            out.append([step, 1])
    return out


def _unruns(runs: list[list[Any]]) -> list[Any]:
    return [first + i for first, count in runs for i in range(count)]
