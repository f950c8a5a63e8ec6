"""The ledger: the one owner of a study run's trial state.

Every change of a trial's state -- started, paused at a rung, finished, interrupted,
retried -- is a transition of this class, and each transition appends one event. Nothing
else changes a trial: the manager, the MLflow writer, the best-so-far, the CLI progress and
user callbacks read the events (:class:`hpo_mlops.trials.TrialTable` replays them in the
manager's process), and the sampler copies on the workers read the compact ``history``.

Why one owner, and why here: before, one trial's state had four owners (the Study's dicts,
the manager's ``settled`` buffer, the rule inside the Dask scheduler, the writer's
callback), and "the job ended" travelled on two channels (the worker told the rule, the
manager told the Study), which is why a verdict could arrive before the outcome it
decided. Here the job's outcome, the rule's verdict on it and the trial's new state are one
call (:meth:`finish_job`), on one thread.

It is plain Python -- no Dask, no MLflow, no sampler -- so it is tested alone, and the Dask
scheduler plugin (:mod:`hpo_mlops.dask_plugin`) hosts it: slots pull their next job from it
(:meth:`assign`) in the same round trip that hands in the last one's outcome.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hpo_mlops.results import TrialRecord, TrialState
from hpo_mlops.schedulers.base import Decision, Scheduler

#: event kinds, in the order a trial can go through them
STARTED, PAUSED, FINISHED, INTERRUPTED, RETRIED, DONE = (
    "started", "paused", "finished", "interrupted", "retried", "done")

#: the format of :meth:`Ledger.state` (the study run's ``hpo/scheduler_state.json``)
STATE_VERSION = 1

#: a queued new trial's params may carry its budget under this key (not an identifier, so
#: never a parameter's name): a sampler that chooses budgets (``Sampler.chooses_budgets``,
#: DEHB) decides it, not the rule; the ledger takes it off before the trial starts
BUDGET_KEY = "hpo.budget"


@dataclass
class SlotJob:
    """What a slot runs next."""

    number: int
    params: dict[str, Any]
    budget: Any
    attempt: int
    #: [donor, budget]: start from the donor trial's checkpoint snapshot at that budget (PBT)
    clone: list[Any] | None = None
    #: keep a snapshot of the checkpoint folder at the end of the job (a possible donor)
    snapshot: bool = False

    def to_wire(self) -> dict[str, Any]:
        wire = {"number": self.number, "params": self.params, "budget": self.budget,
                "attempt": self.attempt}
        if self.clone is not None:
            wire["clone"] = list(self.clone)
        if self.snapshot:
            wire["snapshot"] = True
        return wire


def to_wire(rec: TrialRecord) -> dict[str, Any]:
    """A record as plain data (for Dask's RPC and the MLflow writer)."""
    return {**rec.__dict__, "state": rec.state.value,
            "intermediate": [list(x) for x in rec.intermediate],
            "tags": dict(rec.tags), "jobs": [list(j) for j in rec.jobs]}


def from_wire(d: dict[str, Any]) -> TrialRecord:
    rec = TrialRecord(**{**d, "state": TrialState(d["state"])})
    rec.intermediate = [tuple(x) for x in rec.intermediate]
    return rec


def _bracket(rec: TrialRecord) -> Any:
    b = rec.tags.get("hpo.bracket")
    return int(b) if b not in (None, "None") else None


class Ledger:
    """Trials of one study run and the rule that decides their budgets and stops.

    ``max_failures``: once more trials failed in this run, the ledger stops at once, so no
    slot starts another job while the manager hears of it.

    ``records`` are what an earlier run of the study recorded: finished trials count
    towards ``n_trials`` and never run again; trials paused at a rung wait to be promoted;
    the others (interrupted) run again at their budget.
    """

    def __init__(self, rule: Scheduler, *, n_trials: int | None = None, max_retries: int = 3,
                 max_failures: int | None = None, records: Iterable[TrialRecord] = (),
                 history: bool = False) -> None:
        self.rule = rule
        cls = type(rule)
        self.plans, self.tracks = cls.plans_budgets, cls.tracks_trials
        #: rules that change a trial's params between jobs (PBT): the params and checkpoint
        #: source of each trial's current job, so a rerun (a lost worker) runs it the same
        self.params_change = getattr(cls, "needs_space", False)
        self.snapshots = getattr(cls, "clones_checkpoints", False)
        self.current: dict[int, tuple[dict[str, Any], list[Any] | None]] = {}
        self.n_trials, self.max_retries, self.max_failures = n_trials, max_retries, max_failures
        self.trials: dict[int, TrialRecord] = {}
        self.running: dict[int, TrialRecord] = {}
        self.paused: dict[int, TrialRecord] = {}
        self.rerun: deque[TrialRecord] = deque()
        self.events: list[list[Any]] = []
        #: compact history for sampler copies: [kind, number, params, state, values,
        #: intermediate, budget, origin] with kind "running", "pause" or "tell"; origin
        #: names the proposal a copy made for a trial it started itself
        self.history: list[list[Any]] | None = [] if history else None
        self.no_new = self.stopped = self.done = False
        self.failed = 0
        for rec in records:
            self.trials[rec.number] = rec
            if rec.state.finished:
                self._remember("tell", rec)
            elif rec.state is TrialState.PAUSED:
                self.paused[rec.number] = rec
                self._remember("pause", rec)
            elif self.plans:  # the rule plans the rerun of its unfinished job
                self.paused[rec.number] = rec
            else:
                self.rerun.append(rec)
        self.next_number = max(self.trials, default=-1) + 1

    # -- admission --------------------------------------------------------------------------
    def wants_new(self) -> bool:
        """Whether the next job would be a new trial (so it needs params)."""
        if self.stopped or self.done or self.rerun or not self._new_allowed():
            return False
        return not self.plans or any(j.trial is None for j in self.rule.plan(1))

    def _new_allowed(self) -> bool:
        return not self.no_new and (self.n_trials is None or self.next_number < self.n_trials)

    def assign(self, worker: str | None,
               ask: Callable[[], tuple[dict[str, Any], Any] | None]) -> SlotJob | None:
        """The next job for a slot on ``worker``, or ``None`` when there is none now.

        Reruns (a lost worker's trial) come first, then what the rule plans (promotions,
        new trials with their budget). ``ask()`` gives the params of a new trial and where
        they come from (a central sampler's queue, or the proposal the slot's own sampler
        copy made before it called); ``None`` from it means: none ready yet.
        """
        if self.stopped or self.done:
            return None
        if self.rerun:
            rec = self.rerun.popleft()
            return self._run(rec, rec.budget, _bracket(rec), worker)
        for _ in range(2):
            planned = (self.rule.plan(1) if self.plans
                       else [_NEW(self.rule.budget_for(None))])
            for job in planned:
                if job.trial is not None:
                    rec = self.paused.pop(job.trial, None)
                    if rec is not None:
                        return self._run(rec, job.budget, job.bracket, worker, job=job)
                    continue
                if self._new_allowed():
                    asked = ask()
                    if asked is None:
                        return None  # the central sampler has none ready: wait for it
                    params = dict(asked[0])
                    # a sampler that chooses budgets (DEHB) put this trial's on its params
                    budget = params.pop(BUDGET_KEY, job.budget)
                    rec = TrialRecord(self.next_number, params)
                    self.trials[rec.number] = rec
                    self.next_number += 1
                    if self.params_change:
                        self.rule.on_params(rec.number, dict(rec.params))
                    job_out = self._run(rec, budget, job.bracket, worker, asked[1])
                    if not self._new_allowed():
                        self.end_new()  # the last new trial: the rule may decide rungs now
                    return job_out
            if self.no_new:
                return None
            self.end_new()  # n_trials reached: tell the rule once and plan again
        return None

    def _run(self, rec: TrialRecord, budget: Any, bracket: Any, worker: str | None,
             origin: Any = None, job: Any = None) -> SlotJob:
        """Start a job of ``rec``. ``rec.params`` stay the trial's first params (what the
        sampler is told, and MLflow's params, which cannot change); a rule that changes
        them (PBT) gives the job's params and checkpoint source in ``job``."""
        self.rule.on_start(rec.number, budget, bracket)
        if bracket is not None:
            rec.tags["hpo.bracket"] = str(bracket)
        rec.state, rec.budget, rec.worker = TrialState.RUNNING, budget, worker
        rec.start = rec.start or time.time()
        self.running[rec.number] = rec
        self._emit(STARTED, rec, origin)
        self._remember("running", rec, origin)
        if not self.params_change:
            return SlotJob(rec.number, dict(rec.params), budget, rec.attempts)
        params, clone = self.current.get(rec.number, (dict(rec.params), None))
        if job is not None:  # planned by the rule; None: a rerun of the same job
            params = dict(job.params) if job.params is not None else params
            clone = list(job.clone) if job.clone is not None else None
        self.current[rec.number] = (params, clone)
        return SlotJob(rec.number, dict(params), budget, rec.attempts, clone, self.snapshots)

    def end_new(self) -> None:
        """No new trials from now on (``n_trials`` reached, timeout, sampler exhausted)."""
        if not self.no_new:
            self.no_new = True
            self.rule.end_new_trials()
            self._settle(self.rule.pop_finished())

    # -- reports and outcomes ---------------------------------------------------------------
    def report(self, number: int, step: int, value: float) -> str:
        if self.stopped or number not in self.running:
            return Decision.STOP.value  # the study stopped, or the trial was taken away
        return self.rule.on_report(number, step, value).value

    def finish_job(self, number: int, out: dict[str, Any]) -> None:
        """A slot handed in a job's outcome: merge it, let the rule decide, move the trial."""
        rec = self.running.pop(number, None)
        if rec is None:
            return  # interrupted or lost meanwhile: its outcome no longer counts
        merge(rec, out)
        self.rule.on_complete(number, rec.state.value, rec.value)
        verdicts = dict(self.rule.pop_finished())
        verdict = verdicts.pop(number, None)
        self._info(rec)
        if self.tracks and verdict is None and rec.state is TrialState.COMPLETE:
            rec.state = TrialState.PAUSED  # waits at its rung for the rung to be decided
            self.paused[number] = rec
            self._emit(PAUSED, rec)
            self._remember("pause", rec)
        else:
            self._finish(rec, verdict or rec.state.value)
        self._settle(verdicts.items())

    def lost(self, number: int, error: str, worker: str | None = None) -> None:
        """The worker running the trial is gone: run it again (``max_retries``) or fail it.

        Only a started trial can be lost, so a trial that never ran costs no attempt.
        """
        rec = self.running.pop(number, None)
        if rec is None:
            return
        if worker:
            old = rec.tags.get("hpo.lost_workers")
            rec.tags["hpo.lost_workers"] = f"{old},{worker}" if old else worker
        if rec.attempts <= self.max_retries:
            rec.attempts += 1
            self.rerun.appendleft(rec)
            self._emit(RETRIED, rec)
            return
        rec.state, rec.end = TrialState.FAILED, time.time()
        rec.error = (f"worker lost {rec.attempts} time(s), more than max_retries="
                     f"{self.max_retries}; last: {error}")
        self.rule.on_complete(number, "FAILED", None)
        self._finish(rec, "FAILED")
        self._settle(self.rule.pop_finished())

    def lost_worker(self, worker: str, error: str) -> list[int]:
        """Every trial running on ``worker`` is lost; their numbers."""
        numbers = [n for n, r in self.running.items() if r.worker == worker]
        for n in numbers:
            self.lost(n, error, worker)
        return numbers

    def _settle(self, verdicts: Iterable[tuple[int, str]]) -> None:
        """Final states the rule decided for trials waiting at a rung."""
        for number, state in verdicts:
            rec = self.paused.pop(number, None)
            if rec is not None:
                self._info(rec)
                self._finish(rec, state)

    def _finish(self, rec: TrialRecord, state: str) -> None:
        if state == "PRUNED" and rec.state is not TrialState.PRUNED:
            rec.pruned_step = rec.pruned_step or (rec.intermediate[-1][0] if rec.intermediate else None)
        rec.state = TrialState(state)
        if rec.state is TrialState.PRUNED and not rec.values and rec.intermediate:
            rec.values = [rec.intermediate[-1][1]]
        self._emit(FINISHED, rec)
        self._remember("tell", rec)
        if rec.state is TrialState.FAILED:
            self.failed += 1
            if self.max_failures is not None and self.failed > self.max_failures:
                self.interrupt()  # here, not in the manager: no slot takes another job

    def _info(self, rec: TrialRecord) -> None:
        """The rule's view of a trial as ``hpo.*`` tags (bracket, rungs, budget used)."""
        if not self.tracks:
            return
        try:
            info = self.rule.trial_info(rec.number)
        except KeyError:
            return
        for key in ("bracket", "budget_consumed", "stopped_rung", "rung"):
            if info.get(key) is not None:
                rec.tags[f"hpo.{key}"] = str(info[key])
        if info.get("rungs_reached") is not None:
            rec.tags["hpo.rungs_reached"] = json.dumps(info["rungs_reached"])
        for key in ("pbt_schedule", "pbt_donors", "pbt_params"):  # params over budget, whose checkpoints
            if info.get(key) is not None:
                rec.tags[f"hpo.{key}"] = json.dumps(info[key])
        if info.get("stopped_step") is not None:
            rec.pruned_step = info["stopped_step"]

    # -- the end ----------------------------------------------------------------------------
    def idle(self) -> bool:
        """Nothing runs and nothing can come: every slot may stop."""
        return (self.stopped or self.done
                or (not self.running and not self.rerun and self.no_new
                    and not (self.plans and self.rule.plan(1))))

    def finish(self) -> None:
        """The study run is over: trials still waiting at a rung are pruned there."""
        if self.done:
            return
        self.end_new()
        self._settle(self.rule.pop_finished())
        for number in list(self.paused):
            if self.paused[number].state is TrialState.PAUSED:
                self._settle([(number, "PRUNED")])
        self.done = True
        self.events.append([DONE, None, None, None])

    def interrupt(self) -> None:
        """Stop (Ctrl-C, too many failures, the store gone): every running or queued trial
        is INTERRUPTED, resumable; from now on reports are answered "stop"."""
        self.stopped = True
        now = time.time()
        for rec in [*self.running.values(), *self.rerun]:
            rec.state, rec.end = TrialState.INTERRUPTED, now
            self._emit(INTERRUPTED, rec)
        self.running.clear()
        self.rerun.clear()
        self.events.append([DONE, None, None, None])

    # -- events -----------------------------------------------------------------------------
    def _emit(self, kind: str, rec: TrialRecord, origin: Any = None) -> None:
        """One event: [kind, trial, its record, where its params came from (new trials)]."""
        self.events.append([kind, rec.number, to_wire(rec), origin])

    def _remember(self, kind: str, rec: TrialRecord, origin: Any = None) -> None:
        if self.history is not None:
            self.history.append([kind, rec.number, rec.params, rec.state.value, rec.values,
                                 [list(x) for x in rec.intermediate], rec.budget, origin])

    def take_events(self) -> list[list[Any]]:
        out, self.events = self.events, []
        return out

    def state(self) -> dict[str, Any]:
        """The rule's exact state, to be loaded on resume instead of replaying reports."""
        saver = getattr(self.rule, "state", None)
        return {"version": STATE_VERSION,
                "rule": saver() if callable(saver) else None,
                "finished": sorted(n for n, r in self.trials.items() if r.state.finished),
                "paused": sorted(self.paused)}


@dataclass(frozen=True)
class _NEW:
    """A new trial at the rule's budget (rules that plan nothing)."""

    budget: Any
    trial: None = None
    bracket: None = None


def merge(rec: TrialRecord, out: dict[str, Any]) -> None:
    """Fold one job's outcome into the trial's record (a promoted trial's steps continue)."""
    rec.state = TrialState(out["state"])
    rec.values, rec.metrics = out.get("values"), out.get("metrics") or {}
    reports = [tuple(x) for x in out.get("intermediate") or []]
    rec.intermediate = rec.intermediate + reports
    rec.jobs = [*rec.jobs, [rec.budget, len(reports)]]
    rec.error, rec.traceback = out.get("error"), out.get("traceback")
    rec.worker, rec.host = out.get("worker", rec.worker), out.get("host", rec.host)
    if rec.end is None:  # the first job: the worker's start; later jobs keep it
        rec.start = out.get("start", rec.start)
    rec.end = out.get("end")
    rec.pruned_step = out.get("pruned_step")
    rec.tags.update(out.get("tags") or {})


# -- resume ---------------------------------------------------------------------------------
def replay_rows(records: Iterable[TrialRecord]) -> list[tuple]:
    """Every recorded report as (trial, step, value, state, bracket, job budget) rows, for a
    rule that has no saved state (a study recorded before states were saved).

    The reports tag keeps only a trial's latest reports: the jobs they are missing from are
    the earliest, so those jobs are replayed with the reports that were kept.
    """
    rows: list[tuple] = []
    for rec in records:
        state = "RUNNING" if rec.state is TrialState.PAUSED else rec.state.value
        bracket = _bracket(rec)
        missing = max(0, sum(n for _, n in rec.jobs) - len(rec.intermediate))
        reports = iter(rec.intermediate)
        for budget, n in rec.jobs:
            skip = min(missing, n)
            missing -= skip
            job = [next(reports) for _ in range(n - skip)]
            rows += [(rec.number, s, v, state, bracket, budget) for s, v in job]
            if not job:
                rows.append((rec.number, None, rec.value, state, bracket, budget))
        rows += [(rec.number, s, v, state, bracket, None) for s, v in reports]
        if rec.state is TrialState.INTERRUPTED:  # its unfinished job, at its budget
            rows.append((rec.number, None, None, state, bracket, rec.budget))
    return rows


def rebuild_rule(rule: Scheduler, spec: Any, mode: str, records: list[TrialRecord],
                 saved: dict[str, Any] | None = None) -> tuple[Scheduler, str]:
    """The rule of a resumed study, and how it was rebuilt ("state", "replay" or "new").

    A saved state is exact; it is used when it covers the recorded trials (the study run
    closed after its last trial was recorded). Otherwise (the manager was killed between
    two saves, or the study is older than saved states) the reports are replayed.
    """
    options = dict(spec) if isinstance(spec, dict) else {}
    options.pop("name", None)
    finished = sorted(r.number for r in records if r.state.finished)
    loader = getattr(type(rule), "from_state", None)
    if (saved and saved.get("version") == STATE_VERSION and saved.get("rule") is not None
            and loader is not None and saved.get("finished") == finished):
        return loader(saved["rule"], mode=mode, **options), "state"
    if not records:
        return rule, "new"
    rows = replay_rows(records)
    rebuild = getattr(type(rule), "from_records", None)
    if rebuild is not None:
        return rebuild(rows, mode=mode, **options), "replay"
    last: dict[int, tuple] = {}
    for trial, step, value, state, *_ in rows:
        if step is not None:
            rule.on_report(trial, step, value)
        last[trial] = (state, value)
    for trial, (state, value) in last.items():
        if state in ("COMPLETE", "PRUNED", "FAILED"):
            rule.on_complete(trial, state, value)
    rule.pop_finished()
    return rule, "replay"
