"""The manager loop of one ``optimize`` call: ask -> submit -> as_completed -> tell.

It keeps ``slots`` trials running (one per worker thread) plus a small queue of ready
trials (one per worker by default), and refills the moment any future finishes, never in
lock-step batches. Schedulers that plan budgets (synchronous SHA / Hyperband) hand out the
jobs; a job that ends at a rung leaves its trial PAUSED until the rung is decided, and a
promotion continues the same trial (and MLflow run). Nothing here knows a sampler,
scheduler or cluster by name: those are behind their interfaces.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import uuid
from typing import TYPE_CHECKING, Any

from hpo_mlops.cluster import ClusterError, planned_capacity, wait_for_workers
from hpo_mlops.dask_plugin import RuleClient, StudyPlugin
from hpo_mlops.errors import TooManyFailures
from hpo_mlops.results import TrialRecord, TrialState, is_number
from hpo_mlops.runner import run_trial

if TYPE_CHECKING:
    from hpo_mlops.study import Study


class Run:
    """One ``optimize`` call on one Dask client."""

    def __init__(self, study: Study, client: Any, objective: Any, setup: Any,
                 n_trials: int | None, timeout: float | None, max_concurrent: int | None,
                 max_failures: int | None, resources: dict | None, queue_per_worker: int,
                 max_retries: int = 3, checkpoint_dir: str | None = None) -> None:
        self.study, self.client = study, client
        self.max_retries = max_retries
        self.key = f"{study.name}-{uuid.uuid4().hex[:8]}"
        self.plugin_name = f"hpo-study-{self.key}"
        self.objective, self.setup = objective, setup
        self.n_trials, self.max_failures, self.resources = n_trials, max_failures, resources
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout if timeout else math.inf
        self.max_concurrent, self.queue_per_worker = max_concurrent, queue_per_worker
        # per study run, below the given root too: a resumed study finds its checkpoints, a
        # new run (resume=False) or another study sharing the root does not
        self.checkpoint_root = os.path.join(
            checkpoint_dir or os.path.join(tempfile.gettempdir(), "hpo-mlops-checkpoints"),
            f"{study.name}-{study.run_id or study._id}")
        self.pending: dict[Any, TrialRecord] = {}
        self.settled: dict[int, str] = {}  # final states the rule decided, not yet recorded
        self.no_new = False
        self.failures = 0
        self._slots_at, self._slots_cache = -math.inf, 1
        known = [*study._trials, *study._paused, *(r.number for r in study._rerun)]
        self.next_number = max(known, default=-1) + 1

    # -- set-up / tear-down ---------------------------------------------------------------
    def execute(self) -> None:
        from distributed import as_completed

        study = self.study
        records = study._scheduler_records() if study._scheduler_rule.tracks_trials else None
        self.rule = RuleClient(self.client, self.key, study.scheduler_spec, study.modes[0],
                               study._scheduler_rule, records)
        if self.rule.plans:  # the rule plans reruns of interrupted jobs, at their budget
            study._paused.update({r.number: r for r in study._rerun})
            study._rerun.clear()
        self.client.register_plugin(StudyPlugin(self.plugin_name, self.objective, self.setup),
                                    name=self.plugin_name)
        self.futures = as_completed()
        if study._tracker is not None:
            study._tracker.log_study_metrics({}, {"hpo.n_trials": str(self.n_trials),
                                                  "hpo.timeout": str(self.timeout)})
        status = "FINISHED"
        try:
            self._fill()
            # A batch cluster starts empty: wait (bounded) for a first worker, and say why
            # none came rather than waiting on futures for ever.
            wait_for_workers(self.client)
            for future in self.futures:
                self._collect(future)
                self._fill()
            self._settle_paused()
        except ClusterError:
            status = "FAILED"
            for future, rec in list(self.pending.items()):  # never ran: nothing to record
                future.cancel()
                self.study._rerun.append(rec)
            self.pending.clear()
            raise
        except KeyboardInterrupt:
            status = "KILLED"
            self._interrupt()
            raise
        except TooManyFailures:
            status = "FAILED"
            self._interrupt()
            raise
        finally:
            self._finish(status)

    def _finish(self, status: str) -> None:
        study = self.study
        study.budget_summary = self.rule.summary() if hasattr(self, "rule") else None
        with contextlib.suppress(Exception):  # the cluster may be going away (Ctrl-C)
            self.client.unregister_worker_plugin(self.plugin_name)
        if study._tracker is not None:
            summary = study.budget_summary or {}
            study._tracker.log_study_metrics(
                {k: v for k, v in summary.items() if is_number(v)},
                {f"hpo.{k}": json.dumps(v) for k, v in summary.items() if isinstance(v, dict)})
            study._tracker.close(status)

    # -- the loop -------------------------------------------------------------------------
    def _slots(self) -> int:
        """Trials to keep in flight; the cluster's size is re-read at most once a second
        (``scheduler_info`` is a round trip to the scheduler)."""
        now = time.monotonic()
        if now - self._slots_at > 1.0:
            self._slots_at, self._slots_cache = now, self._count_slots()
        return self._slots_cache

    def _count_slots(self) -> int:
        workers = self.client.scheduler_info(n_workers=-1)["workers"].values()
        n_workers, threads = len(workers), sum(w.get("nthreads", 1) for w in workers)
        plan = planned_capacity(self.client)  # a batch cluster's jobs may still be queued
        if plan is not None:
            n_workers, threads = max(n_workers, plan[0]), max(threads, plan[1])
        threads = threads or 1
        if self.max_concurrent is not None:
            return min(self.max_concurrent, threads + self.queue_per_worker * n_workers)
        return threads + self.queue_per_worker * n_workers

    def _new_allowed(self) -> float:
        """How many new configurations may still start (``n_trials`` counts them all)."""
        if self.no_new or time.monotonic() >= self.deadline:
            return 0
        return math.inf if self.n_trials is None else self.n_trials - self.next_number

    def _fill(self) -> None:
        free = self._slots() - len(self.pending)
        if free <= 0:
            return
        study = self.study
        jobs: list[tuple[TrialRecord, Any, Any]] = []
        while study._rerun and len(jobs) < free:  # interrupted earlier: same budget again
            rec = study._rerun.pop(0)
            jobs.append((rec, rec.budget, rec.tags.get("hpo.bracket")))
        allowed, last_new = self._new_allowed(), False
        if time.monotonic() < self.deadline and len(jobs) < free:
            planned = self.rule.plan(free - len(jobs))
            new = [(b, k) for t, b, k in planned if t is None][: int(min(free, allowed))]
            params = study.sampler.ask(len(new)) if new else []
            # sampler exhausted or n_trials reached (told the rule after these jobs started)
            last_new = len(params) < len(new) or (allowed is not math.inf and len(new) >= allowed)
            for p, (budget, bracket) in zip(params, new, strict=False):
                jobs.append((TrialRecord(self.next_number, p), budget, bracket))
                self.next_number += 1
            for trial, budget, bracket in planned:  # promotions of waiting trials
                if trial is not None and trial in study._paused:
                    jobs.append((study._paused.pop(trial), budget, bracket))
        self.rule.start([(rec.number, budget, bracket) for rec, budget, bracket in jobs])
        ended = last_new and not self.no_new
        if last_new:
            self._end_new()
        for rec, budget, _ in jobs:
            self._submit(rec, budget)
        if ended:  # the rule may promote now (a partial rung decided): plan those too
            self._fill()

    def _end_new(self) -> None:
        if not self.no_new:
            self.no_new = True
            self.rule.end_new()

    def _submit(self, rec: TrialRecord, budget: Any) -> None:
        rec.state, rec.budget = TrialState.RUNNING, budget
        rec.start = rec.start or time.time()
        spec = {"key": self.key, "number": rec.number, "params": rec.params,
                "budget": budget, "metrics": self.study.metrics, "reports": self.rule.reports,
                "attempt": rec.attempts,
                "checkpoint_dir": os.path.join(self.checkpoint_root, f"trial-{rec.number}")}
        retry = f"-a{rec.attempts}" if rec.attempts > 1 else ""  # never reuse a failed key
        future = self.client.submit(
            run_trial, self.plugin_name, spec,
            key=f"hpo-trial-{self.key}-{rec.number}-{budget}{retry}",
            pure=False, resources=self.resources,
        )
        self.pending[future] = rec
        self.futures.add(future)

    def _collect(self, future: Any) -> None:
        rec = self.pending.pop(future)
        try:
            out = future.result()
        except Exception as exc:  # the worker died (KilledWorker) or the task was lost
            out = {"state": "FAILED", "error": f"{type(exc).__name__}: {exc}", "end": time.time()}
            if self._retry(rec, exc, out):
                return
        finally:
            future.release()
        _merge(rec, out)
        finished, info = self.rule.settle([rec.number])
        for number, trial_info in info.items():
            _info_tags(self.study._paused.get(number, rec if number == rec.number else None),
                       trial_info)
        # the rule may settle a trial before its job's result reaches us: keep the verdict
        self.settled.update(finished)
        for number in [n for n in self.settled if n in self.study._paused]:
            self._record(self.study._paused.pop(number), self.settled.pop(number))
        verdict = self.settled.pop(rec.number, None)
        if self.rule.tracks and verdict is None and rec.state is TrialState.COMPLETE:
            rec.state = TrialState.PAUSED  # waits at its rung for the rung to be decided
            self.study._paused[rec.number] = rec
            self.study._tell(rec)
            if self.study._tracker is not None:
                self.study._tracker.log_trial(rec, self.study.metrics)
            return
        self._record(rec, verdict or rec.state.value)

    def _record(self, rec: TrialRecord, state: str) -> None:
        """A trial is finished: tell the sampler, write its run, count failures."""
        study = self.study
        if state == "PRUNED" and rec.state is not TrialState.PRUNED:
            rec.pruned_step = rec.pruned_step or (rec.intermediate[-1][0] if rec.intermediate else None)
        rec.state = TrialState(state)
        if rec.state is TrialState.PRUNED and not rec.values and rec.intermediate:
            rec.values = [rec.intermediate[-1][1]]
        study._trials[rec.number] = rec
        study._tell(rec)
        if study._tracker is not None:
            study._tracker.log_trial(rec, study.metrics)
        study._update_best(rec)
        if rec.state is TrialState.FAILED:
            self.failures += 1
            if self.max_failures is not None and self.failures > self.max_failures:
                raise TooManyFailures(
                    f"study {study.name!r} stopped: {self.failures} trials failed, more than "
                    f"max_failures={self.max_failures}; last error: {rec.error}"
                )

    def _settle_paused(self) -> None:
        """Trials still waiting at a rung when the study ends are pruned at that rung."""
        self._end_new()
        self.settled.update(self.rule.settle([])[0])
        for number in list(self.study._paused):
            self._record(self.study._paused.pop(number), self.settled.pop(number, "PRUNED"))

    def _retry(self, rec: TrialRecord, exc: BaseException, out: dict[str, Any]) -> bool:
        """Run a trial whose worker was lost again, if ``max_retries`` allows; True if so.

        The manager, not Dask, re-runs it: clusters built by ``connect`` have
        ``allowed-failures=0``, so each lost worker surfaces here once and ``rec.attempts``
        counts every run exactly (a scheduler of the user's may have re-run the task
        ``allowed_failures`` times already; ``KilledWorker`` says how many). Nothing is
        told or logged until the trial's last attempt, so it appears once in MLflow.
        """
        from asyncio import CancelledError

        from distributed.scheduler import KilledWorker

        if isinstance(exc, KilledWorker):
            runs = exc.allowed_failures + 1
            last = getattr(exc.last_worker, "address", exc.last_worker)
        elif isinstance(exc, CancelledError):  # the scheduler lost the task
            runs, last = 1, None
        else:
            return False
        if last:
            lost = rec.tags.get("hpo.lost_workers")
            rec.tags["hpo.lost_workers"] = f"{lost},{last}" if lost else str(last)
        used = rec.attempts - 1 + runs
        if used <= self.max_retries:
            rec.attempts = used + 1
            self.rule.start([(rec.number, rec.budget, rec.tags.get("hpo.bracket"))])
            self._submit(rec, rec.budget)
            return True
        rec.attempts = used
        out["error"] = (f"worker lost {used} time(s), more than max_retries={self.max_retries}; "
                        f"last: {out['error']}")
        return False

    def _interrupt(self) -> None:
        """Record the trials still in flight as INTERRUPTED (resume runs them again)."""
        self.rule.forget()  # from now on their reports are answered "stop"
        for future, rec in list(self.pending.items()):
            future.cancel()
            rec.state, rec.end = TrialState.INTERRUPTED, time.time()
            self.study._trials.pop(rec.number, None)
            self.study._rerun.append(rec)
            if self.study._tracker is not None:
                self.study._tracker.log_trial(rec, self.study.metrics)
        self.pending.clear()


def _merge(rec: TrialRecord, out: dict[str, Any]) -> None:
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


def _info_tags(rec: TrialRecord | None, info: dict[str, Any]) -> None:
    """The scheduler's view of a trial as ``hpo.*`` tags (bracket, rungs, budget used)."""
    if rec is None:
        return
    for key in ("bracket", "budget_consumed", "stopped_rung", "rung"):
        if info.get(key) is not None:
            rec.tags[f"hpo.{key}"] = str(info[key])
    if info.get("rungs_reached") is not None:
        rec.tags["hpo.rungs_reached"] = json.dumps(info["rungs_reached"])
    if info.get("stopped_step") is not None:
        rec.pruned_step = info["stopped_step"]
