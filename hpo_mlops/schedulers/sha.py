"""Synchronous successive halving (Jamieson & Talwalkar 2016; Li et al. 2018, one bracket).

Why synchronous at all, when ASHA never waits: a rung is judged only once *all* its
trials have reached it, so the decision is exactly the textbook one (the top
``1/eta`` of the whole rung, independent of arrival order) and Hyperband's bracket table
holds exactly. The cost, idle workers while a rung waits for its last trial, is avoided by
planning: a trial runs one *job* per rung and ends there, freeing its worker; meanwhile
:meth:`plan` hands out other work (promotions of brackets already decided, or trials of the
next bracket), and when a rung is complete its top trials are handed out again with the
next rung's budget. A promoted trial continues its own MLflow run and, when the objective
keeps a checkpoint, resumes from it.

The manager's side (``plans_budgets = True``)::

    jobs = scheduler.plan(free_slots)            # always len(jobs) == free_slots
    for job in jobs:
        trial = new_number() if job.trial is None else job.trial   # None: ask the sampler
        scheduler.on_start(trial, job.budget, job.bracket)         # before submitting
        submit(trial, budget=job.budget)
    ... scheduler.on_report(trial, step, value) from workers ...
    scheduler.on_complete(trial, "COMPLETE", value)   # the job ended; not the trial!
    for trial, state in scheduler.pop_finished():     # trials now really finished
        tell_sampler_and_close_run(trial, state)
    scheduler.end_new_trials()                        # once n_trials were started

A job that reaches its budget ends with ``COMPLETE``; a report past the budget is
answered ``STOP`` (the job has used its budget). The value a trial brings to its rung is
its last report at a step <= the job's budget (the value of ``on_complete`` if the job
reported nothing). Ties go to the lower trial number.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hpo_mlops.errors import ConfigError, ReportError
from hpo_mlops.schedulers.base import Decision, Job, pack_float, unpack_float
from hpo_mlops.schedulers.brackets import (
    _FINAL,
    Bracket,
    Budget,
    Record,
    Rung,
    RungScheduler,
    TrialTrack,
    _le,
    hyperband_brackets,
)


@dataclass
class _SyncRung:
    budget: Budget
    planned: int
    members: list[int] = field(default_factory=list)
    landed: dict[int, float] = field(default_factory=dict)  # trial -> score (inf: failed)
    closed: bool = False


@dataclass
class _SyncBracket:
    id: int
    shape: Bracket
    rungs: list[_SyncRung]
    accepting: bool = True  # rung 0 still takes new trials

    def free(self) -> int:
        r0 = self.rungs[0]
        return max(0, r0.planned - len(r0.members)) if self.accepting else 0


class SyncBracketScheduler(RungScheduler):
    """Synchronous brackets run one after the other, several at a time; the shape of bracket
    ``id`` is ``self._shapes[id % len(self._shapes)]`` (SHA: one shape; Hyperband: all)."""

    plans_budgets = True
    _shapes: list[Bracket]

    def _init_sync(self, shapes: list[Bracket]) -> None:
        self._shapes = shapes
        self._brackets: list[_SyncBracket] = []
        self._ready: list[int] = []  # promoted, not started yet (best first)
        self._requeue: list[int] = []  # interrupted, to run again at the same budget
        self._no_new = False
        self._first_open = 0  # brackets before this one take no new trials (never again)
        self._forced: dict[tuple[int, int], set[int]] = {}  # replay: who was promoted

    # -- planning ---------------------------------------------------------------------------
    def plan(self, n: int) -> list[Job]:
        """The next ``n`` jobs, without reserving anything (a job the manager drops is simply
        offered again): interrupted jobs first, then promotions (best first, oldest bracket
        first), then new trials for the oldest bracket with free places, opening the next
        bracket when none has any. Always ``n`` jobs, unless :meth:`end_new_trials` was
        called: then only reruns and promotions."""
        jobs: list[Job] = []
        for t in self._pending():
            if len(jobs) >= n:
                return jobs
            track = self._trials[t]
            jobs.append(Job(t, track.budget, track.bracket))
        if self._no_new:
            return jobs
        free = [(b.id, b.free(), b.rungs[0].budget) for b in self._accepting()]
        next_id = len(self._brackets)
        i = 0
        while len(jobs) < n:
            if i >= len(free):
                first = self._shape(next_id).rungs[0]
                free.append((next_id, first.n, first.budget))
                next_id += 1
            bid, count, budget = free[i]
            jobs.extend(Job(None, budget, bid) for _ in range(min(count, n - len(jobs))))
            i += 1
        return jobs

    def _pending(self) -> list[int]:
        """Reruns, then promotions, in a canonical order (oldest bracket first, deeper rung
        first, best value first, then trial number), so that the plan depends only on the
        state, not on the order events arrived in (a resumed study plans the same)."""

        def promoted_key(t: int) -> tuple[int, int, float, int]:
            tr = self._trials[t]
            below = self._brackets[tr.bracket].rungs[tr.level - 1]
            return (tr.bracket, -tr.level, below.landed.get(t, math.inf), t)

        reruns = sorted(
            self._requeue, key=lambda t: (self._trials[t].bracket, -self._trials[t].level, t)
        )
        return reruns + sorted(self._ready, key=promoted_key)

    def end_new_trials(self) -> None:
        """No new trials will come (the study started its ``n_trials``): brackets whose first
        rung is only partly filled are decided with the trials they have (quotas scaled to
        ``max(1, members // eta)``), so no promotion waits forever."""
        self._no_new = True
        for b in self._brackets[self._first_open :]:
            if b.accepting:
                b.accepting = False
                self._try_close(b, 0)

    def budget_for(self, trial: int | None) -> Budget | None:
        if trial is not None and trial in self._trials:
            return self._trials[trial].budget
        for b in self._accepting():
            return b.rungs[0].budget
        return self._shape(len(self._brackets)).rungs[0].budget

    def trial_info(self, trial: int) -> dict[str, Any]:
        info = super().trial_info(trial)
        info["rung"] = self._trials[trial].level
        return info

    # -- hooks ------------------------------------------------------------------------------
    def _shape(self, bracket_id: int) -> Bracket:
        return self._shapes[bracket_id % len(self._shapes)]

    def _bracket_s(self, bracket: int) -> int:
        return self._shape(bracket).s

    def _open(self) -> _SyncBracket:
        shape = self._shape(len(self._brackets))
        b = _SyncBracket(
            len(self._brackets),
            shape,
            [_SyncRung(r.budget, r.n) for r in shape.rungs],
            accepting=not self._no_new,
        )
        self._brackets.append(b)
        return b

    def _bracket_for_new(self, wanted: int | None) -> _SyncBracket:
        if wanted is not None and wanted >= 0:
            while len(self._brackets) <= wanted:
                self._open()
            if self._brackets[wanted].free() > 0:
                return self._brackets[wanted]
        for b in self._accepting():  # a hint that is full: the oldest bracket with room
            return b
        return self._open()

    def _accepting(self) -> Iterator[_SyncBracket]:
        """Brackets with room for new trials, oldest first; brackets fill in order, so a
        cursor skips the (ever growing) prefix of full ones."""
        while (
            self._first_open < len(self._brackets) and not self._brackets[self._first_open].free()
        ):
            self._first_open += 1
        for b in self._brackets[self._first_open :]:
            if b.free() > 0:
                yield b

    def _start(self, trial: int, budget: Budget | None, bracket: int | None) -> TrialTrack:
        b = self._bracket_for_new(bracket)
        r0 = b.rungs[0]
        r0.members.append(trial)
        if len(r0.members) >= r0.planned:
            b.accepting = False
        track = TrialTrack(trial, b.id, r0.budget)
        self._trials[trial] = track
        return track

    def _restart(self, track: TrialTrack, budget: Budget | None) -> None:
        if track.status == "waiting":
            raise ReportError(
                f"trial {track.trial} ended its job at budget {track.budget} and waits for its "
                "rung to be decided; start it again only when plan() returns it"
            )
        for queue in (self._ready, self._requeue):
            if track.trial in queue:
                queue.remove(track.trial)
        track.new_job(track.budget)  # the budget this scheduler planned, whatever was passed

    def _decide(self, track: TrialTrack, step: Budget, score: float) -> Decision:
        return Decision.CONTINUE if _le(step, track.budget) else Decision.STOP

    def _complete(self, track: TrialTrack, state: str, value: float | None) -> None:
        if state == "INTERRUPTED":
            track.status = "interrupted"
            if track.trial not in self._requeue:
                self._requeue.append(track.trial)
            return
        if track.trial in self._requeue:
            self._requeue.remove(track.trial)
        b = self._brackets[track.bracket]
        rung = b.rungs[track.level]
        if state == "FAILED":
            rung.landed[track.trial] = math.inf
            self._finish(track, "failed")
        else:  # COMPLETE, or PRUNED (a STOP past the budget): the job reached its rung
            track.end_job_without_reports()
            v = track.value_at_budget
            if v is None:
                v = value if value is not None else track.last_value
                if v is not None and not math.isfinite(v) and not self._replaying:
                    warnings.warn(
                        f"trial {track.trial}: value {v!r} is not finite; treated as the worst",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            rung.landed[track.trial] = self.score(v) if v is not None else math.inf
            track.rungs.append(rung.budget)
            if track.level == len(b.rungs) - 1:
                self._finish(track, "complete")
            else:
                track.status = "waiting"
        self._try_close(b, track.level)

    def _try_close(self, b: _SyncBracket, i: int) -> None:
        """Decide rung ``i`` once every member landed: promote the best, stop the others."""
        rung = b.rungs[i]
        if rung.closed:  # a member that landed after the decision was not promoted
            for t in rung.landed:
                if self._trials[t].status == "waiting":
                    self._stop(self._trials[t], rung.budget)
            return
        if (i == 0 and b.accepting) or len(rung.landed) < len(rung.members):
            return
        rung.closed = True
        if i + 1 >= len(b.rungs):
            return
        nxt = b.rungs[i + 1]
        quota = min(nxt.planned, max(1, len(rung.members) // self.eta))
        waiting = [t for t in rung.members if self._trials[t].status == "waiting"]
        forced = self._forced.get((b.id, i), set())
        ranked = sorted(
            (rung.landed[t], t) for t in waiting if t in forced or math.isfinite(rung.landed[t])
        )
        chosen = [t for _, t in ranked if t in forced]
        chosen += [t for _, t in ranked if t not in forced][: max(0, quota - len(chosen))]
        chosen_set = set(chosen)
        for _, t in ranked:  # best first
            if t in chosen_set:
                self._promote(b, i, t)
        for t in waiting:
            if t not in chosen_set:
                self._stop(self._trials[t], rung.budget)

    def _promote(self, b: _SyncBracket, i: int, t: int) -> None:
        """Trial ``t``, waiting at rung ``i``, is handed out next with rung ``i + 1``'s budget."""
        track = self._trials[t]
        track.level = i + 1
        track.budget = b.rungs[i + 1].budget
        track.status = "promoted"
        b.rungs[i + 1].members.append(t)
        self._ready.append(t)

    # -- saved state ------------------------------------------------------------------------
    def _dump_rungs(self) -> dict[str, Any]:
        """Per bracket (in opening order; its shape follows from its id): whether rung 0 still
        takes new trials, and per rung its members, what landed there (trials in landing
        order, scores; inf: failed) and whether it was decided. Then the queues ``plan``
        hands out: promoted trials not started yet, interrupted jobs to run again. Not the
        cursor past full brackets: it is found again.

        Not ``end_new_trials``: see :meth:`~hpo_mlops.schedulers.base.Scheduler.from_state`.
        """
        return {
            "brackets": [
                {
                    "accepting": b.accepting,
                    "rungs": [
                        {
                            "members": list(r.members),
                            "landed": [list(r.landed), [pack_float(v) for v in r.landed.values()]],
                            "closed": r.closed,
                        }
                        for r in b.rungs
                    ],
                }
                for b in self._brackets
            ],
            "ready": list(self._ready),
            "requeue": list(self._requeue),
        }

    def _load_rungs(self, data: dict[str, Any]) -> None:
        self._no_new = False  # a resumed study may start new trials: it says when it won't
        for saved in data["brackets"]:
            b = self._open()
            if len(saved["rungs"]) != len(b.rungs):
                raise ConfigError(
                    f"scheduler state: bracket {b.id} has {len(saved['rungs'])} rungs, this "
                    f"rule's has {len(b.rungs)}"
                )
            b.accepting = bool(saved["accepting"])
            for i, (rung, r) in enumerate(zip(b.rungs, saved["rungs"], strict=True)):
                where = f"bracket {b.id}, rung {i}"
                rung.members = self._known(r["members"], where)
                trials, scores = r["landed"]
                rung.landed = dict(
                    zip(self._known(trials, where), map(unpack_float, scores), strict=True)
                )
                rung.closed = bool(r["closed"])
        self._ready = self._known(data["ready"], "the promotion queue")
        self._requeue = self._known(data["requeue"], "the rerun queue")
        # _first_open stays 0: a cursor past full brackets, which _accepting() moves on again

    # -- resume -----------------------------------------------------------------------------
    def _replay(self, rows: list[Record]) -> None:
        order: list[int] = []
        per: dict[int, list[tuple[int, Record]]] = {}
        for index, r in enumerate(rows):
            if r.trial not in per:
                order.append(r.trial)
                per[r.trial] = []
            per[r.trial].append((index, r))
        state = {t: per[t][-1][1].state for t in order}
        for t in order:  # bind every trial to its place in its bracket
            self._start(t, per[t][0][1].budget, per[t][0][1].bracket)
        self._log_rows: list[int] = []  # row index of each log entry
        jobs = {t: self._split_jobs(self._trials[t], per[t]) for t in order}
        for t in order:  # recorded promotions win over re-deciding
            bid = self._trials[t].bracket
            for level in range(1, len(jobs[t])):
                self._forced.setdefault((bid, level - 1), set()).add(t)
                if level == 1:
                    self._brackets[bid].accepting = False  # its rung 0 was decided
        done = dict.fromkeys(order, 0)
        progress = True
        while progress:  # rung by rung, as promotions become possible
            progress = False
            for t in order:
                track = self._trials[t]
                i = done[t]
                if i >= len(jobs[t]) or track.level != i:
                    continue
                if track.status == "promoted":
                    self._restart(track, None)
                elif track.status != "running":
                    continue
                self._replay_job(track, jobs[t][i], i == len(jobs[t]) - 1, state[t])
                done[t] += 1
                progress = True
        self._forced.clear()
        # keep the records in the order they were given, so records() round-trips
        self._log = [
            e for _, e in sorted(zip(self._log_rows, self._log, strict=True), key=lambda p: p[0])
        ]
        del self._log_rows
        for t in order:
            track = self._trials[t]
            if state[t] in ("COMPLETE", "PRUNED", "FAILED") and track.status not in _FINAL:
                b = self._brackets[track.bracket]
                rung = b.rungs[track.level]
                for queue in (self._ready, self._requeue):
                    if t in queue:
                        queue.remove(t)
                if t not in rung.landed and t in rung.members:
                    rung.members.remove(t)
                self._apply_recorded_end(track, state[t])
                self._try_close(b, track.level)

    def _split_jobs(
        self, track: TrialTrack, rows: list[tuple[int, Record]]
    ) -> list[tuple[Budget, list[tuple[Budget, float, int]], tuple[float, int] | None]]:
        """One job per rung level: rows change job when their budget changes (or, without
        budgets, when a step passes the rung budget or starts over)."""
        budgets = [r.budget for r in self._brackets[track.bracket].rungs]
        jobs: list[tuple[Budget, list[tuple[Budget, float, int]], tuple[float, int] | None]] = []
        level = 0
        prev: Budget | None = None
        for index, r in rows:
            if r.budget is not None:
                budget = r.budget
            elif r.step is None:
                budget = jobs[-1][0] if jobs else budgets[0]
            else:
                if jobs and prev is not None and r.step <= prev:
                    level += 1  # started over at the next rung
                while level < len(budgets) - 1 and not _le(r.step, budgets[level]):
                    level += 1
                budget = budgets[level]
            if not jobs or budget != jobs[-1][0]:
                jobs.append((budget, [], None))
                prev = None
            if r.step is None:
                if r.value is not None:
                    jobs[-1] = (jobs[-1][0], jobs[-1][1], (float(r.value), index))
            else:
                v = math.nan if r.value is None else float(r.value)
                jobs[-1][1].append((r.step, v, index))
                prev = r.step
        return jobs

    def _replay_job(
        self,
        track: TrialTrack,
        job: tuple[Budget, list[tuple[Budget, float, int]], tuple[float, int] | None],
        last: bool,
        state: str,
    ) -> None:
        _, reports, landing = job
        for step, value, index in reports:
            if track.last_step is not None and step <= track.last_step:
                track.new_job(track.budget)  # a retry that started over
            logged = len(self._log)
            self.on_report(track.trial, step, value)
            self._log_rows.extend([index] * (len(self._log) - logged))
        reached = track.last_step is not None and _le(track.budget, track.last_step)
        if last and (state == "INTERRUPTED" or (state == "RUNNING" and not reached)):
            # in flight when the manager stopped (a RUNNING job that already reported its
            # last step is taken as landed: its rung value is known)
            self._complete(track, "INTERRUPTED", None)
        elif last and state == "FAILED":
            self._complete(track, "FAILED", None)
        else:
            value = None
            if landing is not None and track.last_step is None:
                value = landing[0]
                self._log.append((track.trial, None, value, track.budget))
                self._log_rows.append(landing[1])
            self._complete(track, "COMPLETE", value)


class SuccessiveHalvingScheduler(SyncBracketScheduler):
    """Synchronous SHA: brackets of ``n_configs`` trials (default ``eta**s_max``, so exactly
    one reaches ``max_budget``) from ``min_budget`` up to ``max_budget``, one after another."""

    name = "sha"

    def __init__(
        self,
        mode: str = "min",
        min_budget: Budget | None = None,
        max_budget: Budget | None = None,
        eta: int = 3,
        n_configs: int | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__(mode, min_budget, max_budget, eta, unknown, n_configs=n_configs)
        top = hyperband_brackets(self.min_budget, self.max_budget, self.eta)[0]
        if n_configs is None:
            n_configs = top.n_configs
            self.options["n_configs"] = n_configs
        if isinstance(n_configs, bool) or not isinstance(n_configs, int) or n_configs < 1:
            raise ConfigError(
                f"scheduler.n_configs: must be an integer >= 1 (trials per bracket), "
                f"got {n_configs!r}"
            )
        shape = Bracket(
            top.s,
            tuple(
                Rung(max(1, n_configs // self.eta**i), r.budget) for i, r in enumerate(top.rungs)
            ),
        )
        self._init_sync([shape])
