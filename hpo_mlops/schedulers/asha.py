"""Asynchronous successive halving (ASHA, Li et al. 2020), as Ray Tune's ASHAScheduler.

Why this is the default rule: it never waits. Every trial is given ``max_budget``; when it
reports at (or past) a rung milestone ``min_budget * eta**k``, its value is recorded at the
rung and compared right away with what the rung holds *so far*: it continues only if it is
in the top ``1/eta`` of them, else it is stopped there and its worker takes the next trial.
No worker ever idles waiting for a rung to fill, unlike synchronous SHA.

Rules, exactly (``n`` = values recorded at the rung, this trial included):

* quota = ``max(1, n // eta)``: the first trial at a rung always continues (otherwise the
  first ``eta - 1`` trials of every rung would be stopped before anything could be
  compared, and a small study would never reach ``max_budget``); from then on, the top
  ``1/eta``.
* the trial continues if fewer than ``quota`` recorded values are better than its own; a
  tie goes to the value recorded first (so a late trial cannot push out an equal one).
* NaN / inf never continue past a rung (they count as the worst value, with a warning).
* ``strict_quota=True`` also caps the *number* of trials that ever continued past a rung at
  ``max(1, n // eta)``: the invariant of the paper's (pausing) ASHA, at the price of
  stopping a good trial that arrives while the quota is used up. Off by default, as in
  Ray Tune and Optuna.

Calls are serialized by the Dask scheduler plugin, so each decision sees every earlier one:
two workers reporting at once cannot both take the last place.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from hpo_mlops.errors import ConfigError, ReportError
from hpo_mlops.schedulers.base import Decision, pack_float, unpack_float
from hpo_mlops.schedulers.brackets import (
    Budget,
    Record,
    RungScheduler,
    TrialTrack,
    _le,
    asha_rungs,
    interleave,
)


@dataclass
class _AshaBracket:
    milestones: list[Budget]
    #: per milestone: trial -> score (lower is better), in the order values were recorded
    recorded: list[dict[int, float]] = field(default_factory=list)
    #: per milestone: the same scores, sorted, so a rank costs O(log n), not O(n)
    ordered: list[list[float]] = field(default_factory=list)
    #: per milestone: how many trials continued past it
    promoted: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.recorded = [{} for _ in self.milestones]
        self.ordered = [[] for _ in self.milestones]
        self.promoted = [0 for _ in self.milestones]

    def record(self, k: int, trial: int, score: float) -> int:
        """Record ``score`` at milestone ``k``; return how many recorded values rank ahead
        of it (better, or equal and recorded earlier)."""
        ahead = bisect.bisect_right(self.ordered[k], score)
        bisect.insort_right(self.ordered[k], score)
        self.recorded[k][trial] = score
        return ahead


class ASHAScheduler(RungScheduler):
    """Asynchronous successive halving; ``brackets > 1`` gives asynchronous Hyperband."""

    name = "asha"
    plans_budgets = False

    def __init__(
        self,
        mode: str = "min",
        min_budget: Budget | None = None,
        max_budget: Budget | None = None,
        eta: int = 3,
        brackets: int | None = 1,
        grace_period: Budget | None = None,
        strict_quota: bool = False,
        **unknown: Any,
    ) -> None:
        if grace_period is not None:
            if min_budget is not None and min_budget != grace_period:
                raise ConfigError(
                    "scheduler.grace_period: is another name for min_budget; give one of "
                    f"them, got min_budget={min_budget}, grace_period={grace_period}"
                )
            min_budget = grace_period
        super().__init__(
            mode, min_budget, max_budget, eta, unknown, brackets=brackets, strict_quota=strict_quota
        )
        n_max = self.s_max + 1
        if brackets is None:  # all of them
            brackets = n_max
            self.options["brackets"] = brackets
        if (
            isinstance(brackets, bool)
            or not isinstance(brackets, int)
            or not 1 <= brackets <= n_max
        ):
            raise ConfigError(
                f"scheduler.brackets: must be an integer from 1 to {n_max} (floor(log_eta("
                f"max_budget/min_budget)) + 1), got {brackets!r}"
            )
        if not isinstance(strict_quota, bool):
            raise ConfigError(
                f"scheduler.strict_quota: must be true or false, got {strict_quota!r}"
            )
        self.strict_quota = strict_quota
        self._brackets = [
            _AshaBracket(asha_rungs(self.min_budget, self.max_budget, self.eta, skip=b))
            for b in range(brackets)
        ]
        # textbook Hyperband sizes as weights: bracket 0 (most aggressive) gets the most trials
        self._sequence = interleave(
            [((n_max) // (n_max - b)) * self.eta ** (self.s_max - b) for b in range(brackets)]
        )
        self._assigned = 0

    # -- hooks ------------------------------------------------------------------------------
    def _bracket_s(self, bracket: int) -> int:
        return self.s_max - bracket

    def _start(self, trial: int, budget: Budget | None, bracket: int | None) -> TrialTrack:
        if bracket is None:
            bracket = self._sequence[self._assigned % len(self._sequence)]
        elif not 0 <= bracket < len(self._brackets):
            raise ReportError(
                f"trial {trial}: bracket {bracket} does not exist; "
                f"{self.name!r} has brackets 0..{len(self._brackets) - 1}"
            )
        self._assigned += 1
        track = TrialTrack(trial, bracket, self.max_budget)
        self._trials[trial] = track
        return track

    def _restart(self, track: TrialTrack, budget: Budget | None) -> None:
        track.new_job(self.max_budget)  # a retry; rungs already recorded are kept

    def _decide(self, track: TrialTrack, step: Budget, score: float) -> Decision:
        return self._record_rungs(track, step, score, decide=True)

    def _record_rungs(
        self, track: TrialTrack, step: Budget, score: float, decide: bool
    ) -> Decision:
        """Record ``score`` at every milestone this report reached for the first time, deciding
        at each one below ``max_budget``; a report that jumps several milestones is judged at
        each in turn, and stops at the first it fails."""
        b = self._brackets[track.bracket]
        for k, milestone in enumerate(b.milestones):
            if track.trial in b.recorded[k]:
                continue
            if not _le(milestone, step):
                break
            ahead = b.record(k, track.trial, score)
            track.rungs.append(milestone)
            if not decide or k == len(b.milestones) - 1:
                continue  # the last milestone is max_budget: nothing beyond to decide
            if self._promotable(b, k, ahead, score):
                b.promoted[k] += 1
            else:
                self._stop(track, milestone)
                return Decision.STOP
        return Decision.CONTINUE

    def _promotable(self, b: _AshaBracket, k: int, ahead: int, score: float) -> bool:
        if not math.isfinite(score):
            return False
        quota = max(1, len(b.recorded[k]) // self.eta)
        if ahead >= quota:
            return False
        return not (self.strict_quota and b.promoted[k] >= quota)

    def _complete(self, track: TrialTrack, state: str, value: float | None) -> None:
        if state == "COMPLETE":
            track.end_job_without_reports()
            self._finish(track, "complete")
        elif state == "PRUNED":  # stopped by something else than this rule (the user, a bound)
            self._stop(track, track.rungs[-1] if track.rungs else None)
        elif state == "FAILED":
            self._finish(track, "failed")
        else:  # INTERRUPTED: will be submitted again
            track.status = "interrupted"

    # -- saved state ------------------------------------------------------------------------
    def _dump_rungs(self) -> dict[str, Any]:
        """Per bracket and milestone: the trials recorded there, in the order they were, their
        scores and how many continued past it (strict quotas); and how many trials were given
        a bracket (the next one's turn). The sorted copy of the scores is rebuilt on load."""
        return {
            "assigned": self._assigned,
            "brackets": [
                [
                    {
                        "trials": list(b.recorded[k]),
                        "scores": [pack_float(v) for v in b.recorded[k].values()],
                        "promoted": b.promoted[k],
                    }
                    for k in range(len(b.milestones))
                ]
                for b in self._brackets
            ],
        }

    def _load_rungs(self, data: dict[str, Any]) -> None:
        saved = data["brackets"]
        shape = [len(b.milestones) for b in self._brackets]
        if [len(rungs) for rungs in saved] != shape:
            raise ConfigError(
                f"scheduler state: brackets with {[len(r) for r in saved]} milestones, this "
                f"rule has {shape}"
            )
        self._assigned = int(data["assigned"])
        for i, (b, rungs) in enumerate(zip(self._brackets, saved, strict=True)):
            for k, rung in enumerate(rungs):
                trials = self._known(rung["trials"], f"bracket {i}, milestone {b.milestones[k]}")
                scores = [unpack_float(v) for v in rung["scores"]]
                b.recorded[k] = dict(zip(trials, scores, strict=True))
                b.ordered[k] = sorted(scores)
                b.promoted[k] = int(rung["promoted"])

    def _replay(self, rows: list[Record]) -> None:
        last_state: dict[int, str] = {}
        for r in rows:
            last_state[r.trial] = r.state
        for r in rows:
            track = self._trials.get(r.trial)
            if track is None:
                track = self._start(r.trial, r.budget, r.bracket)
            if r.step is None:
                if r.value is not None:
                    track.final_value = float(r.value)
                    self._log.append((r.trial, None, float(r.value), track.budget))
                continue
            if track.last_step is not None and r.step <= track.last_step:
                track.new_job(self.max_budget)  # a retry that started over
            track.status = "running"
            # forced: record, never decide; the recorded outcome is applied below
            self._replay_report(track, r.step, r.value)
        for trial, state in last_state.items():
            self._apply_recorded_end(self._trials[trial], state)
        for b in self._brackets:  # who continued past each rung, for strict quotas
            for k, milestone in enumerate(b.milestones):
                b.promoted[k] = sum(
                    1
                    for t in b.recorded[k]
                    if not (
                        self._trials[t].status == "stopped"
                        and self._trials[t].stopped_rung == milestone
                    )
                )

    def _replay_report(self, track: TrialTrack, step: Budget, value: float | None) -> None:
        v = math.nan if value is None else float(value)
        self._log.append((track.trial, step, v, track.budget))
        if track.last_step is None:
            track.job_offset = track.max_step if step > track.max_step else 0.0
        track.last_step = step
        track.last_value = v
        track.max_step = max(track.max_step, step)
        track.n_reports += 1
        self._record_rungs(track, step, self.score(v), decide=False)
