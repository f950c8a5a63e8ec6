"""The study: the user's handle and the manager loop (ask -> submit -> as_completed -> tell).

The loop keeps ``slots`` trials running (one per worker thread) plus a small queue of
ready trials (one per worker by default), and refills the moment any future finishes,
never in lock-step batches. Everything tool-specific lives behind the sampler, scheduler,
cluster and tracker interfaces.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from hpo_mlops import registry
from hpo_mlops.cluster import ClusterError, connect, planned_capacity, wait_for_workers
from hpo_mlops.dask_plugin import RuleClient, StudyPlugin
from hpo_mlops.errors import ConfigError, TooManyFailures
from hpo_mlops.objective import make_objective
from hpo_mlops.results import TrialRecord, TrialState, is_number
from hpo_mlops.runner import run_trial
from hpo_mlops.samplers.base import Sampler
from hpo_mlops.schedulers.base import Scheduler
from hpo_mlops.space import Space
from hpo_mlops.tracking import Tracker

_DIRECTIONS = {"min": "minimize", "max": "maximize"}


def _as_list(x: str | Sequence[str], what: str) -> list[str]:
    items = [x] if isinstance(x, str) else list(x)
    if not items or not all(isinstance(i, str) and i for i in items):
        raise ConfigError(f"{what}: must be a name or a list of names, got {x!r}")
    return items


class Study:
    """A named optimization whose trials are MLflow runs nested under the study's run.

    Running a study with the same ``name`` against the same tracking store again resumes
    it: finished trials are told to the sampler and never run again; ``n_trials`` counts
    the total; interrupted trials run again. ``resume=False`` starts a new study run.
    """

    def __init__(
        self,
        name: str,
        space: dict[str, Any] | Space,
        metric: str | Sequence[str] = "loss",
        mode: str | Sequence[str] = "min",
        sampler: str | dict[str, Any] | Sampler = "tpe",
        scheduler: str | dict[str, Any] = "median",
        seed: int | None = None,
        tracking_uri: str | None = None,
        resume: bool = True,
        tracking: bool = True,
        tags: dict[str, str] | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"name: must be a non-empty string, got {name!r}")
        self.name = name
        self.space = Space.from_dict(space)
        self.metrics = _as_list(metric, "metric")
        modes = _as_list(mode, "mode")
        if len(modes) == 1 and len(self.metrics) > 1:
            modes = modes * len(self.metrics)
        bad = [m for m in modes if m not in _DIRECTIONS]
        if bad or len(modes) != len(self.metrics):
            raise ConfigError(
                f"mode: needs 'min' or 'max' for each metric {self.metrics}, got {mode!r}"
            )
        self.modes = modes
        self.sampler: Sampler = registry.create(registry.SAMPLERS, sampler, Sampler)
        self.sampler.setup(self.space, [_DIRECTIONS[m] for m in modes], seed)
        if isinstance(scheduler, Scheduler):
            raise ConfigError(
                "scheduler: give a name or a dict {'name': ..., **options}; the rule is "
                "built on the Dask scheduler"
            )
        # Build it here once to validate options before anything runs.
        self._scheduler_rule = registry.create(registry.SCHEDULERS, scheduler, Scheduler,
                                               mode=modes[0])
        self.scheduler_spec = scheduler
        self.seed = seed
        self.resume = resume
        self._tracker = Tracker(tracking_uri) if tracking else None
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        if self._tracker is not None:
            self._tracker.default_tags = dict(self.tags)
        self._id = uuid.uuid4().hex[:8]  # names this object's checkpoints when not tracked
        self._opened = False
        self._loaded = False
        self._trials: dict[int, TrialRecord] = {}
        self._rerun: list[TrialRecord] = []
        self._paused: dict[int, TrialRecord] = {}  # waiting at a rung (synchronous SHA)
        self._best: TrialRecord | None = None
        self.budget_summary: dict[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: Any, resume: bool | None = None) -> Study:
        """The study a ``params.yaml`` describes: a path, a parsed mapping or a
        :class:`hpo_mlops.config.Config` (validated there, errors name the key path).
        ``hpo_mlops.config.optimize_kwargs(cfg)`` gives the matching ``optimize`` arguments."""
        from hpo_mlops.config import build_study

        return build_study(cfg, resume=resume)

    # -- results ------------------------------------------------------------------------
    @property
    def trials(self) -> list[TrialRecord]:
        """Every finished trial, by number (an earlier run's trials included)."""
        self._load()
        return [self._trials[n] for n in sorted(self._trials)]

    @property
    def run_id(self) -> str | None:
        """The study's MLflow run (``None`` before it is opened or without tracking)."""
        if self._tracker is None:
            return None
        self._load()
        return self._tracker.parent_run_id

    @property
    def tracking_uri(self) -> str | None:
        return None if self._tracker is None else self._tracker.tracking_uri

    @property
    def best_trial(self) -> TrialRecord:
        self._load()
        if len(self.metrics) > 1:
            raise ConfigError("a multi-objective study has no single best trial; use best_trials")
        if self._best is None:
            raise ValueError(f"study {self.name!r} has no completed trial yet")
        return self._best

    @property
    def best_trials(self) -> list[TrialRecord]:
        """The Pareto front of the completed trials (the best trial for one objective)."""
        done = [t for t in self.trials if t.state is TrialState.COMPLETE and t.values]
        signs = [1 if m == "min" else -1 for m in self.modes]
        keys = [[s * v for s, v in zip(signs, t.values, strict=True)] for t in done]

        def dominated(i: int) -> bool:
            return any(all(a <= b for a, b in zip(keys[j], keys[i], strict=True))
                       and keys[j] != keys[i] for j in range(len(done)))

        return [t for i, t in enumerate(done) if not dominated(i)]

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)

    @property
    def best_value(self) -> float | None:
        return self.best_trial.value

    def trials_dataframe(self) -> Any:
        """One row per trial (pandas): number, state, value(s), params_*, metrics, timing."""
        import pandas as pd

        rows = []
        for t in self.trials:
            row: dict[str, Any] = {"number": t.number, "state": t.state.value}
            if len(self.metrics) == 1:
                row["value"] = t.value
            else:
                for i, m in enumerate(self.metrics):
                    row[f"values_{m}"] = t.values[i] if t.values else None
            row.update({f"params_{k}": v for k, v in t.params.items()})
            row.update({f"metrics_{k}": v for k, v in t.metrics.items() if k not in self.metrics})
            row.update(datetime_start=pd.to_datetime(t.start, unit="s") if t.start else None,
                       duration=t.duration, worker=t.worker, pruned_step=t.pruned_step,
                       error=t.error, run_id=t.run_id)
            rows.append(row)
        return pd.DataFrame(rows)

    def export_best(self, path: str | None = None, fmt: str | None = None) -> str:
        """The best params (and value) as YAML or JSON text; written to ``path`` if given."""
        fmt = fmt or ("json" if path and path.endswith(".json") else "yaml")
        if fmt not in ("yaml", "json"):
            raise ConfigError(f"format: must be 'yaml' or 'json', got {fmt!r}")
        if len(self.metrics) > 1:
            doc: Any = [{"trial": t.number, "params": t.params,
                         "values": dict(zip(self.metrics, t.values or [], strict=False))}
                        for t in self.best_trials]
        else:
            best = self.best_trial
            doc = {"trial": best.number, "params": best.params,
                   "value": {self.metrics[0]: best.value}}
        if fmt == "json":
            text = json.dumps(doc, indent=2) + "\n"
        else:
            import yaml

            text = yaml.safe_dump(doc, sort_keys=False)
        if path:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    # -- the manager loop ------------------------------------------------------------------
    def optimize(
        self,
        objective: Callable[..., Any] | Sequence[str] | str,
        n_trials: int | None = None,
        timeout: float | None = None,
        n_workers: int | None = None,
        client: Any = None,
        address: str | None = None,
        cluster: Any = None,
        max_concurrent: int | None = None,
        setup: Callable[[], Any] | None = None,
        max_failures: int | None = None,
        resources: dict[str, float] | None = None,
        queue_per_worker: int = 1,
        max_retries: int = 3,
        checkpoint_dir: str | None = None,
    ) -> Study:
        """Run trials until ``n_trials`` (in total) are finished or ``timeout`` seconds passed.

        ``objective(params, trial)`` returns a float, a list (one per metric) or a dict of
        metrics; or give a command (list of argv with ``{param}`` placeholders) whose last
        JSON line on stdout is the result. ``setup()`` runs once per worker and its result
        is ``trial.context``. ``resources`` (e.g. ``{"GPU": 1}``) are Dask worker resources
        each trial holds. A trial whose worker is lost (its batch job was cancelled, killed or
        ran out of walltime) runs again, up to ``max_retries`` times, then is FAILED with the
        reason; it is recorded once, with its attempts in the ``hpo.attempts`` tag.
        ``checkpoint_dir`` is where ``trial.save``/``trial.load`` keep each trial's state
        between its jobs (a promoted trial resumes from it); on HPC give a shared path.
        """
        _check_positive(n_trials=n_trials, max_concurrent=max_concurrent, n_workers=n_workers)
        if timeout is not None and not (is_number(timeout) and timeout > 0):
            raise ConfigError(f"timeout: must be a number of seconds > 0, got {timeout!r}")
        if max_failures is not None and (not isinstance(max_failures, int) or max_failures < 0):
            raise ConfigError(f"max_failures: must be an integer >= 0, got {max_failures!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ConfigError(f"max_retries: must be an integer >= 0, got {max_retries!r}")
        if n_trials is None and timeout is None and not hasattr(self.sampler, "size"):
            raise ConfigError("give n_trials or timeout (or both): nothing else ends the study")
        fn = make_objective(objective, self.metrics[0])
        self._open()
        with connect(client, address, cluster, n_workers) as dask_client:
            run = _Run(self, dask_client, fn, setup, n_trials, timeout, max_concurrent,
                       max_failures, resources, queue_per_worker, max_retries, checkpoint_dir)
            run.execute()
        return self

    def _load(self) -> None:
        """Read what an earlier run of this study recorded (read-only, once)."""
        if self._loaded or self._tracker is None or not self.resume:
            return
        self._loaded = True
        self._absorb(self._tracker.find_study(self.name))

    def _open(self) -> None:
        """Open (or resume) the study's MLflow run."""
        if self._opened or self._tracker is None:
            return
        params = {
            "metric": ",".join(self.metrics), "mode": ",".join(self.modes),
            "sampler": self.sampler.describe(), "scheduler": self._scheduler_rule.describe(),
            "space": self.space.to_dict(), "seed": self.seed,
        }
        self._load()
        if self._tracker.parent_run_id is not None:
            stored = self._tracker.stored_space()
            if stored is not None and json.loads(stored) != self.space.to_dict():
                raise ConfigError(
                    f"study {self.name!r} in {self._tracker.tracking_uri} was run with another "
                    f"space {json.loads(stored)}; use another name or resume=False"
                )
        self._tracker.open_study(self.name, params, self.space.to_json(), self.resume)
        self._opened = True

    def _scheduler_records(self) -> list[tuple]:
        """Every recorded report as (trial, step, value, state, bracket, job budget) rows, so
        a resumed study's rule prunes as if it had never stopped."""
        rows: list[tuple] = []
        for rec in [*self._trials.values(), *self._paused.values(), *self._rerun]:
            state = "RUNNING" if rec.state is TrialState.PAUSED else rec.state.value
            bracket = rec.tags.get("hpo.bracket")
            bracket = int(bracket) if bracket not in (None, "None") else None
            reports = iter(rec.intermediate)
            for budget, n in rec.jobs:
                job = [next(reports) for _ in range(n)]
                rows += [(rec.number, s, v, state, bracket, budget) for s, v in job]
                if not job:
                    rows.append((rec.number, None, rec.value, state, bracket, budget))
            rows += [(rec.number, s, v, state, bracket, None) for s, v in reports]
            if rec.state is TrialState.INTERRUPTED:  # its unfinished job, at its budget
                rows.append((rec.number, None, None, state, bracket, rec.budget))
        return rows

    def _absorb(self, previous: list[TrialRecord]) -> None:
        for rec in previous:
            if rec.state.finished:
                if rec.values is None and rec.state is not TrialState.FAILED:
                    rec.values = [rec.metrics.get(m) for m in self.metrics]
                self._trials[rec.number] = rec
                self.sampler.tell(rec.params, rec.to_result())
                self._update_best(rec, log=False)
            elif rec.state is TrialState.PAUSED:
                self._paused[rec.number] = rec
            else:
                self._rerun.append(rec)

    def _update_best(self, rec: TrialRecord, log: bool = True) -> None:
        if rec.state is not TrialState.COMPLETE or len(self.metrics) > 1 or rec.value is None:
            return
        sign = 1 if self.modes[0] == "min" else -1
        if self._best is None or sign * rec.value < sign * self._best.value:
            self._best = rec
            if log and self._tracker is not None:
                self._tracker.log_best(rec, self.metrics, len(self._trials))

    def __repr__(self) -> str:
        return f"Study(name={self.name!r}, trials={len(self._trials)}, sampler={self.sampler.name!r})"


def _check_positive(**values: Any) -> None:
    for key, v in values.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key}: must be an integer >= 1, got {v!r}")


class _Run:
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
        # per study run: a resumed study finds its checkpoints, a new run (resume=False) not
        self.checkpoint_root = checkpoint_dir or os.path.join(
            tempfile.gettempdir(), "hpo-mlops-checkpoints", f"{study.name}-{study.run_id or study._id}")
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
        if last_new:
            self._end_new()
        for rec, budget, _ in jobs:
            self._submit(rec, budget)

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
        study.sampler.tell(rec.params, rec.to_result())
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
