"""Dask plugins: scheduler-side pruning decisions and worker-side study set-up.

* :class:`PruningPlugin` (a ``SchedulerPlugin``) hosts one scheduler rule per study on
  the Dask scheduler. Workers call its ``hpo_report`` handler over one RPC; because the
  scheduler's event loop runs handlers one at a time, decisions are consistent however
  many workers report at once, and they survive the loss of any worker.
* :class:`StudyPlugin` (a ``WorkerPlugin``) ships the objective to every worker once
  (not once per task) and runs ``setup()`` once per worker, workers joining later included.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Callable
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin, WorkerPlugin

from hpo_mlops import registry
from hpo_mlops.schedulers.base import Decision, Scheduler

PLUGIN_NAME = "hpo-mlops-pruning"


class PruningPlugin(SchedulerPlugin):
    name = PLUGIN_NAME
    idempotent = True  # one per Dask scheduler, shared by every study on it

    def __init__(self) -> None:
        self.rules: dict[str, Scheduler] = {}

    async def start(self, scheduler: Any) -> None:
        scheduler.handlers.update(
            {
                "hpo_register": self.register,
                "hpo_report": self.report,
                "hpo_complete": self.complete,
                "hpo_start": self.start_jobs,
                "hpo_plan": self.plan,
                "hpo_settle": self.settle,
                "hpo_end_new": self.end_new,
                "hpo_info": self.info,
                "hpo_forget": self.forget,
            }
        )

    # Handlers are plain functions: the scheduler calls them on its event loop, in order.
    def register(self, key: str, spec: Any, mode: str, records: list | None = None) -> dict:
        """Build the study's rule; on resume, rebuild its records from what was tracked."""
        rule = registry.create(registry.SCHEDULERS, spec, Scheduler, mode=mode)
        if records:
            rule = _rebuild(rule, spec, mode, records)
        self.rules[key] = rule
        return rule.describe()

    def report(self, key: str, trial: int, step: int, value: float) -> str:
        if key not in self.rules:  # the study ended (Ctrl-C, max_failures): stop its trials
            return Decision.STOP.value
        return self.rules[key].on_report(trial, step, value).value

    def complete(self, key: str, trial: int, state: str, value: float | None = None) -> None:
        if key in self.rules:
            self.rules[key].on_complete(trial, state, value)

    def start_jobs(self, key: str, jobs: list) -> None:
        rule = self.rules[key]
        for trial, budget, bracket in jobs:
            rule.on_start(trial, budget, bracket)

    def plan(self, key: str, n: int) -> list[tuple[Any, Any, Any]]:
        return [(j.trial, j.budget, j.bracket) for j in self.rules[key].plan(n)]

    def settle(self, key: str, trials: list[int]) -> dict:
        """Trials the rule settled since the last call, and MLflow info for those + ``trials``."""
        rule = self.rules[key]
        finished = rule.pop_finished()
        wanted = {t for t, _ in finished} | set(trials)
        info = {}
        for t in wanted:
            try:
                info[t] = rule.trial_info(t)
            except KeyError:
                continue
        return {"finished": finished, "info": info}

    def end_new(self, key: str) -> None:
        self.rules[key].end_new_trials()

    def info(self, key: str) -> dict:
        rule = self.rules[key]
        return {"describe": rule.describe(), "summary": rule.budget_summary()}

    def forget(self, key: str) -> None:
        self.rules.pop(key, None)


def _rebuild(rule: Scheduler, spec: Any, mode: str, records: list) -> Scheduler:
    """A rule as if the recorded reports had just arrived (``from_records`` when it has one)."""
    rows = [tuple(r) for r in records]
    rebuild = getattr(type(rule), "from_records", None)
    if rebuild is not None:
        options = dict(spec) if isinstance(spec, dict) else {}
        options.pop("name", None)
        return rebuild(rows, mode=mode, **options)
    last: dict[int, tuple] = {}
    for trial, step, value, state, _bracket, _budget in rows:
        if step is not None:
            rule.on_report(trial, step, value)
        last[trial] = (state, value)
    for trial, (state, value) in last.items():
        if state in ("COMPLETE", "PRUNED", "FAILED"):
            rule.on_complete(trial, state, value)
    rule.pop_finished()
    return rule


def _ignore_sigint() -> None:
    """Ctrl-C is the manager's to handle: it records the running trials and closes the
    cluster. Worker processes in the terminal's process group would otherwise die on the
    same SIGINT, each printing a traceback, before the manager could do so."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def dask_reporter(key: str) -> Callable[[int, int, float], bool]:
    """A reporter for :class:`hpo_mlops.trial.Trial` that asks the scheduler plugin."""
    from distributed import get_worker
    from distributed.utils import sync

    worker = get_worker()

    def report(trial: int, step: int, value: float) -> bool:
        answer = sync(worker.loop, worker.scheduler.hpo_report,
                      key=key, trial=trial, step=step, value=value)
        return answer == Decision.STOP.value

    return report


class StudyPlugin(WorkerPlugin):
    """Holds a study's objective on each worker and the result of its ``setup()``."""

    idempotent = False

    def __init__(self, name: str, objective: Callable, setup: Callable[[], Any] | None) -> None:
        self.name = name
        self.objective = objective
        self.setup_fn = setup
        self.context: Any = None
        self.setup_error: str | None = None

    def setup(self, worker: Any) -> None:
        _ignore_sigint()
        if self.setup_fn is None:
            return
        try:
            self.context = self.setup_fn()
        except Exception as exc:  # recorded on every trial of this worker instead
            self.setup_error = f"setup() failed on {worker.address}: {exc!r}\n" + "".join(
                traceback.format_exc(limit=-8)
            )


class RuleClient:
    """The manager's handle on its study's rule inside :class:`PruningPlugin`.

    Rules that neither stop trials nor plan budgets (``fifo``) cost no RPC at all; the
    others cost one round trip per call (plan and start once per refill, settle once per
    finished job).
    """

    def __init__(self, client: Any, key: str, spec: Any, mode: str, rule: Scheduler,
                 records: list | None = None) -> None:
        self.client, self.key = client, key
        cls = type(rule)
        self.reports, self.plans, self.tracks = cls.needs_reports, cls.plans_budgets, cls.tracks_trials
        self.budget = rule.budget_for(None)
        self.remote = self.reports or self.plans or self.tracks
        self._forgotten, self._summary = False, None
        if self.remote:
            client.register_plugin(PruningPlugin())
            self._call("hpo_register", spec=spec, mode=mode, records=records or None)

    def _call(self, op: str, **kwargs: Any) -> Any:
        return self.client.sync(getattr(self.client.scheduler, op), key=self.key, **kwargs)

    def plan(self, n: int) -> list[tuple[Any, Any, Any]]:
        if not self.plans:
            return [(None, self.budget, None)] * n
        return [tuple(j) for j in self._call("hpo_plan", n=n)]

    def start(self, jobs: list[tuple[int, Any, Any]]) -> None:
        if self.remote and jobs:
            self._call("hpo_start", jobs=jobs)

    def settle(self, trials: list[int]) -> tuple[dict[int, str], dict[int, dict]]:
        if not self.tracks:
            return {}, {}
        out = self._call("hpo_settle", trials=trials)
        return ({int(t): s for t, s in out["finished"]},
                {int(t): i for t, i in out["info"].items()})

    def end_new(self) -> None:
        if self.plans:
            self._call("hpo_end_new")

    def summary(self) -> dict | None:
        """The rule's budget summary; then the plugin forgets the study."""
        self.forget()
        return self._summary

    def forget(self) -> None:
        """Drop the study's rule; its trials still running get "stop" at their next report."""
        if self.remote and not self._forgotten:
            with contextlib.suppress(Exception):
                self._summary = (self._call("hpo_info") or {}).get("summary")
                self._call("hpo_forget")
            self._forgotten = True
